"""Sensor keys, units and physical ranges; the STATUS / WARNING tag grammar.

Readings (JSON object) -> validated, normalised dict -> `[STATUS: k=v, ...]` and back.
This is the only way sensor data enters a prompt: training, `farmslm ask` and the server alike.

Grammar (keys always in SENSOR_KEYS order, separated by ", "):
    status   := "[STATUS: " pair (", " pair)* "]"
    pair     := key "=" value            value: shortest decimal at the key's precision, or a word
    tag      := "[NORMAL]" | "[NO_READINGS]" | "[WARNING: " code (", " code)* "]"
    sample   := "Q: " status " " question "\\nA: " tag " " answer

Example: farmslm rules --sensors '{"temp_c": 31.5, "humidity_pct": 88, "period": "day"}'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass


class SensorError(ValueError):
    """A reading or tag that breaks the documented contract; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class NumericSensor:
    key: str
    unit: str
    lo: float  # physical range, inclusive: outside it the reading is a fault, not a climate
    hi: float
    decimals: int  # precision kept in the STATUS tag
    label_en: str
    label_ko: str


NUMERIC_SENSORS: tuple[NumericSensor, ...] = (
    NumericSensor("temp_c", "°C", -30.0, 60.0, 1, "air temperature", "기온"),
    NumericSensor("humidity_pct", "%", 0.0, 100.0, 1, "relative humidity", "상대습도"),
    NumericSensor("co2_ppm", "ppm", 0.0, 10000.0, 0, "CO2", "이산화탄소"),
    NumericSensor("light_umol", "µmol m⁻² s⁻¹", 0.0, 3000.0, 0, "light (PPFD)", "광량(PPFD)"),
    NumericSensor("ec_ds_m", "dS/m", 0.0, 20.0, 2, "root-zone EC", "근권 EC"),
    NumericSensor("ph", "", 0.0, 14.0, 2, "root-zone pH", "근권 pH"),
    NumericSensor("root_temp_c", "°C", -10.0, 50.0, 1, "root-zone temperature", "근권 온도"),
    NumericSensor("substrate_moisture_pct", "%", 0.0, 100.0, 1, "substrate moisture", "배지 수분"),
)
NUMERIC = {s.key: s for s in NUMERIC_SENSORS}
CONTEXT_KEYS: dict[str, tuple[str, ...]] = {
    "growth_stage": ("seedling", "vegetative", "flowering", "fruiting"),
    "period": ("day", "night"),
}
SENSOR_KEYS: tuple[str, ...] = tuple(NUMERIC) + tuple(CONTEXT_KEYS)

Readings = dict[str, float | str]


def _allowed(key: str) -> str:
    if key in NUMERIC:
        s = NUMERIC[key]
        return f"a number in [{s.lo:g}, {s.hi:g}] {s.unit}".rstrip()
    return "one of " + "|".join(CONTEXT_KEYS[key])


