"""Commands about the domain: rules, the dataset, the knowledge base and its index.

Example: farmslm rules --sensors '{"light_umol": 0}' --json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from farmslm.cli.common import app, data_app, experiment_app, fail, vocab_app  # noqa: F401


# ---- domain ------------------------------------------------------------------------------------

def parse_at(at: Optional[str]):
    """--at: HH:MM today, or an ISO date-time; None = now (local time)."""
    import datetime as dt

    if at is None:
        return dt.datetime.now()
    try:
        if len(at) <= 5 and ":" in at:
            hour, minute = (int(x) for x in at.split(":"))
            return dt.datetime.combine(dt.date.today(), dt.time(hour, minute))
        return dt.datetime.fromisoformat(at)
    except ValueError:
        fail(f"--at: got {at!r}; expected HH:MM or an ISO date-time such as 2026-11-30T23:10")


def judge_cli(sensors: str, at: Optional[str], sunrise: str, sunset: str):
    """--sensors + clock -> Judgement, or a clear error naming the field."""
    from farmslm.domain.judge import JudgeConfig, check_config, judge
    from farmslm.domain.sensors import SensorError, parse_json
    try:
        cfg = check_config(JudgeConfig(sunrise=sunrise, sunset=sunset))
        raw = parse_json(sensors)
        return judge(raw, at=parse_at(at), cfg=cfg)
    except (SensorError, ValueError) as exc:
        fail(str(exc))


@app.command()
def rules(sensors: str = typer.Option(..., help="Readings as JSON, e.g. '{\"temp_c\": 31.5, \"period\": \"day\"}'."),
          lang: str = typer.Option("en", help="Language of the messages: en|ko."),
          at: Optional[str] = typer.Option(None, help="Time the readings describe (HH:MM or ISO); default now. "
                                                      "Used only to infer a missing period."),
          sunrise: str = typer.Option("06:00", help="Local time day starts (period inference)."),
          sunset: str = typer.Option("19:00", help="Local time night starts (period inference)."),
          as_json: bool = typer.Option(False, "--json", help="Print {warnings, messages, sentences, readings, "
                                                            "assumptions, not_judged} as JSON.")) -> None:
    """The rule engine's warnings for the readings, with what was assumed (a missing period is inferred)."""
    from farmslm.domain import explain
    from farmslm.domain import rules as rules_mod
    if lang not in ("en", "ko"):
        fail(f"--lang: got {lang!r}; expected en|ko")
    j = judge_cli(sensors, at, sunrise, sunset)
    sentences = explain.rule_text(j.readings, lang, j.warnings, j.not_judged)
    if as_json:
        typer.echo(json.dumps({"warnings": j.warnings, "messages": {c: rules_mod.message(c, lang) for c in j.warnings},
                               "tag": explain.tag_for(j.readings, j.warnings), "sentences": sentences,
                               "readings": j.readings, "assumptions": j.assumptions, "not_judged": j.not_judged},
                              ensure_ascii=False))
        return
    typer.echo(f"{explain.tag_for(j.readings, j.warnings)} {sentences}")
    for a in j.assumptions:
        typer.echo(f"(assumed) {a[lang]}", err=True)


@app.command("index")
def index_cmd(out: Path = typer.Option(..., help="Index file to write, e.g. runs/quick/model.knowledge.json."),
              knowledge: Optional[Path] = typer.Option(None, help="Knowledge dir (*.yaml facts + sources*.yaml); "
                                                                  "default: the packaged one."),
              like: Optional[Path] = typer.Option(None, help="An existing index whose abstention model and analyzer "
                                                             "are kept (the model's own sidecar)."),
              analyzer: Optional[str] = typer.Option(None, help="Korean analyzer: mecab | ngram.")) -> None:
    """Rebuild only the knowledge index: facts added after a build become answerable without retraining."""
    from farmslm.dataset import index as index_mod
    try:
        path = index_mod.rebuild(out, knowledge, like, analyzer)
    except ValueError as exc:
        fail(str(exc))
    from farmslm.domain import retrieve
    idx = retrieve.load(path)
    typer.echo(json.dumps({"out": str(path), "facts": len(idx.facts), "knowledge_hash": idx.knowledge_hash,
                           "analyzer": idx.analyzer, "abstention_model": bool(idx.abstain)}, ensure_ascii=False))


