"""Which llama.cpp runtime configuration the product should run: threads x wait policy x thread pool, quiet
and with one competing busy process. Every cell is a fresh process with its environment set before llama.cpp
is imported (OpenMP reads OMP_WAIT_POLICY once), measuring prompt and generation tokens/s the way the engine
decodes (llama_cpp.Llama.eval, greedy, the product's n_batch).

Thread pools: llama-cpp-python as setup.sh builds it (GGML_OPENMP=ON: OpenMP, wait passive | brief (libgomp's
default: spin GOMP_SPINCOUNT=300k iterations, then sleep) | active (spin ~30 billion iterations))
and, when --ggml-pool is given, a second build with GGML_OPENMP=OFF (ggml's own thread pool, polling),
installed once into .bench-cache/llama_noomp (about 4-6 min of compiling on 2 cores).

python benchmarks/runtime_config.py --model runs/quick/model.gguf [--ggml-pool] [--repeats 3]
-> benchmarks/results/runtime_config.{md,json}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOOMP = ROOT / ".bench-cache" / "llama_noomp"
_CELL = r"""
import json, os, statistics, sys, time
sys.path[:0] = [p for p in os.environ.get("BENCH_PREPEND", "").split(":") if p]
import numpy as np
import llama_cpp
from farmslm.runtime.bench import _prompt_ids
from farmslm.runtime.engine import load_llama
from pathlib import Path
threads, n_prompt, n_gen, repeats = {threads}, {n_prompt}, {n_gen}, {repeats}
llm = load_llama(Path({model!r}), None, n_ctx=n_prompt + n_gen + 8, n_batch=512, n_threads=threads,
                 n_threads_batch=threads)
ids = _prompt_ids(llm, n_prompt)
n_vocab = llm.n_vocab()
def nxt():
    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
runs = []
for i in range(repeats + 1):
    llm.reset()
    t0 = time.perf_counter(); llm.eval(ids); tok = nxt(); t1 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([tok]); tok = nxt()
    t2 = time.perf_counter()
    if i:
        runs.append((n_prompt / (t1 - t0), n_gen / (t2 - t1)))
print(json.dumps({{"prompt_tok_s": statistics.median(r[0] for r in runs),
                  "gen_tok_s": statistics.median(r[1] for r in runs), "omp": llama_cpp.__file__}}))
"""
BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def run_child(code: str, env: dict, busy: bool, timeout: int = 900) -> dict:
    """Run a Python snippet in a fresh process (beside one busy process if asked); its last line as JSON."""
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_noomp() -> Path:
    """llama-cpp-python 0.3.36 with GGML_OPENMP=OFF into .bench-cache/llama_noomp (once)."""
    if (NOOMP / "llama_cpp" / "__init__.py").exists():
        return NOOMP
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_OPENMP=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    print("building llama-cpp-python with GGML_OPENMP=OFF (a few minutes)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-binary", "llama-cpp-python",
                    "--target", str(NOOMP), "llama-cpp-python==0.3.36"], check=True, env=env)
    return NOOMP


def cell(model: Path, threads: int, policy: str, pool: str, busy: bool, n_prompt: int, n_gen: int,
         repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "BENCH_PREPEND")}
    env.pop("GOMP_SPINCOUNT", None)
    if pool == "openmp":
        from farmslm.runtime.engine import runtime_env

        env.update(runtime_env(policy))
    else:
        env["BENCH_PREPEND"] = str(NOOMP)
    code = _CELL.format(threads=threads, n_prompt=n_prompt, n_gen=n_gen, repeats=repeats, model=str(model))
    out = run_child(code, env, busy)
    if pool == "ggml" and str(NOOMP) not in out["omp"]:
        raise RuntimeError("the GGML_OPENMP=OFF build was not the one imported")
    return {"threads": threads, "pool": pool, "policy": policy if pool == "openmp" else "poll", "busy": busy,
            "prompt_tok_s": round(out["prompt_tok_s"], 1), "gen_tok_s": round(out["gen_tok_s"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--ggml-pool", action="store_true", help="also measure a GGML_OPENMP=OFF build")
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_config")
    args = ap.parse_args()
    pools = ["openmp"] + (["ggml"] if args.ggml_pool else [])
    if args.ggml_pool:
        build_noomp()
    n_cpu = os.cpu_count() or 1
    rows = []
    for busy in (False, True):
        for pool in pools:
            for policy in (("passive", "brief", "active") if pool == "openmp" else ("poll",)):
                for threads in sorted({1, 2, n_cpu}):
                    r = cell(args.model, threads, policy, pool, busy, args.prompt_tokens, args.gen_tokens, args.repeats)
                    print(r, file=sys.stderr)
                    rows.append(r)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"model": str(args.model), "cpu": cpu, "cores": n_cpu,
                                                         "rows": rows}, indent=2))
    lines = [f"# llama.cpp runtime configuration ({cpu}, {n_cpu} cores)", "",
             f"`{args.model.name}`, {args.prompt_tokens}-token prompt, {args.gen_tokens} generated tokens, median of "
             f"{args.repeats} runs after a warm-up, each cell a fresh process; busy = one competing Python process "
             "spinning on a core.", "",
             "| load | pool | wait | threads | prompt tok/s | gen tok/s |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {'busy' if r['busy'] else 'quiet'} | {r['pool']} | {r['policy']} | {r['threads']} | "
                     f"{r['prompt_tok_s']} | {r['gen_tok_s']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
