"""The knowledge base the dataset is made from: facts with sources, in Korean and English.

`data/knowledge/*.yaml` -> `Fact` objects (question cores, the fact with its threshold, concrete
actions, source ids, related sensors), `sources.yaml` -> citations, `validation.yaml` -> the 15 core
validation questions. Every fact names at least one source; `verified: false` marks secondary ones.

Example: python -c "from farmslm.domain.knowledge import load_facts; print(len(load_facts()))"
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from farmslm.domain.sensors import CONTEXT_KEYS, NUMERIC

LANGS = ("en", "ko")
# Dataset categories (issue 3): growth management, diseases, pests, temperature & humidity,
# fertilizer & nutrition (EC/pH), light, CO2, equipment & sensors, troubleshooting.
CATEGORIES = ("growth", "disease", "pest", "climate", "nutrition", "light", "co2", "equipment", "troubleshooting")
CATEGORY_NAMES = {
    "growth": ("growth management", "생육 관리"), "disease": ("diseases", "병해"), "pest": ("pests", "해충"),
    "climate": ("temperature & humidity", "온습도"), "nutrition": ("fertilizer & nutrition (EC/pH)", "비료·양분(EC/pH)"),
    "light": ("light", "광"), "co2": ("CO2", "이산화탄소"), "equipment": ("equipment & sensors", "장비·센서"),
    "troubleshooting": ("troubleshooting", "문제 해결"),
}
_DIR = "data/knowledge"


@dataclass(frozen=True)
class Fact:
    id: str
    category: str
    source: tuple[str, ...]  # ids in sources.yaml
    verified: bool
    sensors: tuple[str, ...]  # numeric sensor keys the fact concerns (for sampling readings)
    stage: str | None  # growth stage the fact is about, if any
    q: dict  # lang -> list of question cores (no final punctuation)
    fact: dict  # lang -> one sentence: the cause / threshold
    do: dict  # lang -> list of concrete actions (imperative)


def _read(name: str):
    return yaml.safe_load(resources.files("farmslm.domain").joinpath(f"{_DIR}/{name}").read_text(encoding="utf-8"))


def _files() -> list[str]:
    return sorted(p.name for p in resources.files("farmslm.domain").joinpath(_DIR).iterdir()
                  if p.name.endswith(".yaml") and p.name not in ("sources.yaml", "validation.yaml"))


@lru_cache(maxsize=1)
def load_sources() -> dict[str, dict]:
    return dict(_read("sources.yaml"))


@lru_cache(maxsize=1)
def load_facts() -> tuple[Fact, ...]:
    """All facts, checked: known category, sources, sensors and stage; both languages present."""
    sources = load_sources()
    facts, seen = [], set()
    for name in _files():
        data = _read(name)
        for raw in data["facts"]:
            fid = raw["id"]
            where = f"knowledge/{name} {fid}"
            category = raw.get("category", data.get("category"))
            if category not in CATEGORIES:
                raise ValueError(f"{where}: unknown category {category!r}")
            if fid in seen:
                raise ValueError(f"{where}: duplicate fact id")
            seen.add(fid)
            src = tuple(raw["source"])
            if not src or any(s not in sources for s in src):
                raise ValueError(f"{where}: source must list ids from sources.yaml, got {src}")
            sensors = tuple(raw.get("sensors", ()))
            if any(s not in NUMERIC for s in sensors):
                raise ValueError(f"{where}: unknown sensor in {sensors}")
            stage = raw.get("stage")
            if stage is not None and stage not in CONTEXT_KEYS["growth_stage"]:
                raise ValueError(f"{where}: unknown stage {stage!r}")
            for field in ("q", "fact", "do"):
                if any(not raw[field].get(lang) for lang in LANGS):
                    raise ValueError(f"{where}: {field} needs en and ko")
            verified = bool(raw.get("verified", all(sources[s].get("verified", True) for s in src)))
            facts.append(Fact(fid, category, src, verified, sensors, stage,
                              {k: list(v) for k, v in raw["q"].items()}, dict(raw["fact"]),
                              {k: list(v) for k, v in raw["do"].items()}))
    return tuple(facts)


def facts_by_category() -> dict[str, list[Fact]]:
    out: dict[str, list[Fact]] = {c: [] for c in CATEGORIES}
    for f in load_facts():
        out[f.category].append(f)
    return out


@lru_cache(maxsize=1)
def load_validation() -> tuple[dict, ...]:
    """The 15 core validation questions: qid, category, sensors, and per language question + answer."""
    return tuple(_read("validation.yaml")["questions"])


def knowledge_texts() -> list[str]:
    """Every knowledge-base string (facts, actions, question cores, source titles, validation set)."""
    out: list[str] = []
    for f in load_facts():
        for lang in LANGS:
            out += f.q[lang] + [f.fact[lang]] + f.do[lang]
    out += [s["title"] for s in load_sources().values()]
    for v in load_validation():
        for lang in LANGS:
            out += [v[lang]["question"], v[lang]["answer"]]
    for c in CATEGORIES:
        out += list(CATEGORY_NAMES[c])
    return out
