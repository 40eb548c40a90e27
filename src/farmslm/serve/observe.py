"""Metrics (Prometheus), the JSON-lines request log, and the two ASGI guards around every request.

Request log: one JSON object per line: time, method, route, status, latency_ms, client, plus what the
handler adds (zone, sensors source, warnings, tokens, tok/s). Never the question text, never headers.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
TOK_S_BUCKETS = (1, 2, 5, 10, 20, 40, 60, 80, 120, 200)


class Metrics:
    """All series live in a registry of their own, so several apps (tests) can coexist."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only add noise to a small exporter
        self.registry = r = CollectorRegistry()
        self.requests = Counter("farmslm_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.errors = Counter("farmslm_request_errors", "HTTP requests answered 4xx/5xx, by route", ["route"],
                              registry=r)
        self.latency = Histogram("farmslm_request_latency_seconds", "Request latency (until the last byte)",
                                 ["route"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.tokens = Counter("farmslm_generated_tokens", "Tokens generated", registry=r)
        self.tok_s = Histogram("farmslm_generation_tokens_per_second", "Decode speed per request",
                               buckets=TOK_S_BUCKETS, registry=r)
        self.ttft = Histogram("farmslm_time_to_first_token_seconds", "Prompt evaluation + first token",
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.warnings = Counter("farmslm_warnings", "Warnings raised in answers, by code", ["code"], registry=r)
        self.queue_depth = Gauge("farmslm_queue_depth", "Requests waiting or running", registry=r)
        self.model_loaded = Gauge("farmslm_model_loaded", "1 when the model is in memory", registry=r)
        self.feed_messages = Counter("farmslm_feed_messages", "MQTT sensor messages by status (ok|malformed)",
                                     ["status"], registry=r)
        self.overload = Counter("farmslm_rejected", "Requests refused before running, by reason", ["reason"],
                                registry=r)


def request_logger(path: str, max_bytes: int, backups: int) -> logging.Logger:
    """A logger writing bare JSON lines to a rotated file (or stderr when path is empty)."""
    logger = logging.getLogger(f"farmslm.requests.{id(object())}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if path:
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                                        backupCount=backups, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


def _route(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")


class ObserveMiddleware:
    """Counts, times and logs every HTTP request, streamed ones until their last byte."""

    def __init__(self, app, metrics: Metrics, logger: logging.Logger):
        self.app, self.metrics, self.logger = app, metrics, logger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        scope.setdefault("state", {})["log"] = {}
        status = {"code": 500}
        done = {"logged": False}

        def finish() -> None:
            if done["logged"]:
                return
            done["logged"] = True
            route, code = _route(scope), status["code"]
            elapsed = time.perf_counter() - t0
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if code >= 400:
                self.metrics.errors.labels(route).inc()
            if route in ("/healthz", "/metrics", "/static"):
                return  # probes and assets would drown the log
            client = scope.get("client")
            entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                     "method": scope["method"], "route": route, "status": code,
                     "latency_ms": round(elapsed * 1000, 1), "client": client[0] if client else None}
            entry.update(scope["state"].get("log", {}))
            self.logger.info(json.dumps(entry, ensure_ascii=False))

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            finish()


class BodyLimitMiddleware:
    """Reads at most max_bytes of a request body; larger bodies get 413 before any handler runs."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send) -> None:
        body = json.dumps({"error": {"message": f"body: request body larger than {self.max_bytes} bytes",
                                     "type": "invalid_request_error", "param": "body", "code": 413}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                return await self._reject(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: disconnect notices for streaming handlers

        await self.app(scope, replay, send)
