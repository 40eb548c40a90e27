"""Synthesize QA rows from the knowledge base and the rule engine, deterministically for a seed.

knowledge facts + rules.yaml -> rows {id, lang, category, sensors, question, warnings, answer, text}.
Readings are sampled per row (1-3 sensors often, more sometimes; values inside the normal band, just
either side of a threshold, or clearly out), the tag is `rules.evaluate(readings)`, the question is
composed from an opener, a fact's question core and a closer, and the answer explains every warning
with its reading and threshold (from rules.yaml) before the fact and concrete actions.

Example: python -c "from farmslm.dataset.synth import synthesize; print(synthesize(10, seed=0)[0]['text'])"
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from farmslm.domain import rules, terms
from farmslm.domain.knowledge import CATEGORIES, LANGS, Fact, facts_by_category
from farmslm.domain.sensors import NUMERIC, format_sample, format_value, validate

# Share of rows per category (sums to 1); every category stays well above the 5 % floor.
CATEGORY_SHARE = {"growth": 0.12, "disease": 0.14, "pest": 0.11, "climate": 0.14, "nutrition": 0.13,
                  "light": 0.08, "co2": 0.08, "equipment": 0.09, "troubleshooting": 0.11}
# Realistic greenhouse ranges to sample from (a subset of the physical ranges in sensors.py).
REALISTIC = {"temp_c": (2.0, 42.0), "humidity_pct": (25.0, 100.0), "co2_ppm": (200.0, 6000.0),
             "light_umol": (20.0, 1800.0), "ec_ds_m": (0.3, 7.5), "ph": (3.5, 8.5),
             "root_temp_c": (8.0, 34.0), "substrate_moisture_pct": (15.0, 98.0)}
# How far "near a threshold" reaches, in sensor units (a few STATUS steps up to a small margin).
NEAR = {"temp_c": 1.5, "humidity_pct": 3.0, "co2_ppm": 60.0, "light_umol": 25.0, "ec_ds_m": 0.25,
        "ph": 0.2, "root_temp_c": 1.5, "substrate_moisture_pct": 4.0}
SHORT = {  # short sensor names used inside answers (dictionary terms)
    "en": {"temp_c": "temperature", "humidity_pct": "RH", "co2_ppm": "CO2", "light_umol": "PPFD", "ec_ds_m": "EC",
           "ph": "pH", "root_temp_c": "root temp", "substrate_moisture_pct": "moisture", "vpd_kpa": "VPD"},
    "ko": {"temp_c": "기온", "humidity_pct": "습도", "co2_ppm": "CO2", "light_umol": "광량", "ec_ds_m": "EC",
           "ph": "pH", "root_temp_c": "근권 온도", "substrate_moisture_pct": "배지 수분", "vpd_kpa": "VPD"},
}
UNIT = {"temp_c": " °C", "humidity_pct": " %", "co2_ppm": " ppm", "light_umol": " µmol", "ec_ds_m": " dS/m",
        "ph": "", "root_temp_c": " °C", "substrate_moisture_pct": " %", "vpd_kpa": " kPa"}
PERIOD_EN = {"day": "by day", "night": "at night"}
PERIOD = {"en": {"day": "day", "night": "night"}, "ko": {"day": "낮", "night": "밤"}}
STAGE = {"en": {"seedling": "seedling", "vegetative": "vegetative", "flowering": "flowering", "fruiting": "fruiting"},
         "ko": {"seedling": "육묘기", "vegetative": "영양생장기", "flowering": "개화기", "fruiting": "착과기"}}

# Question parts. Each opener or closer either names a dictionary term or joins the core's sentence
# (en: ends in "," or ":"), so the terminology check (share of sentences with a term) holds by construction.
OPENERS = {
    "en": ["", "", "", "Quick question about my tomatoes:", "In my tomato greenhouse,", "Looking at the sensor readings,",
           "Based on these sensor values,", "I grow tomatoes in rockwool slabs.", "I grow cherry tomatoes in a plastic greenhouse.",
           "This is my first season growing tomatoes.", "Our tomatoes are in the {stage} stage.",
           "The tomato crop is at the {stage} stage.", "It is {period}time in the greenhouse.",
           "Checking the greenhouse this {when},", "A question from a tomato farm:",
           "My climate controller just logged these values.", "Help please,", "As a beginner,"],
    "ko": ["", "", "", "토마토 질문입니다.", "우리 토마토 온실에서", "측정값을 보니", "센서 값을 기준으로", "암면 배지로 토마토를 키웁니다.",
           "비닐온실에서 방울토마토를 재배합니다.", "올해 처음 토마토를 재배합니다.", "지금 토마토가 {stage}입니다.",
           "토마토가 {stage} 단계입니다.", "지금 온실은 {period}입니다.", "{when}에 온실을 둘러보니", "토마토 농장에서 질문드립니다.",
           "제어기에 방금 이 센서 값이 찍혔습니다.", "초보 농부라서 토마토 재배가 어렵습니다."],
}
CLOSERS = {
    "en": ["", "", "", "", " What should I check in the greenhouse first?", " Is this serious for my tomatoes?",
           " Please keep the greenhouse advice short."],
    "ko": ["", "", "", "", " 온실에서 무엇부터 점검할까요?", " 토마토에 심각한 문제인가요?", " 토마토 재배 조언 부탁드립니다."],
}
WHEN = {"en": ["morning", "afternoon", "evening"], "ko": ["아침", "오후", "저녁"]}
NORMAL_INTRO = {
    "en": ["Sensor readings are normal", "All sensor values are within range", "No sensor warnings",
           "The greenhouse status is fine"],
    "ko": ["센서 값이 정상입니다", "모든 센서 값이 정상 범위입니다", "센서 경고가 없습니다", "온실 상태는 양호합니다"],
}
DO_INTRO = {"en": ["", "To do: ", "Next: ", "Advice: "], "ko": ["", "조치: ", "권장: ", "할 일: "]}


@dataclass(frozen=True)
class Band:
    """Single-sensor limits for one (period, stage): warnings fire below lo or above hi."""
    lo: float | None
    hi: float | None


@lru_cache(maxsize=None)
def band(sensor: str, period: str, stage: str | None) -> Band:
    """The normal band of one sensor from rules.yaml's single-condition codes."""
    lo = hi = None
    for rule in rules.load_rules().values():
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
    """Every threshold on a sensor (single codes and disease bands): where near-threshold rows sit."""
    out = set()
    for rule in rules.load_rules().values():
        for cond in rule.conditions:
            if cond.sensor != sensor:
                continue
            limit = cond.limits(period, stage)
            if limit is None:
                continue
            out.update(limit if isinstance(limit, tuple) else (limit,))
    return tuple(sorted(out))


