"""The knowledge base: atomic facts with sources, in Korean and English.

`data/knowledge/*.yaml` -> `Fact` objects; `sources.yaml` (+ any `sources_*.yaml`) -> citations;
`validation.yaml` -> the 15 core validation questions. Schema of one fact (every text field in en and ko):

    - id: grafting_healing_climate          # unique, snake_case
      category: propagation                 # optional; the file's `category` otherwise
      source: [cropking_grafting]           # ids of sources*.yaml entries (>= 1)
      verified: true                        # true only with `quote` + `url`: the claim and its numbers seen there
      quote: "Relative Humidity- Begin around 95% ..."   # short supporting quote (original language)
      url: https://...                      # the page the quote is from
      sensors: [humidity_pct]               # sensor keys the fact concerns (dataset readings)
      stage: seedling                       # optional growth stage the fact is about
      thresholds:                           # every number the fact states for a sensor the rules judge
        - {sensor: humidity_pct, kind: context, where: healing chamber, value: [85, 100]}
      q: {en: [...], ko: [...]}             # >= 2 question cores per language, one in a grower's words
      fact: {en: "...", ko: "..."}          # one atomic claim, with the source's numbers
      do: {en: [...], ko: [...]}            # concrete actions (imperative)

Threshold kinds (checked against rules.yaml by `threshold_problems`):
- optimum:   a target band for the greenhouse's production climate / root zone; must lie inside the rule
             engine's normal band for that period and stage (15-18 °C at night inside 12-20 °C);
- limit:     an alarm edge; must equal a rules.yaml threshold on that sensor for that period and stage;
- condition: a biological condition (a disease's or pest's trigger band): not an alarm, physical range only;
- context:   a number for another place (healing chamber, fruit store, source water), with `where`.
`period` is day | night | any (any = both); `stage` a growth stage or absent (the base numbers).

Example: python -c "from farmslm.domain.knowledge import load_facts; print(len(load_facts()))"
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from farmslm.domain.lang import LANGS
from farmslm.domain.sensors import CONTEXT_KEYS, NUMERIC

# Dataset categories: the first nine are the design report's; the rest cover what growers ask beyond them.
CATEGORIES = ("growth", "disease", "pest", "climate", "nutrition", "light", "co2", "equipment", "troubleshooting",
              "propagation", "crop", "disorder", "harvest", "irrigation", "hygiene")
CATEGORY_NAMES = {
    "growth": ("growth management", "생육 관리"), "disease": ("diseases", "병해"), "pest": ("pests and biocontrol", "해충·천적"),
    "climate": ("temperature, humidity & energy", "온습도·에너지"),
    "nutrition": ("fertilizer & nutrition (EC/pH)", "비료·양분(EC/pH)"), "light": ("light", "광"),
    "co2": ("CO2", "이산화탄소"), "equipment": ("equipment & sensors", "장비·센서"),
    "troubleshooting": ("troubleshooting", "문제 해결"), "propagation": ("propagation & grafting", "육묘·접목"),
    "crop": ("crop management & training", "작물 관리·유인"), "disorder": ("physiological disorders", "생리장해"),
    "harvest": ("harvest, storage & fruit quality", "수확·저장·품질"), "irrigation": ("irrigation & water", "관수·용수"),
    "hygiene": ("hygiene & sanitation", "위생·소독"),
}
THRESHOLD_KINDS = ("optimum", "limit", "condition", "context")
THRESHOLD_SENSORS = tuple(NUMERIC) + ("vpd_kpa",)
PERIODS = ("day", "night", "any")
_DIR = "data/knowledge"
_NOT_FACTS = ("validation.yaml", "out_of_scope.yaml", "paraphrases.yaml")


@dataclass(frozen=True)
class Threshold:
    sensor: str  # a NUMERIC key or vpd_kpa
    kind: str  # optimum | limit | condition | context
    period: str  # day | night | any
    stage: str | None
    lo: float
    hi: float  # == lo for a single value
    where: str = ""  # context: the place the number is for


@dataclass(frozen=True)
class Fact:
    id: str
    category: str
    source: tuple[str, ...]  # ids in sources*.yaml
    verified: bool
    sensors: tuple[str, ...]  # numeric sensor keys the fact concerns (for sampling readings)
    stage: str | None  # growth stage the fact is about, if any
    q: dict  # lang -> list of question cores (no final punctuation)
    fact: dict  # lang -> one sentence: the claim with its numbers
    do: dict  # lang -> list of concrete actions (imperative)
    thresholds: tuple[Threshold, ...] = ()
    quote: str = ""  # supporting quote seen at `url` (verified facts)
    url: str = ""


def knowledge_root(knowledge_dir: str | Path | None = None):
    """The packaged knowledge directory, or a user's (`farmslm index --knowledge DIR`)."""
    if knowledge_dir is None:
        return resources.files("farmslm.domain").joinpath(_DIR)
    path = Path(knowledge_dir)
    if not path.is_dir():
        raise ValueError(f"--knowledge: {path} is not a directory of knowledge YAML files")
    return path


