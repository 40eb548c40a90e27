"""Verify QA rows in four checks; rejected rows go to quarantine with the reason, none is dropped silently.

1. structure: fields and types, sensors valid (sensors.validate, already normalised), known category and
   codes, text == sensors.format_sample(sensors, question, warnings, answer), unique id;
2. warnings: the row's warnings and the tag in its text equal rules.evaluate(sensors);
3. terminology: terms.match_rate(question + answer, lang) >= term_threshold (0.70);
4. deduplication: cosine >= dup_threshold (0.85) between question + answer, TF-IDF over character
   n-grams (works for Korean); the later row of a pair goes to quarantine. Sparse products in chunks.

Example: farmslm data verify runs/x/data/train.jsonl --out /tmp/verified
"""

from __future__ import annotations

import time
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farmslm import artifacts
from farmslm.domain import explain, rules, terms
from farmslm.domain.knowledge import CATEGORIES
from farmslm.domain.lang import LANGS
from farmslm.domain.sensors import SensorError, format_sample, parse_sample, parse_tag, validate

FIELDS = {"id": str, "lang": str, "category": str, "sensors": dict, "question": str, "warnings": list,
          "answer": str, "text": str}
MARKUP = ("Q:", "A:", "[STATUS", "[WARNING", "[NORMAL]", "[NO_READINGS]", "[FACTS")  # prompt-format tokens that must not leak into fields
# Words that show an answer talks about a sensor; a warning counts as addressed when the answer names
# the sensor (or derived value) of one of its rule's conditions.
SENSOR_WORDS = {
    "temp_c": ("temperature", "°C", "heat", "기온", "온도"), "humidity_pct": ("humidity", "RH", "습도"),
    "co2_ppm": ("CO2", "ppm", "이산화탄소", "탄산가스"), "light_umol": ("light", "PPFD", "µmol", "광", "빛"),
    "ec_ds_m": ("EC", "dS/m", "salt", "염류"), "ph": ("pH",), "root_temp_c": ("root", "근권"),
    "substrate_moisture_pct": ("moisture", "irrigation", "water", "수분", "관수", "배지"),
    "vpd_kpa": ("VPD", "condensation", "dew", "결로", "포차"),
}


@dataclass
class VerifyConfig:
    dup_threshold: float = 0.85  # cosine on question + answer at or above which a row is a duplicate
    term_threshold: float = 0.70  # minimum share of sentences mentioning a dictionary term
    ngram_min: int = 2  # character n-gram range of the TF-IDF vectors
    ngram_max: int = 4


def check_structure(row: object) -> str | None:
    """None if the row has the schema and a consistent text; else the reason."""
    if not isinstance(row, dict):
        return "structure: row is not a JSON object"
    for field, kind in FIELDS.items():
        if field not in row:
            return f"structure: missing field {field!r}"
        if not isinstance(row[field], kind):
            return f"structure: field {field!r} must be {kind.__name__}, got {type(row[field]).__name__}"
    if row["lang"] not in LANGS:
        return f"structure: lang must be en|ko, got {row['lang']!r}"
    if row["category"] not in CATEGORIES:
        return f"structure: category {row['category']!r} not in {', '.join(CATEGORIES)}"
    if not row["question"].strip() or not row["answer"].strip():
        return "structure: empty question or answer"
    for field in ("question", "answer"):
        leaked = [m for m in MARKUP if m in row[field]]
        if leaked:
            return f"structure: {field} contains prompt markup {leaked}"
    bad = [c for c in row["warnings"] if c not in rules.CODES]
    if bad:
        return f"structure: unknown warning code(s) {bad}"
    if row.get("format", 1) >= 2:
        return _check_grounded(row)
    try:
        readings = validate(row["sensors"])
    except SensorError as exc:
        return f"structure: sensors: {exc}"
    if readings != row["sensors"] or list(readings) != list(row["sensors"]):
        return "structure: sensors not normalised (order or precision differs from sensors.validate)"
    expected = format_sample(readings, row["question"], row["warnings"], row["answer"])
    if row["text"] != expected:
        return "structure: text != format_sample(sensors, question, warnings, answer)"
    return None


def _readings(row: dict) -> dict | None:
    return validate(row["sensors"]) if row["sensors"] else None


