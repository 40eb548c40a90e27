"""Recovery fine-tuning: LoRA (or DoRA / LayerNorm-tuning) with optional knowledge distillation.

model dir + data dir (train.jsonl, val.jsonl) [+ teacher model dir] -> out dir with `adapter/`
(peft), `train_log.jsonl`, `loss.png`, `meta.json`; `checkpoints/` while running (for --resume).
Loss on the answer tokens only (" [TAG] answer" + EOS after "\\nA:"); with a teacher,
loss = (1 - kd_alpha)·CE + kd_alpha·T²·KL(teacher_T ‖ student_T) (forward KL, Hinton et al.).
Same code on CPU (fp32; bf16 with `cpu_bf16` on CPUs with native bf16) and CUDA (bf16 autocast).
Multi-GPU: `accelerate launch --num_processes N -m farmslm.cli train ...`: each process takes
grad_accum / N micro-batches of every step, the adapter gradients are summed (all_reduce), so N
processes make the same steps as one; process 0 writes.
Example: farmslm train --model runs/quick/prune --data runs/quick/data --out runs/quick/train --profile quick
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from farmslm import artifacts
from farmslm.config import ConfigError
from farmslm.model.load import load_trainable
from farmslm.model.samples import IGNORE, Example, collate, epoch_batches, load_examples

log = logging.getLogger(__name__)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Gemma 3 / Llama / Qwen norm names; Gemma has no biases, so BitFit has nothing to train.
NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
         "post_feedforward_layernorm", "q_norm", "k_norm", "norm")
METHODS = ("lora", "dora", "ln_tuning")


@dataclass
class TrainConfig:
    method: str = "lora"  # lora | dora | ln_tuning (LayerNorm-tuning)
    lora_r: int = 16  # LoRA rank (the design report's best)
    lora_alpha: int = 32  # LoRA scale = alpha / r
    lora_dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))  # projections LoRA adapts
    batch_size: int = 2  # sequences per micro-batch
    grad_accum: int = 8  # micro-batches per optimizer step (effective batch = batch_size * grad_accum)
    epochs: float = 3.0  # passes over the training samples (fractions allowed)
    max_steps: int = 0  # optimizer steps; 0 = from epochs
    lr: float = 2e-4  # peak learning rate (AdamW)
    warmup_ratio: float = 0.05  # fraction of steps of linear warm-up before the cosine decay
    weight_decay: float = 0.0  # AdamW weight decay on the adapter
    max_grad_norm: float = 1.0  # gradient clipping
    max_seq_len: int = 512  # tokens; longer samples lose their answer tail (counted), a cut tag is dropped
    max_samples: int = 0  # training samples drawn (seeded) from train.jsonl; 0 = all
    tag_drills: int = 0  # more train.jsonl rows (not among those samples) cut right after the tag: prompt +
    # tag, loss on the tag alone. The tag's numeric thresholds need far more examples than the answers
    # do, and a drill costs about half a full sample's tokens.
    val_samples: int = 64  # val.jsonl samples for the final answer loss / perplexity; 0 = none
    tag_weight: float = 1.0  # CE weight of the [WARNING: ...]/[NORMAL] tag tokens relative to the rest
    kd_alpha: float = 0.5  # share of the KD term when a teacher is given
    kd_temperature: float = 2.0  # softmax temperature T of teacher and student in the KD term
    kd_skip_tag: bool = True  # no KD on the tag tokens: an uncorrected teacher never saw the tag grammar
    teacher_correction: bool = False  # fine-tune the teacher on the same data first, then distil from it
    qlora: bool = False  # 4-bit base through bitsandbytes (CUDA only)
    save_steps: int = 50  # checkpoint every N optimizer steps (and at the end)
    seed: int = 0  # seeds data order, adapter init and dropout
    threads: int = 0  # torch CPU threads; 0 = torch's default
    cpu_bf16: bool = False  # on a CPU with native bf16 (AMX / AVX512-BF16): frozen base in bf16, bf16 autocast,
    # fp32 adapter and optimizer (1.12x the fp32 tokens/s here; 1.48x with lora_dropout 0); other CPUs stay fp32


class Interrupted(Exception):
    """Raised by an `on_step` hook to stop training at a step (tests, time limits)."""


def check_config(cfg: TrainConfig, device: str) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"method: {cfg.method!r} is not one of {', '.join(METHODS)}")
    if cfg.lora_r < 1:
        raise ConfigError(f"lora_r: must be >= 1, got {cfg.lora_r}")
    if not 0.0 <= cfg.kd_alpha <= 1.0:
        raise ConfigError(f"kd_alpha: must be in [0, 1], got {cfg.kd_alpha}")
    if cfg.kd_temperature <= 0:
        raise ConfigError(f"kd_temperature: must be > 0, got {cfg.kd_temperature}")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ConfigError("batch_size, grad_accum: must be >= 1")
    if cfg.qlora and device != "cuda":
        raise ConfigError("qlora: 4-bit QLoRA needs CUDA and bitsandbytes; on a CPU train plain LoRA "
                          "(qlora: false), which keeps the base in fp32")


# ---- loss ---------------------------------------------------------------------------------------

def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The *ForCausalLM under any peft wrapper (adapter layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict answer tokens only -> (logits [N, V] fp32, selection mask).

    The output head (the 262k-vocab matmul dominates the 270M's cost) runs on those rows alone.
    """
    lm = causal_lm(model)
    hidden = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    sel = batch["labels"][:, 1:] != IGNORE  # position t predicts token t+1
    logits = lm.lm_head(hidden[:, :-1][sel])
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float(), sel


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · mean over tokens of KL(softmax(teacher/T) ‖ softmax(student/T)) (forward KL)."""
    t = temperature
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return t * t * kl.mean()


def batch_loss(model, batch, cfg: TrainConfig, teacher=None) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 - α)·weighted CE + α·T²·KL on the answer tokens; plain weighted CE without a teacher."""
    logits, sel = answer_logits(model, batch)
    targets = batch["labels"][:, 1:][sel]
    weights = batch["weights"][:, 1:][sel].to(logits.device)
    ce_tok = F.cross_entropy(logits, targets, reduction="none")
    ce = (weights * ce_tok).sum() / weights.sum()
    parts = {"ce": ce.item(), "ce_plain": ce_tok.mean().item()}
    if teacher is None or cfg.kd_alpha == 0:
        return ce, parts
    kd_rows = ~batch["tag"][:, 1:][sel] if cfg.kd_skip_tag else torch.ones_like(targets, dtype=torch.bool)
    if not kd_rows.any():  # a batch of tag drills only: nothing to distil
        parts["kd"] = 0.0
        return (1 - cfg.kd_alpha) * ce, parts
    with torch.no_grad():
        t_logits, _ = answer_logits(teacher, batch)
    kd = kd_loss(logits[kd_rows], t_logits[kd_rows], cfg.kd_temperature)
    parts["kd"] = kd.item()
    return (1 - cfg.kd_alpha) * ce + cfg.kd_alpha * kd, parts


