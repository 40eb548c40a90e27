"""Synthesize grounded QA rows from the knowledge base, the rule engine and the index, deterministically.

knowledge facts + rules.yaml + knowledge index -> rows (prompt format 2):
    {id, lang, category, fact_id, sensors, question, warnings, retrieved, abstain, prefill, answer, text}
- readings: the fact's sensors plus extras, each inside its band, near a threshold, or anywhere outside
  the band across the realistic range (extremes included); `period` always (the engine always fills it
  in, saying so, when a grower gives none), `growth_stage` sometimes; some rows carry no readings at all;
- the question: an opener, one of the fact's question cores, a closer; an opener names the stage or the
  time of day only when the readings carry it, so the question never contradicts its STATUS;
- the prompt: STATUS, the facts the index retrieves for the question (the gold fact put among them if
  retrieval missed it, so the model learns to pick the right one and ignore the rest), the question;
  then the rule engine's tag and sentences (explain.prefill), exactly what guarded inference prefills;
- the model-written part: the gold fact and its first actions, in the question's language; a few rows get
  only unrelated facts and the abstaining answer instead (the model learns to decline, not invent).
Facts held out (`heldout`) never appear in a row meant for training: not as the gold, not as a distractor.

Example: python -c "from farmslm.dataset.synth import synthesize; print(synthesize(4, seed=0)[0]['text'])"
"""

from __future__ import annotations

import random

from farmslm.domain import explain, rules
from farmslm.domain.abstain import abstain_text
from farmslm.domain.knowledge import CATEGORIES, Fact, facts_by_category
from farmslm.domain.lang import LANGS
from farmslm.domain.prompt import FORMAT, MAX_ACTIONS, guarded_prompt, sample_text
from farmslm.domain.sensors import NUMERIC, validate

# Share of rows per category (sums to 1); the smallest share keeps every category above the 5 % floor.
# Categories whose rows fall out as duplicates more often (few facts, short cores) get a larger share.
CATEGORY_SHARE = {"disease": 0.075, "climate": 0.075, "pest": 0.07, "nutrition": 0.07, "growth": 0.06, "light": 0.06,
                  "co2": 0.06, "troubleshooting": 0.06, "propagation": 0.06, "equipment": 0.065, "crop": 0.065,
                  "disorder": 0.065, "harvest": 0.07, "irrigation": 0.07, "hygiene": 0.075}
# Realistic greenhouse ranges, extremes included (a subset of the physical ranges in sensors.py).
REALISTIC = {"temp_c": (-2.0, 45.0), "humidity_pct": (15.0, 100.0), "co2_ppm": (150.0, 6000.0),
             "light_umol": (0.0, 2000.0), "ec_ds_m": (0.1, 8.0), "ph": (3.0, 9.0),
             "root_temp_c": (5.0, 36.0), "substrate_moisture_pct": (10.0, 100.0)}
# How far "near a threshold" reaches, in sensor units (a few STATUS steps up to a small margin).
NEAR = {"temp_c": 1.5, "humidity_pct": 3.0, "co2_ppm": 60.0, "light_umol": 25.0, "ec_ds_m": 0.25,
        "ph": 0.2, "root_temp_c": 1.5, "substrate_moisture_pct": 4.0}
STAGE = explain.STAGE
K_FACTS = 2  # facts in a prompt
NO_READINGS_SHARE = 0.1  # rows asked without any reading
ABSTAIN_SHARE = 0.05  # rows whose prompt holds only unrelated facts -> the abstaining answer

# Question parts. Each opener or closer either names a dictionary term or joins the core's sentence
# (en: ends in "," or ":"), so the terminology check holds by construction. Keys: what the opener needs.
OPENERS = {
    "en": [("", ""), ("", ""), ("", ""), ("", "Quick question about my tomatoes:"), ("", "In my tomato greenhouse,"),
           ("readings", "Looking at the sensor readings,"), ("readings", "Based on these sensor values,"),
           ("", "I grow tomatoes in rockwool slabs."), ("", "I grow cherry tomatoes in a plastic greenhouse."),
           ("", "This is my first season growing tomatoes."), ("stage", "Our tomatoes are in the {stage} stage."),
           ("stage", "The tomato crop is at the {stage} stage."), ("period", "It is {period}time in the greenhouse."),
           ("period", "Checking the greenhouse this {when},"), ("", "A question from a tomato farm:"),
           ("readings", "My climate controller just logged these values."), ("", "Help please,"), ("", "As a beginner,")],
    "ko": [("", ""), ("", ""), ("", ""), ("", "토마토 질문입니다."), ("", "우리 토마토 온실에서"), ("readings", "측정값을 보니"),
           ("readings", "센서 값을 기준으로"), ("", "암면 배지로 토마토를 키웁니다."), ("", "비닐온실에서 방울토마토를 재배합니다."),
           ("", "올해 처음 토마토를 재배합니다."), ("stage", "지금 토마토가 {stage}입니다."), ("stage", "토마토가 {stage} 단계입니다."),
           ("period", "지금 온실은 {period}입니다."), ("period", "{when}에 온실을 둘러보니"), ("", "토마토 농장에서 질문드립니다."),
           ("readings", "제어기에 방금 이 센서 값이 찍혔습니다."), ("", "초보 농부라서 토마토 재배가 어렵습니다.")],
}
CLOSERS = {
    "en": ["", "", "", "", " What should I check in the greenhouse first?", " Is this serious for my tomatoes?",
           " Please keep the greenhouse advice short."],
    "ko": ["", "", "", "", " 온실에서 무엇부터 점검할까요?", " 토마토에 심각한 문제인가요?", " 토마토 재배 조언 부탁드립니다."],
}
PERIOD_WORD = {"en": {"day": "day", "night": "night"}, "ko": {"day": "낮", "night": "밤"}}
WHEN = {"en": {"day": ["morning", "afternoon"], "night": ["evening"]},
        "ko": {"day": ["아침", "오후"], "night": ["저녁", "밤"]}}


