"""The knowledge base: size, both languages, sources that resolve, honest verification, rule consistency."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from farmslm.domain import knowledge as K
from farmslm.domain.lang import LANGS

HANGUL = re.compile(r"[\uac00-\ud7a3]")
PESTICIDE = re.compile(r"fungicide|insecticide|pesticide|acaricide|miticide|bactericide|nematicide|chemical control",
                       re.I)
DOSE = re.compile(r"\d+(?:\.\d+)?\s*(?:ml|mL|g|kg|L|cc)\s*(?:/|per)\s*(?:\d+\s*)?(?:L|l|ha|10a|m2|m²|litre|liter)\b"
                  r"|\d[\d,]*\s*배(?:액|로)?\s*희석|\d[\d,]*배액")


def test_size_languages_and_question_cores():
    facts = K.load_facts()
    assert len(facts) >= 300, f"{len(facts)} facts; the knowledge base needs >= 300"
    for f in facts:
        for lang in LANGS:
            assert len(f.q[lang]) >= 2, (f.id, lang, "needs >= 2 question cores")
            assert f.fact[lang].strip() and f.do[lang], (f.id, lang)
        for text in [f.fact["ko"], *f.q["ko"], *f.do["ko"]]:
            assert HANGUL.search(text), (f.id, "Korean field without Hangul", text)
        for text in [f.fact["en"], *f.q["en"], *f.do["en"]]:
            assert not HANGUL.search(text), (f.id, "English field with Hangul", text)


def test_every_category_is_covered():
    counts = Counter(f.category for f in K.load_facts())
    thin = {c: counts.get(c, 0) for c in K.CATEGORIES if counts.get(c, 0) < 10}
    assert not thin, f"categories with fewer than 10 facts: {thin}"


def test_sources_resolve():
    sources = K.load_sources()
    for sid, s in sources.items():
        assert s.get("title") and s.get("publisher"), (sid, "needs title and publisher")
        assert str(s.get("url", "")).startswith(("http://", "https://")), (sid, "needs an http(s) url")
    used = {s for f in K.load_facts() for s in f.source}
    assert used <= set(sources)


def test_verified_means_seen_with_quote_and_url():
    facts = K.load_facts()
    for f in facts:
        if f.verified:
            assert len(f.quote) >= 10 and f.url.startswith(("http://", "https://")), f.id
    share = sum(f.verified for f in facts) / len(facts)
    assert share >= 0.85, f"verified share {share:.2f}"


def test_thresholds_agree_with_the_rule_engine():
    problems = [p for f in K.load_facts() for p in K.threshold_problems(f) + K.undeclared_numbers(f)]
    assert not problems, "\n".join(problems)


def _fact(**thresholds) -> K.Fact:
    return K.Fact("planted", "climate", ("practice",), False, (), None, {"en": ["q"], "ko": ["질문"]},
                  {"en": "x", "ko": "x"}, {"en": ["y"], "ko": ["y"]},
                  tuple(K.Threshold(**t) for t in thresholds["t"]))


@pytest.mark.parametrize("t, ok", [
    (dict(sensor="temp_c", kind="optimum", period="night", stage=None, lo=15, hi=18), True),  # inside 12-20
    (dict(sensor="temp_c", kind="optimum", period="night", stage=None, lo=10, hi=14), False),  # below the 12 limit
    (dict(sensor="temp_c", kind="optimum", period="day", stage=None, lo=21, hi=27), True),
    (dict(sensor="temp_c", kind="limit", period="night", stage=None, lo=12, hi=12), True),
    (dict(sensor="temp_c", kind="limit", period="night", stage=None, lo=13, hi=13), False),  # rules say 12 (base)
    (dict(sensor="temp_c", kind="limit", period="night", stage="flowering", lo=13, hi=13), True),
    (dict(sensor="humidity_pct", kind="optimum", period="any", stage=None, lo=65, hi=85), True),
    (dict(sensor="humidity_pct", kind="optimum", period="any", stage=None, lo=70, hi=90), False),  # day limit 85
    (dict(sensor="humidity_pct", kind="context", period="any", stage=None, lo=95, hi=95, where="healing chamber"), True),
    (dict(sensor="ec_ds_m", kind="limit", period="any", stage=None, lo=4.0, hi=4.0), True),
    (dict(sensor="ph", kind="optimum", period="any", stage=None, lo=5.5, hi=7.0), False),  # above 6.5
    (dict(sensor="vpd_kpa", kind="optimum", period="any", stage=None, lo=0.5, hi=1.2), True),
    (dict(sensor="vpd_kpa", kind="optimum", period="any", stage=None, lo=0.1, hi=1.2), False),  # below 0.2
])
def test_consistency_check_catches_planted_disagreements(t, ok):
    assert (K.threshold_problems(_fact(t=[t])) == []) is ok


def test_undeclared_numbers_are_found():
    f = K.Fact("n", "climate", ("practice",), False, (), None, {"en": ["q"], "ko": ["질문"]},
               {"en": "Keep nights at 15–18 °C and CO2 near 800 ppm.", "ko": "x"}, {"en": ["y"], "ko": ["y"]})
    assert len(K.undeclared_numbers(f)) == 2
    assert K.stated_sensors("Drain EC 4.0 dS/m and pH 5.8") == [("ec_ds_m",), ("ph",)]


def test_pesticide_facts_point_to_the_label_and_name_no_dose():
    for f in K.load_facts():
        text_en = " ".join([f.fact["en"], *f.do["en"]])
        text_ko = " ".join([f.fact["ko"], *f.do["ko"]])
        if PESTICIDE.search(text_en) or re.search(r"약제|농약|살균제|살충제|살비제", text_ko):
            assert not DOSE.search(text_en) and not DOSE.search(text_ko), (f.id, "states a pesticide dose")
        if PESTICIDE.search(text_en):
            assert re.search(r"label", text_en, re.I), (f.id, "en: tell the grower to follow the product label")
            assert re.search(r"PLS|등록|라벨|표시", text_ko), (f.id, "ko: registered use (PLS) / label")
