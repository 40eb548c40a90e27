"""The faithfulness checker, validated on hand-labelled answers before anyone trusts its numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farmslm.evaluate import faithful as F

LABELLED = Path(__file__).parent / "data" / "faithfulness_labelled.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_fixture_is_big_enough_in_both_languages():
    rows = _rows()
    assert len(rows) >= 100
    for lang in ("ko", "en"):
        sub = [r for r in rows if r["lang"] == lang]
        assert len(sub) >= 50
        for flag in F.FLAGS:
            assert sum(r["labels"][flag] for r in sub) >= 10, (lang, flag)
        assert sum(not any(r["labels"].values()) for r in sub) >= 20


@pytest.mark.parametrize("flag", F.FLAGS)
def test_each_flag_has_precision_and_recall_of_at_least_0_9(flag):
    rows = _rows()
    tp = fp = fn = 0
    misses = []
    for r in rows:
        got = F.check(r["answer"], r["lang"], r["sensors"], r["warnings"], r["facts"]).flags[flag]
        want = r["labels"][flag]
        tp += got and want
        fp += got and not want
        fn += want and not got
        if got != want:
            misses.append(r["id"])
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    assert precision >= 0.9 and recall >= 0.9, (flag, round(precision, 3), round(recall, 3), misses)


HOT_DAY = {"temp_c": 33.0, "period": "day"}
FACT = [{"text": "Above 30 °C fruit set drops; keep the house below 30 °C with shade and vents.",
         "do": ["open the roof vents", "draw the shade screen"]}]


@pytest.mark.parametrize("text, lang, readings, codes, flags", [
    ("Open the roof vents and draw the shade screen.", "en", HOT_DAY, ["HIGH_TEMP"], set()),
    ("Heat slightly and keep the vents closed.", "en", HOT_DAY, ["HIGH_TEMP"], {"contradiction"}),
    ("환기하지 마세요.", "ko", {"humidity_pct": 92.0, "period": "day"}, ["HIGH_HUMIDITY"], {"contradiction"}),
    ("환기하세요.", "ko", {"humidity_pct": 92.0, "period": "day"}, ["HIGH_HUMIDITY"], set()),
    ("야간 온도는 15~18도로 유지하세요.", "ko", {"temp_c": 9.0, "period": "night"}, ["LOW_TEMP"], {"unsupported_number"}),
    ("Your pH of 6.0 is fine.", "en", {"temp_c": 24.0, "period": "day"}, [], {"invented_reading", "unsupported_number"}),
    ("All sensor values are within range.", "en", HOT_DAY, ["HIGH_TEMP"], {"contradiction"}),
    ("The temperature is 33 °C, above the 30 °C limit: open the roof vents.", "en", HOT_DAY, ["HIGH_TEMP"], set()),
    ("39 °C > 40 °C, so draw the shade screen.", "en", {"temp_c": 39.0, "period": "day"}, ["HIGH_TEMP"],
     {"contradiction", "unsupported_number"}),
    ("EC가 너무 높습니다.", "ko", {"ec_ds_m": 2.0}, [], {"contradiction"}),
    ("EC가 4.0 dS/m를 넘으면 급액 EC를 낮추세요.", "ko", {"ec_ds_m": 2.0}, [], {"unsupported_number"}),
])
def test_each_flag_fires_and_stays_silent_where_it_should(text, lang, readings, codes, flags):
    v = F.check(text, lang, readings, codes, FACT if lang == "en" else [{"text": "", "do": []}])
    assert {f for f, x in v.flags.items() if x} == flags, v.reasons


def test_numbers_normalise_forms_and_skip_names():
    assert F.numbers("15~18도, 1,000 ppm, EC 2.0, CO2, KS X 3265, TYLCV, 20 °C") == ["15", "18", "1000", "2", "20"]
    assert F.numbers("pH 5.5–6.5 and 3rd leaf") == ["5.5", "6.5"]


def test_fact_recall_and_precision():
    gold = {"text": "Gray mold spreads at 15.5–24 °C with RH above 80 %.", "do": []}
    full = F.fact_scores("Gray mold spreads at 15.5–24 °C when RH is above 80 %.", "en", gold, [gold])
    half = F.fact_scores("Gray mold likes humid air.", "en", gold, [gold])
    extra = F.fact_scores("Gray mold spreads at 15.5–24 °C; spray 3 times at 7-day intervals.", "en", gold, [gold])
    assert full["fact_recall"] == 1.0 and full["fact_precision"] == 1.0
    assert half["fact_recall"] < 0.5
    assert extra["fact_precision"] < 1.0  # what it adds that no fact says