def _round(sensor: str, value: float) -> float:
    lo, hi = REALISTIC[sensor]
    return round(min(max(value, lo), hi), NUMERIC[sensor].decimals)


def sample_value(rng: random.Random, sensor: str, mode: str, period: str, stage: str | None) -> float:
    """mode: normal (inside the band), near (within NEAR of a threshold, either side), out (clearly outside)."""
    b = band(sensor, period, stage)
    rlo, rhi = REALISTIC[sensor]
    if sensor == "light_umol" and period == "night":
        return float(rng.choice([0, 0, 1, 2, 5, 12]))  # no sun at night; lamps off or dim
    lo = b.lo if b.lo is not None else rlo
    hi = b.hi if b.hi is not None else min(rhi, lo + 4 * (rhi - rlo) / 5)
    if mode == "normal":
        return _round(sensor, rng.uniform(lo, hi))
    if mode == "near":
        crit = critical_values(sensor, period, stage)
        c = rng.choice(crit) if crit else rng.uniform(lo, hi)
        step = 10 ** -NUMERIC[sensor].decimals
        return _round(sensor, c + rng.choice([-1, 1]) * max(step, rng.uniform(0, NEAR[sensor])))
    sides = [s for s in ("lo", "hi") if (b.lo if s == "lo" else b.hi) is not None]
    if not sides:
        return _round(sensor, rng.uniform(lo, hi))
    if rng.choice(sides) == "lo":
        return _round(sensor, rng.uniform(max(rlo, lo - 6 * NEAR[sensor]), lo - NEAR[sensor] / 3))
    return _round(sensor, rng.uniform(hi + NEAR[sensor] / 3, min(rhi, hi + 6 * NEAR[sensor])))


