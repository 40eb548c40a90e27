"""Benchmark GGUF models in llama.cpp: speed, memory, and the memory-bandwidth bound.

MODEL.gguf [--vs OTHER.gguf] -> per model: prompt tokens/s, generation tokens/s, time to first
token, peak RSS, file size (median of repeats after a warm-up, each model in its own subprocess
so RSS is its own), llama.cpp's own timings for the same runs, and the bandwidth bound:
weight bytes read per generated token (every tensor, the output head / tied embedding included)
against the machine's read bandwidth measured with a numpy array sum.
Example: farmslm bench model.gguf --vs stock.gguf --threads 2 --json

`--json` prints one object (stable keys; times in ms, rates in tokens/s, sizes in bytes):
  {"machine": {"threads", "read_bandwidth_gb_s"},
   "settings": {"prompt_tokens", "gen_tokens", "repeats"},
   "models": [{"path", "file_bytes", "weight_bytes", "prompt_tok_s", "gen_tok_s", "ttft_ms",
               "peak_rss_bytes", "llama_prompt_tok_s", "llama_gen_tok_s" (null if llama.cpp kept no perf counters),
               "bound_gen_tok_s", "bound_pct", "runs": [{"prompt_tok_s", "gen_tok_s", "ttft_ms"}, ...]}],
   "vs": {"gen_speedup", "prompt_speedup", "size_ratio", "rss_ratio"} | null}
`vs` compares models[0] to models[1] (ratios > 1 mean the first is faster / bigger).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROMPT_TEXT = ("Q: [STATUS: temp_c=31.5 humidity_pct=88 co2_ppm=650 period=day] 토마토 잎 끝이 갈색으로 마르고 "
               "아래 잎이 노랗게 변합니다. What should I check first in the greenhouse?\nA:")


@dataclass
class BenchConfig:
    model: str = ""  # GGUF to measure
    vs: str = ""  # second GGUF measured in the same run for ratios ('' = none)
    threads: int = 2  # llama.cpp threads (also used for the bandwidth measurement)
    prompt_tokens: int = 128  # prompt length processed per run
    gen_tokens: int = 64  # tokens generated per run (greedy, EOS ignored)
    repeats: int = 5  # measured runs after one warm-up run; medians are reported


def weight_bytes(path: str | Path) -> int:
    """Bytes of all tensors in the GGUF: what one generated token reads from memory."""
    from gguf import GGUFReader

    return int(sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors))


def read_bandwidth_gb_s(threads: int = 1, n_bytes: int = 512 << 20, repeats: int = 5) -> float:
    """Memory read bandwidth: best time to sum a large float32 array, split over `threads` threads."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(n_bytes // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))  # numpy releases the GIL in reductions
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def _prompt_ids(llm, n: int) -> list[int]:
    ids = llm.tokenize(PROMPT_TEXT.encode(), add_bos=True, special=True)
    body = ids[1:]
    while len(ids) < n:
        ids += body
    return ids[:n]


def _worker(model: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int) -> dict:
    """Runs in a child process: load, warm up, measure; returns the medians and peak RSS."""
    import resource

    import llama_cpp

    from farmslm.runtime.engine import load_llama  # works around the AMX repack crash

    llm = load_llama(Path(model), None, n_ctx=prompt_tokens + gen_tokens + 8, n_batch=512,
                      n_threads=threads, n_threads_batch=threads)
    ids = _prompt_ids(llm, prompt_tokens)
    n_vocab = llm.n_vocab()

    def next_token() -> int:
        # Llama.eval keeps no logits unless logits_all; llama_get_logits_ith also synchronizes the
        # context, which is when llama.cpp books its own timings
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    runs = []
    for i in range(repeats + 1):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = next_token()
        t1 = time.perf_counter()
        for _ in range(gen_tokens):
            llm.eval([tok])
            tok = next_token()
        t2 = time.perf_counter()
        perf = llama_cpp.llama_perf_context(llm.ctx)
        if i == 0:
            continue  # warm-up
        runs.append({"prompt_tok_s": prompt_tokens / (t1 - t0), "gen_tok_s": gen_tokens / (t2 - t1),
                     "ttft_ms": 1000 * (t1 - t0),
                     # llama.cpp's own counters for the same decodes
                     "llama_prompt_tok_s": 1000 * perf.n_p_eval / perf.t_p_eval_ms if perf.t_p_eval_ms > 0 else None,
                     "llama_gen_tok_s": 1000 * perf.n_eval / perf.t_eval_ms if perf.t_eval_ms > 0 else None})
    out = {k: (statistics.median(r[k] for r in runs) if runs[0][k] is not None else None) for k in runs[0]}
    out["runs"] = [{k: round(r[k], 2) for k in ("prompt_tok_s", "gen_tok_s", "ttft_ms")} for r in runs]
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return out