# ---- dataset ----------------------------------------------------------------------------------

@data_app.command("build")
def data_build(out: Path = typer.Option(..., help="Output directory for the dataset files."),
               seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives identical files."),
               size: Optional[int] = typer.Option(None, help="Rows synthesized before verification."),
               profile: Optional[str] = typer.Option(None, help="quick | standard | full | a YAML path (its data: section)."),
               llm_endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible chat endpoint (key: env FARMSLM_LLM_API_KEY)."),
               llm_model: Optional[str] = typer.Option(None, help="Model name for --llm-endpoint."),
               llm_rows: Optional[int] = typer.Option(None, help="Rows to request from the LLM endpoint.")) -> None:
    """Synthesize, verify and split the tomato QA dataset; writes a dataset card."""
    from farmslm.config import ConfigError, load_profile, make_config
    from farmslm.dataset import build as build_mod
    try:
        overrides = load_profile(profile).get("data", {}) if profile else {}
        cfg = make_config(build_mod.DataConfig, overrides, out_dir=str(out), seed=seed, size=size,
                          llm_endpoint=llm_endpoint, llm_model=llm_model, llm_rows=llm_rows)
        out_dir = build_mod.run(cfg)
    except (ConfigError, build_mod.DataConfigError) as exc:
        fail(str(exc))
    card = json.loads((out_dir / "card.json").read_text(encoding="utf-8"))
    o, v = card["overall"], card["verification"]
    typer.echo(json.dumps({"out": str(out_dir), "rows": card["rows_total"],
                           "splits": {s: d["rows"] for s, d in card["splits"].items()},
                           "lang_pct": o["by_lang_pct"], "warning_pct": o["warning_pct"], "normal_pct": o["normal_pct"],
                           "duplicates_removed": v["duplicates_removed"], "quarantined": v["n_quarantined"],
                           "term_match_mean": v["term_match_mean_verified"]}, ensure_ascii=False))


@data_app.command("verify")
def data_verify(file: Path = typer.Argument(..., help="A JSONL file of QA rows."),
                out: Optional[Path] = typer.Option(None, help="Output directory (default: FILE's name + .verify/)."),
                dup_threshold: Optional[float] = typer.Option(None, help="Cosine at or above which rows are duplicates."),
                term_threshold: Optional[float] = typer.Option(None, help="Minimum terminology match rate.")) -> None:
    """Run the four checks on any JSONL file: verified.jsonl, quarantine.jsonl (with reasons), verify.json."""
    from farmslm.config import ConfigError, make_config
    from farmslm.dataset import verify as verify_mod
    if not file.is_file():
        fail(f"FILE: {file} does not exist")
    try:
        cfg = make_config(verify_mod.VerifyConfig, {}, dup_threshold=dup_threshold, term_threshold=term_threshold)
    except ConfigError as exc:
        fail(str(exc))
    out_dir = verify_mod.run(file, out or file.with_suffix(".verify"), cfg)
    typer.echo((out_dir / "verify.json").read_text(encoding="utf-8").strip())




@data_app.command("card")
def data_card(knowledge: Optional[Path] = typer.Option(None, help="Knowledge dir; default: the packaged one."),
              as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON.")) -> None:
    """The knowledge base in figures: facts per category and language, sources per publisher, verified share."""
    from farmslm.dataset.card import knowledge_card, knowledge_markdown
    try:
        card = knowledge_card(knowledge)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps(card, ensure_ascii=False, indent=2) if as_json else "\n".join(knowledge_markdown(card)))
