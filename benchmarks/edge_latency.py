"""End-to-end latency of one guarded, grounded answer on the product path, quiet and with one busy process.

A fresh process per condition, started the way `ask` runs (the product's OMP_WAIT_POLICY before llama.cpp
loads, its auto thread count; runtime.engine): the model and its knowledge index load, then validation rows whose
grounded prompt is near the 90th percentile of prompt lengths (p85-p95 of the split's in-scope rows) are
asked with at most --max-tokens generated tokens. Time = Engine.ask wall clock: judging the readings, the rule
sentences, retrieval and the abstention decision, prompt processing and generation. Busy = one competing
Python process spinning on a core for the whole run.

.venv/bin/python benchmarks/edge_latency.py --model runs/quick/model.gguf --data runs/quick/data
-> benchmarks/results/edge_latency.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from runtime_config import run_child  # a sibling script: benchmarks/ is on sys.path when run

ROOT = Path(__file__).resolve().parents[1]


def prompt_tokens(engine, row: dict) -> int | None:
    """Tokens of the grounded prompt `ask` would feed for this row; None when the engine would abstain."""
    from farmslm.domain import explain
    from farmslm.domain.judge import judge

    j = judge(row["sensors"]) if row.get("sensors") else None
    shown, codes = (j.readings, j.warnings) if j else (None, [])
    tag = explain.tag_for(shown, codes)
    rule_text = explain.rule_text(shown, row["lang"], codes, j.not_judged if j else [], None)
    hits, decision = engine.retrieve(row["question"], row["lang"])
    if decision["abstain"]:
        return None
    facts = [engine.index.by_id[h.fact_id] for h in hits]
    prompt = engine.prompt(row["question"], shown, tag + " " + rule_text, facts, row["lang"])
    return len(engine.llm.tokenize(prompt.encode(), add_bos=True, special=False))


def worker(model: str, data: str, n: int, max_tokens: int) -> dict:
    """In a fresh process: load as `ask` does, pick the p85-p95 prompts, time Engine.ask on each."""
    import statistics

    from farmslm import artifacts
    from farmslm.domain.judge import judge
    from farmslm.runtime.engine import Engine

    t0 = time.perf_counter()
    engine = Engine(Path(model))
    load_s = time.perf_counter() - t0
    rows = [r for r in artifacts.read_jsonl(Path(data) / "val.jsonl") if not r.get("abstain")]
    sized = [(p, r) for r in rows if (p := prompt_tokens(engine, r)) is not None]
    sized.sort(key=lambda x: x[0])
    lengths = [p for p, _ in sized]
    lo, hi = int(0.85 * len(sized)), int(0.95 * len(sized))
    picked = sized[lo:hi]
    step = max(1, len(picked) // n)
    picked = picked[::step][:n]
    engine.ask("warm up", max_tokens=4)
    times, gens, prompts, threads_used = [], [], [], []
    for p, r in picked:
        j = judge(r["sensors"]) if r.get("sensors") else None
        t = time.perf_counter()
        a = engine.ask(r["question"], lang=r["lang"], judgement=j, max_tokens=max_tokens)
        times.append(time.perf_counter() - t)
        gens.append(a.timings.gen_tokens)
        prompts.append(a.timings.prompt_tokens or p)
        threads_used.append(a.timings.threads)
    engine.close()
    times_sorted = sorted(times)
    return {"threads": sorted(set(threads_used)), "omp_env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                                                          if k in os.environ},
            "load_s": round(load_s, 2), "rows": len(rows), "p90_prompt_tokens": lengths[int(0.9 * len(lengths))],
            "n": len(times), "prompt_tokens_mean": round(statistics.mean(prompts), 1),
            "gen_tokens_mean": round(statistics.mean(gens), 1), "gen_tokens_max": max(gens),
            "median_s": round(statistics.median(times), 3),
            "p90_s": round(times_sorted[min(len(times) - 1, int(0.9 * len(times)))], 3),
            "max_s": round(max(times), 3)}


def run(model: Path, data: Path, n: int, max_tokens: int, busy: bool) -> dict:
    from farmslm.runtime.engine import runtime_env

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(runtime_env())  # the product's OpenMP environment, before llama.cpp loads
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from edge_latency import worker; "
            f"print(json.dumps(worker({str(model)!r}, {str(data)!r}, {n}, {max_tokens})))")
    return {"busy": busy, **run_child(code, env, busy, timeout=3600)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path, help="a grounded GGUF with its knowledge sidecar")
    ap.add_argument("--data", required=True, type=Path, help="the build's data dir (val.jsonl)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--target-s", type=float, default=0.6)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "edge_latency")
    args = ap.parse_args()
    rows = [run(args.model, args.data, args.n, args.max_tokens, busy) for busy in (False, True)]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"model": str(args.model), "cpu": cpu,
                                                         "target_s": args.target_s, "rows": rows}, indent=2))
    lines = [f"# One grounded answer end to end, the product path ({cpu}, {os.cpu_count()} cores)", "",
             f"`{args.model}`; validation rows with prompts between the 85th and 95th percentile of the split's "
             f"grounded prompts (p90 = {rows[0]['p90_prompt_tokens']} tokens), guarded, at most {args.max_tokens} "
             f"generated tokens (answers may end earlier); Engine.ask wall clock, retrieval and rule sentences "
             f"included; a fresh process per load. Target: <= {args.target_s} s on a quiet machine.", "",
             "| load | threads (auto) | OpenMP env | rows | prompt tok | gen tok (max) | median s | p90 s | max s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {'busy (1 competing process)' if r['busy'] else 'quiet'} | {r['threads']} | "
                     f"{r['omp_env']} | {r['n']} | {r['prompt_tokens_mean']} | {r['gen_tokens_mean']} "
                     f"({r['gen_tokens_max']}) | {r['median_s']} | {r['p90_s']} | {r['max_s']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
