"""Live sensor feed over MQTT: the latest reading per key and zone, with its age.

Topic: `<prefix>/<zone>/sensors` (default prefix `farm`; zone = 1-32 of A-Z a-z 0-9 _ -).
Payload, either
  flat JSON:  {"temp_c": 31.5, "humidity_pct": 88, "period": "day", "ts": 1767225600}
              (our sensor keys; optional "ts" = Unix seconds of the measurement, else arrival time)
  SenML (RFC 8428): [{"bn": "gh1:", "bt": 1767225600, "n": "temp_c", "u": "Cel", "v": 31.5},
                     {"n": "period", "vs": "day"}]   (the last ':'/'/' segment of bn+n is the key)
Every value is checked like `farmslm ask --sensors`; a payload with any bad part is counted as
malformed and ignored whole (logged at most `log_burst` times a minute, then summarised). Readings older
than stale_after_s are reported as stale, never used; each reading keeps its own time, so a rule over several
sensors can be judged only on readings close in time (farmslm.domain.judge). TLS: start(..., tls=True, ca_file).

Example: mosquitto_pub -t farm/gh1/sensors -m '{"temp_c": 36.2, "humidity_pct": 55}'
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Callable

from farmslm.domain.sensors import CONTEXT_KEYS, NUMERIC, SensorError, validate
from farmslm.serve.config import ZONE_RE

log = logging.getLogger("farmslm.feed")
MAX_ZONES = 256  # a misbehaving publisher cannot grow memory without bound
SENML_UNITS = {"temp_c": "Cel", "root_temp_c": "Cel", "humidity_pct": "%RH", "co2_ppm": "ppm",
               "substrate_moisture_pct": "%"}
SENML_RELATIVE = 2 ** 28  # RFC 8428: times below this are relative to now


class PayloadError(ValueError):
    """A feed message that breaks the documented payload; counted, then ignored."""


def _check(key: str, value: object) -> float | str:
    if key in NUMERIC:
        try:
            return validate({key: value})[key]
        except SensorError as exc:
            raise PayloadError(str(exc)) from None
    if key in CONTEXT_KEYS:
        if value not in CONTEXT_KEYS[key]:
            raise PayloadError(f"{key}: got {value!r}; expected one of {'|'.join(CONTEXT_KEYS[key])}")
        return value  # type: ignore[return-value]
    raise PayloadError(f"{key}: unknown sensor key")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"time: got {value!r}; expected Unix seconds")
    return float(value)


def parse_payload(payload: bytes, now: float) -> dict[str, tuple[float | str, float]]:
    """Message body -> {key: (value, measured_at)}; raises PayloadError."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"not JSON ({exc})") from None
    out: dict[str, tuple[float | str, float]] = {}
    if isinstance(data, dict):
        ts = _number(data["ts"]) if "ts" in data else now
        for key, value in data.items():
            if key != "ts":
                out[key] = (_check(key, value), ts)
    elif isinstance(data, list):
        base_name, base_time = "", 0.0
        for rec in data:
            if not isinstance(rec, dict):
                raise PayloadError("SenML: every record must be an object")
            base_name = rec.get("bn", base_name)
            base_time = rec.get("bt", base_time)
            if not isinstance(base_name, str):
                raise PayloadError("SenML: bn must be a string")
            if "n" not in rec and not any(k in rec for k in ("v", "vs")):
                continue  # a base-only record
            name = base_name + str(rec.get("n", ""))
            key = name.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
            if "u" in rec and key in SENML_UNITS and rec["u"] != SENML_UNITS[key]:
                raise PayloadError(f"{key}: unit {rec['u']!r}; expected {SENML_UNITS[key]!r}")
            value = rec["v"] if "v" in rec else rec.get("vs")
            t = _number(base_time) + _number(rec.get("t", 0.0))
            t = now if t == 0 else (now + t if abs(t) < SENML_RELATIVE else t)
            out[key] = (_check(key, value), t)
    else:
        raise PayloadError("expected a JSON object (flat) or array (SenML)")
    if not out:
        raise PayloadError("no readings in the payload")
    # a sender's clock ahead of ours must not make a reading look fresh
    return {k: (v, min(ts, now)) for k, (v, ts) in out.items()}


