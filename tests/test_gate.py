"""Quality gate: degeneration detection on texts; on the real base, passes it and fails it over-pruned."""

from __future__ import annotations

import copy

import pytest

from farmslm.evaluate import gate


@pytest.mark.parametrize("text", [
    "The ideal temperature for tomato fruit set is 18 to 24 degrees Celsius.",
    "기온이 너무 높습니다(낮 기온 34.2 °C > 30 °C). 차광, 환기, 포그 분무로 온도를 낮추세요.",
    "Humidity too high (RH 95.7 % > 85 % by day): ventilate and heat slightly. Gray mold risk (RH 95.7 % > 90 %): "
    "lower humidity below 90 %. Late blight risk (RH 95.7 % > 95 %): dry the leaves.",
    "Keep light near 10000 lux... then 20000.",
])
def test_healthy_answers_pass(text):
    assert gate.is_degenerate(text) == []


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("  ...  ", "empty"),
    ("Water the plants <unused42> daily.", "special_token"),
    ("Tomatoes<start_of_turn>user", "special_token"),
    ("Keep the air dry\x00\x01 and warm.", "control_chars"),
    ("Broken bytes \ufffd\ufffd here.", "control_chars"),
    ("The answer is 1 2 3 4 5 6 7 8 9 10.", "number_run"),
    ("토마토 잎은 100000000000000000000000000000000", "repeat_run"),
    ("ㅋㅋㅋㅋㅋㅋㅋㅋ 좋아요", "repeat_run"),
    ("The water is a greenhouse, and the water is a greenhouse, and the water is a greenhouse, and so on", "repeat_ngram"),
    ("12.5 / 30 % 1,000 ppm", "not_text"),
])
def test_degenerate_answers_are_flagged(text, reason):
    assert reason in gate.is_degenerate(text)


def test_degeneration_rate():
    assert gate.degeneration_rate(["Fine text here.", "", "the the the the the the the the"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        gate.degeneration_rate([])


def _questions() -> list[dict]:
    try:
        from farmslm.dataset.split import validation_rows
    except ImportError:  # the dataset helper's module not there yet: a few of the same kind
        return [{"lang": "en", "question": "Why do tomato leaves turn yellow?"},
                {"lang": "ko", "question": "토마토 잎이 노랗게 변하는 이유는 무엇인가요?"}] * 3
    return validation_rows()


@pytest.mark.slow
def test_gate_passes_base_and_fails_over_pruned():
    import torch

    from farmslm.model import prune as P
    from farmslm.model.load import load_base
    from farmslm.model.tokenizer import Tokenizer

    torch.set_num_threads(1)  # shared CI cores: one thread avoids OpenMP oversubscription stalls
    loaded = load_base("default")
    tok = Tokenizer(loaded.tokenizer_gguf)
    questions = _questions()
    assert len(questions) == 30 and {q["lang"] for q in questions} == {"ko", "en"}
    base = gate.check(loaded.model, tok, questions)
    assert base["passed"], base
    # 80 % of FFN neurons removed (magnitude: no calibration needed), far past any usable rate
    pruned = copy.deepcopy(loaded.model)
    P.prune(pruned, None, P.PruneConfig(metric="magnitude", ratio=0.8, keep_multiple=1))
    over = gate.check(pruned, tok, questions)
    assert not over["passed"], over
    assert over["rate"] >= 2 * base["rate"] + 0.3
