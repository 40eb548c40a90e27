"""HTTP server: the sensor-aware assistant API, an OpenAI-compatible facade, metrics, and the page.

POST /v1/ask {question, sensors?, zone?, lang?: en|ko (default: the question's), stream?, max_tokens?}
    -> {warnings, answer, tag_source, tag, sources: [{id, source, url}], retrieved, abstained, readings,
       assumptions, not_judged, timings, messages, lang, sensors: {source: request|feed|none, zone, used,
       age_s, stale}}; the answer opens with the rule engine's sentences, then the grounded text (or the
       abstaining one). stream: SSE events meta (warnings first), token {text}..., done (the whole result,
       sources included) | error. Without `sensors` the zone's fresh MQTT readings are used (a rule over
       several sensors only on readings close in time); none fresh -> [NO_READINGS], never [NORMAL].
    A missing period is inferred (clock, then light) and listed in `assumptions`.
    A client that goes away stops the generation (streaming or not).
POST /v1/chat/completions, GET /v1/models: OpenAI-compatible (stream too). Readings ride along as
    extra fields: openai client `extra_body={"sensors": {...}}` or `{"zone": "gh1"}` (live feed).
    The reply starts with the warning lines; `farmslm` in the response carries warnings and timings.
POST /v1/rules {sensors, lang}, GET /v1/sensors[?zone=&lang=], GET /healthz (503 loading), GET /metrics.
Errors: {"error": {message, type, param, code}}; 4xx name the field. Auth: `Authorization: Bearer KEY`
on /v1/* and /metrics when an API key is set. Warnings come from the rule engine on the readings
(the guard is always on), never from the question text.

Example: farmslm serve --model runs/demo/model.gguf --config deploy/farmslm.yaml
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from datetime import datetime

from farmslm.domain import explain, rules
from farmslm.domain.judge import JudgeConfig, judge
from farmslm.domain.lang import detect_lang
from farmslm.domain.sensors import NUMERIC, SensorError
from farmslm.runtime.engine import Answer, InputError, clean_question
from farmslm.serve.config import ZONE_RE, ServeConfig
from farmslm.serve.feed import SensorFeed
from farmslm.serve.observe import BodyLimitMiddleware, Metrics, ObserveMiddleware, request_logger
from farmslm.serve.worker import ModelWorker, Overloaded, TimedOut, Unavailable

STATIC_DIR = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, param: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.message, self.headers = status, param, message, headers or {}


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    sensors: dict[str, Any] | None = None  # readings; omitted = the zone's live feed
    zone: str | None = None
    lang: Literal["en", "ko"] | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)


class RulesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sensors: dict[str, Any]
    lang: Literal["en", "ko"] = "en"


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """OpenAI's request; farmslm extras: sensors, zone, lang (openai client: extra_body={...})."""
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    sensors: dict[str, Any] | None = None
    zone: str | None = None
    lang: Literal["en", "ko"] | None = None


def _error(status: int, param: str | None, message: str, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 and status not in (429,) else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status, headers=headers)


