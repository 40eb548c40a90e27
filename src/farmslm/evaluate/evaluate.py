"""Evaluate one GGUF the way growers use it: guarded, grounded answers; faithfulness; abstention; speed.

GGUF (+ knowledge index) + data dir -> one JSON, on one split (`test` for the report, `val` for choosing the
final model; each split's frozen halves of the paraphrase and out-of-scope sets go with it: val <-> dev):
    answers       `n_answer` rows answered in full, guarded (the rule engine's tag and sentences prefilled,
                  the model writes the rest): ROUGE-L / BLEU / chrF of the model-written part against the
                  row's reference, faithfulness flags (evaluate.faithful), fact recall / precision against
                  the row's gold fact, false abstention; rows about held-out facts (never trained on) are
                  included and also scored apart
    validation    the 15 core questions in Korean and English (test only): the same, and degeneration
    out_of_scope  the set's half: the share the answer declines (by the engine's decision or the model's)
    retrieval     recall@1 / @k of the split's rows and of the paraphrase half (index only, no generation)
    tags          `n_tag` rows unguarded, stopped after the tag: the model's own warning tag (research figure)
    perplexity    llama.cpp's own token NLL over `n_ppl` texts of the split
    speed         latency per full answer, RSS after each, and one bench run
`summary` holds the report.json fields. Run it in its own process (`run_isolated`) so RSS is the model's.
Example: farmslm eval --model runs/quick/model.gguf --data runs/quick/data --out eval.json
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from farmslm import artifacts
from farmslm.runtime.engine import REPEAT_PENALTY

log = logging.getLogger(__name__)
SPLITS = ("test", "val")
HALF = {"test": "test", "val": "dev"}  # which frozen half of the question sets goes with a split


@dataclass
class EvalConfig:
    split: str = "test"  # test: the report's figures | val: choosing the final model (dev halves of the sets)
    n_answer: int = 60  # rows answered in full, guarded (languages interleaved; held-out facts' rows first)
    n_heldout: int = 16  # of those, rows about held-out facts (facts no training row ever showed)
    n_tag: int = 40  # rows for the research figure: the model's own tag, unguarded, stopped after the tag
    max_tokens: int = 96  # generation cap of a full answer (the model-written part)
    tag_tokens: int = 24  # generation cap of a tag-only row (the longest tag is ~30 tokens)
    n_ppl: int = 64  # texts scored for perplexity
    ppl_ctx: int = 512  # tokens per perplexity text (grounded samples are ~250-450 tokens)
    n_ctx: int = 2048  # llama.cpp context for answering (grounded few-shot prompts for untrained variants included)
    threads: int = 0  # llama.cpp threads; 0 = all cores
    repeat_penalty: float = REPEAT_PENALTY  # llama.cpp repetition penalty of the answers
    bench: bool = True  # measure prompt/generation tok/s and TTFT once with the bench
    bench_repeats: int = 3  # bench runs after its warm-up (medians reported)
    n_few_shot: int = 2  # examples (one per language) prefixed for untrained variants
    validation: bool = True  # answer the 15 core validation questions (test split only)
    out_of_scope: bool = True  # the out-of-scope set's half for this split
    paraphrases: bool = True  # the paraphrase set's half for this split (retrieval, false abstention)


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
    rows = interleave_langs([r for r in artifacts.read_jsonl(data_dir / "train.jsonl") if not r.get("abstain")])[:n]
    return few_shot_prefix([r["text"] for r in rows])


def answer_rows(rows: list[dict], n: int, n_heldout: int) -> list[dict]:
    """The rows answered in full: held-out facts' rows first (up to n_heldout), then the rest, languages mixed."""
    held = interleave_langs([r for r in rows if r.get("heldout")])[:n_heldout]
    ids = {r["id"] for r in held}
    return (held + [r for r in interleave_langs(rows) if r["id"] not in ids])[:n]


def _judgement(sensors: dict | None):
    from farmslm.domain.judge import judge

    return judge(sensors) if sensors else None


def _facts_shown(engine, answer) -> list[dict]:
    from farmslm.domain.prompt import MAX_ACTIONS

    if engine.index is None:
        return []
    return [{"text": engine.index.by_id[r["id"]][answer.lang]["fact"],
             "do": engine.index.by_id[r["id"]][answer.lang]["do"][:MAX_ACTIONS]} for r in answer.retrieved]


