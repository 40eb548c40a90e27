"""Run directories, meta.json, atomic writes, skip-if-done and resume.

Every stage output directory holds a `meta.json`: the stage's config, its inputs (with hashes),
package versions, durations and the figures it measured. A stage whose meta says it finished with
the same config and inputs is skipped (`is_done`). Files are written to a temporary name and
renamed, so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

META = "meta.json"
_VERSIONED = ("farmslm", "torch", "transformers", "peft", "gguf", "llama_cpp_python", "numpy")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):  # left by a killed run writing this file
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(obj), ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    lines = "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows)
    return write_text(path, lines)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def hash_path(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents, meta.json excluded)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name != META)
    for f in files:
        h.update(str(f.relative_to(path if path.is_dir() else path.parent)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def hash_config(config: Any) -> str:
    return hashlib.sha256(json.dumps(_jsonable(config), sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def _module_file(name: str, root: Path | None = None) -> Path | None:
    """farmslm.a.b -> its source file (module or package __init__), None if it is not ours."""
    root = root or Path(__file__).resolve().parent
    parts = name.split(".")
    if parts[0] != "farmslm":
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """farmslm modules a source file imports anywhere (module level and inside functions)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("farmslm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("farmslm"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from farmslm.model import merge`
    return out


def import_closure(*modules: str, root: Path | None = None) -> dict[str, Path]:
    """The farmslm modules `modules` reach through imports, transitively: name -> source file."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = _module_file(name, root)
        if path is None or name in seen:
            continue
        seen[name] = path
        todo += sorted(_imports(path))
    return seen


def code_hash(*modules: str, root: Path | None = None) -> str:
    """sha256 of the farmslm version and the source of `modules` and all farmslm code they import.

    Part of every stage key: a fix to the code a stage runs re-runs that stage, not one that it never runs.
    """
    h = hashlib.sha256(versions().get("farmslm", "0").encode())
    root = root or Path(__file__).resolve().parent
    for name, path in sorted(import_closure(*modules, root=root).items()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def read_meta(out_dir: str | Path) -> dict | None:
    p = Path(out_dir) / META
    return read_json(p) if p.exists() else None


def is_done(out_dir: str | Path, config: Any, inputs: dict[str, str] | None = None) -> bool:
    """True when out_dir/meta.json records a finished run with the same config and input hashes."""
    meta = read_meta(out_dir)
    if not meta or meta.get("status") != "done":
        return False
    return meta.get("config_hash") == hash_config(config) and meta.get("inputs", {}) == (inputs or {})


def write_meta(out_dir: str | Path, stage: str, config: Any, inputs: dict[str, str] | None = None,
               metrics: dict | None = None, started: float | None = None, **extra: Any) -> dict:
    """Mark a stage finished: write meta.json last, so its presence means the outputs are whole."""
    meta = {
        "stage": stage,
        "status": "done",
        "config": _jsonable(config),
        "config_hash": hash_config(config),
        "inputs": inputs or {},
        "versions": versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - started, 3) if started else None,
        "metrics": _jsonable(metrics or {}),
        **_jsonable(extra),
    }
    write_json(Path(out_dir) / META, meta)
    return meta
