"""Commands that use the model: ask, chat, bench, eval, build, serve.

Example: farmslm ask --model runs/quick/model.gguf "잎이 시들어요"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from farmslm.cli.common import app, data_app, experiment_app, fail, vocab_app  # noqa: F401

from farmslm.runtime.engine import REPEAT_PENALTY


# ---- runtime: chat, ask ------------------------------------------------------------------------

def _engine(model: str, threads: Optional[int], few_shot: bool, repeat_penalty: float, contact: Optional[str] = None):
    from farmslm.runtime.engine import Engine, InputError, default_few_shot, resolve_model
    try:
        return Engine(resolve_model(model), n_threads=threads, few_shot=default_few_shot() if few_shot else "",
                      repeat_penalty=repeat_penalty, contact={"en": contact, "ko": contact} if contact else None)
    except InputError as exc:
        fail(str(exc))


@app.command()
def ask(question: str = typer.Argument(..., help="The grower's question (Korean or English)."),
        model: str = typer.Option("default", help="GGUF path, or 'default' for the packaged stock model."),
        sensors: Optional[str] = typer.Option(None, help="Readings as JSON, e.g. '{\"temp_c\": 31.5, \"period\": \"day\"}'."),
        as_json: bool = typer.Option(False, "--json", help="Print {warnings, answer, tag_source, sources, retrieved, "
                                                          "abstained, readings, assumptions, timings} as JSON."),
        no_guard: bool = typer.Option(False, "--no-guard", help="Let the model write the warning tag (evaluation only)."),
        max_tokens: int = typer.Option(96, help="Most tokens the model writes."),
        temperature: float = typer.Option(0.0, help="0 = greedy."),
        repeat_penalty: float = typer.Option(REPEAT_PENALTY, help="llama.cpp repetition penalty, 1..2 (1 = off)."),
        threads: Optional[int] = typer.Option(None, help="llama.cpp threads (default: all cores)."),
        few_shot: bool = typer.Option(False, "--few-shot", help="Prefix two worked examples (for an untrained base model)."),
        lang: Optional[str] = typer.Option(None, help="Answer language en|ko; default: the question's (Hangul -> ko)."),
        at: Optional[str] = typer.Option(None, help="Time the readings describe (HH:MM or ISO), to infer a missing "
                                                    "period; default now."),
        sunrise: str = typer.Option("06:00", help="Local time day starts (period inference)."),
        sunset: str = typer.Option("19:00", help="Local time night starts (period inference)."),
        contact: Optional[str] = typer.Option(None, help="Who an abstaining answer points to (default: the local "
                                                         "extension office / 농업기술센터).")) -> None:
    """Answer one question about the greenhouse: the rule engine's warnings first, then the grounded answer."""
    from farmslm.cli.data import judge_cli
    from farmslm.runtime.engine import InputError, clean_question
    try:
        clean_question(question)
        if lang not in (None, "en", "ko"):
            raise InputError("--lang", f"got {lang!r}; expected en|ko")
    except InputError as exc:
        fail(str(exc))
    judgement = judge_cli(sensors, at, sunrise, sunset) if sensors is not None else None
    engine = _engine(model, threads, few_shot, repeat_penalty, contact)
    stream = None if as_json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    try:
        answer = engine.ask(question, guard=not no_guard, max_tokens=max_tokens, temperature=temperature,
                            on_piece=stream, lang=lang, judgement=judgement)
    except InputError as exc:
        fail(str(exc))
    finally:
        engine.close()
    if as_json:
        typer.echo(json.dumps(answer.to_json(), ensure_ascii=False))
        return
    typer.echo("")
    for a in answer.assumptions:
        typer.echo(f"(assumed) {a[answer.lang]}", err=True)
    if answer.sources:
        typer.echo("sources: " + "; ".join(f"{s['source']} <{s['url']}>" for s in answer.sources), err=True)
    if no_guard:
        typer.echo(f"(model's tag: {answer.tag or 'none'})", err=True)


@app.command()
def chat(model: str = typer.Argument("default", help="GGUF path, or 'default' for the packaged stock model."),
         sensors: Optional[str] = typer.Option(None, help="Initial readings as JSON."),
         max_tokens: int = typer.Option(128, help="Most tokens per answer."),
         repeat_penalty: float = typer.Option(REPEAT_PENALTY, help="llama.cpp repetition penalty, 1..2 (1 = off)."),
         threads: Optional[int] = typer.Option(None, help="llama.cpp threads (default: all cores)."),
         few_shot: bool = typer.Option(False, "--few-shot", help="Prefix two worked examples (base model).")) -> None:
    """Interactive questions. /sensors JSON sets readings, /sensors clears them, /quit leaves."""
    from farmslm.domain.sensors import SensorError, format_status, parse_json
    from farmslm.runtime.engine import InputError
    try:
        readings = parse_json(sensors) if sensors else None
    except SensorError as exc:
        fail(str(exc))
    engine = _engine(model, threads, few_shot, repeat_penalty)
    typer.echo(f"{engine.name}: ask a question; /sensors JSON, /quit", err=True)
    try:
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if line in ("/quit", "/exit"):
                break
            if line.startswith("/sensors"):
                arg = line[len("/sensors"):].strip()
                try:
                    readings = parse_json(arg) if arg else None
                    typer.echo(format_status(readings) if readings else "(no readings)")
                except SensorError as exc:
                    typer.echo(f"error: {exc}", err=True)
                continue
            if not line:
                continue
            try:
                import datetime as dt

                from farmslm.domain.judge import judge
                answer = engine.ask(line, max_tokens=max_tokens, judgement=judge(readings, at=dt.datetime.now())
                                    if readings else None, on_piece=lambda p: (sys.stdout.write(p), sys.stdout.flush()))
            except InputError as exc:
                typer.echo(f"error: {exc}", err=True)
                continue
            t = answer.timings
            typer.echo(f"\n  [{', '.join(answer.warnings) or 'NORMAL'}] {t.gen_tokens} tokens, {t.tok_s} tok/s", err=True)
    finally:
        engine.close()