def band(sensor: str, period: str, stage: str | None):
    return rules.normal_band(sensor, period, stage)


def _round(sensor: str, value: float) -> float:
    lo, hi = REALISTIC[sensor]
    return round(min(max(value, lo), hi), NUMERIC[sensor].decimals)


def sample_value(rng: random.Random, sensor: str, mode: str, period: str, stage: str | None) -> float:
    """mode: normal (inside the band), near (within NEAR of a threshold, either side), out (anywhere outside
    the band up to the realistic extreme: half the draws within 6 x NEAR of the edge, half across the range)."""
    b = band(sensor, period, stage)
    rlo, rhi = REALISTIC[sensor]
    if sensor == "light_umol" and period == "night":
        return float(rng.choice([0, 0, 0, 1, 2, 5, 12, 40]))  # no sun at night; lamps off, dim, or on
    lo = b.lo if b.lo is not None else rlo
    hi = b.hi if b.hi is not None else min(rhi, lo + 4 * (rhi - rlo) / 5)
    if mode == "normal":
        return _round(sensor, rng.uniform(lo, hi))
    if mode == "near":
        crit = rules.critical_values(sensor, period, stage)
        c = rng.choice(crit) if crit else rng.uniform(lo, hi)
        step = 10 ** -NUMERIC[sensor].decimals
        return _round(sensor, c + rng.choice([-1, 1]) * max(step, rng.uniform(0, NEAR[sensor])))
    sides = [s for s in ("lo", "hi") if (b.lo if s == "lo" else b.hi) is not None]
    if not sides:
        return _round(sensor, rng.uniform(lo, hi))
    gap = NEAR[sensor] / 3
    if rng.choice(sides) == "lo":
        far = rlo if rng.random() < 0.5 else max(rlo, lo - 6 * NEAR[sensor])
        return _round(sensor, rng.uniform(far, lo - gap))
    far = rhi if rng.random() < 0.5 else min(rhi, hi + 6 * NEAR[sensor])
    return _round(sensor, rng.uniform(hi + gap, far))


def sample_readings(rng: random.Random, fact: Fact, want_warning: bool) -> dict:
    """Readings for a row: the fact's sensors plus extras, period always; re-drawn until the tag matches the wish."""
    readings: dict = {}
    for _ in range(60):
        keys = list(fact.sensors)
        n = rng.choice([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6, 8])  # mostly 1-3 sensors, sometimes all
        extras = [k for k in NUMERIC if k not in keys]
        rng.shuffle(extras)
        keys = keys[:n] + extras[:max(0, n - len(keys))]
        raw: dict = {"period": rng.choice(["day", "day", "night"])}
        if rng.random() < 0.4:
            raw["growth_stage"] = fact.stage if fact.stage and rng.random() < 0.7 else rng.choice(list(STAGE["en"]))
        period, stage = raw["period"], raw.get("growth_stage")
        bad = rng.randrange(len(keys)) if want_warning else -1
        for i, k in enumerate(keys):
            mode = rng.choice(["near", "out", "out"]) if i == bad else rng.choice(["normal", "normal", "normal", "near"])
            raw[k] = sample_value(rng, k, mode, period, stage)
        readings = validate(raw)
        if bool(rules.evaluate(readings)) == want_warning:
            return readings
    return readings


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def compose_question(rng: random.Random, fact: Fact, readings: dict | None, lang: str) -> str:
    """Opener + core + closer; the opener only names what the readings carry (stage, period, readings)."""
    readings = readings or {}
    have = {"": True, "readings": any(k in NUMERIC for k in readings), "stage": "growth_stage" in readings,
            "period": "period" in readings}
    needs, opener = rng.choice([o for o in OPENERS[lang] if have[o[0]]])
    period = readings.get("period", "day")
    opener = opener.format(stage=STAGE[lang].get(readings.get("growth_stage", ""), ""),
                           period=PERIOD_WORD[lang][period], when=rng.choice(WHEN[lang][period]))
    core = rng.choice(fact.q[lang])
    closer = rng.choice(CLOSERS[lang])
    if lang == "en":
        core = core + "?"
        core = core if opener.endswith(",") else _cap(core)
    else:
        core = core + ("." if core.endswith(("세요", "니다")) else "?")
    return " ".join(p for p in (opener, core) if p) + closer


