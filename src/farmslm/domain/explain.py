"""The sentences the rule engine writes after the tag: deterministic, in the question's language.

Judgement (readings, warnings, assumptions) -> tag + one sentence per warning: what is wrong, the reading
against the threshold that applies for the period and growth stage, and the direction of the action
(the rule's own message), e.g. "Air temperature too high at night (21.4 °C > 20 °C): open the vents and
lower the heating set point." Readings and no warning: one sentence naming them inside their band.
No usable readings: the tag [NO_READINGS] and a sentence that says so, never [NORMAL].
These sentences are prefilled in the prompt (guarded mode) and are the same text in the training data.

Example: python -c "from farmslm.domain.explain import rule_text; print(rule_text({'temp_c': 8, 'period': 'night'}, 'en'))"
"""

from __future__ import annotations

from farmslm.domain import rules
from farmslm.domain.lang import check_lang
from farmslm.domain.sensors import NO_READINGS, NUMERIC, format_tag, format_value

NAME = {
    "en": {"temp_c": "temperature", "humidity_pct": "RH", "co2_ppm": "CO2", "light_umol": "light",
           "ec_ds_m": "EC", "ph": "pH", "root_temp_c": "root-zone temperature",
           "substrate_moisture_pct": "substrate moisture", "vpd_kpa": "VPD"},
    "ko": {"temp_c": "기온", "humidity_pct": "습도", "co2_ppm": "CO2", "light_umol": "광량", "ec_ds_m": "EC",
           "ph": "pH", "root_temp_c": "근권 온도", "substrate_moisture_pct": "배지 수분", "vpd_kpa": "포차(VPD)"},
}
UNIT = {"temp_c": " °C", "humidity_pct": " %", "co2_ppm": " ppm", "light_umol": " µmol", "ec_ds_m": " dS/m",
        "ph": "", "root_temp_c": " °C", "substrate_moisture_pct": " %", "vpd_kpa": " kPa"}
PERIOD = {"en": {"day": "by day", "night": "at night"}, "ko": {"day": "낮", "night": "밤"}}
STAGE = {"en": {"seedling": "seedling", "vegetative": "vegetative", "flowering": "flowering", "fruiting": "fruiting"},
         "ko": {"seedling": "육묘기", "vegetative": "영양생장기", "flowering": "개화기", "fruiting": "착과기"}}


def num(x: float) -> str:
    return f"{x:g}"


def _value(sensor: str, readings: dict) -> str:
    if sensor == "vpd_kpa":
        return f"{rules.vpd_kpa(readings['temp_c'], readings['humidity_pct']):.2f}"
    return format_value(sensor, readings[sensor])


def _condition(cond: rules.Condition, readings: dict, lang: str) -> str:
    """`21.4 °C > 20 °C`, or for a band `temperature 17.5 °C in 15.5–24 °C` (named when a rule has several)."""
    period, stage = readings.get("period", "day"), readings.get("growth_stage")
    unit, value, limit = UNIT[cond.sensor], _value(cond.sensor, readings), cond.limits(period, stage)
    if cond.op == "band":
        inside = "범위" if lang == "ko" else "in"
        body = (f"{value}{unit}, {num(limit[0])}~{num(limit[1])}{unit} {inside}" if lang == "ko"
                else f"{value}{unit} {inside} {num(limit[0])}–{num(limit[1])}{unit}")
    else:
        body = f"{value}{unit} {'>' if cond.op == 'above' else '<'} {num(limit)}{unit}"
    return body


def _split_message(message: str, lang: str) -> tuple[str, str]:
    """The rule's message -> (what is wrong, what to do)."""
    head, sep, action = message.partition(": ")
    if not sep:
        head, sep, action = message.partition(". ")
    return head.rstrip("."), action.strip()


