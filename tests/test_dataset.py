"""Dataset builder: determinism, the four verification checks, splits without leakage, card, LLM backend."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest

from farmslm.artifacts import read_json, read_jsonl
from farmslm.dataset import build, corpus, split, synth, verify
from farmslm.domain import rules, terms
from farmslm.domain.knowledge import CATEGORIES, load_facts
from farmslm.domain.lang import LANGS
from farmslm.domain.sensors import validate

FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "validation_questions.jsonl", "quarantine.jsonl", "card.json", "card.md")


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "a"
    return build.run(build.DataConfig(out_dir=str(out), seed=7, size=400))


@lru_cache(maxsize=1)
def _index():
    from farmslm.domain import retrieve

    return retrieve.build()


def _rows(n=40, seed=3):
    return synth.synthesize(n, seed=seed, index=_index())


# ---- synthesis ---------------------------------------------------------------------------------

def test_rows_are_correct_by_construction():
    from farmslm.domain import explain
    from farmslm.domain.abstain import abstain_text
    from farmslm.domain.prompt import guarded_prompt, sample_text

    index = _index()
    for row in _rows(120):
        readings = validate(row["sensors"]) if row["sensors"] else None
        assert row["warnings"] == (rules.evaluate(readings) if readings else [])
        assert readings is None or "period" in readings  # the engine always fills the period in
        facts = [index.by_id[f] for f in row["retrieved"]]
        assert row["prefill"] == guarded_prompt(readings, row["question"], facts, row["lang"],
                                                explain.prefill(readings, row["lang"], row["warnings"]))
        assert row["text"] == sample_text(row["prefill"], row["answer"])
        if row["abstain"]:
            assert row["answer"] == abstain_text(row["lang"]) and row["fact_id"] not in row["retrieved"]
        else:
            assert row["fact_id"] in row["retrieved"] and index.by_id[row["fact_id"]][row["lang"]]["fact"] in row["answer"]
        assert verify.check_structure(row) is None and verify.check_warnings(row) is None, row["id"]


def test_gold_answers_are_faithful_to_their_readings():
    """A fact whose advice works against a fired warning is never paired with those readings in training."""
    from farmslm.domain.prompt import MAX_ACTIONS
    from farmslm.evaluate.faithful import check

    index = _index()
    for row in _rows(200, seed=11):
        if row["abstain"]:
            continue
        shown = [{"text": index.by_id[f][row["lang"]]["fact"], "do": index.by_id[f][row["lang"]]["do"][:MAX_ACTIONS]}
                 for f in row["retrieved"]]
        v = check(row["answer"], row["lang"], row["sensors"], row["warnings"], shown)
        assert v.faithful, (row["id"], v.reasons)


STAGE_WORDS = {"en": {"seedling": "seedling stage", "vegetative": "vegetative stage", "flowering": "flowering stage",
                      "fruiting": "fruiting stage"},
               "ko": {"seedling": "육묘기", "vegetative": "영양생장기", "flowering": "개화기", "fruiting": "착과기"}}
DAY_WORDS = {"en": ("It is daytime", "this morning", "this afternoon"), "ko": ("지금 온실은 낮", "아침에 온실", "오후에 온실")}
NIGHT_WORDS = {"en": ("It is nighttime", "this evening"), "ko": ("지금 온실은 밤", "저녁에 온실", "밤에 온실")}


def test_every_question_agrees_with_its_status():
    """Stage and time-of-day wording only when STATUS carries them, and then the same stage and period."""
    for row in _rows(600, seed=2):
        q, s, lang = row["question"], row["sensors"], row["lang"]
        for stage, word in STAGE_WORDS[lang].items():
            if word in q:
                assert s.get("growth_stage") == stage, (row["id"], q, s)
        if any(w in q for w in DAY_WORDS[lang]):
            assert s.get("period") == "day", (row["id"], q, s)
        if any(w in q for w in NIGHT_WORDS[lang]):
            assert s.get("period") == "night", (row["id"], q, s)
        if not s:
            assert not any(w in q for w in ("sensor readings", "sensor values", "logged these values", "측정값을 보니",
                                            "센서 값을 기준", "센서 값이 찍혔")), q


def test_out_of_band_values_reach_the_realistic_extremes():
    """Readings outside the bands are drawn across the whole realistic range, not only near the edge."""
    rows = [r for r in synth.synthesize(1500, seed=4, index=_index()) if r["sensors"]]
    def values(key):
        return [r["sensors"][key] for r in rows if key in r["sensors"]]
    assert min(values("humidity_pct")) <= 25 and max(values("co2_ppm")) >= 4000
    assert max(values("ph")) >= 8.3 and min(values("ph")) <= 3.7 and max(values("ec_ds_m")) >= 6.5  # edge 4.0, near zone up to 5.5
    assert min(values("temp_c")) <= 3 and max(values("temp_c")) >= 42


def test_near_threshold_rows_on_both_sides():
    """HIGH_TEMP by day fires above 30 °C: the data must hold rows just below and just above it."""
    rows = synth.synthesize(3000, seed=0, index=_index())
    day = [r for r in rows if "temp_c" in r["sensors"] and r["sensors"].get("period", "day") == "day"]
    below = [r for r in day if 29.0 <= r["sensors"]["temp_c"] <= 30.0]
    above = [r for r in day if 30.0 < r["sensors"]["temp_c"] <= 31.0]
    assert below and above
    assert all("HIGH_TEMP" not in r["warnings"] for r in below)
    assert all("HIGH_TEMP" in r["warnings"] for r in above)


def test_openers_and_closers_keep_terminology():
    """Each question part either names a dictionary term or joins the core's sentence."""
    for lang in LANGS:
        for part in [o for _, o in synth.OPENERS[lang]] + synth.CLOSERS[lang]:
            text = part.strip().format(stage="flowering" if lang == "en" else "개화기", when="아침", period="day")
            if not text or (lang == "en" and text.endswith((",", ":"))) or (lang == "ko" and not text.endswith((".", "?"))):
                continue
            assert terms.find_terms(text, lang), (lang, text)