def _read(name: str, knowledge_dir: str | Path | None = None):
    text = knowledge_root(knowledge_dir).joinpath(name).read_text(encoding="utf-8")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: ~10x the pure-Python loader


def _names(knowledge_dir: str | Path | None = None) -> list[str]:
    return sorted(p.name for p in knowledge_root(knowledge_dir).iterdir() if p.name.endswith(".yaml"))


def _files(knowledge_dir: str | Path | None = None) -> list[str]:
    return [n for n in _names(knowledge_dir) if not n.startswith("sources") and n not in _NOT_FACTS]


def load_sources(knowledge_dir: str | Path | None = None) -> dict[str, dict]:
    """Every citation: sources.yaml plus sources_*.yaml; id -> {title, publisher, url, verified}."""
    return _load_sources(str(knowledge_dir) if knowledge_dir else "")


@lru_cache(maxsize=4)
def _load_sources(knowledge_dir: str) -> dict[str, dict]:
    knowledge_dir = knowledge_dir or None
    out: dict[str, dict] = {}
    for name in _names(knowledge_dir):
        if not name.startswith("sources"):
            continue
        for sid, entry in (_read(name, knowledge_dir) or {}).items():
            if sid in out:
                raise ValueError(f"knowledge/{name}: source id {sid!r} is defined twice")
            if not isinstance(entry, dict) or not entry.get("title"):
                raise ValueError(f"knowledge/{name} {sid}: needs at least a title")
            out[sid] = dict(entry)
    return out


def _threshold(raw: dict, where: str) -> Threshold:
    sensor, kind = raw.get("sensor"), raw.get("kind")
    if sensor not in THRESHOLD_SENSORS:
        raise ValueError(f"{where}: threshold sensor {sensor!r} not in {THRESHOLD_SENSORS}")
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"{where}: threshold kind {kind!r} not in {THRESHOLD_KINDS}")
    period = raw.get("period", "any")
    if period not in PERIODS:
        raise ValueError(f"{where}: threshold period {period!r} not in {PERIODS}")
    stage = raw.get("stage")
    if stage is not None and stage not in CONTEXT_KEYS["growth_stage"]:
        raise ValueError(f"{where}: threshold stage {stage!r} unknown")
    value = raw.get("value")
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 2) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: threshold value must be a number or [lo, hi], got {value!r}")
    lo, hi = float(min(values)), float(max(values))
    if kind == "context" and not raw.get("where"):
        raise ValueError(f"{where}: a context threshold names the place (where: ...)")
    return Threshold(sensor, kind, period, stage, lo, hi, str(raw.get("where", "")))


def load_facts(knowledge_dir: str | Path | None = None) -> tuple[Fact, ...]:
    """All facts, checked: known category, sources, sensors, stage, thresholds; both languages present."""
    return _load_facts(str(knowledge_dir) if knowledge_dir else "")


@lru_cache(maxsize=4)
def _load_facts(knowledge_dir: str) -> tuple[Fact, ...]:
    knowledge_dir = knowledge_dir or None
    sources = load_sources(knowledge_dir)
    facts, seen = [], set()
    for name in _files(knowledge_dir):
        data = _read(name, knowledge_dir)
        for raw in data["facts"]:
            fid = raw["id"]
            where = f"knowledge/{name} {fid}"
            category = raw.get("category", data.get("category"))
            if category not in CATEGORIES:
                raise ValueError(f"{where}: unknown category {category!r}")
            if fid in seen:
                raise ValueError(f"{where}: duplicate fact id")
            seen.add(fid)
            src = tuple(raw.get("source") or ())
            if not src or any(s not in sources for s in src):
                raise ValueError(f"{where}: source must list ids from sources*.yaml, got {src}")
            sensors = tuple(raw.get("sensors") or ())
            if any(s not in NUMERIC for s in sensors):
                raise ValueError(f"{where}: unknown sensor in {sensors}")
            stage = raw.get("stage")
            if stage is not None and stage not in CONTEXT_KEYS["growth_stage"]:
                raise ValueError(f"{where}: unknown stage {stage!r}")
            for field in ("q", "fact", "do"):
                if not isinstance(raw.get(field), dict) or any(not raw[field].get(lang) for lang in LANGS):
                    raise ValueError(f"{where}: {field} needs en and ko")
            verified = bool(raw.get("verified", False))
            if verified and not (raw.get("quote") and raw.get("url")):
                raise ValueError(f"{where}: verified: true needs the supporting quote and its url")
            thresholds = tuple(_threshold(t, where) for t in raw.get("thresholds") or ())
            facts.append(Fact(fid, category, src, verified, sensors, stage,
                              {k: list(v) for k, v in raw["q"].items()}, dict(raw["fact"]),
                              {k: list(v) for k, v in raw["do"].items()}, thresholds,
                              str(raw.get("quote", "")), str(raw.get("url", ""))))
    return tuple(facts)


