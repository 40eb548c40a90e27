"""Commands that make the model: vocabulary trim, pruning, training, merge, export, quantization.

Example: farmslm prune --data runs/x/data --out runs/x/prune
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from farmslm.cli.common import app, data_app, experiment_app, fail, vocab_app  # noqa: F401


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
          threads: int = typer.Option(0, help="llama.cpp threads (0 = the product's: auto, the cores other processes leave free)."),
          wait_policy: str = typer.Option("", help="OpenMP wait of the measured process: passive | brief | active (default: the product's)."),
          prompt_tokens: int = typer.Option(128, help="Prompt length."),
          gen_tokens: int = typer.Option(64, help="Generated tokens per run."),
          repeats: int = typer.Option(5, help="Measured runs after one warm-up (medians reported)."),
          index: Optional[Path] = typer.Option(None, help="Knowledge index of MODEL (default: its sidecar)."),
          as_json: bool = typer.Option(False, "--json", help="Print the JSON documented in farmslm.runtime.bench.")) -> None:
    """Prompt/generation speed, TTFT, peak RSS, size and the memory-bandwidth bound of GGUF models."""
    from farmslm.runtime import bench as bench_mod
    for p in (model, vs):
        if p is not None and not p.is_file():
            fail(f"{p} does not exist")
    try:
        result = bench_mod.run(bench_mod.BenchConfig(model=str(model), vs=str(vs or ""), threads=threads,
                                                     wait_policy=wait_policy, index=str(index or ""),
                                                     prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repeats=repeats))
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps(result, indent=2) if as_json else bench_mod.format_table(result))



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
                ranks: Optional[str], methods: Optional[str], eval_samples: Optional[int]) -> None:
    import logging

    from farmslm.config import ConfigError
    from farmslm.model import experiments
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = _train_config(profile, "experiment", experiments.ExperimentConfig,
                            ranks=[int(r) for r in ranks.split(",")] if ranks else None,
                            methods=methods.split(",") if methods else None, eval_samples=eval_samples)
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
               eval_samples: Optional[int] = typer.Option(None, help="Validation rows generated and scored."),
               profile: Optional[str] = typer.Option(None, help="Profile whose train: section sizes each run.")) -> None:
    """LoRA rank sweep: trainable params, BLEU / ROUGE-L / tag accuracy on the test split, time."""
    _experiment("rank", model, data, out, None, profile, ranks, None, eval_samples)


@experiment_app.command("peft-compare")
def peft_compare(model: Path = typer.Option(..., help="Model dir to fine-tune."),
                 data: Path = typer.Option(..., help="Dataset dir (train/val/test.jsonl)."),
                 out: Path = typer.Option(_EXP_OUT / "peft_compare", help="Results dir."),
                 methods: Optional[str] = typer.Option(None, help="Comma-separated: lora,dora,ln_tuning."),
                 eval_samples: Optional[int] = typer.Option(None, help="Validation rows generated and scored."),
                 profile: Optional[str] = typer.Option(None, help="Profile whose train: section sizes each run.")) -> None:
    """LoRA vs DoRA vs LayerNorm-tuning at the same steps (BitFit: Gemma has no biases)."""
    _experiment("peft", model, data, out, None, profile, None, methods, eval_samples)


@experiment_app.command("kd-compare")
def kd_compare(model: Path = typer.Option(..., help="Student model dir (e.g. the pruned one)."),
               teacher: Path = typer.Option(..., help="Teacher model dir (the unpruned one, same vocabulary)."),
               data: Path = typer.Option(..., help="Dataset dir (train/val/test.jsonl)."),
               out: Path = typer.Option(_EXP_OUT / "kd_compare", help="Results dir."),
               eval_samples: Optional[int] = typer.Option(None, help="Validation rows generated and scored."),
               profile: Optional[str] = typer.Option(None, help="Profile whose train: section sizes each run.")) -> None:
    """LoRA alone vs LoRA + distillation from the teacher, same steps and seed."""
    _experiment("kd", model, data, out, teacher, profile, None, None, eval_samples)


