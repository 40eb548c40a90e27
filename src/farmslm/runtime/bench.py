"""Benchmark GGUF models the way the product runs them: speed, memory, and the memory-bandwidth bound.

MODEL.gguf [--vs OTHER.gguf] -> per model, each in a fresh process started with the product's runtime set
explicitly (OMP_WAIT_POLICY before llama.cpp loads, the product's thread count; runtime.engine): prompt and
generation tokens/s of raw llama.cpp decoding, llama.cpp's own timings for the same runs, the same through
`ask` (the engine's sampler, its knowledge index when the model has one), time to first token, peak RSS of
a process that holds only what `ask` holds (llama.cpp, the model, the index and the Korean analyzer's
dictionary) read as VmHWM, file size, and the bandwidth bound: weight bytes read per generated token
(every tensor, the output head / tied embedding included) against the machine's read bandwidth (numpy sum).
Example: farmslm bench model.gguf --vs stock.gguf --json

`--json` prints one object (stable keys; times in ms, rates in tokens/s, sizes in bytes):
  {"machine": {"threads", "read_bandwidth_gb_s", "omp_wait_policy", "cpu"},
   "settings": {"prompt_tokens", "gen_tokens", "repeats"},
   "models": [{"path", "file_bytes", "weight_bytes", "prompt_tok_s", "gen_tok_s", "ttft_ms",
               "peak_rss_bytes" (VmHWM), "llama_prompt_tok_s", "llama_gen_tok_s" (null if llama.cpp kept no perf
               counters), "ask_gen_tok_s", "ask_ratio" (ask / raw generation), "bound_gen_tok_s", "bound_pct",
               "runs": [{"prompt_tok_s", "gen_tok_s", "ttft_ms"}, ...]}],
   "vs": {"gen_speedup", "prompt_speedup", "size_ratio", "rss_ratio"} | null}
`vs` compares models[0] to models[1] (ratios > 1 mean the first is faster / bigger).
"""

from __future__ import annotations

import json
import os
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
    threads: int = 0  # llama.cpp threads (also the bandwidth measurement's); 0 = the product's (runtime.engine)
    wait_policy: str = ""  # OpenMP wait of the measured process: passive | brief | active; "" = the product's
    prompt_tokens: int = 128  # prompt length processed per run
    gen_tokens: int = 64  # tokens generated per run (greedy, EOS ignored)
    repeats: int = 5  # measured runs after one warm-up run; medians are reported
    index: str = ""  # knowledge index of a grounded model ('' = the sidecar beside the GGUF)


def weight_bytes(path: str | Path) -> int:
    """Bytes of all tensors in the GGUF: what one generated token reads from memory."""
    from farmslm.model.tokenizer import gguf_reader

    return int(sum(int(t.n_bytes) for t in gguf_reader(path).tensors))


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