def _check_grounded(row: dict) -> str | None:
    """Format 2: the prompt is rebuilt from the row's readings, retrieved fact ids and question."""
    from farmslm.domain.prompt import guarded_prompt, sample_text
    from farmslm.domain.retrieve import fact_record
    from farmslm.domain.knowledge import fact_by_id

    for field in ("prefill", "fact_id"):
        if not isinstance(row.get(field), str):
            return f"structure: field {field!r} must be str"
    if not isinstance(row.get("retrieved"), list):
        return "structure: field 'retrieved' must be list"
    known = fact_by_id()
    missing = [f for f in [row["fact_id"], *row["retrieved"]] if f not in known]
    if missing:
        return f"structure: unknown fact id(s) {missing}"
    try:
        readings = _readings(row)
    except SensorError as exc:
        return f"structure: sensors: {exc}"
    if readings is not None and (readings != row["sensors"] or list(readings) != list(row["sensors"])):
        return "structure: sensors not normalised (order or precision differs from sensors.validate)"
    facts = [fact_record(known[f]) for f in row["retrieved"]]
    prefill = guarded_prompt(readings, row["question"], facts, row["lang"],
                             explain.prefill(readings, row["lang"], row["warnings"]))
    if row["prefill"] != prefill:
        return "structure: prefill != the guarded prompt rebuilt from sensors, retrieved facts and question"
    if row["text"] != sample_text(prefill, row["answer"]):
        return "structure: text != prefill + answer"
    return None


def check_warnings(row: dict) -> str | None:
    if row.get("format", 1) >= 2:
        readings = _readings(row)
        expected = rules.evaluate(readings) if readings else []
        if row["warnings"] != expected:
            return f"warnings: row has {row['warnings'] or '[NORMAL]'}, rules give {expected or '[NORMAL]'}"
        tag, _ = parse_tag(row["prefill"].split("\nA:", 1)[1])
        want = expected if readings else ["NO_READINGS"]
        return None if tag == want else f"warnings: tag in prompt {tag}, rules give {want}"
    expected = rules.evaluate(validate(row["sensors"]))
    if row["warnings"] != expected:
        return f"warnings: row has {row['warnings'] or '[NORMAL]'}, rules give {expected or '[NORMAL]'}"
    try:
        _, _, tag, _ = parse_sample(row["text"])
    except SensorError as exc:
        return f"warnings: text unparsable: {exc}"
    if tag != expected:
        return f"warnings: tag in text {tag}, rules give {expected or '[NORMAL]'}"
    answer = row["answer"].lower()
    for code in expected:
        sensors = {c.sensor for c in rules.rule_for(code).conditions}
        if not any(w.lower() in answer for s in sensors for w in SENSOR_WORDS.get(s, ())):
            return f"warnings: answer does not address {code} (names none of {sorted(sensors)})"
    return None


@lru_cache(maxsize=200_000)
def _sentence_has_term(sentence: str, lang: str) -> bool:
    return terms.match_rate(sentence, lang) > 0


def term_rate(row: dict) -> float:
    """terms.match_rate of question + answer, computed per sentence with a cache (facts repeat across rows)."""
    # an abstaining answer names no term by design: its question alone must be on the domain
    parts = terms.sentences(row["question"] + ("" if row.get("abstain") else "\n" + row["answer"]))
    return sum(_sentence_has_term(s, row["lang"]) for s in parts) / len(parts) if parts else 0.0