@torch.no_grad()
def eval_loss(model, examples: list[Example], batch_size: int = 4, pad_id: int = 0) -> float:
    """Mean CE over all answer tokens (exp of it = answer perplexity)."""
    model.eval()
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], 1.0, pad_id).items()}
        with _autocast(model):
            logits, sel = answer_logits(model, batch)
        targets = batch["labels"][:, 1:][sel]
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        n += targets.numel()
    return total / max(n, 1)


def _autocast(model: torch.nn.Module):
    """bf16 compute on CUDA with fp32 master weights; on a CPU only for a bf16 base (`use_cpu_bf16`)."""
    if next(model.parameters()).device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=has_bf16(model))


def has_bf16(model: torch.nn.Module) -> bool:
    return any(p.dtype == torch.bfloat16 for p in model.parameters())


def native_cpu_bf16() -> bool:
    """True on CPUs whose matrix units compute bf16 natively; elsewhere bf16 is emulated and slower."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def use_cpu_bf16(model: torch.nn.Module, cfg: TrainConfig) -> bool:
    """Cast a CPU model's (frozen) weights to bf16 when `cpu_bf16` asks and the CPU has native bf16."""
    if not cfg.cpu_bf16 or next(model.parameters()).device.type != "cpu":
        return False
    if not native_cpu_bf16():
        log.warning("cpu_bf16: this CPU has no native bf16 (AMX / AVX512-BF16); training in fp32")
        return False
    model.to(torch.bfloat16)
    return True


