"""Judge a set of readings the way a grower means them: fill in what is missing, say what was assumed.

raw readings (+ the time they describe, + per-key measurement times) -> Judgement(readings, warnings,
assumptions, not_judged). Nothing is assumed silently:
- `period` absent: inferred from the clock (configurable sunrise/sunset, local time), else from a light
  reading (below `night_light_umol` = night), else taken as day; each case is an assumption;
- readings measured at different times (a live feed): a rule over several sensors (VPD, disease risks)
  is judged only when its readings lie within `window_s` of each other, else it is listed in not_judged.

Example: farmslm rules --sensors '{"light_umol": 0}' --at 23:30
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from farmslm.domain import rules
from farmslm.domain.sensors import Readings, validate


@dataclass
class JudgeConfig:
    sunrise: str = "06:00"  # local time the greenhouse counts as day from (HH:MM)
    sunset: str = "19:00"  # ... and as night from
    night_light_umol: float = 5.0  # without a clock: PPFD below this means night (lamps off, no sun)
    window_s: float = 120.0  # a multi-sensor rule is judged only on readings this close in time


@dataclass
class Judgement:
    readings: Readings  # validated, period filled in
    warnings: list[str]
    assumptions: list[dict] = field(default_factory=list)  # {field, value, basis, en, ko}
    not_judged: list[dict] = field(default_factory=list)  # {code, en, ko}: rules skipped, with why

    def to_json(self) -> dict:
        return {"readings": self.readings, "warnings": self.warnings, "assumptions": self.assumptions,
                "not_judged": self.not_judged}


def parse_hhmm(text: str, field_name: str) -> dt.time:
    try:
        hour, minute = (int(x) for x in str(text).split(":"))
        return dt.time(hour, minute)
    except (ValueError, TypeError):
        raise ValueError(f"{field_name}: got {text!r}; expected HH:MM (00:00-23:59)") from None


def check_config(cfg: JudgeConfig) -> JudgeConfig:
    rise, sset = parse_hhmm(cfg.sunrise, "sunrise"), parse_hhmm(cfg.sunset, "sunset")
    if rise >= sset:
        raise ValueError(f"sunrise/sunset: sunrise {cfg.sunrise} must come before sunset {cfg.sunset}")
    if not 0 <= cfg.night_light_umol <= 200:
        raise ValueError(f"night_light_umol: got {cfg.night_light_umol}; expected a number in [0, 200]")
    if cfg.window_s <= 0:
        raise ValueError(f"window_s: got {cfg.window_s}; expected > 0 seconds")
    return cfg


def _period_assumption(period: str, basis: str, en: str, ko: str) -> dict:
    return {"field": "period", "value": period, "basis": basis, "en": en, "ko": ko}


def infer_period(raw: dict, at: dt.datetime | None, cfg: JudgeConfig) -> tuple[str, dict]:
    """(period, assumption) for readings without `period`: clock first, then light, then day."""
    light = raw.get("light_umol")
    if at is not None:
        rise, sset = parse_hhmm(cfg.sunrise, "sunrise"), parse_hhmm(cfg.sunset, "sunset")
        clock = at.time()
        period = "day" if rise <= clock < sset else "night"
        hhmm = clock.strftime("%H:%M")
        en = f"period taken as {period} from the clock ({hhmm}; day {cfg.sunrise}-{cfg.sunset})"
        ko = f"시각으로 {'낮' if period == 'day' else '밤'}으로 판단했습니다({hhmm}, 낮 {cfg.sunrise}~{cfg.sunset})"
        if isinstance(light, (int, float)) and (light < cfg.night_light_umol) != (period == "night"):
            en += f"; the light reading ({light:g} µmol) suggests otherwise: check the clock or the sensor"
            ko += f". 광량 값({light:g} µmol)은 다르게 보이니 시계나 센서를 확인하세요"
        return period, _period_assumption(period, "clock", en, ko)
    if isinstance(light, (int, float)):
        period = "night" if light < cfg.night_light_umol else "day"
        rel = "<" if period == "night" else ">="
        return period, _period_assumption(
            period, "light", f"period taken as {period} from the light reading ({light:g} {rel} "
            f"{cfg.night_light_umol:g} µmol)", f"광량({light:g} µmol)으로 {'밤' if period == 'night' else '낮'}으로 판단했습니다")
    return "day", _period_assumption("day", "default", "period unknown (no clock, no light reading): judged as day",
                                     "시각과 광량 정보가 없어 낮 기준으로 판단했습니다")


def _multi_sensor(rule: rules.Rule) -> tuple[str, ...]:
    keys: list[str] = []
    for c in rule.conditions:
        for k in (("temp_c", "humidity_pct") if c.sensor == "vpd_kpa" else (c.sensor,)):
            if k not in keys:
                keys.append(k)
    return tuple(keys) if len(keys) > 1 and rule.when == "all" else ()


def judge(raw: dict, at: dt.datetime | None = None, times: dict[str, float] | None = None,
          cfg: JudgeConfig | None = None) -> Judgement:
    """Validate, fill in the period, apply the rules; multi-sensor rules only on readings close in time.

    at: the local time the readings describe (None: no clock, e.g. a dataset row); times: per-key
    measurement times in seconds (a feed), None when all readings come together (a request).
    """
    cfg = cfg or JudgeConfig()
    readings = validate(raw)
    assumptions = []
    if "period" not in readings:
        period, note = infer_period(readings, at, cfg)
        readings = validate({**readings, "period": period})
        assumptions.append(note)
    codes = rules.evaluate(readings)
    not_judged = []
    if times:
        groups: dict[tuple[str, ...], list[str]] = {}
        for code in rules.CODES:
            keys = _multi_sensor(rules.rule_for(code))
            stamps = [times[k] for k in keys if k in times and k in readings]
            if len(stamps) >= 2 and max(stamps) - min(stamps) > cfg.window_s:
                groups.setdefault(keys, []).append(code)
        for keys, skipped in groups.items():
            gap = max(times[k] for k in keys) - min(times[k] for k in keys)
            codes = [c for c in codes if c not in skipped]
            names = ", ".join(keys)
            not_judged.append({"codes": skipped, "sensors": list(keys), "gap_s": round(gap, 1),
                               "en": f"{', '.join(skipped)} not judged: {names} were measured {gap:.0f} s apart "
                                     f"(window {cfg.window_s:g} s)",
                               "ko": f"{', '.join(skipped)} 판단 보류: {names} 측정 시각이 {gap:.0f}초 차이 납니다"
                                     f"(허용 {cfg.window_s:g}초)"})
    return Judgement(readings, codes, assumptions, not_judged)
