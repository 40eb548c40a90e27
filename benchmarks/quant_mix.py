"""Which quantization mix keeps the grounded answers: per-tensor llama.cpp types against the F16 file, on the
validation split (never test), with a paired bootstrap.

A build's pruned_lora_kd F16 GGUF -> each mix (model.quantize.MIXES, plain types) quantized with the build's
importance matrix (training rows) -> guarded, grounded answers to the same >= 100 validation rows as the
product gives them (evaluate._answer) -> per row: ROUGE-L of the model-written part against the reference,
fact recall against the gold fact, faithful (no flag). Each mix's mean / F16's mean, with the 2.5th percentile
of 2,000 paired bootstrap resamples of the rows as the lower bound. The rule (edge-speed issue): point >= 0.98
and lower bound >= 0.95 on every one of the three.

.venv/bin/python benchmarks/quant_mix.py --run runs/quick [--rows 120] [--mixes q4_k_m,q4k_e5,...]
-> benchmarks/results/quant_mix.{md,json}
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("rouge_l", "fact_recall", "faithful")
DEFAULT_MIXES = "q4_k_m,q4k_e5,q4k_e4,q4k_e5_b4,q4k_e5_b4_o5,q4k_e5_b4_o6,q8_0"


def quantize(f16: Path, imatrix: Path, mix: str, out_dir: Path) -> Path:
    from farmslm.model import quantize as q

    out = out_dir / f"model-{mix}.gguf"
    if out.exists():
        return out
    spec = q.MIXES.get(mix, {"qtype": mix.upper()})
    return q.quantize_gguf(f16, out, spec["qtype"], q.read_imatrix(imatrix), 0, spec.get("token_embedding_type", ""),
                           spec.get("tensor_types"))


def answer_all(model: Path, rows: list[dict], index_path: Path, max_tokens: int) -> list[dict]:
    import psutil

    from farmslm.evaluate import metrics
    from farmslm.evaluate.evaluate import EvalConfig, _answer
    from farmslm.runtime.engine import Engine

    cfg = EvalConfig(split="val", max_tokens=max_tokens)
    engine = Engine(model, n_ctx=cfg.n_ctx, repeat_penalty=cfg.repeat_penalty, index_path=index_path)
    process = psutil.Process()
    out = []
    try:
        for i, row in enumerate(rows):
            a = _answer(engine, row, cfg, process)
            a["rouge_l"] = (metrics.rouge_l([a["model_text"]], [a["reference"]], [a["lang"]])
                            if a.get("reference") and not a.get("abstained") else None)
            a["faithful"] = float(not any(a["flags"].values()))
            out.append(a)
            if (i + 1) % 20 == 0:
                print(f"  {model.name}: {i + 1}/{len(rows)}", file=sys.stderr, flush=True)
    finally:
        engine.close()
    return out


def paired(base: list[float], other: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """mean(other) / mean(base) over the same rows, and its paired-bootstrap 2.5th percentile."""
    point = (sum(other) / len(other)) / max(sum(base) / len(base), 1e-9)
    rng = random.Random(seed)
    n = len(base)
    ratios = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        b = sum(base[i] for i in idx)
        ratios.append(sum(other[i] for i in idx) / b if b else 1.0)
    ratios.sort()
    return {"ratio": round(point, 4), "lower_95": round(ratios[int(0.025 * n_boot)], 4)}


def main() -> None:
    from farmslm import artifacts
    from farmslm.evaluate.evaluate import interleave_langs
    from farmslm.runtime import bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a build's output dir (export/pruned_lora_kd, data, index)")
    ap.add_argument("--variant", default="pruned_lora_kd")
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--mixes", default=DEFAULT_MIXES)
    ap.add_argument("--out", type=Path, default=RESULTS / "quant_mix")
    args = ap.parse_args()
    exp = args.run / "export" / args.variant
    f16 = exp / "model-f16.gguf"
    imatrix = next(iter(sorted(exp.glob("*.imatrix.gguf"))), None)
    index_path = next(iter(sorted((args.run / "index").glob("*.json"))), None)
    if not f16.exists() or imatrix is None or index_path is None:
        raise SystemExit(f"--run: need {f16}, an imatrix beside it and {args.run}/index/*.json")
    rows = interleave_langs([r for r in artifacts.read_jsonl(args.run / "data" / "val.jsonl") if not r.get("abstain")])
    rows = rows[: args.rows]
    work = ROOT / ".bench-cache" / "quant_mix"
    work.mkdir(parents=True, exist_ok=True)
    models = {"f16": f16, **{m: quantize(f16, imatrix, m, work) for m in args.mixes.split(",")}}
    answers, speed = {}, {}
    for name, path in models.items():
        t0 = time.time()
        # answers and speed of an unchanged file on the same rows are reused (a mix added later costs one file)
        key = f"{artifacts.hash_path(path)[:16]}-{artifacts.hash_path(args.run / 'data' / 'val.jsonl')[:8]}"
        cache = work / f"answers-{name}-{len(rows)}-{args.max_tokens}-{key}.json"
        if cache.exists():
            answers[name], speed[name] = json.loads(cache.read_text())
            continue
        answers[name] = answer_all(path, rows, index_path, args.max_tokens)
        r = bench.run(bench.BenchConfig(model=str(path), repeats=2, index=str(index_path)))["models"][0]
        speed[name] = {"gen_tok_s": r["gen_tok_s"], "prompt_tok_s": r["prompt_tok_s"]}
        cache.write_text(json.dumps([answers[name], speed[name]], ensure_ascii=False))
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    # rows every model answered (abstention is the index's decision, the same for every file)
    keep = [i for i in range(len(rows)) if all(answers[m][i].get("rouge_l") is not None for m in models)]
    table = {}
    for name, path in models.items():
        vals = {k: [float(answers[name][i][k] or 0.0) for i in keep] for k in METRICS}
        base = {k: [float(answers["f16"][i][k] or 0.0) for i in keep] for k in METRICS}
        entry = {"size_mb": round(path.stat().st_size / 1e6, 1), **speed[name],
                 **{k: round(sum(v) / len(v), 4) for k, v in vals.items()}}
        if name != "f16":
            entry["vs_f16"] = {k: paired(base[k], vals[k]) for k in METRICS}
            entry["passes"] = all(r["ratio"] >= 0.98 and r["lower_95"] >= 0.95 for r in entry["vs_f16"].values())
        table[name] = entry
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"run": str(args.run), "variant": args.variant, "cpu": cpu, "rows": len(rows), "answered": len(keep),
         "table": table, "answers": {m: [{k: a.get(k) for k in ("id", "lang", "model_text", "rouge_l", "fact_recall",
                                                                 "faithful")} for a in v] for m, v in answers.items()}},
        ensure_ascii=False, indent=1))
    lines = [f"# Quantization mixes of `{args.variant}` against its F16 file ({cpu})", "",
             f"Build `{args.run}`; {len(keep)} validation rows answered by every file (of {len(rows)}; the rest "
             "abstained, an index decision); guarded, grounded answers, greedy, at most "
             f"{args.max_tokens} tokens. Ratio = mix mean / F16 mean over the same rows; lb = 2.5th percentile of "
             "2,000 paired bootstrap resamples. Rule: ratio >= 0.98 and lb >= 0.95 on all three. Speed: "
             "`farmslm bench` in the product's configuration, same run.", "",
             "| file | MB | gen tok/s | ROUGE-L | ratio (lb) | fact recall | ratio (lb) | faithful | ratio (lb) | rule |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, e in table.items():
        cells = []
        for k in METRICS:
            r = e.get("vs_f16", {}).get(k)
            cells += [f"{e[k]:.3f}", f"{r['ratio']:.3f} ({r['lower_95']:.3f})" if r else "1"]
        rule = "" if name == "f16" else ("pass" if e["passes"] else "fail")
        lines.append(f"| {name} | {e['size_mb']} | {e['gen_tok_s']} | " + " | ".join(cells) + f" | {rule} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
