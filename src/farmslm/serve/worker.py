"""One model, one generation at a time, a bounded queue in front of it.

llama.cpp already uses every core for one sequence on a Pi-class CPU, so requests run one after
another on a single worker thread; at most `queue_size` wait. Beyond that: Overloaded (429).
The model loads at startup or on first use (lazy) and can be unloaded after an idle time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger("farmslm.serve")


class Overloaded(Exception):
    """The queue is full: answer 429 with Retry-After."""


class Unavailable(Exception):
    """Shutting down, or the model failed to load: answer 503 with Retry-After."""


class TimedOut(Exception):
    """The request's deadline passed while it waited or generated: answer 504."""


class ModelWorker:
    def __init__(self, load: Callable[[], Any], queue_size: int, lazy: bool = False, idle_unload_s: float = 0.0):
        self._load = load
        self.queue_size = queue_size
        self.lazy = lazy
        self.idle_unload_s = idle_unload_s
        self.engine: Any = None
        self.state = "unloaded"  # unloaded | loading | ready | failed
        self.error = ""
        self.pending = 0  # waiting + running
        self.closing = False
        self.last_used = time.monotonic()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="farmslm-model")
        self._lock = threading.Lock()
        self._idle_task: asyncio.Task | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if not self.lazy:
            self.state = "loading"
            self._executor.submit(self._ensure_loaded)
        if self.idle_unload_s > 0:
            self._idle_task = asyncio.get_running_loop().create_task(self._unload_when_idle())

    def _ensure_loaded(self) -> Any:
        """Runs on the worker thread only."""
        if self.engine is None:
            self.state = "loading"
            t0 = time.perf_counter()
            try:
                self.engine = self._load()
            except Exception as exc:  # reported by /healthz and as 503, the server stays up
                self.state, self.error = "failed", str(exc)
                log.error("model failed to load: %s", exc)
                raise Unavailable(f"model failed to load: {exc}") from exc
            self.state, self.error = "ready", ""
            log.info("model loaded in %.1f s", time.perf_counter() - t0)
        return self.engine

    def _unload(self) -> None:
        if self.engine is not None and self.pending == 0:
            self.engine.close()
            self.engine = None
            self.state = "unloaded"
            log.info("model unloaded after %.0f s idle", self.idle_unload_s)

    async def _unload_when_idle(self) -> None:
        period = max(0.5, min(10.0, self.idle_unload_s / 4))
        while True:
            await asyncio.sleep(period)
            idle = time.monotonic() - self.last_used
            if self.engine is not None and self.pending == 0 and idle >= self.idle_unload_s:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._unload)

    async def close(self) -> None:
        """Refuse new work, let queued and running requests finish, then free the model."""
        self.closing = True
        if self._idle_task is not None:
            self._idle_task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    # ---- requests ----------------------------------------------------------------------------

    def submit(self, job: Callable[[Any, Callable[[], bool]], Any], timeout_s: float,
               cancel: threading.Event | None = None) -> asyncio.Future:
        """Admit a job or raise Overloaded/Unavailable at once; job(engine, should_stop) runs later.

        The returned future raises TimedOut when the deadline passes before or during the job.
        """
        if self.closing:
            raise Unavailable("the server is shutting down")
        if self.state == "failed":
            raise Unavailable(f"model failed to load: {self.error}")
        with self._lock:
            if self.pending > self.queue_size:  # one running + queue_size waiting
                raise Overloaded(f"{self.pending} requests in progress; the queue holds {self.queue_size}")
            self.pending += 1
        deadline = time.monotonic() + timeout_s
        cancel = cancel or threading.Event()
        timed_out = threading.Event()

        def should_stop() -> bool:
            if time.monotonic() > deadline:
                timed_out.set()
            return cancel.is_set() or timed_out.is_set()

        def run() -> Any:
            try:
                if should_stop():
                    raise TimedOut(f"waited longer than {timeout_s:g} s in the queue") if timed_out.is_set() \
                        else TimedOut("cancelled before it started")
                engine = self._ensure_loaded()
                result = job(engine, should_stop)
                if timed_out.is_set():
                    raise TimedOut(f"generation took longer than {timeout_s:g} s")
                return result
            finally:
                self.last_used = time.monotonic()
                with self._lock:
                    self.pending -= 1

        return asyncio.wrap_future(self._executor.submit(run))
