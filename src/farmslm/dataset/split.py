"""Stratified train/val/test splits with a cross-split leakage check, and the validation questions.

Rows are grouped by (category, lang), shuffled with the seed and cut by the split fractions, so every
split keeps the category × language mix. Leakage: no pair across splits may reach cosine >= threshold
(TF-IDF character n-grams on question + answer, as in verify); a val/test row that does is moved to
train (and reported). `validation_rows` builds the 15 hand-written core questions in both languages.

Example: python -c "from farmslm.dataset.split import split_rows; help(split_rows)"
"""

from __future__ import annotations

import random

from farmslm.dataset import verify
from farmslm.domain import rules
from farmslm.domain.knowledge import load_validation
from farmslm.domain.lang import LANGS
from farmslm.domain.sensors import validate

SPLITS = ("train", "val", "test")


def split_rows(rows: list[dict], seed: int, val_frac: float, test_frac: float) -> dict[str, list[dict]]:
    """Rows about held-out facts go to their split (`heldout`: val | test); the rest are stratified by
    (category, lang): each group contributes round(n*frac) rows to val and test."""
    groups: dict[tuple[str, str], list[dict]] = {}
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in rows:
        if r.get("heldout"):
            out[r["heldout"]].append(r)
        else:
            groups.setdefault((r["category"], r["lang"]), []).append(r)
    rng = random.Random(seed)
    for key in sorted(groups):
        group = list(groups[key])
        rng.shuffle(group)
        n_val, n_test = round(len(group) * val_frac), round(len(group) * test_frac)
        out["val"] += group[:n_val]
        out["test"] += group[n_val:n_val + n_test]
        out["train"] += group[n_val + n_test:]
    order = {r["id"]: i for i, r in enumerate(rows)}  # keep the input order inside each split
    return {s: sorted(v, key=lambda r: order[r["id"]]) for s, v in out.items()}


def leakage_pairs(splits: dict[str, list[dict]], threshold: float, cfg: verify.VerifyConfig | None = None):
    """All (row_a, row_b, cos) with the two rows in different splits and cos >= threshold."""
    cfg = cfg or verify.VerifyConfig()
    rows = [(s, r) for s in SPLITS for r in splits.get(s, [])]
    if len(rows) < 2:
        return []
    x = verify.vectorize([verify.qa_text(r) for _, r in rows], cfg)
    return [(rows[i], rows[j], c) for i, j, c in verify.similar_pairs(x, threshold) if rows[i][0] != rows[j][0]]


def fix_leakage(splits: dict[str, list[dict]], threshold: float, cfg: verify.VerifyConfig | None = None,
                max_rounds: int = 5) -> tuple[dict[str, list[dict]], dict]:
    """Move every val/test row that pairs with another split to train until none is left; a row about a
    held-out fact is dropped instead (returned under `dropped_heldout`): it must never reach training."""
    moved, dropped = [], []
    for _ in range(max_rounds):
        pairs = leakage_pairs(splits, threshold, cfg)
        if not pairs:
            return splits, {"pairs_found": len(moved) + len(dropped), "moved_to_train": moved,
                            "dropped_heldout": dropped, "pairs_left": 0}
        to_move = set()
        for (sa, ra), (sb, rb), _ in pairs:
            # move the held-out side (val/test) of each pair; between val and test, move the test row
            side = (sb, rb) if sb != "train" else (sa, ra)
            if side[0] != "train":
                to_move.add((side[0], side[1]["id"]))
        for split, rid in sorted(to_move):
            row = next(r for r in splits[split] if r["id"] == rid)
            splits[split].remove(row)
            if row.get("heldout"):
                dropped.append({**row, "reason": f"leakage: a {split} row about a held-out fact resembles another split's row"})
            else:
                splits["train"].append(row)
                moved.append(rid)
    left = len(leakage_pairs(splits, threshold, cfg))
    return splits, {"pairs_found": len(moved) + len(dropped), "moved_to_train": moved, "dropped_heldout": dropped,
                    "pairs_left": left}


def validation_rows() -> list[dict]:
    """The 15 core questions × {ko, en}: warnings by the rule engine, `answer` = the hand-written reference
    of the model-written part (the rule sentences are the engine's). Rows share `qid` across languages."""
    out = []
    for v in load_validation():
        readings = validate(v["sensors"])
        warnings = rules.evaluate(readings)
        for lang in LANGS:
            out.append({"id": f"{v['qid']}-{lang}", "qid": v["qid"], "lang": lang, "category": v["category"],
                        "sensors": readings, "question": v[lang]["question"], "warnings": warnings,
                        "answer": v[lang]["answer"]})
    return out