def facts_by_category() -> dict[str, list[Fact]]:
    out: dict[str, list[Fact]] = {c: [] for c in CATEGORIES}
    for f in load_facts():
        out[f.category].append(f)
    return out


@lru_cache(maxsize=1)
def fact_by_id() -> dict[str, Fact]:
    return {f.id: f for f in load_facts()}


@lru_cache(maxsize=1)
def load_validation() -> tuple[dict, ...]:
    """The 15 core validation questions: qid, category, sensors, and per language question + answer."""
    return tuple(_read("validation.yaml")["questions"])


def knowledge_texts() -> list[str]:
    """Every knowledge-base string a model must read exactly (facts, actions, question cores, source titles)."""
    out: list[str] = []
    for f in load_facts():
        for lang in LANGS:
            out += f.q[lang] + [f.fact[lang]] + f.do[lang]
    out += [s["title"] for s in load_sources().values()]
    for c in CATEGORIES:
        out += list(CATEGORY_NAMES[c])
    return out


# ---- consistency with the rule engine ------------------------------------------------------------

_TOL = 1e-6


def _periods(period: str) -> tuple[str, ...]:
    return ("day", "night") if period == "any" else (period,)


def threshold_problems(fact: Fact) -> list[str]:
    """Where a fact's declared numbers disagree with rules.yaml (empty: consistent).

    limit: the value must be one of the rules' thresholds on that sensor for the period and stage;
    optimum: the band must lie inside the rule engine's normal band (an open side counts as no limit);
    condition / context: only the sensor's physical range is checked.
    """
    from farmslm.domain import rules

    out = []
    for t in fact.thresholds:
        rng = NUMERIC.get(t.sensor)
        if rng is not None and not (rng.lo <= t.lo and t.hi <= rng.hi):
            out.append(f"{fact.id}: {t.sensor} {t.lo:g}-{t.hi:g} is outside the physical range {rng.lo:g}-{rng.hi:g}")
        for period in _periods(t.period):
            if t.kind == "limit":
                crit = rules.critical_values(t.sensor, period, t.stage)
                for v in {t.lo, t.hi}:
                    if not any(abs(v - c) <= _TOL for c in crit):
                        out.append(f"{fact.id}: limit {t.sensor}={v:g} ({period}, stage {t.stage}) is not a "
                                   f"rules.yaml threshold; the rules use {list(crit)}")
            elif t.kind == "optimum":
                band = rules.normal_band(t.sensor, period, t.stage)
                if t.sensor == "vpd_kpa":
                    crit = rules.critical_values("vpd_kpa", period, t.stage)
                    band = rules.Band(max(crit) if crit else None, None)
                if (band.lo is not None and t.lo < band.lo - _TOL) or (band.hi is not None and t.hi > band.hi + _TOL):
                    out.append(f"{fact.id}: optimum {t.sensor} {t.lo:g}-{t.hi:g} ({period}, stage {t.stage}) leaves "
                               f"the rules' normal band {band.lo}-{band.hi}")
    return out


# Numbers with a unit the rules judge, as written in a fact's English text -> the sensors they may belong to.
_UNIT_SENSORS = (
    (r"-?\d+(?:\.\d+)?\s*(?:–|-|to)?\s*\d*(?:\.\d+)?\s*°\s*C", ("temp_c", "root_temp_c")),
    (r"\bRH\b|\bhumidity\b[^.;]*?\d+\s*%|\d+\s*%\s*(?:RH|relative humidity)", ("humidity_pct",)),
    (r"CO2[^.;]*?\d[\d,]*\s*ppm|\d[\d,]*\s*ppm[^.;]*?CO2", ("co2_ppm",)),
    (r"\d+(?:\.\d+)?\s*(?:dS/m|mS/cm)", ("ec_ds_m",)),
    (r"\bpH\s*(?:of\s*|at\s*|above\s*|below\s*)?\d", ("ph",)),
    (r"\d+\s*µmol", ("light_umol",)),
    (r"\d+(?:\.\d+)?\s*kPa", ("vpd_kpa",)),
    (r"substrate moisture[^.;]*?\d+\s*%|water content[^.;]*?\d+\s*%", ("substrate_moisture_pct",)),
)


def stated_sensors(text: str) -> list[tuple[str, ...]]:
    """Sensor groups whose numbers the text states (e.g. '15–18 °C' -> (temp_c, root_temp_c))."""
    import re

    return [sensors for pattern, sensors in _UNIT_SENSORS if re.search(pattern, text)]


def undeclared_numbers(fact: Fact) -> list[str]:
    """Sensor numbers in the fact's English text (or actions) with no `thresholds` entry for that sensor."""
    declared = {t.sensor for t in fact.thresholds}
    text = " ".join([fact.fact["en"], *fact.do["en"]])
    return [f"{fact.id}: states a {'/'.join(group)} number but declares no threshold for it"
            for group in stated_sensors(text) if not declared & set(group)]