# ---- model ----------------------------------------------------------------------------------------

def add_adapter(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """peft-wrap `model` for cfg.method; with `cpu_bf16` (where native) the base goes bf16, the adapter stays fp32."""
    from peft import LNTuningConfig, LoraConfig, get_peft_model

    use_cpu_bf16(model, cfg)
    torch.manual_seed(cfg.seed)
    if cfg.method == "ln_tuning":
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        peft_cfg = LNTuningConfig(target_modules=[n for n in NORMS if n in names], task_type="CAUSAL_LM")
    else:
        peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=list(cfg.target_modules), use_dora=cfg.method == "dora",
                              bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_cfg)
    for p in model.parameters():  # trainable weights and their AdamW state stay fp32 over a bf16 base
        if p.requires_grad:
            p.data = p.data.float()
    return model


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- loop ------------------------------------------------------------------------------------------

def n_steps(n_examples: int, cfg: TrainConfig) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(n_examples / cfg.batch_size)
    return max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))


def train_loop(model, examples: list[Example], cfg: TrainConfig, out_dir: Path, teacher=None,
               resume: bool = False, pad_id: int = 0,
               on_step: Callable[[int, dict], None] | None = None, key: dict | None = None) -> list[dict]:
    """Optimise the adapter of `model` (peft-wrapped) in place; returns the log rows, one per step.

    A checkpoint (trainable weights, optimizer, schedule, RNG, log) is written every `save_steps`;
    with resume=True the loop continues from it and reproduces the uninterrupted run exactly,
    because the data order is a pure function of (seed, epoch) and the RNG state is restored.
    """
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = n_steps(len(examples), cfg)
    sched = get_cosine_schedule_with_warmup(opt, round(cfg.warmup_ratio * total), total)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    step, rows = 0, []
    torch.manual_seed(cfg.seed)
    ckpt = torch.load(ckpt_path, weights_only=False) if resume and ckpt_path.exists() else None
    if ckpt is not None:
        check_resume(ckpt.get("key", {}), key or {"config": artifacts.hash_config(cfg)}, ckpt_path)
    if ckpt is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in ckpt["trainable"]:
                    p.copy_(ckpt["trainable"][n])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        step, rows = ckpt["step"], ckpt["log"]
        log.info("resuming from step %d of %d", step, total)
    n_batches = len(epoch_batches(examples, cfg.batch_size, cfg.seed, 0))
    order_cache: dict[int, list[list[int]]] = {}

    def micro_batch(m: int) -> list[Example]:
        epoch, i = divmod(m, n_batches)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = epoch_batches(examples, cfg.batch_size, cfg.seed, epoch)
        return [examples[j] for j in order_cache[epoch][i]]

    started = time.time()
    tokens_done = 0
    rank, world = dist_rank_world()
    if cfg.grad_accum % world:
        raise ConfigError(f"grad_accum: {cfg.grad_accum} must be a multiple of the {world} processes")
    bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=rank > 0)
    while step < total:
        model.train()
        opt.zero_grad(set_to_none=True)
        t0, n_tok, sums = time.time(), 0, {}
        for a in range(rank, cfg.grad_accum, world):  # each process takes its share of the micro-batches
            batch = {k: v.to(device) for k, v in
                     collate(micro_batch(step * cfg.grad_accum + a), cfg.tag_weight, pad_id).items()}
            with _autocast(model):
                loss, parts = batch_loss(model, batch, cfg, teacher)
            (loss / cfg.grad_accum).backward()
            n_tok += int(batch["attention_mask"].sum())
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        if world > 1:  # sum of (micro-batch loss / grad_accum) over all processes = the one-process gradient
            for p in params:
                torch.distributed.all_reduce(p.grad)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        dt = time.time() - t0
        tokens_done += n_tok
        row = {"step": step, "epoch": round(step * cfg.grad_accum / n_batches, 4),
               **{k: round(v, 5) for k, v in sums.items()}, "lr": sched.get_last_lr()[0],
               "tokens": n_tok, "tok_s": round(n_tok / dt, 1), "step_s": round(dt, 3)}
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{tokens_done / (time.time() - started):.0f}")
        if rank == 0 and (step % cfg.save_steps == 0 or step == total):
            _save_checkpoint(ckpt_path, model, opt, sched, step, rows,
                             key or {"config": artifacts.hash_config(cfg)})
        if on_step is not None:
            on_step(step, row)
    bar.close()
    return rows