def validate(raw: object) -> Readings:
    """Check a readings object and return it normalised (rounded, key-ordered).

    Raises SensorError naming the key and its allowed range for unknown keys, wrong types,
    non-finite or out-of-range values, and an object with no sensor reading at all.
    """
    if not isinstance(raw, dict):
        raise SensorError("sensors", f"expected a JSON object, got {type(raw).__name__}")
    for key in raw:
        if key not in SENSOR_KEYS:
            raise SensorError(str(key), "unknown sensor key; allowed keys: " + ", ".join(SENSOR_KEYS))
    out: Readings = {}
    for key in SENSOR_KEYS:
        if key not in raw or raw[key] is None:
            continue
        value = raw[key]
        if key in NUMERIC:
            s = NUMERIC[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SensorError(key, f"got {value!r}; expected {_allowed(key)}")
            if not math.isfinite(value) or not s.lo <= value <= s.hi:
                raise SensorError(key, f"got {value!r}; expected {_allowed(key)}")
            out[key] = float(round(float(value), s.decimals)) + 0.0  # +0.0 turns -0.0 into 0.0
        else:
            if value not in CONTEXT_KEYS[key]:
                raise SensorError(key, f"got {value!r}; expected {_allowed(key)}")
            out[key] = value
    if not any(k in NUMERIC for k in out):
        raise SensorError("sensors", "at least one sensor reading is required: " + ", ".join(NUMERIC))
    return out


def parse_json(text: str) -> Readings:
    """Parse and validate a JSON readings string (the CLI's --sensors)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SensorError("sensors", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return validate(raw)


def format_value(key: str, value: float | str) -> str:
    if key in CONTEXT_KEYS:
        return str(value)
    text = f"{float(value):.{NUMERIC[key].decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_status(readings: Readings) -> str:
    """Readings (validated) -> `[STATUS: temp_c=31.5, period=day]`."""
    pairs = [f"{k}={format_value(k, readings[k])}" for k in SENSOR_KEYS if k in readings]
    return "[STATUS: " + ", ".join(pairs) + "]"


_STATUS_RE = re.compile(r"\[STATUS: ([^\]]*)\]")


def parse_status(text: str) -> Readings:
    """`[STATUS: ...]` (anywhere in text) -> validated readings; the inverse of format_status."""
    m = _STATUS_RE.search(text)
    if not m:
        raise SensorError("status", "no [STATUS: ...] tag found")
    raw: dict[str, object] = {}
    for pair in m.group(1).split(", "):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SensorError("status", f"malformed pair {pair!r}; expected key=value")
        if key in raw:
            raise SensorError(key, "key given twice")
        if key in NUMERIC:
            try:
                raw[key] = float(value)
            except ValueError:
                raise SensorError(key, f"got {value!r}; expected {_allowed(key)}") from None
        else:
            raw[key] = value
    return validate(raw)


NO_READINGS = "NO_READINGS"  # the tag's pseudo-code when no usable reading was given (never a rule code)


def format_tag(warnings: list[str]) -> str:
    """[] -> [NORMAL]; [NO_READINGS] -> [NO_READINGS]; codes -> [WARNING: A, B]."""
    if warnings == [NO_READINGS]:
        return "[NO_READINGS]"
    return "[WARNING: " + ", ".join(warnings) + "]" if warnings else "[NORMAL]"


_TAG_RE = re.compile(r"\s*\[(NORMAL|NO_READINGS|WARNING: ([A-Z0-9_]+(?:, [A-Z0-9_]+)*))\]")


def parse_tag(text: str) -> tuple[list[str] | None, str]:
    """Leading tag of an answer -> (codes, rest): [] for NORMAL, [NO_READINGS], the codes; (None, text) if absent."""
    m = _TAG_RE.match(text)
    if not m:
        return None, text.strip()
    codes = m.group(2).split(", ") if m.group(2) else ([NO_READINGS] if m.group(1) == NO_READINGS else [])
    return codes, text[m.end():].strip()


def format_prompt(readings: Readings | None, question: str) -> str:
    """The model's prompt up to and including `A:`; no STATUS tag when there are no readings."""
    status = format_status(readings) + " " if readings else ""
    return f"Q: {status}{question.strip()}\nA:"


def format_sample(readings: Readings | None, question: str, warnings: list[str], answer: str) -> str:
    return f"{format_prompt(readings, question)} {format_tag(warnings)} {answer.strip()}"


def parse_sample(text: str) -> tuple[Readings | None, str, list[str] | None, str]:
    """Inverse of format_sample: text -> (readings, question, warnings, answer)."""
    if not text.startswith("Q: ") or "\nA:" not in text:
        raise SensorError("text", "expected 'Q: ... \\nA: ...'")
    q, _, a = text[3:].partition("\nA:")
    readings = None
    if q.startswith("[STATUS: "):
        readings = parse_status(q)
        q = q[q.index("]") + 1:]
    warnings, answer = parse_tag(a)
    return readings, q.strip(), warnings, answer
