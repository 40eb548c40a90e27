"""Quality metrics: BLEU, ROUGE-L and chrF that work for Korean, warning accuracy, terminology.

(answers, references, languages, tags) -> figures, per language and together. All scores in [0, 1]
(sacrebleu's 0-100 divided by 100, the scale the design report used for BLEU 0.1343).

Korean tokenization: MeCab-ko morphemes (sacrebleu's `ko-mecab`, `pip install "sacrebleu[ko]"`),
the standard for Korean BLEU. Without it installed, Korean falls back to characters (sacrebleu's
`char`), and the result says which one was used (`ko_tokenizer`), since scores differ between them.
English: sacrebleu's `13a`. Texts are tokenized per language first, so a mixed corpus scores in one
corpus-level BLEU. ROUGE-L (rouge-score) gets the same tokens, lowercased: its default tokenizer
keeps only [a-z0-9] and would score every Korean answer 0.
Example: from farmslm.evaluate.metrics import text_scores; text_scores(["..."], ["..."], ["ko"])
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from farmslm.domain.lang import LANGS


@lru_cache(maxsize=1)
def _ko_tokenizer():
    """(name, callable) of the Korean tokenizer: MeCab-ko when installed, else characters."""
    try:
        from sacrebleu.tokenizers.tokenizer_ko_mecab import TokenizerKoMecab

        return "ko-mecab", TokenizerKoMecab()
    except (ImportError, RuntimeError, AssertionError):
        from sacrebleu.tokenizers.tokenizer_char import TokenizerChar

        return "char", TokenizerChar()


@lru_cache(maxsize=1)
def _en_tokenizer():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def ko_tokenizer_name() -> str:
    return _ko_tokenizer()[0]


def tokenize(text: str, lang: str) -> list[str]:
    """Text -> tokens for BLEU/ROUGE: MeCab-ko morphemes (or characters) for ko, 13a for en."""
    if lang not in LANGS:
        raise ValueError(f"lang: got {lang!r}; expected one of {', '.join(LANGS)}")
    tok = _ko_tokenizer()[1] if lang == "ko" else _en_tokenizer()
    return tok(text.strip()).split()


def _check(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> None:
    if not len(hyps) == len(refs) == len(langs):
        raise ValueError(f"got {len(hyps)} answers, {len(refs)} references, {len(langs)} languages; need equal counts")


def bleu(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> float | None:
    """Corpus BLEU in [0, 1] over pre-tokenized texts (sacrebleu, tokenize='none')."""
    from sacrebleu.metrics import BLEU

    _check(hyps, refs, langs)
    if not hyps:
        return None
    h = [" ".join(tokenize(t, lang)) for t, lang in zip(hyps, langs)]
    r = [" ".join(tokenize(t, lang)) for t, lang in zip(refs, langs)]
    return round(BLEU(tokenize="none").corpus_score(h, [r]).score / 100, 4)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    """Corpus chrF (character n-grams, language-independent) in [0, 1]."""
    from sacrebleu.metrics import CHRF

    if not hyps:
        return None
    return round(CHRF().corpus_score(list(hyps), [list(refs)]).score / 100, 4)


class _Tokens:
    """rouge-score tokenizer interface over our per-language tokens, lowercased."""

    def __init__(self, lang: str):
        self.lang = lang

    def tokenize(self, text: str) -> list[str]:
        return [t.lower() for t in tokenize(text, self.lang)]


def rouge_l(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> float | None:
    """Mean ROUGE-L F1 in [0, 1] (rouge-score, longest common subsequence of tokens)."""
    from rouge_score.rouge_scorer import RougeScorer

    _check(hyps, refs, langs)
    if not hyps:
        return None
    scorers = {lang: RougeScorer(["rougeL"], tokenizer=_Tokens(lang)) for lang in set(langs)}
    f1 = [scorers[lang].score(r, h)["rougeL"].fmeasure for h, r, lang in zip(hyps, refs, langs)]
    return round(sum(f1) / len(f1), 4)


def text_scores(hyps: Sequence[str], refs: Sequence[str], langs: Sequence[str]) -> dict:
    """BLEU, ROUGE-L, chrF for all rows and per language: {"all": {...}, "ko": {...}, "en": {...}}."""
    _check(hyps, refs, langs)
    out = {}
    for group in ("all",) + LANGS:
        idx = [i for i, lang in enumerate(langs) if group in ("all", lang)]
        h, r, lg = [hyps[i] for i in idx], [refs[i] for i in idx], [langs[i] for i in idx]
        out[group] = {"n": len(idx), "bleu": bleu(h, r, lg), "rouge_l": rouge_l(h, r, lg), "chrf": chrf(h, r)}
    out["ko_tokenizer"] = ko_tokenizer_name()
    return out


def warning_scores(pred: Sequence[list[str] | None], gold: Sequence[list[str]], langs: Sequence[str]) -> dict:
    """The model's own tag vs the rule engine's: exact-set accuracy (all, ko, en), per-code F1.

    pred[i] is None when the model wrote no parseable tag: it counts as wrong (and in tag_rate).
    NORMAL is the empty set, so [NORMAL] vs [NORMAL] is a match. Per-code figures count a code
    as predicted or not per row; macro F1 averages the codes that occur in gold or predictions.
    """
    if not len(pred) == len(gold) == len(langs):
        raise ValueError(f"got {len(pred)} predictions, {len(gold)} gold tags, {len(langs)} languages")
    out: dict = {}
    for group in ("all",) + LANGS:
        idx = [i for i, lang in enumerate(langs) if group in ("all", lang)]
        hits = sum(pred[i] is not None and set(pred[i]) == set(gold[i]) for i in idx)
        out[f"accuracy_{group}" if group != "all" else "accuracy"] = round(hits / len(idx), 4) if idx else None
    out["n"] = len(gold)
    out["tag_rate"] = round(sum(p is not None for p in pred) / len(pred), 4) if pred else None
    codes = sorted({c for g in gold for c in g} | {c for p in pred if p for c in p})
    per_code = {}
    for code in codes:
        tp = sum(code in (p or []) and code in g for p, g in zip(pred, gold))
        fp = sum(code in (p or []) and code not in g for p, g in zip(pred, gold))
        fn = sum(code not in (p or []) and code in g for p, g in zip(pred, gold))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_code[code] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "support": tp + fn}
    out["per_code"] = per_code
    out["macro_f1"] = round(sum(c["f1"] for c in per_code.values()) / len(per_code), 4) if per_code else None
    return out


def term_match(answers: Sequence[str], langs: Sequence[str]) -> dict:
    """Mean terminology match rate of the answers (farmslm.domain.terms), all and per language."""
    from farmslm.domain.terms import match_rate

    rates = [match_rate(a, lang) for a, lang in zip(answers, langs)]
    out = {}
    for group in ("all",) + LANGS:
        r = [x for x, lang in zip(rates, langs) if group in ("all", lang)]
        out[group] = round(sum(r) / len(r), 4) if r else None
    return out


def degeneration(answers: Sequence[str]) -> dict:
    """Degeneration rate of answers by the quality gate's detector, with the reasons counted."""
    from collections import Counter

    from farmslm.evaluate.gate import GateConfig, is_degenerate

    reasons = [is_degenerate(a) for a in answers]
    rate = sum(bool(r) for r in reasons) / len(reasons) if reasons else None
    return {"rate": None if rate is None else round(rate, 4), "n": len(reasons),
            "reasons": dict(Counter(x for r in reasons for x in r)), "gate_threshold": GateConfig().max_rate}