def _context(rule: rules.Rule, readings: dict, lang: str) -> str:
    """`at night` / `밤`, plus the stage, when the rule's numbers depend on them."""
    period, stage = readings.get("period", "day"), readings.get("growth_stage")
    by_period = any(c.op != "band" and c.values["day"] != c.values["night"] for c in rule.conditions)
    by_stage = stage is not None and any(stage in c.values.get("stages", {}) for c in rule.conditions)
    parts = []
    if by_stage and lang == "ko":
        parts.append(STAGE[lang][stage])
    if by_period:
        parts.append(PERIOD[lang][period])
    if by_stage and lang == "en":
        parts.append(f"during {STAGE[lang][stage]}")
    return " ".join(parts)


def warning_sentence(code: str, readings: dict, lang: str) -> str:
    rule = rules.rule_for(code)
    period, stage = readings.get("period", "day"), readings.get("growth_stage")
    held = [c for c in rule.conditions if c.holds(readings, period, stage)]
    named = len({c.sensor for c in rule.conditions}) > 1 or rule.conditions[0].sensor == "vpd_kpa"
    details = [(f"{NAME[lang][c.sensor]} " if named else "") + _condition(c, readings, lang) for c in held]
    message = rule.night_message[lang] if period == "night" and rule.night_message else rule.message[lang]
    head, action = _split_message(message, lang)
    ctx = _context(rule, readings, lang)
    detail = "; ".join(details)
    if lang == "ko":
        head = f"{ctx} {head}" if ctx else head
        return f"{head}({detail}). {action}" if action else f"{head}({detail})."
    head = f"{head} {ctx}" if ctx else head
    return f"{head} ({detail}): {action}" if action else f"{head} ({detail})."


def normal_sentence(readings: dict, lang: str) -> str:
    """Readings and no warning: every reading named, with the period the bands were judged for."""
    period = readings.get("period", "day")
    shown = ", ".join(f"{NAME[lang][k]} {format_value(k, readings[k])}{UNIT[k]}" for k in NUMERIC if k in readings)
    if lang == "ko":
        return f"{PERIOD['ko'][period]} 기준으로 측정값이 정상 범위입니다: {shown}."
    return f"Readings within range for {'day' if period == 'day' else 'night'}: {shown}."


NO_READINGS_TEXT = {
    "en": "No sensor readings were given, so the greenhouse climate was not judged.",
    "ko": "센서 측정값이 없어 온실 환경은 판단하지 않았습니다.",
}
STALE_TEXT = {
    "en": "No fresh sensor readings (the last ones are older than {s:g} s), so the greenhouse climate was not judged.",
    "ko": "최근 센서 측정값이 없어({s:g}초 넘게 지남) 온실 환경은 판단하지 않았습니다.",
}


def rule_text(readings: dict | None, lang: str, warnings: list[str] | None = None,
              not_judged: list[dict] | None = None, stale_after_s: float | None = None) -> str:
    """The rule-written sentences after the tag (no tag). warnings default to rules.evaluate(readings)."""
    lang = check_lang(lang)
    if not readings or not any(k in NUMERIC for k in readings):
        return STALE_TEXT[lang].format(s=stale_after_s) if stale_after_s else NO_READINGS_TEXT[lang]
    codes = rules.evaluate(readings) if warnings is None else warnings
    parts = [warning_sentence(c, readings, lang) for c in codes] if codes else [normal_sentence(readings, lang)]
    parts += [n[lang] + "." for n in not_judged or []]
    return " ".join(parts)


def tag_for(readings: dict | None, warnings: list[str]) -> str:
    """[WARNING: ...] | [NORMAL] | [NO_READINGS]."""
    if not readings or not any(k in NUMERIC for k in readings):
        return format_tag([NO_READINGS])
    return format_tag(warnings)


def prefill(readings: dict | None, lang: str, warnings: list[str] | None = None,
            not_judged: list[dict] | None = None, stale_after_s: float | None = None) -> str:
    """`[TAG] rule sentences`: what guarded mode writes after "A: " before the model continues."""
    codes = (rules.evaluate(readings) if readings and any(k in NUMERIC for k in readings) else []) \
        if warnings is None else warnings
    return f"{tag_for(readings, codes)} {rule_text(readings, lang, codes, not_judged, stale_after_s)}"