def measure(model: str | Path, cfg: BenchConfig, bandwidth_gb_s: float) -> dict:
    """One model in a fresh subprocess, so its peak RSS is its own."""
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"{model} does not exist")
    code = ("import json,sys; from farmslm.runtime.bench import _worker; "
            f"print(json.dumps(_worker({str(model)!r}, {cfg.threads}, {cfg.prompt_tokens}, {cfg.gen_tokens}, "
            f"{cfg.repeats})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {model} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    wbytes = weight_bytes(model)
    bound = bandwidth_gb_s * 1e9 / wbytes
    return {"path": str(model), "file_bytes": model.stat().st_size, "weight_bytes": wbytes,
            **{k: (round(v, 2) if v is not None else None) for k, v in res.items() if k not in ("runs", "peak_rss_bytes")},
            "peak_rss_bytes": res["peak_rss_bytes"], "bound_gen_tok_s": round(bound, 1),
            "bound_pct": round(100 * res["gen_tok_s"] / bound, 1), "runs": res["runs"]}


def run(cfg: BenchConfig) -> dict:
    """Measure cfg.model (and cfg.vs) and return the documented JSON object."""
    if cfg.threads < 1:
        raise ValueError("--threads: must be ≥ 1")
    bandwidth = read_bandwidth_gb_s(cfg.threads)
    models = [measure(cfg.model, cfg, bandwidth)]
    if cfg.vs:
        models.append(measure(cfg.vs, cfg, bandwidth))
    vs = None
    if len(models) == 2:
        a, b = models
        vs = {"gen_speedup": round(a["gen_tok_s"] / b["gen_tok_s"], 3),
              "prompt_speedup": round(a["prompt_tok_s"] / b["prompt_tok_s"], 3),
              "size_ratio": round(a["file_bytes"] / b["file_bytes"], 3),
              "rss_ratio": round(a["peak_rss_bytes"] / b["peak_rss_bytes"], 3)}
    return {"machine": {"threads": cfg.threads, "read_bandwidth_gb_s": round(bandwidth, 2)},
            "settings": {"prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens, "repeats": cfg.repeats},
            "models": models, "vs": vs}


def format_table(result: dict) -> str:
    """Human-readable summary of run()'s result."""
    lines = [f"read bandwidth {result['machine']['read_bandwidth_gb_s']} GB/s "
             f"({result['machine']['threads']} threads); medians of {result['settings']['repeats']} runs",
             f"{'model':40} {'MB':>7} {'pp tok/s':>9} {'tg tok/s':>9} {'TTFT ms':>8} {'RSS MB':>7} "
             f"{'bound':>7} {'of bound':>8} {'llama.cpp pp/tg':>16}"]
    for m in result["models"]:
        lines.append(f"{Path(m['path']).name[:40]:40} {m['file_bytes'] / 1e6:7.1f} {m['prompt_tok_s']:9.1f} "
                     f"{m['gen_tok_s']:9.1f} {m['ttft_ms']:8.1f} {m['peak_rss_bytes'] / 1e6:7.0f} "
                     f"{m['bound_gen_tok_s']:7.1f} {m['bound_pct']:7.1f}% "
                     f"{m['llama_prompt_tok_s'] or float('nan'):7.1f}/{m['llama_gen_tok_s'] or float('nan'):.1f}")
    if result["vs"]:
        v = result["vs"]
        lines.append(f"first vs second: generation x{v['gen_speedup']}, prompt x{v['prompt_speedup']}, "
                     f"size x{v['size_ratio']}, RSS x{v['rss_ratio']}")
    return "\n".join(lines)


# ---- llama.cpp logits and perplexity (used by parity tests and the quantization table) -------------

def _logits_llama(model, token_lists: list[list[int]], n_threads: int):
    from farmslm.runtime.engine import load_llama  # works around the AMX repack crash

    n_ctx = max(len(ids) for ids in token_lists) + 1
    return load_llama(Path(model), None, logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                       n_threads=n_threads, n_threads_batch=n_threads)


def llama_logits(model: str | Path, token_lists: list[list[int]], n_threads: int = 2) -> list[np.ndarray]:
    """llama.cpp's logits at every position of each token list (float32 [n_tokens, n_vocab])."""
    llm = _logits_llama(model, token_lists, n_threads)
    out = []
    for ids in token_lists:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return out


def perplexity(model: str | Path, token_lists: list[list[int]], n_threads: int = 2) -> float:
    """exp(mean next-token NLL) over all positions of all lists (each starts with BOS)."""
    llm = _logits_llama(model, token_lists, n_threads)
    nll, n = 0.0, 0
    for ids in token_lists:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float32)
        m = logits.max(-1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(logits - m).sum(-1)))
        nll += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).astype(np.float64).sum())
        n += len(ids) - 1
    llm.close()
    return float(np.exp(nll / n))