def sample_readings(rng: random.Random, fact: Fact, want_warning: bool) -> dict:
    """Readings for a row: the fact's sensors plus extras; re-drawn until the tag matches the wish."""
    for _ in range(60):
        keys = list(fact.sensors)
        n = rng.choice([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 8])  # mostly 1-3 sensors, sometimes all
        extras = [k for k in NUMERIC if k not in keys]
        rng.shuffle(extras)
        keys = keys[:n] + extras[:max(0, n - len(keys))]
        raw: dict = {}
        if rng.random() < 0.75:
            raw["period"] = rng.choice(["day", "day", "night"])
        if rng.random() < 0.5:
            raw["growth_stage"] = fact.stage if fact.stage and rng.random() < 0.7 else rng.choice(list(STAGE["en"]))
        period, stage = raw.get("period", "day"), raw.get("growth_stage")
        bad = rng.randrange(len(keys)) if want_warning else -1
        for i, k in enumerate(keys):
            if i == bad:
                mode = rng.choice(["near", "out", "out"])
            else:
                mode = rng.choice(["normal", "normal", "normal", "near"])
            raw[k] = sample_value(rng, k, mode, period, stage)
        readings = validate(raw)
        if bool(rules.evaluate(readings)) == want_warning:
            return readings
    return readings


def _num(x: float) -> str:
    return f"{x:g}"


def _cond_text(cond, readings: dict, lang: str) -> str:
    """One condition with the reading and its threshold, e.g. `temp 31.5 °C > 30 °C (day)`."""
    period = readings.get("period", "day")
    stage = readings.get("growth_stage")
    name, unit = SHORT[lang][cond.sensor], UNIT[cond.sensor]
    if cond.sensor == "vpd_kpa":
        value = f"{rules.vpd_kpa(readings['temp_c'], readings['humidity_pct']):.2f}"
    else:
        value = format_value(cond.sensor, readings[cond.sensor])
    limit = cond.limits(period, stage)
    if cond.op == "band":
        return f"{name} {value}{unit}, {_num(limit[0])}–{_num(limit[1])}{unit}"
    rel = ">" if cond.op == "above" else "<"
    text = f"{name} {value}{unit} {rel} {_num(limit)}{unit}"
    if cond.values["day"] != cond.values["night"]:  # say which period's limit applies
        text = f"{PERIOD[lang][period]} {text}" if lang == "ko" else f"{text} {PERIOD_EN[period]}"
    return text


def warning_text(code: str, readings: dict, lang: str) -> str:
    """Explain one warning: the rule's message with the readings and thresholds that fired it."""
    rule = rules.rule_for(code)
    period, stage = readings.get("period", "day"), readings.get("growth_stage")
    conds = [c for c in rule.conditions if c.holds(readings, period, stage)]
    detail = ", ".join(_cond_text(c, readings, lang) for c in conds)
    msg = rule.message[lang].strip()
    head, sep, action = msg.partition(": ")
    if not sep:
        head, sep, action = msg.partition(". ")
    head = head.rstrip(".")
    if lang == "en":
        return f"{head} ({detail}): {action}" if sep else f"{head} ({detail})."
    return f"{head}({detail}). {action}" if sep else f"{head}({detail})."