class ResumeMismatch(ConfigError):
    """A checkpoint from another run (data, base, teacher, config or code): resuming would mix two runs."""


def check_resume(saved: dict, wanted: dict, path: Path) -> None:
    """Raise ResumeMismatch naming every part of the run key that differs from the checkpoint's."""
    diff = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if diff:
        raise ResumeMismatch(f"--resume: {path} was written by another run ({', '.join(diff)} differ: "
                             + "; ".join(f"{k} {saved.get(k)} vs {wanted.get(k)}" for k in diff)
                             + f"); delete {path.parent} to start over, or train into a new --out")


def _save_checkpoint(path: Path, model, opt, sched, step: int, rows: list[dict], key: dict) -> None:
    state = {"trainable": trainable_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": torch.get_rng_state(), "step": step, "log": rows, "key": key}
    with artifacts.atomic_path(path) as tmp:
        torch.save(state, tmp)


def dist_rank_world() -> tuple[int, int]:
    """(process index, process count): `accelerate launch` sets WORLD_SIZE and starts the process group."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState()  # initialises torch.distributed from accelerate's environment
    return state.process_index, state.num_processes


def plot_loss(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    for key in ("loss", "ce", "kd"):
        if rows and key in rows[0]:
            ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# ---- stage --------------------------------------------------------------------------------------

def run(cfg: TrainConfig, model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
        teacher_dir: str | Path | None = None, resume: bool = False) -> Path:
    """Train an adapter on data_dir/train.jsonl; write out_dir (adapter, log, plot, meta)."""
    from farmslm.model.tokenizer import Tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world = dist_rank_world()
    if world > 1:
        torch.cuda.set_device(rank % max(torch.cuda.device_count(), 1))
    check_config(cfg, device)
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    train_path = data_dir / "train.jsonl"
    if not train_path.exists():
        raise ConfigError(f"--data: {train_path} does not exist; build it with `farmslm data build --out {data_dir}`")
    inputs = run_inputs(model_dir, train_path, teacher_dir)
    if artifacts.is_done(out_dir, cfg, inputs):
        log.info("%s: already trained with this config and inputs; skipping", out_dir)
        return out_dir
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.time()
    model, tok_path, meta = load_trainable(model_dir, device, cfg.qlora)
    teacher = None
    if teacher_dir is not None:
        if cfg.teacher_correction:
            teacher_dir = _correct_teacher(cfg, Path(teacher_dir), data_dir, out_dir / "teacher")
        teacher, t_tok, _ = load_trainable(teacher_dir, device)
        check_same_vocab(tok_path, t_tok, model, teacher)
        teacher.eval().requires_grad_(False)
        use_cpu_bf16(teacher, cfg)
    tokenizer = Tokenizer(tok_path)
    encoded = load_examples(train_path, tokenizer, cfg.max_seq_len, cfg.max_samples, cfg.seed, cfg.tag_drills)
    examples = encoded.examples
    if not examples:
        raise ConfigError(f"max_seq_len: no training sample fits in {cfg.max_seq_len} tokens "
                          f"({len(encoded.dropped)} dropped, e.g. {encoded.dropped[0]['reason'] if encoded.dropped else '-'})")
    if encoded.dropped:
        artifacts.write_jsonl(out_dir / "quarantine.jsonl", encoded.dropped)
        log.warning("%d samples not trained on (reasons in %s)", len(encoded.dropped), out_dir / "quarantine.jsonl")
    if encoded.truncated:
        log.warning("%d of %d samples lose their answer tail at max_seq_len %d", encoded.truncated, len(examples),
                    cfg.max_seq_len)
    val_path = data_dir / "val.jsonl"
    val = load_examples(val_path, tokenizer, cfg.max_seq_len, cfg.val_samples, cfg.seed).examples \
        if cfg.val_samples and val_path.exists() else []
    model = add_adapter(model, cfg)
    precision = "bf16" if device == "cuda" or has_bf16(model) else "fp32"
    log.info("training %d trainable params (%s) on %d samples, %d steps, %s", n_trainable(model), cfg.method,
             len(examples), n_steps(len(examples), cfg), f"{device} {precision}")
    pad_id = tokenizer.pad_id if tokenizer.pad_id >= 0 else tokenizer.eos_id
    key = {"config": artifacts.hash_config(cfg), **inputs}
    rows = train_loop(model, examples, cfg, out_dir, teacher, resume, pad_id, key=key)
    if rank > 0:  # the main process writes the outputs
        return out_dir
    model.save_pretrained(out_dir / "adapter")
    artifacts.write_jsonl(out_dir / "train_log.jsonl", rows)
    plot_loss(rows, out_dir / "loss.png")
    train_s = sum(r["step_s"] for r in rows)
    metrics = {"steps": len(rows), "samples": len(examples), "samples_truncated": encoded.truncated,
               "samples_dropped": len(encoded.dropped), "trainable_params": n_trainable(model),
               "final_loss": rows[-1]["loss"], "train_s": round(train_s, 1),
               "tok_s": round(sum(r["tokens"] for r in rows) / max(train_s, 1e-9), 1), "device": device,
               "precision": precision}
    if val:
        metrics["val_answer_loss"] = round(eval_loss(model, val, pad_id=pad_id), 4)
        metrics["val_answer_ppl"] = round(math.exp(metrics["val_answer_loss"]), 3)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    artifacts.write_meta(out_dir, "train", cfg, inputs, metrics, started, base_model=str(Path(model_dir).resolve()),
                         teacher=str(Path(teacher_dir).resolve()) if teacher_dir else None, arch=meta.get("arch"))
    return out_dir


def run_inputs(model_dir: str | Path, train_path: Path, teacher_dir: str | Path | None) -> dict[str, str]:
    """What a training run depends on besides its config: base, data, teacher and the code that trains."""
    inputs = {"model": artifacts.hash_path(model_dir), "data": artifacts.hash_path(train_path),
              "code": artifacts.code_hash("farmslm.model.train")}
    if teacher_dir is not None:
        inputs["teacher"] = artifacts.hash_path(teacher_dir)
    return inputs


def check_same_vocab(student_tok: Path, teacher_tok: Path, student, teacher) -> None:
    """KD compares distributions token by token: both models must share one vocabulary."""
    if student.config.vocab_size != teacher.config.vocab_size or \
            artifacts.hash_path(student_tok) != artifacts.hash_path(teacher_tok):
        raise ConfigError(f"--teacher: its vocabulary ({teacher_tok}, {teacher.config.vocab_size} tokens) differs "
                          f"from the student's ({student_tok}, {student.config.vocab_size}); distil from a teacher "
                          "with the same tokenizer.gguf (e.g. the vocab-trimmed, unpruned model)")


def _correct_teacher(cfg: TrainConfig, teacher_dir: Path, data_dir: Path, work: Path) -> Path:
    """'Teacher correction' (Minitron): fine-tune the teacher on the same data, merge, distil from that."""
    from farmslm.model import merge

    t_cfg = replace(cfg, teacher_correction=False, kd_alpha=0.0)
    run(t_cfg, teacher_dir, data_dir, work / "train")
    return merge.run(work / "train", work / "merged", base_dir=teacher_dir)