def _answer(engine, row: dict, cfg: EvalConfig, process, guard: bool = True, tag_only: bool = False) -> dict:
    from farmslm.domain.sensors import NO_READINGS
    from farmslm.evaluate import faithful
    from farmslm.evaluate.gate import is_degenerate
    from farmslm.runtime.engine import InputError

    sensors = row.get("sensors") or None
    gold = row.get("warnings") or ([] if sensors else [NO_READINGS])
    try:
        a = engine.ask(row["question"], guard=guard, max_tokens=cfg.tag_tokens if tag_only else cfg.max_tokens,
                       lang=row["lang"], judgement=_judgement(sensors), tag_only=tag_only)
    except InputError as exc:  # e.g. a prompt longer than the context: scored as no answer
        log.warning("row %s: %s", row.get("id"), exc)
        return {"id": row.get("id"), "lang": row["lang"], "question": row["question"], "error": str(exc),
                "answer": "", "pred": None, "gold": gold,
                "flags": {f: False for f in faithful.FLAGS}, "model_text": "", "abstained": False}
    out = {"id": row.get("id"), "lang": row["lang"], "question": row["question"], "gold": gold,
           "latency_s": a.timings.total_ms / 1000, "gen_tokens": a.timings.gen_tokens,
           "prompt_tokens": a.timings.prompt_tokens, "rss_mb": process.memory_info().rss / 1e6}
    if tag_only:
        return {**out, "pred": a.warnings if a.tag_found else None}
    facts = _facts_shown(engine, a)
    verdict = faithful.check(a.model_text, a.lang, a.readings, a.warnings, facts) if not a.abstained else \
        faithful.Verdict({f: False for f in faithful.FLAGS})
    gold_fact = None
    if row.get("fact_id") and engine.index is not None and row["fact_id"] in engine.index.by_id:
        g = engine.index.by_id[row["fact_id"]][a.lang]
        gold_fact = {"text": g["fact"], "do": g["do"]}
    scores = faithful.fact_scores(a.model_text, a.lang, gold_fact, facts) if not a.abstained else \
        {"fact_recall": 0.0 if gold_fact else None, "fact_precision": None}
    return {**out, "sensors": a.readings, "warnings": a.warnings, "retrieved": a.retrieved, "abstained": a.abstained,
            "abstain_reason": a.abstain_reason, "model_text": a.model_text, "answer": a.answer,
            "reference": row.get("answer"), "fact_id": row.get("fact_id"), "heldout": bool(row.get("heldout")),
            "flags": verdict.flags, "reasons": verdict.reasons, **scores,
            "degenerate": is_degenerate(a.model_text) if a.model_text and not a.abstained else []}


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def answer_scores(rows: list[dict]) -> dict:
    """Faithfulness, text overlap, fact recall/precision and false abstention of answered in-scope rows."""
    from farmslm.evaluate import faithful, metrics

    out: dict = {"n": len(rows)}
    for group in ("all", "ko", "en"):
        sub = [r for r in rows if group in ("all", r["lang"])]
        if not sub:
            continue
        g = {"n": len(sub), "faithful_rate": round(sum(not any(r["flags"].values()) for r in sub) / len(sub), 4),
             **{f"{f}_rate": round(sum(r["flags"][f] for r in sub) / len(sub), 4) for f in faithful.FLAGS},
             "false_abstention": round(sum(r.get("abstained", False) for r in sub) / len(sub), 4),
             "fact_recall": _mean([r.get("fact_recall") for r in sub]),
             "fact_precision": _mean([r.get("fact_precision") for r in sub])}
        scored = [r for r in sub if r.get("reference") is not None and "error" not in r]
        if scored:
            t = metrics.text_scores([r["model_text"] for r in scored], [r["reference"] for r in scored],
                                    [r["lang"] for r in scored])["all"]
            g.update({"bleu": t["bleu"], "rouge_l": t["rouge_l"], "chrf": t["chrf"]})
        out[group] = g
    out["degeneration"] = metrics.degeneration([r.get("model_text", "") for r in rows
                                                if not r.get("abstained") and "error" not in r])
    return out


def retrieval(index, rows: list[dict], k: int) -> dict | None:
    from farmslm.dataset.index import recall

    rows = [r for r in rows if r.get("fact_id") and not r.get("abstain")]
    return recall(index, rows, k) if index is not None and rows else None


def gguf_params(path: Path) -> int:
    """Parameter count of a GGUF: the element count of its tensors."""
    from farmslm.model.tokenizer import gguf_reader

    return int(sum(int(t.n_elements) for t in gguf_reader(path).tensors))


