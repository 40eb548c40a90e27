"""How many cores other processes keep busy right now, so llama.cpp uses only the free ones.

benchmarks/results/runtime_config.md: on a quiet 2-core machine two briefly spinning threads generate ~1.7x faster
than one; with one competing busy process, two threads collapse to a third of one thread's speed, because every
token waits for the thread whose core is taken. So the engine asks this monitor before each answer and sets
llama.cpp's thread count (llama_set_n_threads) to the cores the others leave free, at least one.

Others' load = (busy jiffies of the whole machine in /proc/stat - this process's own CPU time) / wall time, over
the last ~1 s, sampled twice a second by a daemon thread (reading /proc/stat costs microseconds). Ours because
psutil reports the machine's or one process's load, not the machine minus us; and where /proc/stat is missing
(not Linux) the monitor reports no load and the engine keeps every core.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from pathlib import Path

_STAT = Path("/proc/stat")
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _sample() -> tuple[float, float, float] | None:
    """(wall s, machine busy s, this process's CPU s); None without /proc/stat."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    busy = (user + nice + system + irq + softirq + steal) / _HZ
    own = sum(os.times()[:2])
    return time.monotonic(), busy, own


class CpuMonitor:
    """Cores kept busy by other processes, over the last `window_s` seconds."""

    def __init__(self, interval_s: float = 0.5, window: int = 3):
        self.interval_s = interval_s
        self._samples: collections.deque = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            s = _sample()
            if s is None:
                return
            with self._lock:
                self._samples.append(s)
            time.sleep(self.interval_s)

    def start(self) -> "CpuMonitor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="farmslm-cpu-monitor", daemon=True)
            self._thread.start()
        return self

    def others_busy(self) -> float:
        """Cores other processes used over the window (0.0 where /proc/stat is missing)."""
        self.start()
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:  # just started: measure a short window now
            first = _sample()
            if first is None:
                return 0.0
            time.sleep(0.2)
            samples = [first, _sample()]
        (t0, b0, o0), (t1, b1, o1) = samples[0], samples[-1]
        if t1 - t0 <= 0:
            return 0.0
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (t1 - t0))

    def free_cores(self, n_cpu: int) -> int:
        """Cores left for llama.cpp: every core minus those others keep busy (a core counts from 0.5 busy), >= 1."""
        return max(1, min(n_cpu, n_cpu - math.floor(self.others_busy() + 0.5)))


MONITOR = CpuMonitor()
