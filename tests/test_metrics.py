"""Metrics against hand computations and reference implementations; report schema and final choice."""

from __future__ import annotations

from pathlib import Path

import math

import pytest

from farmslm.evaluate import metrics


def test_korean_is_tokenized_into_morphemes_or_characters():
    toks = metrics.tokenize("습도가 높아 잿빛곰팡이 위험이 있습니다.", "ko")
    assert len(toks) > 5 and all(t for t in toks)
    assert metrics.ko_tokenizer_name() in ("ko-mecab", "char")
    assert metrics.tokenize("Open the vents, now.", "en") == ["Open", "the", "vents", ",", "now", "."]


def test_rouge_l_scores_korean_where_rouge_score_default_gives_zero():
    from rouge_score.rouge_scorer import RougeScorer

    hyp, ref = "습도가 높아 잿빛곰팡이 위험이 있습니다", "습도가 높아서 잿빛곰팡이 위험이 큽니다"
    assert RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure == 0.0  # why we pass our tokens
    score = metrics.rouge_l([hyp], [ref], ["ko"])
    assert 0.4 < score < 1.0
    assert metrics.rouge_l([ref], [ref], ["ko"]) == 1.0


def test_rouge_l_matches_hand_lcs_in_english():
    # hyp: a b c d ; ref: a c d e -> LCS "a c d" = 3; P = 3/4, R = 3/4, F1 = 0.75
    assert metrics.rouge_l(["a b c d"], ["a c d e"], ["en"]) == 0.75


def test_bleu_and_chrf_agree_with_sacrebleu_in_english():
    import sacrebleu

    hyps = ["The humidity is too high, open the vents.", "Keep the night temperature above 15 degrees."]
    refs = ["The humidity is high, so open the vents.", "Keep night temperatures above 15 degrees."]
    assert math.isclose(metrics.bleu(hyps, refs, ["en", "en"]), round(sacrebleu.corpus_bleu(hyps, [refs]).score / 100, 4))
    assert math.isclose(metrics.chrf(hyps, refs), round(sacrebleu.corpus_chrf(hyps, [refs]).score / 100, 4))
    assert metrics.bleu(refs, refs, ["en", "en"]) == 1.0


def test_korean_bleu_uses_the_korean_tokenizer():
    import sacrebleu

    hyp, ref = ["토마토 잎에 잿빛곰팡이가 생겼습니다"], ["토마토 잎에 잿빛곰팡이가 생겼어요"]
    ours = metrics.bleu(hyp, ref, ["ko"])
    tok = "ko-mecab" if metrics.ko_tokenizer_name() == "ko-mecab" else "char"
    assert math.isclose(ours, round(sacrebleu.corpus_bleu(hyp, [ref], tokenize=tok).score / 100, 4), abs_tol=1e-4)
    whole_words = sacrebleu.corpus_bleu(hyp, [ref], tokenize="13a").score / 100
    assert ours > whole_words  # eojeol-level BLEU punishes every particle; morphemes do not


def test_text_scores_split_by_language():
    s = metrics.text_scores(["Open the vents.", "환기하세요."], ["Open the vents.", "환기하세요."], ["en", "ko"])
    assert s["all"]["n"] == 2 and s["ko"]["n"] == 1 and s["en"]["n"] == 1
    assert s["en"]["rouge_l"] == 1.0 and s["ko"]["rouge_l"] == 1.0 and s["all"]["bleu"] == 1.0
    with pytest.raises(ValueError, match="equal counts"):
        metrics.text_scores(["a"], ["a", "b"], ["en"])


