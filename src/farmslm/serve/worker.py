"""One model, `parallel` generations at a time (1 on a Pi; more share decode steps, runtime.batch), a bounded
queue in front of it: at most `queue_size` requests wait. Beyond that: Overloaded (429).
The model loads at startup or on first use (lazy) and can be unloaded after an idle time. A load that
fails is retried with back-off (1, 2, 4 ... up to `retry_max_s` seconds) until it succeeds; meanwhile
requests get 503 with Retry-After and /healthz says when the next try is, never the raw error (that goes
to the server log).
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
    def __init__(self, load: Callable[[], Any], queue_size: int, lazy: bool = False, idle_unload_s: float = 0.0,
                 retry_max_s: float = 60.0, parallel: int = 1):
        self._load = load
        self.parallel = parallel
        self.retry_max_s = retry_max_s
        self.failures = 0  # consecutive failed loads
        self.retry_at = 0.0  # monotonic time of the next load attempt after a failure
        self._retry_task: asyncio.Task | None = None
        self.queue_size = queue_size
        self.lazy = lazy
        self.idle_unload_s = idle_unload_s
        self.engine: Any = None
        self.state = "unloaded"  # unloaded | loading | ready | failed
        self.error = ""
        self.pending = 0  # waiting + running
        self.closing = False
        self.last_used = time.monotonic()
        self._executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="farmslm-model")
        self._load_lock = threading.Lock()  # several worker threads: one load
        self._lock = threading.Lock()
        self._idle_task: asyncio.Task | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.lazy:
            self.state = "loading"
            self._executor.submit(self._ensure_loaded)
        if self.idle_unload_s > 0:
            self._idle_task = loop.create_task(self._unload_when_idle())
        self._retry_task = loop.create_task(self._retry_failed_loads())

    def retry_in_s(self) -> float | None:
        return round(max(0.0, self.retry_at - time.monotonic()), 1) if self.state == "failed" else None

    async def _retry_failed_loads(self) -> None:
        """Try a failed load again when its back-off has passed (a model file fixed or copied in later)."""
        while not self.closing:
            await asyncio.sleep(0.5)
            if self.state == "failed" and time.monotonic() >= self.retry_at and self.pending == 0:
                try:
                    await asyncio.get_running_loop().run_in_executor(self._executor, self._ensure_loaded)
                except Unavailable:
                    pass

    def _ensure_loaded(self) -> Any:
        """Runs on a worker thread only."""
        with self._load_lock:
            return self._load_once()

    def _load_once(self) -> Any:
        if self.engine is None:
            self.state = "loading"
            t0 = time.perf_counter()
            try:
                self.engine = self._load()
            except Exception as exc:  # reported by /healthz and as 503 without internals; the server stays up
                self.failures += 1
                wait = min(self.retry_max_s, 2.0 ** (self.failures - 1))
                self.retry_at = time.monotonic() + wait
                self.state, self.error = "failed", str(exc)
                log.error("model failed to load (attempt %d, next in %.0f s): %s", self.failures, wait, exc)
                raise Unavailable(f"the model failed to load; retrying in {wait:.0f} s") from exc
            self.state, self.error, self.failures = "ready", "", 0
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
        for task in (self._idle_task, self._retry_task):
            if task is not None:
                task.cancel()
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
            raise Unavailable(f"the model failed to load; next try in {self.retry_in_s():.0f} s")
        with self._lock:
            if self.pending >= self.queue_size + self.parallel:  # `parallel` running + queue_size waiting
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
