"""Evaluate one GGUF on the dataset: quality, warnings, perplexity, degeneration, speed, memory, size.

GGUF + data dir (test.jsonl, validation_questions.jsonl, train.jsonl for few-shot) -> one JSON:
    test         the first `n_test` test rows (fixed order, languages interleaved): the model writes
                 its own tag (unguarded) -> warning accuracy vs the rule engine; the first `n_text`
                 of them are answered in full -> BLEU / ROUGE-L / chrF / terminology; the rest stop
                 after the tag (`tag_tokens`), which is all the tag metric needs and far cheaper
    validation   the 15 core questions in Korean and English, answered in full (unguarded too, so
                 the tag is the model's own) -> the same figures, degeneration rate, the answers
    perplexity   llama.cpp's own token NLL over `n_ppl` test texts (what the edge device runs)
    speed        latency per full answer (mean, max), RSS of this process after each answer, and
                 one bench run (prompt / generation tok/s, TTFT) via farmslm.runtime.bench
`summary` holds the report.json fields. Run it in its own process (`run_isolated`) so RSS is the
model's, not the build's torch heap.
Example: farmslm eval --model runs/quick/model.gguf --data runs/quick/data --out eval.json
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from farmslm import artifacts
from farmslm.runtime.engine import REPEAT_PENALTY

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    n_test: int = 200  # test rows scored for the model's own warning tag (languages interleaved)
    n_text: int = 60  # of those, rows answered in full for BLEU / ROUGE-L / chrF / terminology
    max_tokens: int = 128  # generation cap of a full answer (test and validation questions)
    tag_tokens: int = 32  # generation cap of a tag-only row (longest tag is ~30 tokens)
    n_ppl: int = 64  # test texts scored for perplexity
    ppl_ctx: int = 256  # tokens per perplexity text (longer ones are cut)
    n_ctx: int = 1024  # llama.cpp context for answering (few-shot prompts included)
    threads: int = 0  # llama.cpp threads; 0 = all cores
    repeat_penalty: float = REPEAT_PENALTY  # llama.cpp repetition penalty of the answers
    bench: bool = True  # measure prompt/generation tok/s and TTFT once with the bench
    bench_repeats: int = 3  # bench runs after its warm-up (medians reported)
    n_few_shot: int = 2  # examples (one per language) prefixed for untrained variants
    validation: bool = True  # answer the validation questions (degeneration, the report's answers)


def interleave_langs(rows: list[dict]) -> list[dict]:
    """ko, en, ko, en, ... in file order: any prefix of the result is balanced across languages."""
    by_lang = {"ko": [r for r in rows if r.get("lang") == "ko"], "en": [r for r in rows if r.get("lang") == "en"]}
    out = []
    for i in range(max(len(v) for v in by_lang.values()) if rows else 0):
        out += [by_lang[lang][i] for lang in ("ko", "en") if i < len(by_lang[lang])]
    return out


def few_shot_text(data_dir: Path, n: int) -> str:
    """The first train rows, alternating languages: shows an untrained model the Q/A/tag format."""
    from farmslm.runtime.engine import few_shot_prefix

    if n <= 0:
        return ""
    rows = interleave_langs(artifacts.read_jsonl(data_dir / "train.jsonl"))[:n]
    return few_shot_prefix([r["text"] for r in rows])


def _answer_rows(engine, rows: list[dict], n_full: int, cfg: EvalConfig, process, on_row=None) -> list[dict]:
    from farmslm.domain import rules
    from farmslm.domain.sensors import validate
    from farmslm.runtime.engine import Answer, InputError

    out = []
    for i, row in enumerate(rows):
        readings = validate(row["sensors"]) if row.get("sensors") else None
        gold = rules.evaluate(readings) if readings else []
        full = i < n_full
        try:
            a = engine.ask(row["question"], readings, guard=False,
                           max_tokens=cfg.max_tokens if full else cfg.tag_tokens)
        except InputError as exc:  # e.g. a prompt longer than the context: scored as no answer
            log.warning("row %s: %s", row.get("id"), exc)
            a = Answer(warnings=[], answer="", tag_source="none")
        pred = a.warnings if a.tag_source == "model" and _has_tag(a) else None
        out.append({"id": row.get("id"), "lang": row["lang"], "question": row["question"], "gold": gold,
                    "pred": pred, "answer": a.answer if full else None, "reference": row.get("answer"),
                    "full": full, "latency_s": a.timings.total_ms / 1000, "gen_tokens": a.timings.gen_tokens,
                    "rss_mb": process.memory_info().rss / 1e6})
        if on_row:
            on_row()
    return out


def _has_tag(answer) -> bool:
    """Unguarded: the engine returns [] both for [NORMAL] and for no tag; `tag_found` tells them apart."""
    return getattr(answer, "tag_found", True) if answer.warnings == [] else True


def _scores(rows: list[dict]) -> dict:
    from farmslm.evaluate import metrics

    full = [r for r in rows if r["full"]]
    out = {"warnings": metrics.warning_scores([r["pred"] for r in rows], [r["gold"] for r in rows],
                                              [r["lang"] for r in rows]) if rows else None}
    scored = [r for r in full if r.get("reference")]
    out["text"] = metrics.text_scores([r["answer"] for r in scored], [r["reference"] for r in scored],
                                      [r["lang"] for r in scored]) if scored else None
    out["term_match"] = metrics.term_match([r["answer"] for r in full], [r["lang"] for r in full]) if full else None
    out["degeneration"] = metrics.degeneration([r["answer"] for r in full]) if full else None
    return out


def gguf_params(path: Path) -> int:
    """Parameter count of a GGUF: the element count of its tensors."""
    from gguf import GGUFReader

    return int(sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors))


def run(cfg: EvalConfig, model: str | Path, data_dir: str | Path, out: str | Path | None = None,
        few_shot: bool = False, on_row=None) -> dict:
    """Evaluate `model` on `data_dir`; write `out` (JSON) when given and return the result."""
    import psutil

    from farmslm.runtime.engine import Engine

    model, data_dir = Path(model), Path(data_dir)
    for name in ("test.jsonl", "validation_questions.jsonl"):
        if not (data_dir / name).exists():
            raise FileNotFoundError(f"--data: {data_dir / name} does not exist; build the dataset first")
    started = time.time()
    process = psutil.Process()
    prefix = few_shot_text(data_dir, cfg.n_few_shot) if few_shot else ""
    engine = Engine(model, n_threads=cfg.threads or None, n_ctx=cfg.n_ctx, few_shot=prefix,
                    repeat_penalty=cfg.repeat_penalty)
    rss_loaded = process.memory_info().rss / 1e6
    test_rows = interleave_langs(artifacts.read_jsonl(data_dir / "test.jsonl"))[: cfg.n_test]
    val_rows = artifacts.read_jsonl(data_dir / "validation_questions.jsonl") if cfg.validation else []
    try:
        test = _answer_rows(engine, test_rows, cfg.n_text, cfg, process, on_row)
        val = _answer_rows(engine, val_rows, len(val_rows), cfg, process, on_row)
        ppl_texts = [r["text"] for r in test_rows[: cfg.n_ppl] if r.get("text")]
        ppl = round(engine.perplexity(ppl_texts, n_ctx=cfg.ppl_ctx), 4) if ppl_texts else None
    finally:
        engine.close()
    speed = _bench(model, cfg) if cfg.bench else {}
    full = [r for r in test + val if r["full"]]
    # RSS after each answer; with no answers (speed-only runs) the bench's peak
    rss = [r["rss_mb"] for r in test + val] or [speed.get("peak_rss_mb") or rss_loaded]
    result = {
        "model": str(model), "few_shot": few_shot, "config": artifacts._jsonable(cfg),
        "size_mb": round(model.stat().st_size / 1e6, 1), "params_m": round(gguf_params(model) / 1e6, 2),
        "test": _scores(test), "validation": _scores(val), "perplexity": ppl,
        "latency_s_avg": round(sum(r["latency_s"] for r in full) / len(full), 3) if full else None,
        "latency_s_max": round(max(r["latency_s"] for r in full), 3) if full else None,
        "rss_mb_avg": round(sum(rss) / len(rss), 1), "rss_mb_max": round(max(rss), 1), "rss_mb_loaded": round(rss_loaded, 1),
        "speed": speed, "answers": {"test": test, "validation": val}, "duration_s": round(time.time() - started, 1),
    }
    result["summary"] = summary(result)
    if out is not None:
        artifacts.write_json(out, result)
    return result


def _bench(model: Path, cfg: EvalConfig) -> dict:
    """Prompt / generation tok/s and TTFT, median of repeated runs (farmslm.runtime.bench)."""
    import os

    from farmslm.runtime import bench

    r = bench.run(bench.BenchConfig(model=str(model), threads=cfg.threads or os.cpu_count() or 1,
                                    repeats=cfg.bench_repeats))["models"][0]
    return {"gen_tok_s": r["gen_tok_s"], "prompt_tok_s": r["prompt_tok_s"], "ttft_ms": r["ttft_ms"],
            "peak_rss_mb": round(r["peak_rss_bytes"] / 1e6, 1), "raw": r}


def summary(result: dict) -> dict:
    """The report.json fields of one variant (null where a figure does not apply)."""
    test, val = result.get("test") or {}, result.get("validation") or {}
    text = (test.get("text") or {}).get("all") or {}
    warn = test.get("warnings") or {}
    degen = val.get("degeneration") or {}
    terms = test.get("term_match") or {}
    speed = result.get("speed") or {}
    return {
        "bleu": text.get("bleu"), "rouge_l": text.get("rouge_l"), "chrf": text.get("chrf"),
        "warning_accuracy": warn.get("accuracy"), "warning_accuracy_ko": warn.get("accuracy_ko"),
        "warning_accuracy_en": warn.get("accuracy_en"), "term_match": terms.get("all"),
        "perplexity": result.get("perplexity"), "degenerate_rate": degen.get("rate"),
        "size_mb": result.get("size_mb"), "params_m": result.get("params_m"),
        "gen_tok_s": speed.get("gen_tok_s"), "prompt_tok_s": speed.get("prompt_tok_s"), "ttft_ms": speed.get("ttft_ms"),
        "latency_s_avg": result.get("latency_s_avg"), "latency_s_max": result.get("latency_s_max"),
        "rss_mb_avg": result.get("rss_mb_avg"), "rss_mb_max": result.get("rss_mb_max"),
    }


def run_isolated(cfg: EvalConfig, model: str | Path, data_dir: str | Path, out: str | Path,
                 few_shot: bool = False) -> dict:
    """run() in a fresh Python process (RSS of the model alone; a llama.cpp crash cannot kill the build)."""
    import subprocess

    out = Path(out)
    job = out.with_suffix(".job.json")
    artifacts.write_json(job, {"config": cfg, "model": str(model), "data": str(data_dir), "out": str(out),
                               "few_shot": few_shot})
    try:
        proc = subprocess.run([sys.executable, "-m", "farmslm.evaluate.evaluate", str(job)],
                              capture_output=True, text=True)
    finally:
        job.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluating {model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return artifacts.read_json(out)


def _main(job_path: str) -> None:
    job = artifacts.read_json(job_path)
    run(EvalConfig(**job["config"]), job["model"], job["data"], job["out"], job["few_shot"])


if __name__ == "__main__":
    _main(sys.argv[1])
