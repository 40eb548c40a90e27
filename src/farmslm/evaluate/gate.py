"""Quality gate: does a pruned or trained model still write text? Degeneration on the validation questions.

model + validation questions (15 x ko/en) -> greedy answers -> per-answer degeneration reasons ->
rate; the gate passes when rate <= GateConfig.max_rate. `is_degenerate` / `degeneration_rate` are
reused on any texts (the evaluation stage runs them on llama.cpp answers).
Example: python -c "from farmslm.evaluate.gate import is_degenerate as d; print(d('1 2 3 4 5 6 7 8 9'))"
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

REASONS = ("empty", "special_token", "control_chars", "number_run", "repeat_run", "repeat_ngram", "not_text")

# Few-shot prompts for base models (not instruction-tuned): two short Q/A pairs make the answer prose.
FEW_SHOT = {
    "en": ("Q: Why do plants need light?\nA: Plants use light for photosynthesis, which turns water and carbon "
           "dioxide into sugars that feed their growth.\n\n"
           "Q: What does a thermometer measure?\nA: A thermometer measures temperature, usually in degrees Celsius.\n\n"),
    "ko": ("Q: 식물은 왜 빛이 필요한가요?\nA: 식물은 빛으로 광합성을 하여 물과 이산화탄소에서 당을 만들고, "
           "그 당으로 자랍니다.\n\n"
           "Q: 온도계는 무엇을 재나요?\nA: 온도계는 온도를 재며, 보통 섭씨로 나타냅니다.\n\n"),
}

_SPECIAL_RE = re.compile(r"<(?:unused\d+|pad|eos|bos|mask|unk|start_of_turn|end_of_turn|start_of_image|end_of_image|"
                         r"image_soft_token|/?s|\|[a-z_]+\|)>|\[multimodal\]|<0x[0-9A-Fa-f]{2}>")
# a run of >= 8 numbers separated only by spaces/punctuation, e.g. "1 2 3 4 5 6 7 8" or "0.0.0.0.0.0.0.0"
_NUMBER_RUN_RE = re.compile(r"(?:\d+[\s.,:;/-]*){8,}")
# the same 1-20 character unit 4+ times in a row over >= 8 characters ("ㅋㅋㅋㅋㅋㅋㅋㅋ",
# "토마토토마토토마토토마토", "100000000"); "10000 lux" and "..." stay legal
_REPEAT_RUN_RE = re.compile(r"(.{1,20}?)\1{3,}", re.S)
_REPEAT_RUN_MIN = 8


def _letters_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(unicodedata.category(c).startswith("L") for c in chars) / len(chars)


def is_degenerate(text: str, ngram: int = 3, max_repeat_share: float = 0.25, min_letters: float = 0.5) -> list[str]:
    """Reasons this answer is degenerate (empty list: it reads as text).

    repeat_ngram: more than max_repeat_share of the word n-grams repeat an earlier one (the
    dataset's own long answers, which restate a reading per warning, stay under 0.13). not_text:
    letters are under min_letters of the non-space characters (numbers alone are not an answer).
    """
    reasons = []
    stripped = text.strip()
    if len(stripped) < 2 or not any(c.isalpha() for c in stripped):
        reasons.append("empty")
    if _SPECIAL_RE.search(text):
        reasons.append("special_token")
    if any(unicodedata.category(c) in ("Cc", "Co", "Cs") and c not in "\n\t" for c in text) or "\ufffd" in text:
        reasons.append("control_chars")
    if _NUMBER_RUN_RE.search(text):
        reasons.append("number_run")
    if any(len(m.group(0)) >= _REPEAT_RUN_MIN for m in _REPEAT_RUN_RE.finditer(re.sub(r"\s+", " ", stripped))):
        reasons.append("repeat_run")
    words = stripped.lower().split()
    grams = [tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)]
    if len(grams) >= 4 and 1 - len(set(grams)) / len(grams) > max_repeat_share:
        reasons.append("repeat_ngram")
    if stripped and "empty" not in reasons and _letters_share(stripped) < min_letters:
        reasons.append("not_text")
    return reasons


def degeneration_rate(texts: Sequence[str]) -> float:
    """Share of texts with at least one degeneration reason."""
    if not texts:
        raise ValueError("degeneration_rate: no texts")
    return sum(bool(is_degenerate(t)) for t in texts) / len(texts)


@dataclass
class GateConfig:
    # Calibrated on the real 270M base, few-shot, 30 questions (benchmarks/gate_calibration.py): unpruned
    # 0.07, minitron-uniform 25 % 0.13, 50 % 0.47, 75 % 0.73, 90 % 0.97; the gap is between 25 and 50 %.
    max_rate: float = 0.3  # the gate passes when at most this share of answers is degenerate
    max_new_tokens: int = 32  # greedy answer length; short keeps the gate about a minute on 2 cores
    prompt: str = "fewshot"  # fewshot (base / pruned models) | sample (fine-tuned: the dataset's Q/A format)
    batch_size: int = 10  # prompts generated together (left-padded)


def _prompt(row: dict, style: str) -> str:
    if style == "sample":
        from farmslm.domain.sensors import format_prompt, validate

        readings = validate(row["sensors"]) if row.get("sensors") else None
        return format_prompt(readings, row["question"])
    lang = row.get("lang", "en")
    return FEW_SHOT.get(lang, FEW_SHOT["en"]) + f"Q: {row['question']}\nA:"


def _cut(answer: str) -> str:
    """The answer ends where the model starts the next Q/A pair."""
    return _END_RE.split(answer, maxsplit=1)[0].strip()


# Reasons no further text can undo: a row showing one stops early (the over-pruned gate runs fast).
_STICKY = ("special_token", "control_chars", "number_run", "repeat_run")


class _AnswerEnd:
    """Per-row stop once the answer is over (blank line, next "Q:") or already degenerate for good."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.prompt_len:].tolist(), special=True)
            done.append(bool(_END_RE.search(text)) or any(r in _STICKY for r in is_degenerate(_cut(text))))
        return torch.tensor(done, dtype=torch.bool)


_END_RE = re.compile(r"\n\s*\n|\nQ:")


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 40, batch_size: int = 10) -> list[str]:
    """Greedy continuations (HF generate, left padding), decoded with our tokenizer."""
    import torch
    from transformers import StoppingCriteriaList

    out = []
    pad = 0
    for start in range(0, len(prompts), batch_size):
        ids = [tokenizer.encode(p, add_bos=True) for p in prompts[start:start + batch_size]]
        width = max(len(x) for x in ids)
        x = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
        with torch.no_grad():
            gen = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_id,
                                 stopping_criteria=StoppingCriteriaList([_AnswerEnd(tokenizer, width)]))
        for row in gen[:, width:].tolist():
            if tokenizer.eos_id in row:
                row = row[:row.index(tokenizer.eos_id)]
            out.append(tokenizer.decode([t for t in row if t != pad], special=True))
    return out


def check(model, tokenizer, questions: Sequence[dict], cfg: GateConfig | None = None) -> dict:
    """Answer every validation question, score degeneration; {'passed', 'rate', 'threshold', 'reasons', 'answers'}."""
    cfg = cfg or GateConfig()
    if not questions:
        raise ValueError("gate: no validation questions")
    prompts = [_prompt(q, cfg.prompt) for q in questions]
    answers = [_cut(a) for a in generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)]
    reasons = [is_degenerate(a) for a in answers]
    rate = sum(bool(r) for r in reasons) / len(answers)
    counts = Counter(r for rs in reasons for r in rs)
    return {"passed": rate <= cfg.max_rate, "rate": rate, "threshold": cfg.max_rate, "n": len(answers),
            "reasons": dict(counts),
            "answers": [{"lang": q.get("lang"), "question": q["question"], "answer": a, "reasons": r}
                        for q, a, r in zip(questions, answers, reasons)]}
