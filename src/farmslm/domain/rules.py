"""The rule engine: validated sensor readings (+ growth stage, period) -> ordered warning codes.

Every threshold lives in `data/rules.yaml` with its source; this module only reads and applies it.
Boundary semantics (documented in the YAML too): `above: x` fires when value > x and `below: x` when
value < x (strict), `min`/`max` bound an inclusive band. So HIGH_TEMP fires by day at 30.1 °C, not 30.0.
A reading without `period` is judged as day here; callers fill the period in first and say so
(farmslm.domain.judge). A missing sensor never fires its rules.

Example: farmslm rules --sensors '{"temp_c": 31.5, "humidity_pct": 88, "period": "day"}'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from farmslm.domain.lang import LANGS, check_lang
from farmslm.domain.sensors import CONTEXT_KEYS, NUMERIC

# The fixed output order of evaluate(): plain sensor codes first, then the combined disease risks.
CODES: tuple[str, ...] = (
    "HIGH_TEMP", "LOW_TEMP", "HIGH_HUMIDITY", "LOW_HUMIDITY", "HIGH_CO2", "LOW_CO2", "LOW_LIGHT",
    "HIGH_EC", "LOW_EC", "HIGH_PH", "LOW_PH", "HIGH_ROOT_TEMP", "LOW_ROOT_TEMP", "LOW_MOISTURE",
    "HIGH_MOISTURE", "GRAY_MOLD_RISK", "LEAF_MOLD_RISK", "LATE_BLIGHT_RISK", "POWDERY_MILDEW_RISK",
    "BLOSSOM_END_ROT_RISK", "CONDENSATION_RISK",
)
DERIVED = ("vpd_kpa",)
PERIODS = CONTEXT_KEYS["period"]
STAGES = CONTEXT_KEYS["growth_stage"]


def vpd_kpa(temp_c: float, rh: float) -> float:
    """Vapour-pressure deficit (kPa): Tetens saturation pressure × (1 − RH/100)."""
    es = 0.6108 * math.exp(17.27 * temp_c / (temp_c + 237.3))
    return es * (1.0 - rh / 100.0)


@dataclass(frozen=True)
class Condition:
    """One test on a sensor (or derived value); numbers already resolved per period and stage."""
    sensor: str  # a NUMERIC key or a DERIVED name
    op: str  # "above" (strict >), "below" (strict <) or "band" (inclusive [lo, hi])
    values: dict  # {"day": x|None, "night": y|None, "stages": {stage: {"day":..,"night":..}}} or band {lo, hi}

    def limits(self, period: str, stage: str | None):
        """The threshold (or (lo, hi) band) that applies; None when off in this period."""
        if self.op == "band":
            return self.values["lo"], self.values["hi"]
        per_stage = self.values.get("stages", {})
        if stage in per_stage:
            return per_stage[stage][period]
        return self.values[period]

    def holds(self, readings: dict, period: str, stage: str | None) -> bool:
        value = _value(readings, self.sensor)
        limit = self.limits(period, stage)
        if value is None or limit is None:
            return False
        if self.op == "above":
            return value > limit
        if self.op == "below":
            return value < limit
        lo, hi = limit
        return lo <= value <= hi


def _value(readings: dict, sensor: str) -> float | None:
    if sensor == "vpd_kpa":
        if "temp_c" not in readings or "humidity_pct" not in readings:
            return None
        return vpd_kpa(readings["temp_c"], readings["humidity_pct"])
    return readings.get(sensor)


def _per_period(raw) -> dict:
    if isinstance(raw, dict):
        return {p: (None if raw[p] is None else float(raw[p])) for p in PERIODS}
    return {p: float(raw) for p in PERIODS}


def _condition(code: str, raw: dict) -> Condition:
    sensor = raw.get("sensor") or raw.get("derived")
    if sensor not in NUMERIC and sensor not in DERIVED:
        raise ValueError(f"rules.yaml {code}: unknown sensor {sensor!r}")
    if "min" in raw or "max" in raw:
        return Condition(sensor, "band", {"lo": float(raw["min"]), "hi": float(raw["max"])})
    op = "above" if "above" in raw else "below"
    values = _per_period(raw[op])
    stages = {}
    for stage, override in (raw.get("stages") or {}).items():
        if stage not in STAGES:
            raise ValueError(f"rules.yaml {code}: unknown growth stage {stage!r}")
        stages[stage] = _per_period(override)
    return Condition(sensor, op, {**values, "stages": stages})


@dataclass(frozen=True)
class Rule:
    code: str
    when: str  # "all" | "any"
    conditions: tuple[Condition, ...]
    skip_stages: tuple[str, ...]
    unit: str
    source: str
    verified: bool
    notes: str
    message: dict  # lang -> one-line message: "what is wrong: what to do"
    night_message: dict  # lang -> the message at night where the action differs ({} = same)
    cause: dict  # lang -> explanation of the cause with the threshold
    actions: dict  # lang -> list of concrete actions
    opposite: dict  # lang -> regexes of actions that work against this code (faithfulness check)
    action_verbs: dict  # lang -> regexes of this code's own action (negated, it is a contradiction)

    def fires(self, readings: dict) -> bool:
        period = readings.get("period", "day")
        stage = readings.get("growth_stage")
        if stage in self.skip_stages:
            return False
        hits = (c.holds(readings, period, stage) for c in self.conditions)
        return all(hits) if self.when == "all" else any(hits)

    def thresholds(self) -> list[dict]:
        """Plain numbers for explanations: one dict per condition."""
        out = []
        for c in self.conditions:
            if c.op == "band":
                out.append({"sensor": c.sensor, "op": "band", "min": c.values["lo"], "max": c.values["hi"]})
            else:
                out.append({"sensor": c.sensor, "op": c.op, "day": c.values["day"], "night": c.values["night"],
                            "stages": dict(c.values["stages"])})
        return out


@lru_cache(maxsize=1)
def load_rules() -> dict[str, Rule]:
    """Parse and check data/rules.yaml once; keyed by code in CODES order."""
    text = resources.files("farmslm.domain").joinpath("data/rules.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    raw_codes = data["codes"]
    if set(raw_codes) != set(CODES):
        raise ValueError(f"rules.yaml codes differ from CODES: {sorted(set(raw_codes) ^ set(CODES))}")
    rules = {}
    for code in CODES:
        r = raw_codes[code]
        for field in ("message", "cause", "actions"):
            missing = [lang for lang in LANGS if not r.get(field, {}).get(lang)]
            if missing:
                raise ValueError(f"rules.yaml {code}: {field} missing for {missing}")
        rules[code] = Rule(
            code=code, when=r.get("when", "all"),
            conditions=tuple(_condition(code, c) for c in r["conditions"]),
            skip_stages=tuple(r.get("skip_stages", ())), unit=r.get("unit", ""),
            source=" ".join(str(r["source"]).split()), verified=bool(r["verified"]),
            notes=r.get("notes", ""), message=dict(r["message"]), night_message=dict(r.get("night_message") or {}),
            cause=dict(r["cause"]),
            actions={lang: list(r["actions"][lang]) for lang in LANGS},
            opposite={lang: list((r.get("opposite") or {}).get(lang, ())) for lang in LANGS},
            action_verbs={lang: list((r.get("action_verbs") or {}).get(lang, ())) for lang in LANGS})
    return rules


def evaluate(readings: dict) -> list[str]:
    """Validated readings (sensors.validate output) -> warning codes in CODES order; [] = normal."""
    rules = load_rules()
    return [code for code in CODES if rules[code].fires(readings)]


def _lang(lang: str) -> str:
    return check_lang(lang)


def message(code: str, lang: str = "en") -> str:
    """Short actionable message for a code, in English or Korean."""
    return rule_for(code).message[_lang(lang)]


def rule_for(code: str) -> Rule:
    rules = load_rules()
    if code not in rules:
        raise KeyError(f"code: unknown warning code {code!r}; known: {', '.join(CODES)}")
    return rules[code]


def explain(code: str, lang: str = "en") -> dict:
    """Everything a dataset answer needs for one code: message, cause, actions, thresholds, source."""
    r = rule_for(code)
    lang = _lang(lang)
    return {"code": code, "message": r.message[lang], "cause": r.cause[lang], "actions": list(r.actions[lang]),
            "thresholds": r.thresholds(), "unit": r.unit, "source": r.source, "verified": r.verified}


def thresholds() -> dict[str, list[dict]]:
    """code -> the numbers its conditions use (per period and stage overrides)."""
    return {code: rule.thresholds() for code, rule in load_rules().items()}


@dataclass(frozen=True)
class Band:
    """Single-sensor limits for one (period, stage): warnings fire below lo or above hi (None: no limit)."""
    lo: float | None
    hi: float | None


@lru_cache(maxsize=None)
def normal_band(sensor: str, period: str, stage: str | None) -> Band:
    """The normal band of one sensor from the single-condition codes (what no plain code flags)."""
    lo = hi = None
    for rule in load_rules().values():
        if len(rule.conditions) != 1 or rule.conditions[0].sensor != sensor or stage in rule.skip_stages:
            continue
        cond = rule.conditions[0]
        limit = cond.limits(period, stage)
        if limit is None or cond.op == "band":
            continue
        if cond.op == "below":
            lo = limit if lo is None else max(lo, limit)
        else:
            hi = limit if hi is None else min(hi, limit)
    return Band(lo, hi)


@lru_cache(maxsize=None)
def critical_values(sensor: str, period: str, stage: str | None) -> tuple[float, ...]:
    """Every threshold on a sensor (single codes and disease bands) in this period and stage."""
    out = set()
    for rule in load_rules().values():
        for cond in rule.conditions:
            if cond.sensor != sensor:
                continue
            limit = cond.limits(period, stage)
            if limit is None:
                continue
            out.update(limit if isinstance(limit, tuple) else (limit,))
    return tuple(sorted(out))
