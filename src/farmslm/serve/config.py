"""The server's configuration: one dataclass (the only place defaults live), loaded from YAML.

YAML file (flat, or under a `serve:` key) <- command-line flags <- secrets from the environment
(FARMSLM_API_KEY, FARMSLM_MQTT_PASSWORD), so keys never need to sit in a file or in `ps` output.

Example: farmslm serve --model runs/demo/model.gguf --config deploy/farmslm.yaml
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from farmslm.config import ConfigError, make_config
from farmslm.runtime.engine import REPEAT_PENALTY, InputError, check_repeat_penalty

ZONE_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@dataclass
class ServeConfig:
    model: str = "default"  # GGUF path, or "default" for the packaged stock model
    engine_url: str = ""  # an external OpenAI-compatible engine generating for farmslm ("" = llama.cpp in process)
    engine_model: str = ""  # the model name that engine expects ("" = its default)
    host: str = "127.0.0.1"  # bind address; anything but loopback needs api_key unless insecure
    port: int = 8080
    api_key: str = ""  # bearer token for /v1/* and /metrics; FARMSLM_API_KEY overrides
    insecure: bool = False  # allow a non-loopback bind without api_key (explicit opt-out)
    cors_origins: list[str] = field(default_factory=list)  # exact origins allowed; "*" is refused
    allowed_hosts: list[str] = field(default_factory=list)  # Host headers accepted; [] = loopback names on
    # a loopback bind (blocks DNS rebinding from a browser), any host otherwise (the API key guards it)
    n_threads: int | None = None  # llama.cpp threads; None = auto (the cores other processes leave free)
    n_ctx: int = 1024  # context window in tokens (per concurrent answer)
    parallel: int = 1  # answers generated at once, batched into shared decode steps (a co-op box: 8; a Pi: 1)
    few_shot: bool = False  # prefix two worked examples (makes an untrained base model usable)
    max_tokens: int = 128  # default answer length in tokens
    repeat_penalty: float = REPEAT_PENALTY  # llama.cpp repetition penalty of answers, 1..2 (1 = off)
    max_tokens_limit: int = 512  # most tokens a request may ask for
    max_question_chars: int = 500
    max_body_bytes: int = 16_384  # larger request bodies get 413
    queue_size: int = 8  # requests waiting behind the running one; more get 429
    request_timeout_s: float = 60.0  # queue wait + generation; past it: 504 (stream: an error event)
    retry_after_s: int = 2  # Retry-After on 429/503
    lazy_load: bool = False  # load the model on the first request instead of at startup
    idle_unload_s: float = 0.0  # unload after this long without requests; 0 = never
    shutdown_timeout_s: float = 30.0  # graceful shutdown: wait this long for in-flight requests
    default_zone: str = "default"  # zone used when a request names none
    mqtt_host: str = ""  # broker host; "" = no live feed
    mqtt_port: int = 1883
    mqtt_topic_prefix: str = "farm"  # subscribes to <prefix>/<zone>/sensors
    mqtt_username: str = ""
    mqtt_password: str = ""  # FARMSLM_MQTT_PASSWORD overrides
    mqtt_tls: bool = False  # connect to the broker over TLS (usually port 8883)
    mqtt_ca_file: str = ""  # CA certificate that signed the broker's certificate ("" = the system's CAs)
    sunrise: str = "06:00"  # local time day starts, to infer a missing period (domain.judge)
    sunset: str = "19:00"  # local time night starts
    window_s: float = 120.0  # a rule over several sensors is judged only on feed readings this close in time
    contact_en: str = ""  # who an abstaining answer points to ("" = your local agricultural extension office)
    contact_ko: str = ""  # ... in Korean ("" = 가까운 농업기술센터)
    load_retry_max_s: float = 60.0  # a model that failed to load is retried with back-off up to this interval
    stale_after_s: float = 300.0  # feed readings older than this are stale: reported, never used
    stale_policy: str = "exclude"  # exclude: answer without stale readings | refuse: 409
    log_path: str = ""  # JSON-lines request log; "" = stderr
    log_max_bytes: int = 10_000_000  # rotate the request log at this size
    log_backups: int = 5  # rotated files kept

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def check(cfg: ServeConfig) -> ServeConfig:
    """Refuse unsafe or impossible settings with a message naming the field."""
    if not cfg.is_loopback() and not cfg.api_key and not cfg.insecure:
        raise ConfigError(f"--host: binding to {cfg.host} exposes the server; set an API key "
                          "(FARMSLM_API_KEY or api_key in the config) or pass --insecure explicitly")
    if any(o.strip() == "*" for o in cfg.cors_origins):
        raise ConfigError("cors_origins: '*' is not allowed; list the exact origins")
    if not 1 <= cfg.port <= 65535:
        raise ConfigError(f"--port: got {cfg.port}; expected 1..65535")
    if cfg.stale_policy not in ("exclude", "refuse"):
        raise ConfigError(f"stale_policy: got {cfg.stale_policy!r}; expected exclude|refuse")
    if not ZONE_RE.match(cfg.default_zone):
        raise ConfigError(f"default_zone: got {cfg.default_zone!r}; expected 1-32 of A-Z a-z 0-9 _ -")
    if not 1 <= cfg.parallel <= 64:
        raise ConfigError(f"parallel: got {cfg.parallel}; expected 1..64 concurrent answers")
    for name in ("max_tokens", "max_tokens_limit", "max_question_chars", "max_body_bytes", "n_ctx"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")
    try:
        check_repeat_penalty(cfg.repeat_penalty)
    except InputError as e:
        raise ConfigError(str(e)) from None
    if cfg.max_tokens > cfg.max_tokens_limit:
        raise ConfigError(f"max_tokens: {cfg.max_tokens} exceeds max_tokens_limit {cfg.max_tokens_limit}")
    if cfg.queue_size < 0 or cfg.request_timeout_s <= 0 or cfg.stale_after_s <= 0 or cfg.idle_unload_s < 0:
        raise ConfigError("queue_size >= 0, request_timeout_s > 0, stale_after_s > 0, idle_unload_s >= 0 required")
    if cfg.mqtt_ca_file and not Path(cfg.mqtt_ca_file).is_file():
        raise ConfigError(f"mqtt_ca_file: {cfg.mqtt_ca_file} does not exist")
    if cfg.load_retry_max_s < 1:
        raise ConfigError(f"load_retry_max_s: got {cfg.load_retry_max_s}; expected >= 1 second")
    from farmslm.domain.judge import JudgeConfig, check_config
    try:
        check_config(JudgeConfig(cfg.sunrise, cfg.sunset, window_s=cfg.window_s))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def load_config(path: str | Path | None = None, **overrides: Any) -> ServeConfig:
    """YAML file <- overrides (None ignored) <- environment secrets; checked."""
    values: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: {path} does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data = data.get("serve", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise ConfigError(f"--config: {path} must be a mapping of field: value")
        values.update(data)
    cfg = make_config(ServeConfig, values, **overrides)
    cfg.api_key = os.environ.get("FARMSLM_API_KEY") or cfg.api_key
    cfg.mqtt_password = os.environ.get("FARMSLM_MQTT_PASSWORD") or cfg.mqtt_password
    return check(cfg)