# ---- evaluation and build ----------------------------------------------------------------------

@app.command()
def build(profile: str = typer.Option("quick", help="quick | standard | full, or a profile .yaml path."),
          out: Path = typer.Option(..., help="Build directory; a re-run resumes and skips finished stages."),
          base: Optional[str] = typer.Option(None, help="Base model: default (packaged Gemma 3 270M), an HF dir or a .gguf."),
          set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: stage.field=YAML value "
                                                   "(e.g. --set train.max_steps=10); repeatable."),
          no_progress: bool = typer.Option(False, "--no-progress", help="Plain log lines, no progress display.")) -> None:
    """Build the tomato assistant: dataset -> ... -> OUT/model.gguf and OUT/report.{json,md}."""
    import yaml

    from farmslm import build as build_mod
    from farmslm.config import ConfigError
    overrides: dict[str, dict] = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        stage, dot, field = key.partition(".")
        if not sep or not dot or not stage or not field:
            fail(f"--set: got {item!r}; expected stage.field=value")
        overrides.setdefault(stage, {})[field] = yaml.safe_load(value)
    try:
        model = build_mod.run(out, profile, base, overrides, show_progress=not no_progress)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"{model}\n{out / 'report.md'}")


@app.command("eval")
def eval_(model: Path = typer.Option(..., help="GGUF file to evaluate."),
          data: Path = typer.Option(..., help="Dataset directory (val.jsonl, test.jsonl, validation_questions.jsonl)."),
          out: Optional[Path] = typer.Option(None, help="Write the full result (answers included) to this JSON file."),
          profile: str = typer.Option("quick", help="Profile whose eval section sizes the run."),
          split: Optional[str] = typer.Option(None, help="test (default) | val."),
          index: Optional[Path] = typer.Option(None, help="Knowledge index (default: the model's sidecar "
                                                         "MODEL.knowledge.json, when the model is grounded)."),
          few_shot: bool = typer.Option(False, "--few-shot", help="Prefix worked examples (untrained models)."),
          threads: Optional[int] = typer.Option(None, help="llama.cpp threads (default: all cores)."),
          as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Evaluate a GGUF on guarded, grounded answers: faithfulness, ROUGE-L, fact recall, abstention, speed."""
    from farmslm.config import ConfigError, load_profile, make_config
    from farmslm.evaluate import evaluate as evaluate_mod
    from farmslm.runtime.engine import InputError
    try:
        cfg = make_config(evaluate_mod.EvalConfig, load_profile(profile).get("eval", {}), threads=threads, split=split)
        if not model.is_file():
            raise ConfigError(f"--model: {model} is not a file")
        result = evaluate_mod.run(cfg, model, data, out, few_shot=few_shot, index_path=index)
    except (ConfigError, FileNotFoundError, ValueError, InputError) as exc:
        fail(str(exc))
    summary = result["summary"]
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        for key, value in summary.items():
            typer.echo(f"{key:26s} {'–' if value is None else value}")


# ---- serving -----------------------------------------------------------------------------------

@app.command()
def serve(model: Optional[str] = typer.Option(None, help="GGUF path, or 'default' for the packaged stock model."),
          host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, help="TCP port (default 8080)."),
          config: Optional[Path] = typer.Option(None, help="YAML file with any ServeConfig field (deploy/farmslm.yaml)."),
          mqtt_host: Optional[str] = typer.Option(None, help="MQTT broker for the live feed (topic farm/<zone>/sensors)."),
          engine_url: Optional[str] = typer.Option(None, help="External OpenAI-compatible engine that generates "
                                                              "(llama.cpp server, vLLM); rules and retrieval stay here."),
          parallel: Optional[int] = typer.Option(None, help="Answers generated at once, batched (default 1)."),
          insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind without an API key."),
          lazy: bool = typer.Option(False, "--lazy", help="Load the model on the first request."),
          few_shot: bool = typer.Option(False, "--few-shot", help="Prefix worked examples (untrained base model).")) -> None:
    """Serve the assistant API, the OpenAI-compatible API and the grower's page (API key: FARMSLM_API_KEY)."""
    from farmslm.config import ConfigError
    from farmslm.serve.config import load_config
    try:
        cfg = load_config(config, model=model, host=host, port=port, mqtt_host=mqtt_host, engine_url=engine_url,
                          parallel=parallel,
                          insecure=insecure or None, lazy_load=lazy or None, few_shot=few_shot or None)
        if cfg.model != "default" and not Path(cfg.model).is_file():
            raise ConfigError(f"--model: {cfg.model} does not exist (give a .gguf file or 'default')")
    except ConfigError as exc:
        fail(str(exc))
    from farmslm.serve.app import run
    typer.echo(f"farmslm: serving {cfg.model} on http://{cfg.host}:{cfg.port}/", err=True)
    run(cfg)