def vectorize(texts: list[str], cfg: VerifyConfig):
    """L2-normalised TF-IDF rows over character n-grams (sparse)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(cfg.ngram_min, cfg.ngram_max), sublinear_tf=True)
    return vec.fit_transform(texts)


def similar_pairs(x, threshold: float, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """All (i, j, cos) with i < j and cos >= threshold; sparse products, `chunk` rows at a time."""
    out = []
    xt = x.T.tocsc()
    for start in range(0, x.shape[0], chunk):
        block = (x[start:start + chunk] @ xt).toarray()
        rows, cols = np.nonzero(block >= threshold - 1e-9)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < c:
                out.append((i, int(c), float(block[r, c])))
    return out


def qa_text(row: dict) -> str:
    """What dedup and leakage compare: question, answer and (grounded rows) the rule-written sentences."""
    rule_part = row["prefill"].split("\nA:", 1)[1] if row.get("prefill") else ""
    return row["question"] + "\n" + row["answer"] + "\n" + rule_part


def dedup(rows: list[dict], cfg: VerifyConfig) -> tuple[list[dict], list[dict]]:
    """Greedy in row order: a row similar to an earlier kept row is quarantined. -> (kept, rejected)."""
    if len(rows) < 2:
        return rows, []
    pairs = similar_pairs(vectorize([qa_text(r) for r in rows], cfg), cfg.dup_threshold)
    partners: dict[int, list[tuple[int, float]]] = {}
    for i, j, s in pairs:
        partners.setdefault(j, []).append((i, s))
    removed: dict[int, tuple[int, float]] = {}
    for j in range(len(rows)):
        for i, s in partners.get(j, []):
            if i not in removed:
                removed[j] = (i, s)
                break
    kept = [r for k, r in enumerate(rows) if k not in removed]
    rejected = [{**rows[j], "reason": f"duplicate: cosine {s:.3f} >= {cfg.dup_threshold} with {rows[i]['id']}"}
                for j, (i, s) in sorted(removed.items())]
    return kept, rejected


def verify_rows(rows: list, cfg: VerifyConfig | None = None) -> tuple[list[dict], list[dict], dict]:
    """rows -> (verified, quarantined with `reason`, figures). Order of checks: 1, 4, 3, then 2 (dedup)."""
    cfg = cfg or VerifyConfig()
    ok, quarantine = [], []
    seen_ids: set[str] = set()
    rates = []
    counts = {"structure": 0, "warnings": 0, "terminology": 0, "duplicate": 0}
    for row in rows:
        reason = check_structure(row)
        if reason is None and row["id"] in seen_ids:
            reason = f"structure: duplicate id {row['id']!r}"
        if reason is None:
            reason = check_warnings(row)
        if reason is None:
            rate = term_rate(row)
            rates.append(rate)
            if rate < cfg.term_threshold:
                reason = f"terminology: match rate {rate:.2f} < {cfg.term_threshold}"
            else:
                row = {**row, "term_match": round(rate, 3)}
        if reason is None:
            seen_ids.add(row["id"])
            ok.append(row)
        else:
            counts[reason.split(":")[0]] += 1
            quarantine.append({"row": row, "reason": reason} if not isinstance(row, dict) else {**row, "reason": reason})
    kept, dups = dedup(ok, cfg)  # one greedy pass over fixed vectors leaves no pair among the kept rows, but
    while True:                  # TF-IDF refitted on them can pair others: repeat until verifying again keeps all
        kept, more = dedup(kept, cfg)
        if not more:
            break
        dups += more
    counts["duplicate"] = len(dups)
    quarantine += dups
    kept_rates = [r["term_match"] for r in kept]
    figures = {"n_in": len(rows), "n_verified": len(kept), "n_quarantined": len(quarantine),
               "rejected_by_check": counts, "duplicates_removed": len(dups),
               "term_match_mean_all": round(float(np.mean(rates)), 4) if rates else None,
               "term_match_mean_verified": round(float(np.mean(kept_rates)), 4) if kept_rates else None,
               "term_threshold": cfg.term_threshold, "dup_threshold": cfg.dup_threshold}
    return kept, quarantine, figures


def read_rows(path: str | Path) -> list:
    """JSONL -> rows; a line that is not JSON becomes a structure failure, not an exception."""
    import json

    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                out.append({"line": n, "raw": line.rstrip("\n"), "error": exc.msg})
    return out


def run(path: str | Path, out_dir: str | Path, cfg: VerifyConfig | None = None) -> Path:
    """Verify one JSONL file -> out_dir/{verified,quarantine}.jsonl, verify.json, meta.json."""
    cfg = cfg or VerifyConfig()
    started = time.time()
    out_dir = Path(out_dir)
    kept, quarantine, figures = verify_rows(read_rows(path), cfg)
    artifacts.write_jsonl(out_dir / "verified.jsonl", kept)
    artifacts.write_jsonl(out_dir / "quarantine.jsonl", quarantine)
    artifacts.write_json(out_dir / "verify.json", figures)
    artifacts.write_meta(out_dir, "verify", cfg, {str(path): artifacts.hash_path(path)}, figures, started)
    return out_dir