def normal_text(rng: random.Random, readings: dict, lang: str) -> str:
    """The [NORMAL] opening: a phrase plus one sensor with the band they sit in."""
    period, stage = readings.get("period", "day"), readings.get("growth_stage")
    parts = []
    keys = [k for k in NUMERIC if k in readings]
    rng.shuffle(keys)
    for k in keys:
        b = band(k, period, stage)
        if b.lo is None and b.hi is None:
            continue
        v = format_value(k, readings[k])
        rng_text = (f"{_num(b.lo)}–{_num(b.hi)}" if b.lo is not None and b.hi is not None
                    else (f"≥ {_num(b.lo)}" if b.lo is not None else f"≤ {_num(b.hi)}"))
        parts.append(f"{SHORT[lang][k]} {v}{UNIT[k]}: {rng_text}{UNIT[k]}")
        if len(parts) == 1:
            break
    intro = rng.choice(NORMAL_INTRO[lang])
    return f"{intro} ({'; '.join(parts)})." if parts else f"{intro}."


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def compose_question(rng: random.Random, fact: Fact, readings: dict, lang: str) -> str:
    core = rng.choice(fact.q[lang])
    stage = readings.get("growth_stage") or fact.stage or "vegetative"
    opener = rng.choice(OPENERS[lang]).format(stage=STAGE[lang][stage], when=rng.choice(WHEN[lang]),
                                              period=PERIOD[lang][readings.get("period", "day")])
    closer = rng.choice(CLOSERS[lang])
    if lang == "en":
        core = core + "?"
        core = core if opener.endswith((",",)) else _cap(core)
    else:
        core = core + ("." if core.endswith(("세요", "니다")) else "?")
    return " ".join(p for p in (opener, core) if p) + closer


@lru_cache(maxsize=None)
def _termed(text: str, lang: str) -> bool:
    return bool(terms.find_terms(text, lang))


def _pick_actions(rng: random.Random, fact: Fact, lang: str, n: int) -> list[str]:
    """n of the fact's actions, preferring those that name a dictionary term (they stand as own sentences in ko)."""
    pool = list(fact.do[lang])
    rng.shuffle(pool)
    pool.sort(key=lambda a: not _termed(a, lang))  # stable: termed first, random order within
    return pool[:n]


def compose_answer(rng: random.Random, fact: Fact, readings: dict, warnings: list[str], lang: str) -> str:
    """Every warning explained (reading, threshold, action), then the fact and 0-2 of its actions."""
    parts = [warning_text(c, readings, lang) for c in warnings] if warnings else [normal_text(rng, readings, lang)]
    parts.append(fact.fact[lang])
    # keep answers short (Korean costs ~1.4x the tokens of English): fewer actions as warnings add up
    n_do = (2 if lang == "en" else 1) if not warnings else (1 if len(warnings) == 1 else 0)
    actions = _pick_actions(rng, fact, lang, n_do)
    if actions:
        if lang == "en":
            parts.append(rng.choice(DO_INTRO[lang]) + _cap(" and ".join(actions) if len(actions) == 2 else actions[0]) + ".")
        else:
            parts.append(rng.choice(DO_INTRO[lang]) + " ".join(a + "." for a in actions))
    return " ".join(parts)


def make_row(rng: random.Random, idx: int, category: str, lang: str, want_warning: bool) -> dict:
    fact = rng.choice(facts_by_category()[category])
    readings = sample_readings(rng, fact, want_warning)
    warnings = rules.evaluate(readings)
    question = compose_question(rng, fact, readings, lang)
    answer = compose_answer(rng, fact, readings, warnings, lang)
    return {"id": f"{lang}-{category}-{idx:05d}", "lang": lang, "category": category, "sensors": readings,
            "question": question, "warnings": warnings, "answer": answer,
            "text": format_sample(readings, question, warnings, answer), "fact_id": fact.id}


def synthesize(size: int, seed: int = 0, warning_share: float = 0.58) -> list[dict]:
    """`size` rows: categories by CATEGORY_SHARE, languages alternating, ~warning_share rows with a warning."""
    rng = random.Random(seed)
    counts = {c: int(size * CATEGORY_SHARE[c]) for c in CATEGORIES}
    for c in sorted(CATEGORIES, key=lambda c: -CATEGORY_SHARE[c])[: size - sum(counts.values())]:
        counts[c] += 1
    plan = [c for c in CATEGORIES for _ in range(counts[c])]
    rng.shuffle(plan)
    return [make_row(rng, i, cat, LANGS[i % 2], rng.random() < warning_share) for i, cat in enumerate(plan)]