def abnormal_keys(codes: list[str]) -> list[str]:
    """Sensor keys behind the warning codes (the page highlights them)."""
    keys: list[str] = []
    for code in codes:
        for cond in rules.rule_for(code).conditions:
            for key in (("temp_c", "humidity_pct") if cond.sensor == "vpd_kpa" else (cond.sensor,)):
                if key not in keys:
                    keys.append(key)
    return keys


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(cfg: ServeConfig, engine_factory: Callable[[], Any] | None = None) -> FastAPI:
    """The app; engine_factory() -> an object with Engine's ask/close/name (tests pass fakes)."""
    metrics = Metrics()
    logger = request_logger(cfg.log_path, cfg.log_max_bytes, cfg.log_backups)
    if engine_factory is None and cfg.engine_url:
        def engine_factory():
            from farmslm.runtime.engine import resolve_model
            from farmslm.runtime.remote import RemoteEngine
            return RemoteEngine(resolve_model(cfg.model), cfg.engine_url, cfg.engine_model,
                                timeout_s=cfg.request_timeout_s, repeat_penalty=cfg.repeat_penalty,
                                contact={"en": cfg.contact_en, "ko": cfg.contact_ko})
    elif engine_factory is None:
        def engine_factory():
            from farmslm.runtime.engine import Engine, default_few_shot, resolve_model
            return Engine(resolve_model(cfg.model), n_threads=cfg.n_threads, n_ctx=cfg.n_ctx,
                          few_shot=default_few_shot() if cfg.few_shot else "", repeat_penalty=cfg.repeat_penalty,
                          contact={"en": cfg.contact_en, "ko": cfg.contact_ko}, parallel=cfg.parallel)
    worker = ModelWorker(engine_factory, cfg.queue_size, lazy=cfg.lazy_load, idle_unload_s=cfg.idle_unload_s,
                         retry_max_s=cfg.load_retry_max_s, parallel=cfg.parallel)
    judge_cfg = JudgeConfig(cfg.sunrise, cfg.sunset, window_s=cfg.window_s)
    feed = SensorFeed(cfg.stale_after_s, cfg.mqtt_topic_prefix,
                      on_status=lambda s: metrics.feed_messages.labels(s).inc())
    metrics.queue_depth.set_function(lambda: worker.pending)
    metrics.model_loaded.set_function(lambda: 1 if worker.engine is not None else 0)
    model_id = "farmslm-stock" if cfg.model == "default" else Path(cfg.model).stem
    created = int(time.time())

    async def lifespan(app: FastAPI):
        worker.start()
        if cfg.mqtt_host:
            feed.start(cfg.mqtt_host, cfg.mqtt_port, cfg.mqtt_username, cfg.mqtt_password, cfg.mqtt_tls,
                       cfg.mqtt_ca_file)
        yield
        feed.stop()
        await worker.close()

    app = FastAPI(title="farmslm", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.cfg, app.state.worker, app.state.feed, app.state.metrics = cfg, worker, feed, metrics
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    hosts = cfg.allowed_hosts or (["127.0.0.1", "localhost", "[::1]", "::1"] if cfg.is_loopback() else ["*"])
    if hosts != ["*"]:
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    app.add_middleware(ObserveMiddleware, metrics=metrics, logger=logger)

    # ---- errors: one JSON shape (OpenAI's) for every failure --------------------------------

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return _error(400, "body", f"body: malformed JSON ({err.get('ctx', {}).get('error', err['msg'])})")
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or "body"
        return _error(422, param, f"{param}: {err['msg']}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return _error(exc.status_code, None, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return _error(exc.status, exc.param, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        return _error(500, None, f"internal error: {type(exc).__name__}")

    def _field_error(exc: SensorError | InputError) -> ApiError:
        return ApiError(422, exc.field, str(exc))

    def _retry() -> dict:
        return {"Retry-After": str(cfg.retry_after_s)}

    # ---- shared steps ------------------------------------------------------------------------

    def require_key(request: Request) -> None:
        if not cfg.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise ApiError(401, "authorization", "authorization: a valid 'Bearer <api key>' header is required",
                           {"WWW-Authenticate": "Bearer"})

    def resolve_sensors(sensors: dict | None, zone: str | None) -> tuple[Any, dict]:
        """(Judgement | None, info): the request's readings, else the zone's fresh feed readings (stale ones
        reported, never used; multi-sensor rules only on readings close in time); period inferred if absent."""
        zone = zone or cfg.default_zone
        if not ZONE_RE.match(zone):
            raise ApiError(422, "zone", f"zone: got {zone[:40]!r}; expected 1-32 of A-Z a-z 0-9 _ -")
        now = datetime.now()
        if sensors is not None:
            try:
                j = judge(sensors, at=now, cfg=judge_cfg)
            except SensorError as exc:
                raise _field_error(exc) from None
            return j, {"source": "request", "zone": zone, "used": j.readings, "age_s": {}, "stale": {}}
        snap = feed.snapshot(zone)
        if snap["stale"] and cfg.stale_policy == "refuse":
            ages = ", ".join(f"{k} ({v['age_s']:.0f} s old)" for k, v in snap["stale"].items())
            raise ApiError(409, "sensors", f"sensors: stale readings in zone {zone}: {ages}; "
                                           f"send readings in the request or fix the feed")
        fresh = snap["readings"]
        if not any(k in NUMERIC for k in fresh):
            return None, {"source": "none", "zone": zone, "used": {}, "age_s": {}, "stale": snap["stale"]}
        times = {k: snap["times"][k] for k in fresh}
        measured_at = datetime.fromtimestamp(max(times.values()))
        j = judge(fresh, at=measured_at, times=times, cfg=judge_cfg)
        return j, {"source": "feed", "zone": zone, "used": j.readings, "age_s": snap["age_s"], "stale": snap["stale"]}

    def check_question(question: str) -> str:
        try:
            return clean_question(question, cfg.max_question_chars)
        except InputError as exc:
            raise _field_error(exc) from None

    def messages(codes: list[str], lang: str) -> list[dict]:
        return [{"code": c, "message": rules.message(c, lang)} for c in codes]

    def record(request: Request, info: dict, answer: Answer | None) -> None:
        log = request.scope["state"]["log"]
        log.update(zone=info["zone"], sensors=info["source"], stale=sorted(info["stale"]))
        if answer is not None:
            t = answer.timings
            log.update(warnings=answer.warnings, prompt_tokens=t.prompt_tokens, gen_tokens=t.gen_tokens,
                       tok_s=t.tok_s, ttft_ms=t.ttft_ms, stop=t.stop)
            metrics.tokens.inc(t.gen_tokens)
            if t.gen_tokens > 1:
                metrics.tok_s.observe(t.tok_s)
            metrics.ttft.observe(t.ttft_ms / 1000)
            for code in answer.warnings:
                metrics.warnings.labels(code).inc()

    def start_job(question: str, judgement, info: dict, lang: str | None, max_tokens: int, temperature: float,
                  on_piece: Callable[[str], None] | None, cancel: threading.Event) -> asyncio.Future:
        stale_s = cfg.stale_after_s if judgement is None and info["stale"] else None

        def job(engine, should_stop):
            return engine.ask(question, guard=True, max_tokens=max_tokens, temperature=temperature, lang=lang,
                              judgement=judgement, stale_after_s=stale_s, on_piece=on_piece, should_stop=should_stop)
        try:
            return worker.submit(job, cfg.request_timeout_s, cancel)
        except Overloaded as exc:
            metrics.overload.labels("queue_full").inc()
            raise ApiError(429, None, f"busy: {exc}; retry later", _retry()) from None
        except Unavailable as exc:
            metrics.overload.labels("unavailable").inc()
            raise ApiError(503, None, f"unavailable: {exc}", _retry()) from None

    async def finish(fut: asyncio.Future, request: Request | None = None,
                     cancel: threading.Event | None = None) -> Answer:
        """Await the answer; a client that disconnects meanwhile cancels the generation."""
        async def watch() -> None:
            while not fut.done():
                if await request.is_disconnected():
                    cancel.set()
                    return
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch()) if request is not None and cancel is not None else None
        try:
            return await fut
        except TimedOut as exc:
            raise ApiError(504, None, f"timeout: {exc} (request_timeout_s={cfg.request_timeout_s:g})") from None
        except Unavailable as exc:
            raise ApiError(503, None, f"unavailable: {exc}", _retry()) from None
        except InputError as exc:
            raise _field_error(exc) from None
        finally:
            if watcher is not None:
                watcher.cancel()

    def max_tokens_of(requested: int | None) -> int:
        n = requested or cfg.max_tokens
        if n > cfg.max_tokens_limit:
            raise ApiError(422, "max_tokens", f"max_tokens: got {n}; at most {cfg.max_tokens_limit}")
        return n

    def stream_pieces(question, judgement, lang, max_tokens, temperature, render: Callable[[str, Any], str | None],
                      request: Request, info: dict):
        """Admit the job now (so 429 is a real status), then yield render(kind, payload) as SSE."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        fut = start_job(question, judgement, info, lang, max_tokens, temperature,
                        lambda p: loop.call_soon_threadsafe(queue.put_nowait, p), cancel)
        fut.add_done_callback(lambda f: queue.put_nowait(None))

        async def events():
            try:
                if (head := render("start", None)) is not None:
                    yield head
                while (piece := await queue.get()) is not None:
                    yield render("piece", piece)
                while not queue.empty():  # pieces that raced the done callback
                    if (piece := queue.get_nowait()) is not None:
                        yield render("piece", piece)
                try:
                    answer = await finish(fut)
                except ApiError as exc:
                    request.scope["state"]["log"].update(error=exc.message)
                    yield render("error", {"message": exc.message, "code": exc.status})
                    return
                record(request, info, answer)
                yield render("done", answer)
            finally:
                cancel.set()  # client gone or finished: stop generating

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---- routes ------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz")
    async def healthz():
        body = {"status": worker.state, "model": model_id, "queue": worker.pending,
                "feed": {"enabled": bool(cfg.mqtt_host), "connected": feed.connected}}
        if worker.state == "ready" or (worker.state == "unloaded" and (cfg.lazy_load or cfg.idle_unload_s)):
            return body  # unloaded on purpose: it loads on the next request
        if worker.state == "failed":  # the cause is in the server log; a client gets no internals
            body["error"] = "the model failed to load (details in the server log)"
            body["retry_in_s"] = worker.retry_in_s()
        return JSONResponse(body, status_code=503, headers=_retry())

    @app.get("/metrics", dependencies=[Depends(require_key)])
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "farmslm"}]}

    @app.post("/v1/rules", dependencies=[Depends(require_key)])
    async def check_rules(body: RulesRequest):
        try:
            j = judge(body.sensors, at=datetime.now(), cfg=judge_cfg)
        except SensorError as exc:
            raise _field_error(exc) from None
        return {"warnings": j.warnings, "messages": messages(j.warnings, body.lang), "abnormal": abnormal_keys(j.warnings),
                "sentences": explain.rule_text(j.readings, body.lang, j.warnings, j.not_judged),
                "readings": j.readings, "assumptions": j.assumptions, "not_judged": j.not_judged}

    @app.get("/v1/sensors", dependencies=[Depends(require_key)])
    async def sensors(zone: str | None = None, lang: Literal["en", "ko"] = "en"):
        names = [zone] if zone else (feed.zones() or [cfg.default_zone])
        zones = []
        for name in names:
            if not ZONE_RE.match(name):
                raise ApiError(422, "zone", f"zone: got {name[:40]!r}; expected 1-32 of A-Z a-z 0-9 _ -")
            snap = feed.snapshot(name)
            fresh = snap["readings"]
            j = judge(fresh, at=datetime.fromtimestamp(max(snap["times"].values())), times=snap["times"],
                      cfg=judge_cfg) if any(k in NUMERIC for k in fresh) else None
            codes = j.warnings if j else []
            zones.append({**{k: v for k, v in snap.items() if k != "times"}, "warnings": codes,
                          "messages": messages(codes, lang), "abnormal": abnormal_keys(codes),
                          "tag": explain.tag_for(j.readings if j else None, codes),
                          "sentences": explain.rule_text(j.readings if j else None, lang, codes,
                                                         j.not_judged if j else None,
                                                         cfg.stale_after_s if snap["stale"] and not j else None),
                          "assumptions": j.assumptions if j else [], "not_judged": j.not_judged if j else []})
        labels = {s.key: {"unit": s.unit, "label": s.label_ko if lang == "ko" else s.label_en, "lo": s.lo,
                          "hi": s.hi} for s in NUMERIC.values()}
        return {"zones": zones, "stale_after_s": cfg.stale_after_s, "sensors": labels,
                "feed": {"enabled": bool(cfg.mqtt_host), "connected": feed.connected, **feed.counts}}

    @app.post("/v1/ask", dependencies=[Depends(require_key)])
    async def ask(body: AskRequest, request: Request):
        question = check_question(body.question)
        judgement, info = resolve_sensors(body.sensors, body.zone)
        max_tokens = max_tokens_of(body.max_tokens)
        lang = body.lang or detect_lang(question)

        def result(answer: Answer) -> dict:
            return {**answer.to_json(), "messages": messages(answer.warnings, answer.lang), "sensors": info}

        if body.stream:
            codes = judgement.warnings if judgement else []
            head = {"warnings": codes, "messages": messages(codes, lang), "sensors": info, "lang": lang,
                    "assumptions": judgement.assumptions if judgement else [],
                    "not_judged": judgement.not_judged if judgement else []}

            def render(kind: str, payload: Any) -> str | None:
                if kind == "start":
                    return _sse("meta", head)
                if kind == "piece":
                    return _sse("token", {"text": payload})
                if kind == "error":
                    return _sse("error", payload)
                return _sse("done", result(payload))

            return stream_pieces(question, judgement, lang, max_tokens, 0.0, render, request, info)
        cancel = threading.Event()
        answer = await finish(start_job(question, judgement, info, lang, max_tokens, 0.0, None, cancel), request, cancel)
        record(request, info, answer)
        return result(answer)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(body: ChatRequest, request: Request):
        user = [m for m in body.messages if m.role == "user"]
        if not user:
            raise ApiError(422, "messages", "messages: at least one message with role 'user' is required")
        content = user[-1].content
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        question = check_question(content or "")
        judgement, info = resolve_sensors(body.sensors, body.zone)
        max_tokens = max_tokens_of(body.max_completion_tokens or body.max_tokens)
        temperature = body.temperature or 0.0
        lang = body.lang or detect_lang(question)
        cid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        extra = lambda answer: {**answer.to_json(), "messages": messages(answer.warnings, answer.lang),  # noqa: E731
                                "sensors": info}

        def finish_reason(answer: Answer) -> str:
            return "length" if answer.timings.stop == "length" else "stop"

        if body.stream:
            def chunk(delta: dict, reason: str | None = None, **more) -> str:
                data = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **more}
                return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

            def render(kind: str, payload: Any) -> str | None:
                if kind == "start":
                    return chunk({"role": "assistant", "content": ""})
                if kind == "piece":
                    return chunk({"content": payload})
                if kind == "error":
                    return f"data: {json.dumps({'error': payload}, ensure_ascii=False)}\n\n"
                return chunk({}, finish_reason(payload), farmslm=extra(payload)) + "data: [DONE]\n\n"

            return stream_pieces(question, judgement, lang, max_tokens, temperature, render, request, info)
        cancel = threading.Event()
        answer = await finish(start_job(question, judgement, info, lang, max_tokens, temperature, None, cancel),
                              request, cancel)
        record(request, info, answer)
        t = answer.timings
        return {"id": cid, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                             "finish_reason": finish_reason(answer)}],
                "usage": {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.gen_tokens,
                          "total_tokens": t.prompt_tokens + t.gen_tokens},
                "farmslm": extra(answer)}

    return app


def run(cfg: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish (up to shutdown_timeout_s)."""
    import logging

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(cfg)
    uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                                  timeout_graceful_shutdown=cfg.shutdown_timeout_s,
                                  limit_concurrency=max(64, 4 * (cfg.queue_size + 1)))).run()
