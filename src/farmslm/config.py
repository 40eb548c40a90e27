"""Profiles and per-stage configs.

Each stage module defines its own config dataclass (the single place its defaults live, one
docstring line per field). A profile (`profiles/{quick,standard,full}.yaml`) overrides fields per
stage: `{stage_name: {field: value}}`. `make_config` applies overrides and names any unknown field.

Example: make_config(TrainConfig, load_profile("quick").get("train", {}))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"
PROFILES = ("quick", "standard", "full")
T = TypeVar("T")


class ConfigError(ValueError):
    """A profile or flag value that does not fit a stage's config."""


def load_profile(name: str) -> dict[str, dict[str, Any]]:
    """Profile name (or path to a YAML file) -> {stage: overrides}."""
    path = Path(name)
    if not path.suffix:
        if name not in PROFILES:
            raise ConfigError(f"--profile: unknown profile {name!r}; choose one of {', '.join(PROFILES)} or a .yaml path")
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"--profile: file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--profile: {path} must map stage names to field overrides")
    return data


def make_config(cls: type[T], overrides: dict[str, Any] | None = None, **kwargs: Any) -> T:
    """Build a stage config from defaults <- overrides <- kwargs (None values in kwargs ignored)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = dict(overrides or {})
    values.update({k: v for k, v in kwargs.items() if v is not None})
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return cls(**values)
