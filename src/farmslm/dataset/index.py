"""The index stage: the knowledge index the model ships with, its abstention model, and retrieval figures.

knowledge base (+ dataset dir for calibration) -> index.json (facts, tokens, calibrated abstention) + meta.json:
- the abstention model is fitted on the training questions and grower_questions.yaml (answerable, the latter in
  growers' own words) against abstain_train.yaml (questions to decline), and its threshold is chosen on the validation questions, the paraphrase set's dev
  half and the out-of-scope set's dev half (never their test halves, never the test split);
- figures on dev material: retrieval recall@1/@k, abstention and false abstention.
`farmslm index --knowledge DIR --out X.json [--like OLD.json]` rebuilds the index alone (facts added after a
build become answerable without retraining), keeping the abstention model of OLD.json.

Example: farmslm index --out runs/quick/model.knowledge.json --like runs/quick/model.knowledge.json
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from farmslm import artifacts
from farmslm.domain.retrieve import DEFAULT_ANALYZER


@dataclass
class IndexConfig:
    analyzer: str = DEFAULT_ANALYZER  # Korean analyzer: mecab (MeCab-ko morphemes) | ngram (Hangul bigrams, no dictionary)
    k: int = 2  # facts retrieved into a prompt
    max_false_abstain: float = 0.03  # the abstention threshold keeps false abstention on val rows at or below this
    max_false_abstain_grower: float = 0.05  # ... and on the paraphrase set's dev half (growers' own words)
    n_fit: int = 1200  # training questions (answerable side) the abstention model is fitted on
    c: float = 1.0  # inverse L2 strength of the abstention model's logistic regression
    min_df: int = 3  # a question word gets its own abstention weight when this many fit questions use it
    seed: int = 0


def _yaml(name: str) -> dict:
    return yaml.safe_load(resources.files("farmslm.domain").joinpath(f"data/{name}").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def eval_sets() -> dict[str, list[dict]]:
    """The frozen question sets: paraphrases (with fact_id) and out_of_scope, each row with its `half`."""
    return {"paraphrases": list(_yaml("knowledge/paraphrases.yaml")["questions"]),
            "out_of_scope": list(_yaml("knowledge/out_of_scope.yaml")["questions"])}


def abstain_training() -> list[dict]:
    return list(_yaml("abstain_train.yaml")["questions"])


def grower_questions() -> list[dict]:
    """Answerable questions in growers' words, written from the fact texts (fitting only, never evaluation)."""
    return list(_yaml("grower_questions.yaml")["questions"])


def recall(index, rows: list[dict], k: int) -> dict:
    """recall@1 and @k of rows {question, lang, fact_id}, all and per language."""
    out: dict = {}
    for group in ("all", "en", "ko"):
        sub = [r for r in rows if group in ("all", r["lang"])]
        if not sub:
            continue
        hits = [[h.fact_id for h in index.search(r["question"], r["lang"], k)] for r in sub]
        out[group] = {"n": len(sub), "recall_at_1": round(sum(h[:1] == [r["fact_id"]] for h, r in zip(hits, sub)) / len(sub), 4),
                      f"recall_at_{k}": round(sum(r["fact_id"] in h for h, r in zip(hits, sub)) / len(sub), 4)}
    return out


def abstention(index, rows: list[dict], k: int) -> dict:
    """Share of rows the engine's decision would decline, all and per language."""
    from farmslm.domain.abstain import decide

    out: dict = {}
    for group in ("all", "en", "ko"):
        sub = [r for r in rows if group in ("all", r["lang"])]
        if sub:
            n = sum(decide(r["question"], r["lang"], index.search(r["question"], r["lang"], k), index)["abstain"]
                    for r in sub)
            out[group] = {"n": len(sub), "rate": round(n / len(sub), 4)}
    return out


def run(cfg: IndexConfig, data_dir: str | Path, out_path: str | Path) -> Path:
    """Build and calibrate the index into out_path (skipped when done with the same inputs)."""
    from farmslm.domain import abstain, retrieve

    out_path, data_dir = Path(out_path), Path(data_dir)
    out_dir = out_path.parent
    inputs = {"knowledge": artifacts.hash_path(resources.files("farmslm.domain").joinpath("data")),
              "train": artifacts.hash_path(data_dir / "train.jsonl"), "val": artifacts.hash_path(data_dir / "val.jsonl"),
              "code": artifacts.code_hash("farmslm.dataset.index")}
    if artifacts.is_done(out_dir, cfg, inputs) and out_path.exists():
        return out_path
    started = time.time()
    index = retrieve.build(cfg.analyzer)
    rng = random.Random(cfg.seed)
    train = [r for r in artifacts.read_jsonl(data_dir / "train.jsonl") if not r.get("abstain")]
    val = [r for r in artifacts.read_jsonl(data_dir / "val.jsonl") if not r.get("abstain")]
    sets = eval_sets()
    para_dev = [p for p in sets["paraphrases"] if p["half"] == "dev"]
    oos_dev = [q for q in sets["out_of_scope"] if q["half"] == "dev"]
    fit_pos = [(r["question"], r["lang"]) for r in rng.sample(train, min(cfg.n_fit, len(train)))]
    fit_pos += [(q["question"], q["lang"]) for q in grower_questions()]
    fit_neg = [(q["question"], q["lang"]) for q in abstain_training()]
    dev_pos = [(r["question"], r["lang"]) for r in val]
    dev_grower = [(p["question"], p["lang"]) for p in para_dev]
    dev_neg = [(q["question"], q["lang"]) for q in oos_dev]
    index.abstain = abstain.calibrate(index, fit_pos, fit_neg, dev_pos, dev_neg, cfg.max_false_abstain, cfg.k,
                                      dev_grower, cfg.max_false_abstain_grower, cfg.c, cfg.min_df)
    index.save(out_path)
    metrics = {"facts": len(index.facts), "knowledge_hash": index.knowledge_hash, "analyzer": cfg.analyzer,
               "abstain": index.abstain, "recall_val": recall(index, val, cfg.k),
               "recall_paraphrase_dev": recall(index, para_dev, cfg.k),
               "abstention_oos_dev": abstention(index, oos_dev, cfg.k),
               "false_abstention_val": abstention(index, val, cfg.k),
               "false_abstention_paraphrase_dev": abstention(index, para_dev, cfg.k)}
    artifacts.write_meta(out_dir, "index", cfg, inputs, metrics, started)
    return out_path


def rebuild(out_path: str | Path, knowledge_dir: str | Path | None = None, like: str | Path | None = None,
            analyzer: str | None = None) -> Path:
    """`farmslm index`: a new index over (another) knowledge dir, keeping the abstention model of `like`."""
    from farmslm.domain import retrieve

    old = retrieve.load(like) if like else None
    index = retrieve.build(analyzer or (old.analyzer if old else IndexConfig.analyzer), knowledge_dir,
                           old.abstain if old else None)
    return index.save(out_path)
