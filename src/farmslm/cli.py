"""The `farmslm` command table: parse flags, call a stage's run(); no logic here.

Each command imports its stage lazily so `farmslm --help` stays fast and nothing runs at import.
Example: farmslm rules --sensors '{"temp_c": 36, "period": "day"}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from farmslm.runtime.engine import REPEAT_PENALTY

app = typer.Typer(help="farmslm: build, evaluate and serve a sensor-aware tomato assistant.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and verify the tomato QA dataset.", no_args_is_help=True)
vocab_app = typer.Typer(help="Trim the vocabulary to the domain.", no_args_is_help=True)
experiment_app = typer.Typer(help="Fine-tuning experiments (rank sweep, PEFT comparison).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(vocab_app, name="vocab")
app.add_typer(experiment_app, name="experiment")


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr, non-zero exit: how every user mistake ends."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# ---- domain (issue: dataset) -------------------------------------------------------------------

@app.command()
def rules(sensors: str = typer.Option(..., help="Readings as JSON, e.g. '{\"temp_c\": 31.5, \"period\": \"day\"}'."),
          lang: str = typer.Option("en", help="Language of the messages: en|ko.")) -> None:
    """Print the rule engine's warning codes (and messages) for the readings, as JSON."""
    from farmslm.domain import rules as rules_mod
    from farmslm.domain.sensors import SensorError, parse_json
    try:
        readings = parse_json(sensors)
    except SensorError as exc:
        fail(str(exc))
    codes = rules_mod.evaluate(readings)
    typer.echo(json.dumps({"warnings": codes, "messages": {c: rules_mod.message(c, lang) for c in codes}},
                          ensure_ascii=False))

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


# ---- model core: load, export, quantize, bench --------------------------------------------------