def vm_hwm_bytes() -> int:
    """Peak resident set of this process (VmHWM): unlike ru_maxrss it does not carry a parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


ASK_QUESTION = ("토마토 잎 끝이 갈색으로 마르고 아래 잎이 노랗게 변합니다. What should I check first in the greenhouse?",
                {"temp_c": 31.5, "humidity_pct": 88.0, "co2_ppm": 650.0, "period": "day"})


def _worker(model: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int, index: str = "") -> dict:
    """Runs in a fresh child process: load as `ask` does, warm up, measure; returns the medians and VmHWM."""
    import llama_cpp

    from farmslm.runtime.engine import Engine  # the product's loader (AMX repack workaround, logs, index)

    engine = Engine(Path(model), n_threads=threads or None, n_ctx=max(1024, prompt_tokens + gen_tokens + 8),
                    index_path=index or None)
    llm = engine.llm
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
    # the same model through `ask`: retrieval, the rule sentences, the engine's sampler; greedy, no early stop
    llm.reset()
    asks = []
    for _ in range(max(1, repeats)):
        a = engine.ask(ASK_QUESTION[0], ASK_QUESTION[1], max_tokens=gen_tokens, repeat_penalty=1.0)
        if a.timings.gen_tokens > 1:
            asks.append(a.timings.tok_s)
    out["ask_gen_tok_s"] = statistics.median(asks) if asks else None
    engine.close()
    out["peak_rss_bytes"] = vm_hwm_bytes()
    return out


def measure(model: str | Path, cfg: BenchConfig, bandwidth_gb_s: float, index: str = "") -> dict:
    """One model in a fresh subprocess, so its peak RSS is its own."""
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"{model} does not exist")
    from farmslm.runtime.engine import runtime_env

    code = ("import json,sys; from farmslm.runtime.bench import _worker; "
            f"print(json.dumps(_worker({str(model)!r}, {cfg.threads}, {cfg.prompt_tokens}, "
            f"{cfg.gen_tokens}, {cfg.repeats}, {index!r})))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(runtime_env(cfg.wait_policy))  # set before llama.cpp loads (libgomp reads it once)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {model} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    wbytes = weight_bytes(model)
    bound = bandwidth_gb_s * 1e9 / wbytes
    return {"path": str(model), "file_bytes": model.stat().st_size, "weight_bytes": wbytes,
            **{k: (round(v, 2) if v is not None else None) for k, v in res.items() if k not in ("runs", "peak_rss_bytes")},
            "peak_rss_bytes": res["peak_rss_bytes"], "bound_gen_tok_s": round(bound, 1),
            "ask_ratio": round(res["ask_gen_tok_s"] / res["gen_tok_s"], 3) if res.get("ask_gen_tok_s") else None,
            "bound_pct": round(100 * res["gen_tok_s"] / bound, 1), "runs": res["runs"]}


def run(cfg: BenchConfig) -> dict:
    """Measure cfg.model (and cfg.vs) and return the documented JSON object."""
    from farmslm.runtime.engine import WAIT_POLICY, runtime_env, runtime_threads

    if cfg.threads < 0:
        raise ValueError("--threads: must be >= 0 (0 = the product's)")
    threads = runtime_threads(cfg.threads)
    bandwidth = read_bandwidth_gb_s(threads)
    models = [measure(cfg.model, cfg, bandwidth, cfg.index)]
    if cfg.vs:
        models.append(measure(cfg.vs, cfg, bandwidth))
    vs = None
    if len(models) == 2:
        a, b = models
        vs = {"gen_speedup": round(a["gen_tok_s"] / b["gen_tok_s"], 3),
              "prompt_speedup": round(a["prompt_tok_s"] / b["prompt_tok_s"], 3),
              "size_ratio": round(a["file_bytes"] / b["file_bytes"], 3),
              "rss_ratio": round(a["peak_rss_bytes"] / b["peak_rss_bytes"], 3)}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    return {"machine": {"threads": threads, "read_bandwidth_gb_s": round(bandwidth, 2), "cpu": cpu,
                        "omp_wait_policy": (cfg.wait_policy or os.environ.get("FARMSLM_OMP_WAIT_POLICY")
                                            or WAIT_POLICY).lower(), "omp_env": runtime_env(cfg.wait_policy)},
            "settings": {"prompt_tokens": cfg.prompt_tokens, "gen_tokens": cfg.gen_tokens, "repeats": cfg.repeats},
            "models": models, "vs": vs}


def format_table(result: dict) -> str:
    """Human-readable summary of run()'s result."""
    lines = [f"read bandwidth {result['machine']['read_bandwidth_gb_s']} GB/s ({result['machine']['threads']} threads, "
             f"OpenMP wait {result['machine']['omp_wait_policy']}); medians of {result['settings']['repeats']} runs",
             f"{'model':40} {'MB':>7} {'pp tok/s':>9} {'tg tok/s':>9} {'TTFT ms':>8} {'RSS MB':>7} "
             f"{'bound':>7} {'of bound':>8} {'llama.cpp pp/tg':>16}"]
    for m in result["models"]:
        lines.append(f"{Path(m['path']).name[:40]:40} {m['file_bytes'] / 1e6:7.1f} {m['prompt_tok_s']:9.1f} "
                     f"{m['gen_tok_s']:9.1f} {m['ttft_ms']:8.1f} {m['peak_rss_bytes'] / 1e6:7.0f} "
                     f"{m['bound_gen_tok_s']:7.1f} {m['bound_pct']:7.1f}% "
                     f"{m['llama_prompt_tok_s'] or float('nan'):7.1f}/{m['llama_gen_tok_s'] or float('nan'):.1f}"
                     f"  ask x{m['ask_ratio']}")
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