def run(cfg: EvalConfig, model: str | Path, data_dir: str | Path, out: str | Path | None = None,
        few_shot: bool = False, index_path: str | Path | None = None, on_row=None) -> dict:
    """Evaluate `model` on `data_dir` (cfg.split); write `out` (JSON) when given and return the result."""
    import psutil

    from farmslm.dataset.index import eval_sets
    from farmslm.evaluate import metrics
    from farmslm.runtime.engine import K_FACTS, Engine

    if cfg.split not in SPLITS:
        raise ValueError(f"split: got {cfg.split!r}; expected one of {'|'.join(SPLITS)}")
    model, data_dir = Path(model), Path(data_dir)
    split_file = data_dir / f"{cfg.split}.jsonl"
    for path in (split_file, data_dir / "validation_questions.jsonl"):
        if not path.exists():
            raise FileNotFoundError(f"--data: {path} does not exist; build the dataset first")
    started = time.time()
    process = psutil.Process()
    prefix = few_shot_text(data_dir, cfg.n_few_shot) if few_shot else ""
    engine = Engine(model, n_threads=cfg.threads or None, n_ctx=cfg.n_ctx, few_shot=prefix,
                    repeat_penalty=cfg.repeat_penalty, index_path=index_path)
    rss_loaded = process.memory_info().rss / 1e6
    rows = [r for r in artifacts.read_jsonl(split_file) if not r.get("abstain")]
    half = HALF[cfg.split]
    sets = eval_sets()
    oos = [q for q in sets["out_of_scope"] if q["half"] == half] if cfg.out_of_scope else []
    para = [p for p in sets["paraphrases"] if p["half"] == half] if cfg.paraphrases else []
    val_rows = artifacts.read_jsonl(data_dir / "validation_questions.jsonl") \
        if cfg.validation and cfg.split == "test" else []
    try:
        answered = [_answer(engine, r, cfg, process) for r in answer_rows(rows, cfg.n_answer, cfg.n_heldout)]
        validation = [_answer(engine, r, cfg, process) for r in val_rows]
        oos_answers = [_answer(engine, {**q, "sensors": {}}, cfg, process) for q in oos]
        tags = [_answer(engine, r, cfg, process, guard=False, tag_only=True)
                for r in interleave_langs(rows)[:cfg.n_tag]]
        ppl_texts = [r["text"] for r in interleave_langs(rows)[: cfg.n_ppl] if r.get("text")]
        ppl = round(engine.perplexity(ppl_texts, n_ctx=cfg.ppl_ctx), 4) if ppl_texts else None
        index = engine.index
        retrieval_split = retrieval(index, rows, K_FACTS)
        retrieval_para = retrieval(index, para, K_FACTS)
        para_false = None
        if index is not None and para:
            from farmslm.dataset.index import abstention

            para_false = abstention(index, para, K_FACTS)
    finally:
        engine.close()
    speed = _bench(model, cfg, index_path) if cfg.bench else {}
    full = [r for r in answered + validation if "error" not in r and r.get("gen_tokens")]
    rss = [r["rss_mb"] for r in answered + validation + tags if "rss_mb" in r] or [speed.get("peak_rss_mb") or rss_loaded]
    result = {
        "model": str(model), "split": cfg.split, "few_shot": few_shot, "config": artifacts._jsonable(cfg),
        "prompt_format": getattr(engine, "prompt_format", 1),
        "size_mb": round(model.stat().st_size / 1e6, 1), "params_m": round(gguf_params(model) / 1e6, 2),
        "answers": answer_scores([r for r in answered if "error" not in r]),
        "heldout": answer_scores([r for r in answered if r.get("heldout") and "error" not in r]),
        "validation": answer_scores([r for r in validation if "error" not in r]) if validation else None,
        "out_of_scope": {"n": len(oos_answers), **{g: {"n": len(s), "abstention": round(sum(r["abstained"] for r in s) / len(s), 4)}
                         for g, s in (("all", oos_answers), ("ko", [r for r in oos_answers if r["lang"] == "ko"]),
                                      ("en", [r for r in oos_answers if r["lang"] == "en"])) if s}} if oos_answers else None,
        "retrieval": {"split": retrieval_split, "paraphrases": retrieval_para, "paraphrase_false_abstention": para_false},
        "tags": metrics.warning_scores([r["pred"] for r in tags], [r["gold"] for r in tags], [r["lang"] for r in tags])
        if tags else None,
        "perplexity": ppl,
        "latency_s_avg": round(sum(r["latency_s"] for r in full) / len(full), 3) if full else None,
        "latency_s_max": round(max(r["latency_s"] for r in full), 3) if full else None,
        "rss_mb_avg": round(sum(rss) / len(rss), 1), "rss_mb_max": round(max(rss), 1), "rss_mb_loaded": round(rss_loaded, 1),
        "speed": speed, "rows": {"answers": answered, "validation": validation, "out_of_scope": oos_answers, "tags": tags},
        "duration_s": round(time.time() - started, 1),
    }
    result["summary"] = summary(result)
    if out is not None:
        artifacts.write_json(out, result)
    return result


