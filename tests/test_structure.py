"""The code's shape: no import cycles, one definition of the languages, small files, code-aware stage keys."""

from __future__ import annotations

import re
from pathlib import Path

from farmslm import artifacts

PKG = Path(__file__).resolve().parents[1] / "src" / "farmslm"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        if rel.name != "__init__":
            out[".".join(rel.parts)] = p
    return out


def test_no_import_cycles_even_through_imports_inside_functions():
    """evaluate.perplexity <-> model.prune and model.merge <-> model.train were cycles (lazy imports)."""
    mods = _modules()
    graph = {m: {x for x in artifacts._imports(p) if x in mods and x != m} for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_languages_and_shared_defaults_are_defined_once():
    langs = [p for p in PKG.rglob("*.py") if re.search(r"^LANGS\s*=", p.read_text(), re.M)]
    assert [p.relative_to(PKG).as_posix() for p in langs] == ["domain/lang.py"]
    analyzers = [p for p in PKG.rglob("*.py") if re.search(r'analyzer: str = "(?:mecab|ngram)"', p.read_text())]
    assert analyzers == []  # every stage takes retrieve.DEFAULT_ANALYZER


def test_command_table_and_training_stay_small():
    for rel in ("cli/__init__.py", "cli/common.py", "cli/data.py", "cli/model.py", "cli/run.py", "model/train.py",
                "model/samples.py"):
        n = len((PKG / rel).read_text().splitlines())
        assert n <= 500, (rel, n)


def test_stage_keys_follow_the_code_they_run(tmp_path):
    """A fix to the code a stage runs changes its key (a fix to synth.py used to reuse old data)."""
    assert {"farmslm.dataset.synth", "farmslm.domain.rules", "farmslm.domain.explain"} <= \
        set(artifacts.import_closure("farmslm.dataset.build"))
    assert "farmslm.serve.app" not in artifacts.import_closure("farmslm.model.train")
    root = tmp_path / "farmslm"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "stage.py").write_text("def run():\n    from farmslm.sub import helper\n    return helper.x\n")
    (root / "sub" / "helper.py").write_text("x = 1\n")
    (root / "other.py").write_text("y = 2\n")
    before = artifacts.code_hash("farmslm.stage", root=root)
    (root / "other.py").write_text("y = 3\n")  # code the stage never runs
    assert artifacts.code_hash("farmslm.stage", root=root) == before
    (root / "sub" / "helper.py").write_text("x = 2\n")  # code it runs, imported inside a function
    assert artifacts.code_hash("farmslm.stage", root=root) != before


def test_data_stage_key_holds_the_code_hash(tmp_path):
    from farmslm.dataset import build

    assert build.inputs()["code"] == artifacts.code_hash("farmslm.dataset.build")
