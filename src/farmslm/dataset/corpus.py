"""Every text the vocabulary trim must tokenize exactly: training rows, knowledge base, terminology, rules.

Only train.jsonl of the dataset: validation and test text must not shape the vocabulary (held-out text is
measured on a trim that never saw it: benchmarks/vocab_trim.py).

Example: python -c "from farmslm.dataset.corpus import domain_texts; print(len(domain_texts('runs/x/data')))"
"""

from __future__ import annotations

from pathlib import Path

from farmslm.artifacts import read_jsonl
from farmslm.domain import rules, terms
from farmslm.domain.knowledge import knowledge_texts
from farmslm.domain.lang import LANGS

ROW_FILES = ("train.jsonl",)


def domain_texts(data_dir: str | Path) -> list[str]:
    """data_dir (a dataset build) -> texts: each training row's `text`, knowledge-base strings, dictionary terms
    and synonyms, rule messages / causes / actions. Order is stable; duplicates removed."""
    data_dir = Path(data_dir)
    out: list[str] = []
    for name in ROW_FILES:
        path = data_dir / name
        if path.exists():
            out += [r["text"] for r in read_jsonl(path)]
    out += knowledge_texts()
    for t in terms.load_terms():
        out += [t.en, t.ko, *t.synonyms]
    for rule in rules.load_rules().values():
        for lang in LANGS:
            out += [rule.message[lang], rule.cause[lang], *rule.actions[lang], *rule.night_message.values()]
    return list(dict.fromkeys(s for s in out if s))
