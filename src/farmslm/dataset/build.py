"""The dataset stage: synthesize -> verify -> split (+ leakage check) -> validation questions -> card.

DataConfig -> out_dir/{train,val,test,validation_questions,quarantine}.jsonl, card.json, card.md,
meta.json. Deterministic for a seed; skipped when meta.json records the same config and inputs.

Held-out facts (`heldout_share` of each category's facts) get rows in val/test only (heldout_facts.json).
Example: farmslm data build --out runs/x/data --seed 0 --size 3800
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from farmslm import artifacts
from farmslm.dataset import card as card_mod
from farmslm.dataset import split, synth, verify
from farmslm.domain.retrieve import DEFAULT_ANALYZER

DATA_DIR = Path(__file__).resolve().parents[1] / "domain" / "data"


@dataclass
class DataConfig:
    out_dir: str = "runs/default/data"  # where the dataset files go
    seed: int = 0  # one seed fixes every draw: same seed, same files
    size: int = 4400  # rows synthesized before verification (~20 % fall out as duplicates: >= 3,000 remain)
    warning_share: float = 0.58  # share of synthesized rows drawn to carry at least one warning
    heldout_share: float = 0.12  # share of each category's facts kept out of every training row (val/test only)
    analyzer: str = DEFAULT_ANALYZER  # Korean analyzer of the retrieval index that picks each prompt's facts
    val_frac: float = 0.1  # share of each category x language group held out for validation
    test_frac: float = 0.1  # ... and for test
    dup_threshold: float = 0.85  # cosine (char n-gram TF-IDF, question + answer) that counts as duplicate
    term_threshold: float = 0.70  # minimum terminology match rate of a row
    llm_endpoint: str | None = None  # OpenAI-compatible chat endpoint; None = knowledge synthesizer only
    llm_model: str | None = None  # model name sent to the endpoint
    llm_rows: int = 200  # rows requested from the endpoint when one is given
    llm_max_tokens: int = 160  # completion limit per LLM answer
    llm_timeout_s: float = 60.0  # per request


class DataConfigError(ValueError):
    """A dataset flag or profile value out of range."""


def check(cfg: DataConfig) -> None:
    if cfg.size < 20:
        raise DataConfigError(f"--size: got {cfg.size}; expected at least 20 rows")
    if not 0 <= cfg.val_frac < 0.5 or not 0 <= cfg.test_frac < 0.5:
        raise DataConfigError("val_frac/test_frac: expected fractions in [0, 0.5)")
    if not 0 < cfg.dup_threshold <= 1 or not 0 <= cfg.term_threshold <= 1:
        raise DataConfigError("dup_threshold/term_threshold: expected values in (0, 1]")
    if not 0 <= cfg.warning_share <= 1:
        raise DataConfigError("warning_share: expected a value in [0, 1]")
    if not 0 <= cfg.heldout_share <= 0.5:
        raise DataConfigError(f"heldout_share: got {cfg.heldout_share}; expected a fraction in [0, 0.5]")
    if bool(cfg.llm_endpoint) != bool(cfg.llm_model):
        raise DataConfigError("--llm-endpoint and --llm-model go together")


def inputs() -> dict[str, str]:
    """Hashes of the data files the dataset is made from (knowledge, rules, terminology) and of the code."""
    return {"domain/data": artifacts.hash_path(DATA_DIR), "code": artifacts.code_hash("farmslm.dataset.build")}


def run(cfg: DataConfig) -> Path:
    """Build the dataset into cfg.out_dir and return it (skipped if already built from the same inputs)."""
    check(cfg)
    out_dir = Path(cfg.out_dir)
    ins = inputs()
    if artifacts.is_done(out_dir, cfg, ins):
        print(f"data: {out_dir} already built with this config; skipping")
        return out_dir
    started = time.time()
    from farmslm.domain import retrieve

    heldout = synth.heldout_facts(cfg.heldout_share, cfg.seed)
    index = retrieve.build(cfg.analyzer)
    rows = synth.synthesize(cfg.size, seed=cfg.seed, warning_share=cfg.warning_share, heldout=heldout, index=index)
    quarantine: list[dict] = []
    llm_figures = None
    if cfg.llm_endpoint:
        from farmslm.dataset import llm

        llm_rows, failed = llm.synthesize_llm(cfg.llm_rows, cfg.seed, cfg.llm_endpoint, cfg.llm_model,
                                              cfg.llm_max_tokens, cfg.llm_timeout_s, index)
        rows += llm_rows
        quarantine += failed
        llm_figures = {"requested": cfg.llm_rows, "answered": len(llm_rows), "request_failed": len(failed)}
    vcfg = verify.VerifyConfig(dup_threshold=cfg.dup_threshold, term_threshold=cfg.term_threshold)
    kept, rejected, figures = verify.verify_rows(rows, vcfg)
    quarantine += rejected
    if llm_figures is not None:
        llm_figures["verified"] = sum(1 for r in kept if r["id"].startswith("llm-"))
        figures["llm"] = llm_figures
    figures["n_quarantined"] = len(quarantine)
    splits = split.split_rows(kept, cfg.seed, cfg.val_frac, cfg.test_frac)
    splits, leakage = split.fix_leakage(splits, cfg.dup_threshold, vcfg)
    quarantine += leakage.pop("dropped_heldout")
    validation = split.validation_rows()
    for name in split.SPLITS:
        artifacts.write_jsonl(out_dir / f"{name}.jsonl", splits[name])
    artifacts.write_jsonl(out_dir / "validation_questions.jsonl", validation)
    artifacts.write_jsonl(out_dir / "quarantine.jsonl", quarantine)
    artifacts.write_json(out_dir / "heldout_facts.json", heldout)
    card = card_mod.build_card(splits, validation, figures, leakage, asdict(cfg), heldout)
    artifacts.write_json(out_dir / "card.json", card)
    artifacts.write_text(out_dir / "card.md", card_mod.card_markdown(card))
    metrics = {"rows": card["rows_total"], **{f"rows_{s}": len(v) for s, v in splits.items()},
               "ko_pct": card["overall"]["by_lang_pct"]["ko"], "en_pct": card["overall"]["by_lang_pct"]["en"],
               "warning_pct": card["overall"]["warning_pct"], "normal_pct": card["overall"]["normal_pct"],
               "duplicates_removed": figures["duplicates_removed"], "quarantined": len(quarantine),
               "term_match_mean": figures["term_match_mean_verified"], "leakage_moved": leakage["pairs_found"]}
    artifacts.write_meta(out_dir, "data", cfg, ins, metrics, started)
    return out_dir