def _bench(model: Path, cfg: EvalConfig, index_path: str | Path | None = None) -> dict:
    """Prompt / generation tok/s and TTFT, median of repeated runs (farmslm.runtime.bench)."""
    from farmslm.runtime import bench

    r = bench.run(bench.BenchConfig(model=str(model), threads=cfg.threads, repeats=cfg.bench_repeats,
                                    index=str(index_path or "")))["models"][0]
    return {"gen_tok_s": r["gen_tok_s"], "prompt_tok_s": r["prompt_tok_s"], "ttft_ms": r["ttft_ms"],
            "peak_rss_mb": round(r["peak_rss_bytes"] / 1e6, 1), "raw": r}


def summary(result: dict) -> dict:
    """The report.json fields of one variant (null where a figure does not apply)."""
    def at(d, *keys):
        for k in keys:
            d = (d or {}).get(k) if isinstance(d, dict) else None
        return d

    a, h, v = result.get("answers"), result.get("heldout"), result.get("validation")
    speed, tags = result.get("speed") or {}, result.get("tags") or {}
    k = "recall_at_2"
    return {
        "bleu": at(a, "all", "bleu"), "rouge_l": at(a, "all", "rouge_l"), "chrf": at(a, "all", "chrf"),
        "rouge_l_ko": at(a, "ko", "rouge_l"), "rouge_l_en": at(a, "en", "rouge_l"),
        "faithful_rate": at(a, "all", "faithful_rate"), "faithful_rate_ko": at(a, "ko", "faithful_rate"),
        "faithful_rate_en": at(a, "en", "faithful_rate"),
        "unsupported_number_rate": at(a, "all", "unsupported_number_rate"),
        "contradiction_rate": at(a, "all", "contradiction_rate"), "invented_reading_rate": at(a, "all", "invented_reading_rate"),
        "faithful_rate_validation": at(v, "all", "faithful_rate"),
        "fact_recall": at(a, "all", "fact_recall"), "fact_precision": at(a, "all", "fact_precision"),
        "false_abstention": at(a, "all", "false_abstention"),
        "abstention_oos": at(result.get("out_of_scope"), "all", "abstention"),
        "abstention_oos_ko": at(result.get("out_of_scope"), "ko", "abstention"),
        "abstention_oos_en": at(result.get("out_of_scope"), "en", "abstention"),
        "recall_at_2": at(result.get("retrieval"), "split", "all", k),
        "recall_at_2_paraphrase": at(result.get("retrieval"), "paraphrases", "all", k),
        "rouge_l_heldout": at(h, "all", "rouge_l"), "fact_recall_heldout": at(h, "all", "fact_recall"),
        "warning_accuracy": tags.get("accuracy"), "warning_accuracy_ko": tags.get("accuracy_ko"),
        "warning_accuracy_en": tags.get("accuracy_en"),
        "perplexity": result.get("perplexity"),
        "degenerate_rate": at(v, "degeneration", "rate") if v else at(a, "degeneration", "rate"),
        "size_mb": result.get("size_mb"), "params_m": result.get("params_m"),
        "gen_tok_s": speed.get("gen_tok_s"), "prompt_tok_s": speed.get("prompt_tok_s"), "ttft_ms": speed.get("ttft_ms"),
        "latency_s_avg": result.get("latency_s_avg"), "latency_s_max": result.get("latency_s_max"),
        "rss_mb_avg": result.get("rss_mb_avg"), "rss_mb_max": result.get("rss_mb_max"),
    }


def run_isolated(cfg: EvalConfig, model: str | Path, data_dir: str | Path, out: str | Path,
                 few_shot: bool = False, index_path: str | Path | None = None) -> dict:
    """run() in a fresh Python process (RSS of the model alone; a llama.cpp crash cannot kill the build)."""
    import subprocess

    out = Path(out)
    job = out.with_suffix(".job.json")
    artifacts.write_json(job, {"config": cfg, "model": str(model), "data": str(data_dir), "out": str(out),
                               "few_shot": few_shot, "index": str(index_path) if index_path else None})
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
    run(EvalConfig(**job["config"]), job["model"], job["data"], job["out"], job["few_shot"], job.get("index"))


if __name__ == "__main__":
    _main(sys.argv[1])