def test_heldout_facts_never_reach_a_training_row(small_build):
    heldout = read_json(small_build / "heldout_facts.json")
    assert len(heldout) >= 0.1 * len(load_facts()) * 0.9 and set(heldout.values()) == {"val", "test"}
    for row in read_jsonl(small_build / "train.jsonl"):
        assert row["fact_id"] not in heldout and not set(row["retrieved"]) & set(heldout), row["id"]
    for s in ("val", "test"):
        for row in read_jsonl(small_build / f"{s}.jsonl"):
            if row["fact_id"] in heldout:
                assert row.get("heldout") == heldout[row["fact_id"]] == s


# ---- verification ------------------------------------------------------------------------------

def _reasons(quarantine, rid):
    return [q["reason"] for q in quarantine if q.get("id") == rid]


def _retext(row: dict) -> dict:
    from farmslm.domain.prompt import sample_text

    return row | {"text": sample_text(row["prefill"], row["answer"])}


def test_verify_catches_planted_rows():
    rows = [r for r in _rows(40) if not r["abstain"]]
    good_ids = {r["id"] for r in rows}
    dup = copy.deepcopy(rows[0]) | {"id": "planted-dup"}
    off = _retext(copy.deepcopy(rows[1]) | {"id": "planted-off-domain",
                                           "answer": "Buy index funds. Hold them for ten years. Avoid short-term trading."})
    off["question"] = "Which stocks should I buy this year?"
    wrong = copy.deepcopy(next(r for r in rows if not r["warnings"] and r["sensors"])) | {"id": "planted-wrong-tag"}
    wrong["warnings"] = ["HIGH_TEMP"]
    forged = copy.deepcopy(next(r for r in rows if not r["warnings"] and r["sensors"])) | {"id": "planted-forged-prefill"}
    forged["prefill"] = forged["prefill"].replace("[NORMAL]", "[WARNING: HIGH_TEMP]")
    forged = _retext(forged)
    echo = _retext(copy.deepcopy(rows[5]) | {"id": "planted-echo", "answer": "Q: [STATUS: temp_c=13.3, light_umol=12,"})
    missing = {k: v for k, v in rows[2].items() if k != "answer"} | {"id": "planted-no-answer"}
    bad_sensor = copy.deepcopy(rows[3]) | {"id": "planted-bad-sensor", "sensors": {"humidity_pct": 140.0}}
    bad_text = copy.deepcopy(rows[4]) | {"id": "planted-bad-text"}
    bad_text["text"] = bad_text["text"].replace("A: [", "A: [[")
    unknown_fact = copy.deepcopy(rows[6]) | {"id": "planted-unknown-fact", "retrieved": ["no_such_fact"]}
    planted = [dup, off, wrong, forged, echo, missing, bad_sensor, bad_text, unknown_fact]
    kept, quarantine, figures = verify.verify_rows(rows + planted)
    assert _reasons(quarantine, "planted-dup")[0].startswith("duplicate: cosine")
    assert _reasons(quarantine, "planted-off-domain")[0].startswith("structure: prefill")  # question changed
    assert _reasons(quarantine, "planted-wrong-tag")[0].startswith(("warnings:", "structure: prefill"))
    assert _reasons(quarantine, "planted-forged-prefill")[0].startswith("structure: prefill")
    assert "prompt markup" in _reasons(quarantine, "planted-echo")[0]
    assert "missing field 'answer'" in _reasons(quarantine, "planted-no-answer")[0]
    assert "humidity_pct" in _reasons(quarantine, "planted-bad-sensor")[0]
    assert "text != prefill + answer" in _reasons(quarantine, "planted-bad-text")[0]
    assert "unknown fact id" in _reasons(quarantine, "planted-unknown-fact")[0]
    assert {r["id"] for r in kept} <= good_ids
    assert len(kept) + len(quarantine) == len(rows) + len(planted)  # nothing silently dropped
    assert figures["rejected_by_check"]["duplicate"] >= 1