def compose_answer(fact: Fact | dict, lang: str) -> str:
    """The model-written part: the gold fact, then its first actions (those the prompt shows)."""
    part = fact[lang] if isinstance(fact, dict) else {"fact": fact.fact[lang], "do": fact.do[lang]}
    actions = [_cap(a.strip().rstrip(".")) + "." for a in part["do"][:MAX_ACTIONS]]
    return " ".join([part["fact"].strip()] + actions)


def prompt_facts(rng: random.Random, index, fact: Fact, question: str, lang: str, exclude: frozenset[str],
                 abstain: bool) -> list[dict]:
    """The facts a prompt shows: retrieval's top K_FACTS with the gold among them, or (abstain) unrelated ones."""
    if abstain:
        pool = [f for f in index.facts if f["category"] != fact.category and f["id"] not in exclude]
        return rng.sample(pool, K_FACTS)
    hits = [h.fact_id for h in index.search(question, lang, K_FACTS, exclude)]
    if fact.id not in hits:
        hits = hits[:K_FACTS - 1]
        hits.insert(rng.randrange(len(hits) + 1), fact.id)
    return [index.by_id[h] for h in hits]


def faithful_readings(rng: random.Random, fact: Fact, lang: str, want_warning: bool, tries: int = 12) -> dict | None:
    """Readings under which the gold answer (the fact and its actions) is faithful: a fact whose advice works
    against a warning those readings fire ("increase irrigation" under HIGH_MOISTURE) would teach the model
    to contradict the rule engine. No readings at all when no draw fits."""
    from farmslm.evaluate.faithful import check

    answer = compose_answer(fact, lang)
    shown = [{"text": fact.fact[lang], "do": fact.do[lang][:MAX_ACTIONS]}]
    for _ in range(tries):
        readings = sample_readings(rng, fact, want_warning)
        if check(answer, lang, readings, rules.evaluate(readings), shown).faithful:
            return readings
    return None


def make_row(rng: random.Random, idx: int, fact: Fact, lang: str, want_warning: bool, index,
             exclude: frozenset[str]) -> dict:
    readings = None if rng.random() < NO_READINGS_SHARE else faithful_readings(rng, fact, lang, want_warning)
    warnings = rules.evaluate(readings) if readings else []
    question = compose_question(rng, fact, readings, lang)
    abstain = rng.random() < ABSTAIN_SHARE
    facts = prompt_facts(rng, index, fact, question, lang, exclude, abstain)
    prefill = guarded_prompt(readings, question, facts, lang, explain.prefill(readings, lang, warnings))
    answer = abstain_text(lang, "not_in_knowledge") if abstain else compose_answer(fact, lang)
    return {"id": f"{lang}-{fact.category}-{idx:05d}", "format": FORMAT, "lang": lang, "category": fact.category,
            "fact_id": fact.id, "sensors": readings or {}, "question": question, "warnings": warnings,
            "retrieved": [f["id"] for f in facts], "abstain": abstain, "prefill": prefill, "answer": answer,
            "text": sample_text(prefill, answer)}


def heldout_facts(share: float, seed: int) -> dict[str, str]:
    """fact id -> "val" | "test" for a seeded `share` of each category's facts (at least one per category)."""
    rng = random.Random(f"heldout-{seed}")
    out: dict[str, str] = {}
    for category in CATEGORIES:
        ids = sorted(f.id for f in facts_by_category()[category])
        if share <= 0 or len(ids) < 4:
            continue
        rng.shuffle(ids)
        for i, fid in enumerate(ids[:max(1, round(share * len(ids)))]):
            out[fid] = ("val", "test")[i % 2]
    return out


def synthesize(size: int, seed: int = 0, warning_share: float = 0.58, heldout: dict[str, str] | None = None,
               index=None) -> list[dict]:
    """`size` rows: categories by CATEGORY_SHARE, languages alternating, ~warning_share rows with a warning.

    Rows about held-out facts (share of them as the held-out facts are of their category) are marked
    `heldout` with the split they belong to; every other row's prompt excludes the held-out facts.
    """
    from farmslm.domain import retrieve

    index = index or retrieve.build()
    heldout = heldout or {}
    exclude = frozenset(heldout)
    rng = random.Random(seed)
    counts = {c: int(size * CATEGORY_SHARE[c]) for c in CATEGORIES}
    for c in sorted(CATEGORIES, key=lambda c: -CATEGORY_SHARE[c])[: size - sum(counts.values())]:
        counts[c] += 1
    plan = [c for c in CATEGORIES for _ in range(counts[c])]
    rng.shuffle(plan)
    by_cat = facts_by_category()
    rows = []
    for i, category in enumerate(plan):
        pool = by_cat[category]
        if not pool:
            continue
        fact = rng.choice(pool)
        row = make_row(rng, i, fact, LANGS[i % 2], rng.random() < warning_share, index,
                       frozenset() if fact.id in heldout else exclude)
        row["heldout"] = heldout.get(fact.id, "")  # "" = may go to any split; every row has the key (one schema)
        rows.append(row)
    return rows
