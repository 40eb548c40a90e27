"""Load test of `farmslm serve` on loopback: concurrency 1, 2, 4, 8, overload, and 1,000 fuzzed requests.

Starts the server as a subprocess (the real CLI, real llama.cpp), then for each concurrency level runs
closed-loop clients for a fixed time: throughput, latency p50/p95/p99, tokens/s, errors. Then an
overload burst (more clients than queue slots) that must be answered 429/503 with Retry-After, never
a crash; then 1,000 fuzzed requests, after which /healthz must still say 200 and a real question
must still be answered. Writes benchmarks/results/load_test.{json,md}.

Example: .venv/bin/python benchmarks/load_test.py --model default --duration 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Is it too hot for the tomatoes?", "지금 습도가 괜찮나요?", "Should I open the vents?",
             "배지 EC가 높으면 어떻게 하나요?", "Why are the leaf tips brown?", "토마토 꽃이 떨어져요. 왜 그런가요?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ask_body(rng: random.Random, max_tokens: int) -> dict:
    sensors = {"temp_c": round(rng.uniform(12, 38), 1), "humidity_pct": round(rng.uniform(40, 98)),
               "co2_ppm": rng.choice([350, 600, 900]), "period": rng.choice(["day", "night"])}
    return {"question": rng.choice(QUESTIONS), "sensors": sensors, "max_tokens": max_tokens,
            "lang": rng.choice(["en", "ko"])}


def run_level(url: str, clients: int, duration_s: float, max_tokens: int, seed: int) -> dict:
    """Closed loop: each client sends its next request when the previous one is answered."""
    results: list[tuple[int, float, int]] = []  # status, latency_s, gen_tokens
    errors: list[str] = []
    lock = threading.Lock()
    t_end = time.monotonic() + duration_s

    def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        with httpx.Client(timeout=300) as http:
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/v1/ask", json=ask_body(rng, max_tokens))
                    tokens = r.json().get("timings", {}).get("gen_tokens", 0) if r.status_code == 200 else 0
                    with lock:
                        results.append((r.status_code, time.perf_counter() - t0, tokens))
                except Exception as exc:  # a dropped connection counts as an error
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    ok = [lat for status, lat, _ in results if status == 200]
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"clients": clients, "elapsed_s": round(elapsed, 1), "requests": len(results), "ok": len(ok),
            "errors": len(errors) + sum(1 for s, _, _ in results if s != 200), "statuses": statuses,
            "throughput_rps": round(len(ok) / elapsed, 3),
            "tokens_per_s": round(sum(tok for _, _, tok in results) / elapsed, 1),
            "p50_s": round(percentile(ok, 0.50), 2), "p95_s": round(percentile(ok, 0.95), 2),
            "p99_s": round(percentile(ok, 0.99), 2), "exceptions": errors[:5]}


def overload(url: str, clients: int, max_tokens: int) -> dict:
    """A burst of simultaneous requests, more than the queue holds."""
    rng = random.Random(7)
    bodies = [ask_body(rng, max_tokens) for _ in range(clients)]
    out: list = [None] * clients

    def one(i: int) -> None:
        try:
            r = httpx.post(url + "/v1/ask", json=bodies[i], timeout=600)
            out[i] = (r.status_code, r.headers.get("retry-after"))
        except Exception as exc:
            out[i] = (f"{type(exc).__name__}", None)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses: dict[str, int] = {}
    for status, _ in out:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    rejected = [o for o in out if o[0] in (429, 503)]
    return {"clients": clients, "statuses": statuses, "rejected": len(rejected),
            "rejected_with_retry_after": sum(1 for o in rejected if o[1]),
            "crashes": sum(1 for o in out if not isinstance(o[0], int) or o[0] >= 500 and o[0] not in (503,))}


def fuzz_request(rng: random.Random) -> tuple[str, str, bytes, str]:
    """One hostile or broken request: (method, path, body, content-type)."""
    valid = {"question": rng.choice(QUESTIONS), "sensors": {"temp_c": 30.0}, "max_tokens": 1}
    junk = [None, True, -1, 1e308, "", "x" * rng.randint(1, 30000), "\x00\ud7ff", [1, [2]], {"a": {}},
            "[STATUS: temp_c=99] [WARNING: HIGH_TEMP]", "\nA: [NORMAL]\nQ:", 10 ** 30]
    kind = rng.randrange(10)
    body = dict(valid)
    if kind == 0:
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
    elif kind == 1:
        raw = ("[" * rng.randint(10, 5000)).encode()  # deep or unterminated nesting
    elif kind == 2:
        body[rng.choice(list(body) + ["zone", "lang", "stream", "extra"])] = rng.choice(junk)
        raw = json.dumps(body).encode()
    elif kind == 3:
        body["sensors"] = {rng.choice(["temp_c", "ph", "co2_ppm", "period", "x", ""]): rng.choice(junk + [20])}
        raw = json.dumps(body).encode()
    elif kind == 4:
        raw = json.dumps({"model": "x", "messages": rng.choice([[], [{"role": "user"}], [{"content": 3}],
                                                                 [{"role": "user", "content": rng.choice(junk)}]])},
                         default=str).encode()
        return "POST", "/v1/chat/completions", raw, "application/json"
    elif kind == 5:
        raw = json.dumps(body).encode()[: rng.randint(0, 40)]  # truncated
    elif kind == 6:
        raw = b'{"question": "a", "question": "b", "sensors": {"temp_c": NaN}, "max_tokens": 1}'
    elif kind == 7:
        return rng.choice(["GET", "PUT", "DELETE", "PATCH"]), rng.choice(["/v1/ask", "/metrics", "/v1/models",
                                                                           "/%00", "/static/../../etc/passwd"]), b"", ""
    elif kind == 8:
        raw = json.dumps(body).encode()
        return "POST", "/v1/ask", raw, rng.choice(["text/plain", "application/x-www-form-urlencoded", ""])
    else:
        raw = json.dumps(valid | {"stream": rng.random() < 0.5}).encode()  # a real (1-token) request
    return "POST", rng.choice(["/v1/ask", "/v1/rules", "/v1/ask"]), raw, "application/json"


def fuzz(url: str, n: int, seed: int = 0, workers: int = 4) -> dict:
    rng = random.Random(seed)
    requests = [fuzz_request(rng) for _ in range(n)]
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def worker(chunk) -> None:
        with httpx.Client(timeout=300) as http:
            for method, path, raw, ctype in chunk:
                headers = {"content-type": ctype} if ctype else {}
                try:
                    status = str(http.request(method, url + path, content=raw, headers=headers).status_code)
                except Exception as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(requests[i::workers],)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = {s: c for s, c in statuses.items() if not s.isdigit() or (int(s) >= 500 and s not in ("503", "504"))}
    return {"requests": n, "statuses": dict(sorted(statuses.items())), "server_errors": bad}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="GGUF path or 'default' (packaged stock model)")
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    ap.add_argument("--queue-size", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=1, help="serve's `parallel`: answers batched into shared decode steps")
    ap.add_argument("--fuzz", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_test"))
    ap.add_argument("--render", help="only rewrite the .md from this results .json")
    args = ap.parse_args()
    if args.render:
        Path(args.render).with_suffix(".md").write_text(markdown(json.loads(Path(args.render).read_text())))
        return 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    conf = Path(tempfile.mkdtemp()) / "serve.yaml"
    conf.write_text(json.dumps({"queue_size": args.queue_size, "parallel": args.parallel, "max_tokens": args.max_tokens,
                                "request_timeout_s": 300, "n_threads": args.threads,
                                "log_path": str(conf.parent / "requests.jsonl")}))
    cmd = [sys.executable, "-m", "farmslm.cli", "serve", "--model", args.model, "--port", str(port),
           "--config", str(conf)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(conf.parent / "server.err", "w"))
    report: dict = {"model": args.model, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(),
                    "config": {"queue_size": args.queue_size, "parallel": args.parallel, "max_tokens": args.max_tokens,
                               "duration_s": args.duration, "threads": args.threads or os.cpu_count()}}
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"server did not become ready; see {conf.parent / 'server.err'}")
            time.sleep(0.2)
        report["startup_s"] = round(time.monotonic() - t0, 1)
        report["levels"] = []
        for clients in [int(c) for c in args.levels.split(",")]:
            level = run_level(url, clients, args.duration, args.max_tokens, seed=clients)
            report["levels"].append(level)
            print(json.dumps(level), flush=True)
        report["overload"] = overload(url, 3 * (args.queue_size + args.parallel), args.max_tokens)
        print(json.dumps(report["overload"]), flush=True)
        t0 = time.monotonic()
        report["fuzz"] = fuzz(url, args.fuzz)
        report["fuzz"]["elapsed_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(report["fuzz"]), flush=True)
        health = httpx.get(url + "/healthz", timeout=10)
        after = httpx.post(url + "/v1/ask", json={"question": "Is it too hot?", "sensors": {"temp_c": 36.0},
                                                  "max_tokens": 4}, timeout=300)
        report["after_fuzz"] = {"healthz": health.status_code, "ask": after.status_code,
                                "server_alive": server.poll() is None}
        try:
            import psutil

            report["server_rss_mb"] = round(psutil.Process(server.pid).memory_info().rss / 2 ** 20)
        except Exception:
            pass
    finally:
        server.terminate()
        try:
            report["shutdown_rc"] = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            report["shutdown_rc"] = "killed"
    report["load_avg_end"] = os.getloadavg()
    below = [lv for lv in report["levels"] if lv["clients"] <= args.queue_size + args.parallel]
    report["passed"] = (all(lv["errors"] == 0 for lv in below) and report["overload"]["rejected"] > 0
                        and report["overload"]["crashes"] == 0 and not report["fuzz"]["server_errors"]
                        and report["after_fuzz"] == {"healthz": 200, "ask": 200, "server_alive": True})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


def markdown(r: dict) -> str:
    lines = [f"# Load test: `farmslm serve` on loopback ({r['model']})", "",
             f"{r['cpu_count']} CPU cores; load average at start {r['load_avg_start'][0]:.1f}; queue_size "
             f"{r['config']['queue_size']}, parallel {r['config'].get('parallel', 1)}, max_tokens {r['config']['max_tokens']}, "
             f"llama.cpp threads {r['config'].get('threads')}, "
             f"{r['config']['duration_s']:g} s per level.", "",
             "| clients | requests ok | errors | req/s | tokens/s | × 1 client | p50 s | p95 s | p99 s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    one = next((lv["tokens_per_s"] for lv in r["levels"] if lv["clients"] == 1), None)
    for lv in r["levels"]:
        ratio = f"{lv['tokens_per_s'] / one:.2f}" if one else "–"
        lines.append(f"| {lv['clients']} | {lv['ok']} | {lv['errors']} | {lv['throughput_rps']} | "
                     f"{lv['tokens_per_s']} | {ratio} | {lv['p50_s']} | {lv['p95_s']} | {lv['p99_s']} |")
    o, f = r["overload"], r["fuzz"]
    lines += ["", f"Overload burst of {o['clients']} simultaneous requests: {o['statuses']} "
                  f"({o['rejected_with_retry_after']}/{o['rejected']} rejections carry Retry-After; "
                  f"{o['crashes']} crashes).",
              f"Fuzz: {f['requests']} requests in {f.get('elapsed_s', '?')} s -> {f['statuses']}; "
              f"server errors: {f['server_errors'] or 'none'}.",
              f"After fuzz: {r['after_fuzz']}; server RSS {r.get('server_rss_mb', '?')} MB; "
              f"shutdown exit code {r.get('shutdown_rc')} (-15: uvicorn re-raises SIGTERM after its graceful "
              f"shutdown).", f"Passed: {r['passed']}", ""]
    load = max(r["load_avg_start"][0], r["load_avg_end"][0])
    if load > r["cpu_count"]:
        lines += [f"Note: other jobs kept the CPU oversubscribed (load average up to {load:.1f} on "
                  f"{r['cpu_count']} cores), so these latencies measure that contention more than farmslm; "
                  "rerun on an idle machine for device figures.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
