"""The whole pipeline in one command: base model -> tomato assistant GGUF + report.

dataset -> knowledge index (+ abstention calibration) -> base -> vocab trim -> prune -> train (LoRA; LoRA + KD)
-> merge -> export GGUF (prompt format and knowledge hash in its metadata) -> imatrix + quantization ->
choose the final model on the validation split -> evaluate every variant on the test split -> report ->
DIR/model.gguf + DIR/model.knowledge.json (the index the engine answers from).

    DIR/data/                       the dataset (train/val/test/validation_questions, card)
    DIR/index/index.json            the knowledge index with its calibrated abstention model
    DIR/base/ vocab/ prune/         model dirs (our format)
    DIR/train/<variant>/            adapters + train_log.jsonl;  DIR/merged/<variant>/  merged model dirs
    DIR/export/<variant>/           model-f16.gguf, model-<type>.gguf (q4_k_m, ...), their imatrix
    DIR/eval/<variant>_<quant>/     result.json (answers, all figures, test split)
    DIR/select/<variant>_<quant>/   result.json on the validation split (candidates for the final model)
    DIR/report.json report.md *.png build.log;  DIR/model.gguf  the final model

Variants: base (vocab-trimmed, untrained, few-shot prompt), finetuned (unpruned + LoRA, also the KD
teacher), pruned (no recovery, few-shot), pruned_lora, pruned_lora_kd; each at f16 or a llama.cpp type
(q4_k_m, q8_0, ...) as the profile's `build.variants` lists; `stock` = the packaged GGUF (speed,
memory, size, answers).
Every stage dir has meta.json; a stage whose config and inputs are unchanged is skipped, so a killed
build resumes where it stopped (training continues from its last checkpoint).
Example: farmslm build --profile quick --out runs/quick
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from farmslm import artifacts
from farmslm.config import ConfigError, load_profile, make_config

log = logging.getLogger("farmslm.build")

TRAINED = {"finetuned": "vocab", "pruned_lora": "prune", "pruned_lora_kd": "prune"}  # variant -> model it trains
UNTRAINED = {"base": "vocab", "pruned": "prune"}  # variant -> model dir, evaluated with a few-shot prompt
QUANTS = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "iq4_xs",  # variant suffixes: f16, a llama.cpp type,
          "q4k_e5", "q4k_e4", "q4k_e5_b4", "q4k_e5_a8", "q4k_e5_b4_o6", "q4k_e5_b4_o5")  # or a mix of per-tensor types (model.quantize.MIXES)
DEFAULT_QUANTS = ("f16", "q4_k_m")
FULL_VARIANTS = tuple(f"{v}_{q}" for v in ("base", "finetuned", "pruned", "pruned_lora", "pruned_lora_kd")
                      for q in DEFAULT_QUANTS)  # the standard profile's comparison


@dataclass
class BuildConfig:
    base: str = "default"  # base model: default (packaged Gemma 3 270M) | HF dir | .gguf
    vocab_trim: bool = True  # trim the vocabulary to the domain before pruning (issue 8)
    variants: list[str] = field(default_factory=lambda: [f"{v}_{q}" for v in (*UNTRAINED, *TRAINED)
                                                           for q in DEFAULT_QUANTS])  # <variant>_<f16|llama.cpp type>
    stock: bool = True  # also measure the packaged stock GGUF (speed, memory, size, answers)
    final: str = "pruned_lora_kd_q4_k_m"  # the final model unless another trained, quantized variant does better on val
    threads: int = 0  # torch and llama.cpp threads; 0 = all cores
    select: dict = field(default_factory=lambda: {"n_answer": 24, "n_heldout": 8, "n_tag": 0, "n_ppl": 0,
                                                   "bench": False, "validation": False, "paraphrases": False})
    # EvalConfig overrides for the validation-split runs that choose the final model among its candidates
    reference_eval: dict = field(default_factory=dict)  # EvalConfig overrides for variants that cannot ship
    # (untrained or f16: the references); e.g. answers only, no out-of-scope set, tags or bench


def _split_variant(name: str) -> tuple[str, str]:
    """'pruned_lora_kd_q4_k_m' -> ('pruned_lora_kd', 'q4_k_m')."""
    quant = next((q for q in QUANTS if name.endswith("_" + q)), "")
    stem = name[: -len(quant) - 1] if quant else name
    if stem not in {**UNTRAINED, **TRAINED} or not quant:
        raise ConfigError(f"build.variants: unknown variant {name!r}; expected <{'|'.join((*UNTRAINED, *TRAINED))}>"
                          f"_<{'|'.join(QUANTS)}>, e.g. pruned_lora_kd_q4_k_m")
    return stem, quant


def stage_configs(profile: str, overrides: dict[str, dict] | None = None) -> dict[str, Any]:
    """Profile (name or YAML path) + overrides -> one config object per stage, defaults filled in."""
    from farmslm.dataset.build import DataConfig
    from farmslm.dataset.index import IndexConfig
    from farmslm.evaluate.evaluate import EvalConfig
    from farmslm.model.prune import PruneConfig
    from farmslm.model.quantize import QuantizeConfig
    from farmslm.model.train import TrainConfig
    from farmslm.model.vocab import VocabConfig

    prof = load_profile(profile)
    for stage, values in (overrides or {}).items():
        prof[stage] = {**prof.get(stage, {}), **values}
    classes = {"build": BuildConfig, "data": DataConfig, "index": IndexConfig, "vocab": VocabConfig,
               "prune": PruneConfig, "train": TrainConfig, "quantize": QuantizeConfig, "eval": EvalConfig}
    for stage in (overrides or {}):  # other sections (experiment, ...) belong to other commands
        if stage not in classes:
            raise ConfigError(f"--set: unknown stage {stage!r}; the build's stages: {', '.join(classes)}")
    cfgs = {stage: make_config(cls, prof.get(stage, {})) for stage, cls in classes.items()}
    for name in cfgs["build"].variants:
        _split_variant(name)
    return cfgs


class Build:
    """One build directory: runs the stages in order, timing each and skipping what is done."""

    def __init__(self, out_dir: Path, profile: str, cfgs: dict[str, Any], progress=None):
        self.out = out_dir
        self.profile = profile
        self.cfgs = cfgs
        self.cfg: BuildConfig = cfgs["build"]
        self.progress = progress
        self.times_path = out_dir / "build_times.json"
        self.durations: dict[str, float] = artifacts.read_json(self.times_path) if self.times_path.exists() else {}
        self.stages: list[str] = []  # this run's stages, in pipeline order

    # -- bookkeeping -------------------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str, *dirs: Path) -> Iterator[None]:
        """Time a stage and log it. Its recorded duration is that of the run that did the work:
        when every meta.json in `dirs` is unchanged (all skipped), the earlier time is kept."""
        if self.progress is not None:
            self.progress.update(self.progress.task_ids[0], description=f"[bold]{name}")
        log.info("stage %s: start", name)
        self.stages.append(name)
        metas = [d / artifacts.META for d in dirs]
        before = [m.stat().st_mtime_ns if m.exists() else None for m in metas]
        t0 = time.time()
        yield
        dt = time.time() - t0
        after = [m.stat().st_mtime_ns if m.exists() else None for m in metas]
        if not dirs or before != after or name not in self.durations:
            self.durations[name] = round(dt, 1)
            artifacts.write_json(self.times_path, self.durations)
        log.info("stage %s: %.1f s%s", name, dt, " (skipped: done before)" if dirs and before == after else "")
        if self.progress is not None:
            self.progress.advance(self.progress.task_ids[0])

    def _skip(self, out_dir: Path, config: Any, inputs: dict[str, str]) -> bool:
        if artifacts.is_done(out_dir, config, inputs):
            log.info("%s: done with the same config and inputs; skipping", out_dir.relative_to(self.out))
            return True
        return False

    # -- stages ------------------------------------------------------------------------------------
    def data(self) -> Path:
        from farmslm.dataset import build as dataset_build

        out = self.out / "data"
        cfg = dataclasses.replace(self.cfgs["data"], out_dir=str(out))
        dataset_build.run(cfg)  # skips itself when done with the same config
        return out

    def base(self) -> str:
        """Resolve and record the base model. With the vocab trim on, the trim stage loads it itself
        (saving the 262k-token model dir first would cost minutes for nothing); else it is saved here."""
        from farmslm.model.io import save_model_dir
        from farmslm.model.load import default_gguf, load_any

        out = self.out / "base"
        spec = self.cfg.base
        path = default_gguf() if spec == "default" else Path(spec).expanduser()
        if not path.exists():
            raise ConfigError(f"--base: {path} does not exist; give 'default', an HF dir, a .gguf or a farmslm model dir")
        inputs = {"base": artifacts.hash_path(path)}
        config = {"base": spec, "saved": not self.cfg.vocab_trim}
        if self._skip(out, config, inputs):
            return str(out) if config["saved"] else spec
        started = time.time()
        if not config["saved"]:
            artifacts.write_meta(out, "base", config, inputs, {"source": str(path)}, started)
            return spec
        loaded = load_any(spec if spec == "default" else path)
        model, tokenizer, arch = loaded.model, loaded.tokenizer_gguf, loaded.arch
        save_model_dir(model, out, tokenizer, arch, "base", config, inputs, started=started, base=spec,
                       source=str(path))
        return str(out)

    def vocab(self, base: str, data_dir: Path) -> Path:
        if not self.cfg.vocab_trim:
            return Path(base)
        from farmslm.model import vocab

        return vocab.run(self.cfgs["vocab"], base, data_dir, self.out / "vocab")  # skips itself when done

    def prune(self, model_dir: Path, data_dir: Path) -> Path:
        from farmslm.model import prune

        out = self.out / "prune"
        cfg = dataclasses.replace(self.cfgs["prune"], base=str(model_dir), data_dir=str(data_dir), out_dir=str(out))
        prune.run(cfg)
        return out

    def train(self, variant: str, model_dir: Path, data_dir: Path, teacher: Path | None) -> Path:
        from farmslm.model import merge, train

        if self.cfg.threads:
            import torch

            torch.set_num_threads(self.cfg.threads)
        cfg = self.cfgs["train"]
        train_dir = self.out / "train" / variant
        try:
            train.run(cfg, model_dir, data_dir, train_dir, teacher_dir=teacher, resume=True)
        except train.ResumeMismatch as exc:  # the stage's inputs changed since the checkpoint: never mix two runs
            log.warning("%s; starting %s over", exc, variant)
            shutil.rmtree(train_dir / "checkpoints")
            train.run(cfg, model_dir, data_dir, train_dir, teacher_dir=teacher, resume=True)
        return merge.run(train_dir, self.out / "merged" / variant, base_dir=model_dir)

    def index(self, data_dir: Path) -> Path:
        from farmslm.dataset import index

        return index.run(self.cfgs["index"], data_dir, self.out / "index" / "index.json")  # skips itself when done

    def export(self, variant: str, model_dir: Path, data_dir: Path, quants: set[str], index_path: Path) -> dict[str, Path]:
        """Model dir -> export/<variant>/model-f16.gguf (+ model-<type>.gguf and its imatrix per llama.cpp type)."""
        from farmslm.model import export, quantize

        out = self.out / "export" / variant
        f16 = out / "model-f16.gguf"
        qcfgs = {q: dataclasses.replace(self.cfgs["quantize"], in_gguf=str(f16), out=str(out / f"model-{q}.gguf"),
                                        imatrix_data=str(data_dir), model_dir=str(model_dir), n_threads=self.cfg.threads,
                                        **(quantize.MIXES[q] if q in quantize.MIXES else {"qtype": q.upper()}))
                 for q in sorted(quants - {"f16"})}
        from farmslm.domain import retrieve
        from farmslm.domain.prompt import FORMAT

        knowledge = retrieve.load(index_path).knowledge_hash
        config = {"variant": variant, "profile": self.profile, "quantize": qcfgs, "prompt_format": FORMAT,
                  "knowledge_hash": knowledge}
        inputs = {"model": artifacts.hash_path(model_dir / "model.safetensors"),
                  "tokenizer": artifacts.hash_path(model_dir / "tokenizer.gguf"),
                  "code": artifacts.code_hash("farmslm.model.export", "farmslm.model.quantize")}
        files = {"f16": f16, **{q: Path(c.out) for q, c in qcfgs.items()}}
        if self._skip(out, config, inputs) and all(p.exists() for p in files.values()):
            return files
        started = time.time()
        ecfg = export.ExportConfig(model_dir=str(model_dir), out=str(f16), dtype="f16", name=f"farmslm-{variant}",
                                   profile=self.profile, dataset_hash=self.dataset_hash(data_dir),
                                   extra={"variant": variant, "prompt_format": str(FORMAT),
                                          "knowledge_hash": knowledge})
        export.run(ecfg)
        imx = quantize.build_imatrix(next(iter(qcfgs.values()))) if qcfgs else None  # one per variant
        for qcfg in qcfgs.values():
            quantize.run(qcfg, imx)
        metrics = {k: round(p.stat().st_size / 1e6, 1) for k, p in files.items()}
        artifacts.write_meta(out, "export", config, inputs, {"size_mb": metrics}, started)
        return files

    def dataset_hash(self, data_dir: Path) -> str:
        return artifacts.hash_path(data_dir / "train.jsonl")[:16]

    def evaluate(self, name: str, model: Path, data_dir: Path, few_shot: bool, index_path: Path | None,
                 quality: bool = True, select: bool = False, overrides: dict | None = None) -> dict:
        """Test-split evaluation (the report), or with select=True the validation-split run of a candidate."""
        from farmslm.evaluate import evaluate

        out = self.out / ("select" if select else "eval") / name
        cfg = self.cfgs["eval"]
        if self.cfg.threads and not cfg.threads:
            cfg = dataclasses.replace(cfg, threads=self.cfg.threads)
        if select:
            cfg = dataclasses.replace(cfg, split="val", **self.cfg.select)
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        if not quality:  # stock: speed, memory and size only (bench)
            cfg = dataclasses.replace(cfg, n_answer=0, n_tag=0, n_ppl=0, validation=False, out_of_scope=False,
                                      paraphrases=False)
        config = {"eval": cfg, "few_shot": few_shot}
        inputs = {"model": artifacts.hash_path(model), "data": artifacts.hash_path(data_dir),
                  "index": artifacts.hash_path(index_path) if index_path else "",
                  "code": artifacts.code_hash("farmslm.evaluate.evaluate")}
        if self._skip(out, config, inputs) and (out / "result.json").exists():
            return artifacts.read_json(out / "result.json")
        started = time.time()
        result = evaluate.run_isolated(cfg, model, data_dir, out / "result.json", few_shot=few_shot,
                                       index_path=index_path)
        artifacts.write_meta(out, "eval", config, inputs, result["summary"], started, model=str(model))
        return result

    # -- the pipeline --------------------------------------------------------------------------------
    def n_stages(self) -> int:
        stems = {_split_variant(v)[0] for v in self.cfg.variants}
        n_train = len(stems & set(TRAINED)) + ("pruned_lora_kd" in stems and "finetuned" not in stems)
        n_prune = any(s.startswith("pruned") for s in stems)
        # data, index, base, vocab, [prune], trainings, exports, [stock], selections, evals, report, final
        n_select = len(self.candidates()) if len(self.candidates()) > 1 else 0
        return 4 + n_prune + n_train + len(stems) + self.cfg.stock + n_select + len(self.cfg.variants) + 2

    def candidates(self) -> list[str]:
        """Variants the final model is chosen from: trained and quantized (an untrained or f16 file never ships)."""
        return [v for v in self.cfg.variants if _split_variant(v)[0] in TRAINED and _split_variant(v)[1] != "f16"]

    def run(self) -> Path:
        from farmslm.model.load import default_gguf

        wanted: dict[str, set[str]] = {}
        for name in self.cfg.variants:
            stem, quant = _split_variant(name)
            wanted.setdefault(stem, set()).add(quant)
        with self.stage("data", self.out / "data"):
            data_dir = self.data()
        with self.stage("index", self.out / "index"):
            index_path = self.index(data_dir)
        with self.stage("base", self.out / "base"):
            base = self.base()
        with self.stage("vocab", self.out / "vocab"):
            vocab_dir = self.vocab(base, data_dir)
        needs_prune = any(s.startswith("pruned") for s in wanted)
        prune_dir = None
        if needs_prune:
            with self.stage("prune", self.out / "prune"):
                prune_dir = self.prune(vocab_dir, data_dir)
        sources = {"vocab": vocab_dir, "prune": prune_dir}
        model_dirs = {stem: sources[src] for stem, src in UNTRAINED.items() if stem in wanted}
        # finetuned first: it is also the KD teacher (a teacher corrected on our data, as Minitron advises)
        order = [s for s in TRAINED if s in wanted or (s == "finetuned" and "pruned_lora_kd" in wanted)]
        for stem in order:
            teacher = model_dirs.get("finetuned") if stem == "pruned_lora_kd" else None
            with self.stage(f"train_{stem}", self.out / "train" / stem, self.out / "merged" / stem):
                model_dirs[stem] = self.train(stem, sources[TRAINED[stem]], data_dir, teacher)
        files: dict[str, Path] = {}
        for stem, quants in wanted.items():
            with self.stage(f"export_{stem}", self.out / "export" / stem):
                for quant, path in self.export(stem, model_dirs[stem], data_dir, quants, index_path).items():
                    if quant in quants:
                        files[f"{stem}_{quant}"] = path
        selection: dict[str, dict] = {}
        for name in self.candidates() if len(self.candidates()) > 1 else []:  # on val: the test split decides nothing
            with self.stage(f"select_{name}", self.out / "select" / name):
                selection[name] = self.evaluate(name, files[name], data_dir, few_shot=False, index_path=index_path,
                                                select=True)
        evals: dict[str, dict] = {}
        if self.cfg.stock:
            with self.stage("eval_stock", self.out / "eval" / "stock"):
                evals["stock"] = self.evaluate("stock", default_gguf(), data_dir, few_shot=True, index_path=None,
                                               quality=False)
        for name in self.cfg.variants:
            with self.stage(f"eval_{name}", self.out / "eval" / name):
                evals[name] = self.evaluate(name, files[name], data_dir, index_path=index_path,
                                            few_shot=_split_variant(name)[0] in UNTRAINED,
                                            overrides=None if name in self.candidates() else self.cfg.reference_eval)
        with self.stage("report"):
            report = self.report(evals, selection, order, index_path)
        final = files.get(report["final"]) or files.get(self.cfg.final)
        with self.stage("final"):
            self._install(final, index_path)
        return self.out / "model.gguf"

    def report(self, evals: dict[str, dict], selection: dict[str, dict], trained: list[str], index_path: Path) -> dict:
        from farmslm.evaluate.report import write_report

        logs = {}
        for stem in trained:
            p = self.out / "train" / stem / "train_log.jsonl"
            logs[stem] = artifacts.read_jsonl(p) if p.exists() else []
        notes = [f"profile {self.profile}; eval config: {artifacts._jsonable(self.cfgs['eval'])}",
                 f"final model chosen on the validation split among {', '.join(self.candidates()) or 'no candidate'} "
                 f"(select config {self.cfg.select})"]
        left_out = [v for v in FULL_VARIANTS if v not in self.cfg.variants]
        if left_out:
            notes.append(f"variants this profile leaves out (the standard profile builds them): {', '.join(left_out)}")
        durations = {k: self.durations[k] for k in self.stages if k in self.durations}  # this build's stages only
        index_meta = artifacts.read_meta(index_path.parent) or {}
        single = self.candidates()[0] if len(self.candidates()) == 1 else self.cfg.final  # nothing to choose between
        return write_report(self.out, self.profile, evals, durations, logs, notes, single, selection,
                            index_meta.get("metrics", {}))

    def _install(self, src: Path, index_path: Path) -> None:
        """DIR/model.gguf and its knowledge index beside it (DIR/model.knowledge.json)."""
        from farmslm.runtime.engine import sidecar_path

        dst = self.out / "model.gguf"
        for a, b in ((src, dst), (index_path, sidecar_path(dst))):
            if b.exists() and b.stat().st_size == a.stat().st_size and artifacts.hash_path(b) == artifacts.hash_path(a):
                continue
            with artifacts.atomic_path(b) as tmp:
                shutil.copyfile(a, tmp)
        log.info("final model: %s -> %s (%.1f MB) + %s", src.relative_to(self.out), dst, dst.stat().st_size / 1e6,
                 sidecar_path(dst).name)


def _logging(out_dir: Path, console) -> list[logging.Handler]:
    from rich.logging import RichHandler

    out_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(out_dir / "build.log", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    rich_handler = RichHandler(console=console, show_path=False, markup=False)
    rich_handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in (file_handler, rich_handler):
        root.addHandler(h)
    return [file_handler, rich_handler]


def run(out_dir: str | Path, profile: str = "quick", base: str | None = None,
        overrides: dict[str, dict] | None = None, show_progress: bool = True) -> Path:
    """Build DIR/model.gguf and DIR/report.* with a profile; resumable; returns the model path."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # one progress display: the stages' own tqdm bars stay quiet (tqdm reads this when first imported)
    os.environ.setdefault("TQDM_DISABLE", "1")
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    if base is not None:
        overrides.setdefault("build", {})["base"] = base
    cfgs = stage_configs(profile, overrides)
    out_dir = Path(out_dir)
    console = Console(stderr=True)
    handlers = _logging(out_dir, console)
    started = time.time()
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=not show_progress) as progress:
            build = Build(out_dir, profile, cfgs, progress)
            progress.add_task("build", total=build.n_stages())
            model = build.run()
        log.info("build finished in %.1f min: %s", (time.time() - started) / 60, model)
        return model
    finally:
        for h in handlers:
            logging.getLogger().removeHandler(h)
            h.close()