class SensorFeed:
    """Latest readings per zone; fed by MQTT (start()) or directly (ingest())."""

    def __init__(self, stale_after_s: float = 300.0, topic_prefix: str = "farm",
                 on_status: Callable[[str], None] | None = None, log_burst: int = 5):
        self.stale_after_s = stale_after_s
        self.prefix = topic_prefix.strip("/")
        self.on_status = on_status or (lambda status: None)
        self.counts = {"ok": 0, "malformed": 0}
        self.connected = False
        self.log_burst = log_burst  # malformed messages logged line by line per minute; the rest are summarised
        self._log_window = (0.0, 0, 0)  # window start, logged in it, suppressed in it
        self._latest: dict[str, dict[str, tuple[float | str, float]]] = {}
        self._lock = threading.Lock()
        self._client = None

    def _log_malformed(self, topic: str, exc: Exception, now: float) -> None:
        """A flood of bad messages must not flood the log: `log_burst` lines a minute, then one summary."""
        start, logged, quiet = self._log_window
        if now - start >= 60.0:
            if quiet:
                log.warning("feed: %d more malformed messages in the last minute were not logged one by one", quiet)
            start, logged, quiet = now, 0, 0
        if logged < self.log_burst:
            log.warning("feed: ignored message on %s: %s", topic[:100], exc)
            logged += 1
        else:
            quiet += 1
        self._log_window = (start, logged, quiet)

    def ingest(self, topic: str, payload: bytes, now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            parts = topic.split("/")
            if len(parts) != 3 or parts[0] != self.prefix or parts[2] != "sensors" or not ZONE_RE.match(parts[1]):
                raise PayloadError(f"topic {topic!r}; expected {self.prefix}/<zone>/sensors")
            zone = parts[1]
            readings = parse_payload(payload, now)
            with self._lock:
                if zone not in self._latest and len(self._latest) >= MAX_ZONES:
                    raise PayloadError(f"more than {MAX_ZONES} zones")
                latest = self._latest.setdefault(zone, {})
                for key, (value, ts) in readings.items():
                    if key not in latest or ts >= latest[key][1]:  # an older message arriving late loses
                        latest[key] = (value, ts)
        except PayloadError as exc:
            self.counts["malformed"] += 1
            self.on_status("malformed")
            self._log_malformed(topic, exc, now)
            return
        self.counts["ok"] += 1
        self.on_status("ok")

    def zones(self) -> list[str]:
        with self._lock:
            return sorted(self._latest)

    def snapshot(self, zone: str, now: float | None = None) -> dict:
        """{zone, readings (fresh only), age_s, times (measurement time per fresh key), stale {key: {value, age_s}}, known}."""
        now = time.time() if now is None else now
        with self._lock:
            latest = dict(self._latest.get(zone, {}))
        fresh, ages, times, stale = {}, {}, {}, {}
        for key, (value, ts) in latest.items():
            age = round(max(0.0, now - ts), 1)
            if age > self.stale_after_s:
                stale[key] = {"value": value, "age_s": age}
            else:
                fresh[key], ages[key], times[key] = value, age, ts
        return {"zone": zone, "readings": fresh, "age_s": ages, "times": times, "stale": stale, "known": bool(latest)}

    # ---- MQTT --------------------------------------------------------------------------------

    def start(self, host: str, port: int = 1883, username: str = "", password: str = "", tls: bool = False,
              ca_file: str = "") -> None:
        """Connect in the background (retrying while the broker is down) and subscribe; TLS when asked
        (the broker's certificate checked against ca_file, or the system's CAs when none is given)."""
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"farmslm-{id(self):x}")
        if tls:
            client.tls_set(ca_certs=ca_file or None)
        if username:
            client.username_pw_set(username, password or None)
        topic = f"{self.prefix}/+/sensors"

        def on_connect(c, userdata, flags, reason_code, properties):
            if reason_code.is_failure:
                log.error("feed: broker %s:%s refused the connection: %s", host, port, reason_code)
                return
            c.subscribe(topic, qos=0)

        def on_subscribe(c, userdata, mid, reason_codes, properties):
            self.connected = not any(rc.is_failure for rc in reason_codes)  # live only once the broker acks
            log.info("feed: subscribed to %s on %s:%s: %s", topic, host, port, self.connected)

        def on_disconnect(c, userdata, flags, reason_code, properties):
            self.connected = False

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = lambda c, userdata, msg: self.ingest(msg.topic, msg.payload)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
            self.connected = False