@app.command()
def export(model_dir: Path = typer.Argument(..., help="Our model directory (model.safetensors, config.json, tokenizer.gguf, meta.json)."),
           out: Path = typer.Option(..., "--out", help="Output .gguf path."),
           dtype: str = typer.Option("f16", help="Weight type: f32|f16|bf16 (norms stay f32)."),
           name: str = typer.Option("farmslm", help="general.name written into the GGUF."),
           profile: str = typer.Option("", help="Build profile recorded as farmslm.profile."),
           dataset_hash: str = typer.Option("", help="Dataset hash recorded as farmslm.dataset_hash.")) -> None:
    """Export a model directory to a GGUF file that llama.cpp loads."""
    from farmslm.model import export as export_mod
    try:
        path = export_mod.run(export_mod.ExportConfig(model_dir=str(model_dir), out=str(out), dtype=dtype, name=name,
                                                      profile=profile, dataset_hash=dataset_hash))
    except (export_mod.ExportError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def quantize(in_gguf: Path = typer.Argument(..., help="F32/F16/BF16 GGUF from `farmslm export`."),
             out: Path = typer.Option(..., "--out", help="Output .gguf path."),
             qtype: str = typer.Option("Q4_K_M", "--type", help="Q8_0|Q6_K|Q5_K_M|Q4_K_M|Q4_0|IQ4_XS."),
             imatrix_data: Optional[Path] = typer.Option(None, help="Dataset dir whose texts calibrate the importance matrix (default: built-in sample texts)."),
             no_imatrix: bool = typer.Option(False, "--no-imatrix", help="Quantize without an importance matrix."),
             model_dir: Optional[Path] = typer.Option(None, help="Torch model dir for the imatrix (default: load IN_GGUF with transformers)."),
             threads: int = typer.Option(0, help="Quantization threads (0 = all cores).")) -> None:
    """Quantize with llama.cpp (llama_model_quantize), imatrix computed from domain text by default."""
    from farmslm.model import quantize as quant_mod
    if not in_gguf.is_file():
        fail(f"IN_GGUF: {in_gguf} does not exist")
    if no_imatrix and imatrix_data:
        fail("--imatrix-data: cannot be combined with --no-imatrix")
    try:
        path = quant_mod.run(quant_mod.QuantizeConfig(in_gguf=str(in_gguf), out=str(out), qtype=qtype.upper(),
                                                      imatrix=not no_imatrix, imatrix_data=str(imatrix_data or ""),
                                                      model_dir=str(model_dir or ""), n_threads=threads))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def bench(model: Path = typer.Argument(..., help="GGUF to benchmark."),
          vs: Optional[Path] = typer.Option(None, "--vs", help="Second GGUF measured in the same run (ratios)."),
          threads: int = typer.Option(2, help="llama.cpp threads."),
          prompt_tokens: int = typer.Option(128, help="Prompt length."),
          gen_tokens: int = typer.Option(64, help="Generated tokens per run."),
          repeats: int = typer.Option(5, help="Measured runs after one warm-up (medians reported)."),
          as_json: bool = typer.Option(False, "--json", help="Print the JSON documented in farmslm.runtime.bench.")) -> None:
    """Prompt/generation speed, TTFT, peak RSS, size and the memory-bandwidth bound of GGUF models."""
    from farmslm.runtime import bench as bench_mod
    for p in (model, vs):
        if p is not None and not p.is_file():
            fail(f"{p} does not exist")
    try:
        result = bench_mod.run(bench_mod.BenchConfig(model=str(model), vs=str(vs or ""), threads=threads,
                                                     prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps(result, indent=2) if as_json else bench_mod.format_table(result))


# ---- runtime: chat, ask ------------------------------------------------------------------------

def _engine(model: str, threads: Optional[int], few_shot: bool, repeat_penalty: float):
    from farmslm.runtime.engine import Engine, InputError, default_few_shot, resolve_model
    try:
        return Engine(resolve_model(model), n_threads=threads, few_shot=default_few_shot() if few_shot else "",
                      repeat_penalty=repeat_penalty)
    except InputError as exc:
        fail(str(exc))


@app.command()
def ask(question: str = typer.Argument(..., help="The grower's question (Korean or English)."),
        model: str = typer.Option("default", help="GGUF path, or 'default' for the packaged stock model."),
        sensors: Optional[str] = typer.Option(None, help="Readings as JSON, e.g. '{\"temp_c\": 31.5, \"period\": \"day\"}'."),
        as_json: bool = typer.Option(False, "--json", help="Print {warnings, answer, tag_source, timings} as JSON."),
        no_guard: bool = typer.Option(False, "--no-guard", help="Let the model write the warning tag (evaluation only)."),
        max_tokens: int = typer.Option(128, help="Most tokens to generate."),
        temperature: float = typer.Option(0.0, help="0 = greedy."),
        repeat_penalty: float = typer.Option(REPEAT_PENALTY, help="llama.cpp repetition penalty, 1..2 (1 = off)."),
        threads: Optional[int] = typer.Option(None, help="llama.cpp threads (default: all cores)."),
        few_shot: bool = typer.Option(False, "--few-shot", help="Prefix two worked examples (for an untrained base model)."),
        lang: str = typer.Option("en", help="Language of the warning messages: en|ko.")) -> None:
    """Answer one question about the greenhouse, with warnings from the readings."""
    from farmslm.domain import rules as rules_mod
    from farmslm.domain.sensors import SensorError, parse_json
    from farmslm.runtime.engine import InputError, clean_question
    try:
        readings = parse_json(sensors) if sensors is not None else None
        clean_question(question)
        if lang not in ("en", "ko"):
            raise InputError("--lang", f"got {lang!r}; expected en|ko")
    except (SensorError, InputError) as exc:
        fail(str(exc))
    engine = _engine(model, threads, few_shot, repeat_penalty)
    if not as_json and readings is not None:
        for code in rules_mod.evaluate(readings):
            typer.echo(f"[{code}] {rules_mod.message(code, lang)}")
    stream = None if as_json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    try:
        answer = engine.ask(question, readings, guard=not no_guard, max_tokens=max_tokens,
                            temperature=temperature, on_piece=stream)
    except InputError as exc:
        fail(str(exc))
    finally:
        engine.close()
    if as_json:
        typer.echo(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        typer.echo("")
        if no_guard:
            typer.echo(f"(model's tag: {answer.warnings or 'NORMAL'})", err=True)


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
                answer = engine.ask(line, readings, max_tokens=max_tokens,
                                    on_piece=lambda p: (sys.stdout.write(p), sys.stdout.flush()))
            except InputError as exc:
                typer.echo(f"error: {exc}", err=True)
                continue
            t = answer.timings
            typer.echo(f"\n  [{', '.join(answer.warnings) or 'NORMAL'}] {t.gen_tokens} tokens, {t.tok_s} tok/s", err=True)
    finally:
        engine.close()


# ---- vocabulary --------------------------------------------------------------------------------

@vocab_app.command("trim")
def vocab_trim(model: str = typer.Option(..., help="Model to trim: 'default', an HF dir, a .gguf, or our model dir."),
               data: Path = typer.Option(..., help="Dataset dir (from `farmslm data build`): its texts are kept exact."),
               out: Path = typer.Option(..., help="Output model dir (+ tokenizer.gguf trimmed, vocab_map.json)."),
               keep_general: Optional[int] = typer.Option(None, help="General Korean/English tokens kept beyond the corpus."),
               profile: Optional[str] = typer.Option(None, help="quick | standard | full | a YAML path (its vocab: section).")) -> None:
    """Keep the tokens the domain corpus needs (+ bytes, control tokens, N general ones); drop the rest."""
    from farmslm.config import ConfigError, load_profile, make_config
    from farmslm.model import vocab as vocab_mod
    from farmslm.model.load import ModelError
    try:
        overrides = load_profile(profile).get("vocab", {}) if profile else {}
        cfg = make_config(vocab_mod.VocabConfig, overrides, keep_general=keep_general)
        if cfg.keep_general < 0:
            fail("--keep-general: must be >= 0")
        out_dir = vocab_mod.run(cfg, model, data, out)
    except (ConfigError, ModelError) as exc:
        fail(str(exc))
    typer.echo(json.dumps({"out": str(out_dir), **vocab_mod.summary(out_dir)}, ensure_ascii=False))


# ---- pruning -----------------------------------------------------------------------------------

@app.command()
def prune(base: str = typer.Option("default", help="Model to prune: 'default', our model dir, an HF dir or a .gguf."),
          data: Path = typer.Option(..., help="Dataset dir: train.jsonl calibrates, val.jsonl measures perplexity."),
          out: Path = typer.Option(..., help="Output model dir."),
          metric: Optional[str] = typer.Option(None, help="Neuron importance: seed | minitron | wanda | magnitude."),
          allocation: Optional[str] = typer.Option(None, help="uniform (llama.cpp can run it) | layerwise (torch only)."),
          ratio: Optional[float] = typer.Option(None, help="Share of all FFN neurons removed, e.g. 0.25."),
          n_calib: Optional[int] = typer.Option(None, help="Calibration texts from train.jsonl."),
          gate: Optional[bool] = typer.Option(None, help="Run the quality gate on the pruned model."),
          profile: Optional[str] = typer.Option(None, help="quick | standard | full | a YAML path (its prune: section).")) -> None:
    """Structured FFN pruning: calibrate, score neurons, remove them; prints the figures from meta.json."""
    import logging

    from farmslm.config import ConfigError, load_profile, make_config
    from farmslm.model import prune as prune_mod
    from farmslm.model.load import ModelError
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        overrides = load_profile(profile).get("prune", {}) if profile else {}
        cfg = make_config(prune_mod.PruneConfig, overrides, base=base, data_dir=str(data), out_dir=str(out),
                          metric=metric, allocation=allocation, ratio=ratio, n_calib=n_calib, gate=gate)
        prune_mod.check_config(cfg)
        out_dir = prune_mod.run(cfg)
    except (ConfigError, ModelError, ValueError) as exc:
        fail(str(exc))
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    m = {k: v for k, v in meta["metrics"].items() if not isinstance(v, list)}
    typer.echo(json.dumps({"out": str(out_dir), "ffn_widths": sorted(set(meta["ffn_widths"])), **m}, ensure_ascii=False))


@app.command("prune-study")
def prune_study(base: str = typer.Option("default", help="Model to study: 'default', an HF dir or a .gguf."),
                data: Path = typer.Option(..., help="Dataset dir: train.jsonl calibrates, val.jsonl is the domain text."),
                out: Path = typer.Option(Path("benchmarks/prune_study"), help="Output dir: report.md, study.json, fig*.png."),
                n_eval: Optional[int] = typer.Option(None, help="Texts per evaluation set."),
                seq_len: Optional[int] = typer.Option(None, help="Tokens per text.")) -> None:
    """The pruning evidence: layer sensitivity, rate sweep, uniform vs layerwise, heads, parameter shares."""
    import logging

    from farmslm.config import ConfigError, make_config
    from farmslm.model import prune_study as study_mod
    from farmslm.model.load import ModelError
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = make_config(study_mod.StudyConfig, {}, base=base, data_dir=str(data), out_dir=str(out),
                          n_eval=n_eval, seq_len=seq_len)
        out_dir = study_mod.run(cfg)
    except (ConfigError, ModelError, ValueError) as exc:
        fail(str(exc))
    result = json.loads((out_dir / "study.json").read_text(encoding="utf-8"))
    typer.echo(json.dumps({"out": str(out_dir), "best_metric": result["best_metric"], "baseline": result["baseline"],
                           "total_s": result["total_s"]}, ensure_ascii=False))


# ---- training ----------------------------------------------------------------------------------

def _train_config(profile: Optional[str], section: str, cls, **flags):
    from farmslm.config import ConfigError, load_profile, make_config
    try:
        return make_config(cls, load_profile(profile).get(section, {}) if profile else {}, **flags)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def train(model: Path = typer.Option(..., help="Model dir to fine-tune (e.g. the pruned one), or 'default'."),
          data: Path = typer.Option(..., help="Dataset dir with train.jsonl (and val.jsonl)."),
          out: Path = typer.Option(..., help="Output dir: adapter/, train_log.jsonl, loss.png, meta.json."),
          teacher: Optional[Path] = typer.Option(None, help="Teacher model dir for distillation (same tokenizer.gguf)."),
          profile: Optional[str] = typer.Option(None, help="quick | standard | full | a YAML path (its train: section)."),
          resume: bool = typer.Option(False, help="Continue from out/checkpoints/last.pt."),
          method: Optional[str] = typer.Option(None, help="lora | dora | ln_tuning."),
          lora_r: Optional[int] = typer.Option(None, help="LoRA rank."),
          lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha (scale = alpha / r)."),
          epochs: Optional[float] = typer.Option(None, help="Passes over the training samples."),
          max_steps: Optional[int] = typer.Option(None, help="Optimizer steps (overrides epochs; 0 = from epochs)."),
          max_samples: Optional[int] = typer.Option(None, help="Training samples used (0 = all)."),
          lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
          kd_alpha: Optional[float] = typer.Option(None, help="Share of the KD term in [0, 1]."),
          kd_temperature: Optional[float] = typer.Option(None, help="KD temperature T."),
          tag_weight: Optional[float] = typer.Option(None, help="CE weight of the warning-tag tokens."),
          teacher_correction: Optional[bool] = typer.Option(None, help="Fine-tune the teacher on the data first."),
          qlora: Optional[bool] = typer.Option(None, help="4-bit base (CUDA + bitsandbytes only)."),
          seed: Optional[int] = typer.Option(None, help="Seed of data order, init and dropout."),
          threads: Optional[int] = typer.Option(None, help="torch CPU threads (0 = default).")) -> None:
    """Fine-tune an adapter (LoRA + optional knowledge distillation) on the dataset."""
    import logging

    from farmslm.config import ConfigError
    from farmslm.model import train as train_mod
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = _train_config(profile, "train", train_mod.TrainConfig, method=method, lora_r=lora_r,
                        lora_alpha=lora_alpha, epochs=epochs, max_steps=max_steps, max_samples=max_samples, lr=lr,
                        kd_alpha=kd_alpha, kd_temperature=kd_temperature, tag_weight=tag_weight,
                        teacher_correction=teacher_correction, qlora=qlora, seed=seed, threads=threads)
    try:
        done = train_mod.run(cfg, model, data, out, teacher_dir=teacher, resume=resume)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(json.loads((done / "meta.json").read_text())["metrics"], ensure_ascii=False))


@app.command()
def merge(adapter: Path = typer.Option(..., help="Training output dir (holds adapter/ and meta.json)."),
          out: Path = typer.Option(..., help="Merged model dir (our model format, ready for export)."),
          model: Optional[Path] = typer.Option(None, help="Base model dir; default: the one the adapter was trained on.")) -> None:
    """Fold the adapter into the fp32 base and save a model dir."""
    from farmslm.config import ConfigError
    from farmslm.model import merge as merge_mod
    try:
        typer.echo(str(merge_mod.run(adapter, out, base_dir=model)))
    except ConfigError as exc:
        fail(str(exc))


def _experiment(kind: str, model: Path, data: Path, out: Path, teacher: Optional[Path], profile: Optional[str],
                ranks: Optional[str], methods: Optional[str], test_samples: Optional[int]) -> None:
    import logging

    from farmslm.config import ConfigError
    from farmslm.model import experiments
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = _train_config(profile, "experiment", experiments.ExperimentConfig,
                            ranks=[int(r) for r in ranks.split(",")] if ranks else None,
                            methods=methods.split(",") if methods else None, test_samples=test_samples)
        train_cfg = _train_config(profile, "train", experiments.TrainConfig)
        result = experiments.run(kind, cfg, train_cfg, model, data, out, teacher_dir=teacher)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    typer.echo((result / "results.md").read_text())


_EXP_OUT = Path("benchmarks/results")


@experiment_app.command("rank-sweep")
def rank_sweep(model: Path = typer.Option(..., help="Model dir to fine-tune."),
               data: Path = typer.Option(..., help="Dataset dir (train/val/test.jsonl)."),
               out: Path = typer.Option(_EXP_OUT / "rank_sweep", help="Results dir (table, plot, runs)."),
               ranks: Optional[str] = typer.Option(None, help="Comma-separated LoRA ranks (default 4,8,16,32)."),
               test_samples: Optional[int] = typer.Option(None, help="Test rows generated and scored."),
               profile: Optional[str] = typer.Option(None, help="Profile whose train: section sizes each run.")) -> None:
    """LoRA rank sweep: trainable params, BLEU / ROUGE-L / tag accuracy on the test split, time."""
    _experiment("rank", model, data, out, None, profile, ranks, None, test_samples)


@experiment_app.command("peft-compare")
def peft_compare(model: Path = typer.Option(..., help="Model dir to fine-tune."),
                 data: Path = typer.Option(..., help="Dataset dir (train/val/test.jsonl)."),
                 out: Path = typer.Option(_EXP_OUT / "peft_compare", help="Results dir."),
                 methods: Optional[str] = typer.Option(None, help="Comma-separated: lora,dora,ln_tuning."),
                 test_samples: Optional[int] = typer.Option(None, help="Test rows generated and scored."),
                 profile: Optional[str] = typer.Option(None, help="Profile whose train: section sizes each run.")) -> None:
    """LoRA vs DoRA vs LayerNorm-tuning at the same steps (BitFit: Gemma has no biases)."""
    _experiment("peft", model, data, out, None, profile, None, methods, test_samples)


@experiment_app.command("kd-compare")
def kd_compare(model: Path = typer.Option(..., help="Student model dir (e.g. the pruned one)."),
               teacher: Path = typer.Option(..., help="Teacher model dir (the unpruned one, same vocabulary)."),
               data: Path = typer.Option(..., help="Dataset dir (train/val/test.jsonl)."),
               out: Path = typer.Option(_EXP_OUT / "kd_compare", help="Results dir."),
               test_samples: Optional[int] = typer.Option(None, help="Test rows generated and scored."),
               profile: Optional[str] = typer.Option(None, help="Profile whose train: section sizes each run.")) -> None:
    """LoRA alone vs LoRA + distillation from the teacher, same steps and seed."""
    _experiment("kd", model, data, out, teacher, profile, None, None, test_samples)


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
          data: Path = typer.Option(..., help="Dataset directory (test.jsonl, validation_questions.jsonl)."),
          out: Optional[Path] = typer.Option(None, help="Write the full result (answers included) to this JSON file."),
          profile: str = typer.Option("quick", help="Profile whose eval section sizes the run."),
          few_shot: bool = typer.Option(False, "--few-shot", help="Prefix worked examples (untrained models)."),
          threads: Optional[int] = typer.Option(None, help="llama.cpp threads (default: all cores)."),
          as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON.")) -> None:
    """Evaluate a GGUF: BLEU / ROUGE-L / chrF, warning accuracy, terms, perplexity, degeneration, speed."""
    from farmslm.config import ConfigError, load_profile, make_config
    from farmslm.evaluate import evaluate as evaluate_mod
    try:
        cfg = make_config(evaluate_mod.EvalConfig, load_profile(profile).get("eval", {}), threads=threads)
        if not model.is_file():
            raise ConfigError(f"--model: {model} is not a file")
        result = evaluate_mod.run(cfg, model, data, out, few_shot=few_shot)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))
    summary = result["summary"]
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        for key, value in summary.items():
            typer.echo(f"{key:22s} {'–' if value is None else value}")