def test_verify_cli_on_any_jsonl(tmp_path):
    from typer.testing import CliRunner
    from farmslm.cli import app

    rows = _rows(20)
    bad = copy.deepcopy(rows[0]) | {"id": "x-wrong"}
    bad["warnings"] = ["LOW_PH"]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + [bad]) + "not json\n")
    result = CliRunner().invoke(app, ["data", "verify", str(path), "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    quarantine = read_jsonl(tmp_path / "v" / "quarantine.jsonl")
    reasons = [q["reason"] for q in quarantine]
    assert any(r.startswith("structure: missing field") for r in reasons)  # the non-JSON line
    assert any(q.get("id") == "x-wrong" for q in quarantine)
    assert len(read_jsonl(tmp_path / "v" / "verified.jsonl")) + len(quarantine) == 22


def test_similar_pairs_matches_dense_reference():
    import numpy as np

    rows = _rows(60)
    x = verify.vectorize([verify.qa_text(r) for r in rows], verify.VerifyConfig())
    dense = (x @ x.T).toarray()
    want = {(i, j) for i in range(60) for j in range(i + 1, 60) if dense[i, j] >= 0.5}
    got = {(i, j) for i, j, _ in verify.similar_pairs(x, 0.5, chunk=7)}
    assert got == want and np.allclose(np.diag(dense), 1.0)


# ---- build, splits, card -----------------------------------------------------------------------

def test_build_is_deterministic(small_build, tmp_path):
    again = build.run(build.DataConfig(out_dir=str(tmp_path / "b"), seed=7, size=400))
    for name in FILES:
        assert (small_build / name).read_bytes() == (again / name).read_bytes(), name
    other = build.run(build.DataConfig(out_dir=str(tmp_path / "c"), seed=8, size=400))
    assert (small_build / "train.jsonl").read_bytes() != (other / "train.jsonl").read_bytes()
    assert read_json(small_build / "meta.json")["status"] == "done"


def test_build_skips_when_done(small_build, capsys):
    build.run(build.DataConfig(out_dir=str(small_build), seed=7, size=400))
    assert "skipping" in capsys.readouterr().out


def test_splits_stratified_and_without_leakage(small_build):
    splits = {s: read_jsonl(small_build / f"{s}.jsonl") for s in split.SPLITS}
    assert split.leakage_pairs(splits, 0.85) == []
    ids = [r["id"] for s in splits.values() for r in s]
    assert len(ids) == len(set(ids))
    for s in ("val", "test"):
        assert {r["lang"] for r in splits[s]} == set(LANGS)
        assert len({r["category"] for r in splits[s]}) >= 7


def test_leakage_fix_moves_planted_pair():
    rows = _rows(30)
    twin = copy.deepcopy(rows[0]) | {"id": "twin"}
    held_twin = copy.deepcopy(rows[1]) | {"id": "held-twin", "heldout": "test"}
    splits = {"train": [rows[0], rows[1]] + rows[4:], "val": [twin], "test": [held_twin] + rows[2:4]}
    assert split.leakage_pairs(splits, 0.85)
    fixed, report = split.fix_leakage(splits, 0.85)
    assert "twin" in report["moved_to_train"] and report["pairs_left"] == 0
    assert [r["id"] for r in report["dropped_heldout"]] == ["held-twin"]  # a held-out fact never goes to train
    assert "held-twin" not in {r["id"] for r in fixed["train"]}
    assert split.leakage_pairs(fixed, 0.85) == []


def test_validation_questions(small_build):
    rows = read_jsonl(small_build / "validation_questions.jsonl")
    assert len(rows) == 30 and len({r["qid"] for r in rows}) == 15
    for qid in {r["qid"] for r in rows}:
        pair = [r for r in rows if r["qid"] == qid]
        assert sorted(r["lang"] for r in pair) == ["en", "ko"] and pair[0]["sensors"] == pair[1]["sensors"]
    for r in rows:
        assert r["warnings"] == rules.evaluate(validate(r["sensors"])) and r["answer"].strip()
    assert sum(1 for r in rows if r["warnings"]) >= 20


def test_load_with_datasets(small_build):
    import datasets

    ds = datasets.load_dataset("json", data_files={s: str(small_build / f"{s}.jsonl") for s in split.SPLITS})
    assert sum(len(ds[s]) for s in split.SPLITS) == read_json(small_build / "card.json")["rows_total"]
    row = ds["train"][0]
    assert set(verify.FIELDS) <= set(row) and isinstance(row["warnings"], list)
    vq = datasets.load_dataset("json", data_files=str(small_build / "validation_questions.jsonl"))["train"]
    assert len(vq) == 30


def test_corpus_has_the_training_text_and_never_the_held_out_splits(small_build):
    texts = set(corpus.domain_texts(small_build))
    assert all(r["text"] in texts for r in read_jsonl(small_build / "train.jsonl"))
    for name in ("val.jsonl", "test.jsonl"):  # held-out text must not shape the vocabulary
        assert not any(r["text"] in texts for r in read_jsonl(small_build / name)), name
    assert not any(r["question"] in texts for r in read_jsonl(small_build / "validation_questions.jsonl"))
    assert load_facts()[0].fact["ko"] in texts
    t = terms.load_terms()[0]
    assert t.en in texts and t.ko in texts
    assert rules.message("HIGH_TEMP", "ko") in texts


def test_card_figures(small_build):
    card = read_json(small_build / "card.json")
    v = card["verification"]
    assert v["n_in"] == 400
    assert card["rows_total"] + len(read_jsonl(small_build / "quarantine.jsonl")) == 400  # every row kept or quarantined
    k = card["knowledge"]
    assert k["facts"] == len(load_facts()) and 0 < k["verified_share"] <= 1
    assert set(k["by_category"]) == set(CATEGORIES) and sum(k["sources_by_publisher"].values()) == k["sources"]
    md = (small_build / "card.md").read_text()
    assert "## Verification" in md and "## Knowledge base" in md and "held-out facts" in md


def test_data_card_command_reports_the_knowledge_base():
    from typer.testing import CliRunner

    from farmslm.cli import app

    result = CliRunner().invoke(app, ["data", "card", "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["facts"] >= 300 and card["verified_share"] >= 0.85
    assert all(card["by_category"][c]["facts"] >= 10 for c in CATEGORIES)
    assert card["languages"]["ko"]["question_cores"] >= 2 * card["facts"]


@pytest.mark.slow
def test_default_build_meets_distribution(tmp_path):
    """The issue's Done-when figures on a default-size build; every row passes the checks again."""
    out = build.run(build.DataConfig(out_dir=str(tmp_path / "d")))
    card = read_json(out / "card.json")
    o = card["overall"]
    assert card["rows_total"] >= 3000
    assert all(o["by_lang_pct"][lang] >= 40 for lang in LANGS)
    assert all(o["by_category_pct"][c] >= 5 for c in CATEGORIES)
    assert o["warning_pct"] >= 30 and o["normal_pct"] >= 20
    assert all(card["phrasings"][lang]["distinct_question_cores"] >= 150 for lang in LANGS)
    assert all(card["phrasings"][lang]["distinct_questions"] >= 150 for lang in LANGS)
    rows = [r for s in split.SPLITS for r in read_jsonl(out / f"{s}.jsonl")]
    kept, quarantine, _ = verify.verify_rows(rows)
    assert quarantine == [] and len(kept) == len(rows)


# ---- LLM backend against a real llama.cpp server -----------------------------------------------

@pytest.mark.slow
def test_llm_backend_with_llama_cpp_server(tmp_path, default_gguf):
    """The pipeline (requests, verification, quarantine with reasons) against llama.cpp's server running the
    packaged base model. It is not instruction-tuned, so most rows may land in quarantine: that is fine."""
    pytest.importorskip("llama_cpp.server")
    from conftest import start_llama_server

    proc, url = start_llama_server(default_gguf, tmp_path / "server.log", "--model_alias", "tomato-base",
                                   "--chat_format", "gemma")
    try:
        cfg = build.DataConfig(out_dir=str(tmp_path / "llm"), size=20, llm_endpoint=url,
                               llm_model="tomato-base", llm_rows=4, llm_max_tokens=32)
        out = build.run(cfg)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    card = read_json(out / "card.json")
    llm = card["verification"]["llm"]
    assert llm["requested"] == 4 and llm["answered"] + llm["request_failed"] == 4
    assert llm["answered"] >= 3  # the server really answered
    rows = [r for s in split.SPLITS for r in read_jsonl(out / f"{s}.jsonl")]
    quarantine = read_jsonl(out / "quarantine.jsonl")
    llm_kept = [r for r in rows if r["id"].startswith("llm-")]
    llm_rejected = [q for q in quarantine if q["id"].startswith("llm-")]
    assert len(llm_kept) == llm["verified"] and len(llm_kept) + len(llm_rejected) == 4
    assert all(q["reason"].split(":")[0] in {"structure", "warnings", "terminology", "duplicate", "llm"}
               for q in llm_rejected)
    for r in llm_kept:  # what passed, passed every check
        assert r["warnings"] == rules.evaluate(validate(r["sensors"]))