def test_warning_scores_by_hand():
    gold = [["HIGH_TEMP"], ["HIGH_TEMP", "HIGH_HUMIDITY"], [], ["LOW_PH"]]
    pred = [["HIGH_TEMP"], ["HIGH_TEMP"], [], None]  # the last wrote no tag
    s = metrics.warning_scores(pred, gold, ["ko", "en", "ko", "en"])
    assert s["accuracy"] == 0.5 and s["accuracy_ko"] == 1.0 and s["accuracy_en"] == 0.0
    assert s["tag_rate"] == 0.75
    assert s["per_code"]["HIGH_TEMP"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert s["per_code"]["HIGH_HUMIDITY"]["f1"] == 0.0 and s["per_code"]["LOW_PH"]["support"] == 1
    assert s["macro_f1"] == round(1 / 3, 4)
    assert metrics.warning_scores([["A", "B"]], [["B", "A"]], ["en"])["accuracy"] == 1.0  # a set, not a list


def test_term_match_and_degeneration():
    t = metrics.term_match(["Gray mold spreads in high humidity.", "xyz qqq."], ["en", "en"])
    assert t["all"] == pytest.approx((t["en"]))
    d = metrics.degeneration(["Open the vents to lower humidity.", "1 2 3 4 5 6 7 8 9 10", ""])
    assert d["rate"] == round(2 / 3, 4) and d["n"] == 3 and "number_run" in d["reasons"]


def _variant(**kw):
    from farmslm.evaluate.report import SUMMARY_FIELDS

    return {f: kw.get(f) for f in SUMMARY_FIELDS}


def _good(**kw):
    base = dict(faithful_rate=0.97, faithful_rate_validation=0.97, false_abstention=0.02, abstention_oos=0.93,
                recall_at_2=0.97, recall_at_2_paraphrase=0.9, rouge_l=0.5, degenerate_rate=0.0, gen_tok_s=150.0,
                size_mb=90.0)
    return _variant(**{**base, **kw})


def test_final_is_chosen_on_validation_among_trained_quantized_candidates():
    from farmslm.evaluate.report import choose_final

    selection = {"pruned_lora_q4_k_m": _good(rouge_l=0.55), "pruned_lora_kd_q4_k_m": _good(rouge_l=0.5)}
    assert choose_final(selection)[0] == "pruned_lora_kd_q4_k_m"  # both meet the targets: the default stays
    selection["pruned_lora_kd_q4_k_m"] = _good(faithful_rate=0.80)
    name, why = choose_final(selection)
    assert name == "pruned_lora_q4_k_m" and "validation split" in why
    assert choose_final({})[0] == "pruned_lora_kd_q4_k_m"


def test_build_offers_only_trained_quantized_candidates():
    from farmslm import build

    cfgs = build.stage_configs("standard")
    b = build.Build(Path("/nonexistent"), "standard", cfgs)
    assert b.candidates() == ["finetuned_q4_k_m", "pruned_lora_q4_k_m", "pruned_lora_kd_q4_k_m"]
    assert not [c for c in b.candidates() if c.startswith(("base", "pruned_q")) or c.endswith("_f16")]


def test_report_files_and_schema(tmp_path):
    from farmslm import artifacts
    from farmslm.evaluate.report import SCHEMA_VERSION, SUMMARY_FIELDS, write_report

    row = {"id": "q1-ko", "lang": "ko", "question": "덥나요?", "gold": ["HIGH_TEMP"], "answer": "기온이 높습니다.",
           "flags": {"unsupported_number": False, "contradiction": True, "invented_reading": False},
           "reasons": ["'난방' goes against HIGH_TEMP"]}
    evals = {"stock": {"summary": _variant(gen_tok_s=70.0, size_mb=253.0)},
             "finetuned_f16": {"summary": _good(size_mb=400.0)},
             "pruned_lora_kd_q4_k_m": {"summary": _good(), "rows": {"validation": [row], "answers": [row]}}}
    logs = {"pruned_lora_kd": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]}
    report = write_report(tmp_path, "quick", evals, {"data": 10.0, "train": 100.0}, logs,
                          selection={"pruned_lora_kd_q4_k_m": {"summary": _good()}})
    assert report == artifacts.read_json(tmp_path / "report.json")
    assert set(report) == {"schema_version", "profile", "final", "durations_s", "variants", "selection", "index"}
    assert report["schema_version"] == SCHEMA_VERSION
    assert all(set(v) == set(SUMMARY_FIELDS) for v in report["variants"].values())
    assert report["final"] == "pruned_lora_kd_q4_k_m" and report["variants"]["stock"]["bleu"] is None
    md = (tmp_path / "report.md").read_text()
    assert "PASS: size_mb < stock" in md and "PASS: faithful_rate >= 0.95 (test answers)" in md
    assert "Measured elsewhere" in md and "0.2384" in md
    assert "기온이 높습니다." in md and "| total | 110.0 |" in md and "goes against HIGH_TEMP" in md
    for png in ("loss.png", "quality_vs_size.png", "speed.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