# ---- serving -----------------------------------------------------------------------------------

@app.command()
def serve(model: Optional[str] = typer.Option(None, help="GGUF path, or 'default' for the packaged stock model."),
          host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, help="TCP port (default 8080)."),
          config: Optional[Path] = typer.Option(None, help="YAML file with any ServeConfig field (deploy/farmslm.yaml)."),
          mqtt_host: Optional[str] = typer.Option(None, help="MQTT broker for the live feed (topic farm/<zone>/sensors)."),
          insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback bind without an API key."),
          lazy: bool = typer.Option(False, "--lazy", help="Load the model on the first request."),
          few_shot: bool = typer.Option(False, "--few-shot", help="Prefix worked examples (untrained base model).")) -> None:
    """Serve the assistant API, the OpenAI-compatible API and the grower's page (API key: FARMSLM_API_KEY)."""
    from farmslm.config import ConfigError
    from farmslm.serve.config import load_config
    try:
        cfg = load_config(config, model=model, host=host, port=port, mqtt_host=mqtt_host,
                          insecure=insecure or None, lazy_load=lazy or None, few_shot=few_shot or None)
        if cfg.model != "default" and not Path(cfg.model).is_file():
            raise ConfigError(f"--model: {cfg.model} does not exist (give a .gguf file or 'default')")
    except ConfigError as exc:
        fail(str(exc))
    from farmslm.serve.app import run
    typer.echo(f"farmslm: serving {cfg.model} on http://{cfg.host}:{cfg.port}/", err=True)
    run(cfg)



if __name__ == "__main__":
    app()
