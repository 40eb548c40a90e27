"""Fine-tuning experiments: LoRA rank sweep, PEFT methods compared, distillation vs none.

model dir + data dir (+ teacher) -> out dir with one training run per variant (`runs/<name>/`),
`results.json`, `results.md` (the table) and `results.png`. Every variant trains with the same
train config (steps, samples, seed); only the compared knob changes. Each is scored on the validation
split: answer perplexity (teacher-forced), BLEU / ROUGE-L of the generated answer, and exact-set
accuracy of the `[WARNING: ...]` / `[NORMAL]` tag the model writes itself (greedy, no help).
BitFit is not compared: Gemma has no bias terms, so it has nothing to train.
Example: farmslm experiment rank-sweep --model runs/quick/prune --data runs/quick/data --profile quick
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from farmslm import artifacts
from farmslm.config import ConfigError
from farmslm.model.train import TrainConfig  # noqa: F401  (the CLI builds the per-run config from it)

log = logging.getLogger(__name__)
KINDS = ("rank", "peft", "kd")


@dataclass
class ExperimentConfig:
    ranks: list[int] = field(default_factory=lambda: [4, 8, 16, 32])  # LoRA ranks of the sweep (alpha = 2r)
    methods: list[str] = field(default_factory=lambda: ["lora", "dora", "ln_tuning"])  # PEFT methods compared
    ln_tuning_lr: float = 1e-3  # LayerNorm-tuning trains ~10k scales: it needs a larger step than LoRA
    eval_samples: int = 48  # validation rows (seeded draw) scored per variant; the test split is the report's
    max_new_tokens: int = 64  # generated answer length cap
    gen_batch: int = 8  # prompts generated together (left-padded)
    seed: int = 0  # validation-row draw


def variants(kind: str, cfg: ExperimentConfig, train_cfg: TrainConfig) -> dict[str, TrainConfig]:
    if kind == "rank":
        return {f"lora_r{r}": replace(train_cfg, method="lora", lora_r=r, lora_alpha=2 * r) for r in cfg.ranks}
    if kind == "peft":
        return {m: replace(train_cfg, method=m, lr=cfg.ln_tuning_lr if m == "ln_tuning" else train_cfg.lr)
                for m in cfg.methods}
    if kind == "kd":
        return {"lora": replace(train_cfg, kd_alpha=0.0), "lora_kd": train_cfg}
    raise ConfigError(f"experiment: unknown kind {kind!r}; one of {', '.join(KINDS)}")


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int) -> list[str]:
    """Greedy continuations of the prompts (BOS added, left padding), decoded without special tokens."""
    pad = tokenizer.pad_id if tokenizer.pad_id >= 0 else tokenizer.eos_id
    out = []
    for i in range(0, len(prompts), batch):
        enc = [tokenizer.encode(p, add_bos=True) for p in prompts[i:i + batch]]
        n = max(map(len, enc))
        ids = torch.tensor([[pad] * (n - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_id, pad_token_id=pad)
        for row in gen[:, n:].tolist():
            if tokenizer.eos_id in row:
                row = row[:row.index(tokenizer.eos_id)]
            out.append(tokenizer.decode(row))
    return out


def score(model, tokenizer, rows: list[dict], cfg: ExperimentConfig, max_seq_len: int = 256) -> dict:
    """Answer perplexity, BLEU / ROUGE-L / chrF and tag accuracy of `model` on the validation rows."""
    from farmslm.domain.sensors import parse_tag
    from farmslm.evaluate import metrics
    from farmslm.model import samples, train

    model.eval()
    started = time.time()
    encoded = [samples.encode_row(tokenizer, r, max_seq_len)[0] for r in rows]
    pad = tokenizer.pad_id if tokenizer.pad_id >= 0 else tokenizer.eos_id
    loss = train.eval_loss(model, [e for e in encoded if e is not None], pad_id=pad)
    langs = [r["lang"] for r in rows]
    questions = [samples.split_text(r["text"])[0] for r in rows]
    # grounded rows: the guarded answer after the prefill; the tag (research figure) from the bare question prompt
    guarded = [r.get("prefill") or q for r, q in zip(rows, questions)]
    texts = generate(model, tokenizer, guarded, cfg.max_new_tokens, cfg.gen_batch)
    answers = [t if r.get("prefill") else parse_tag(t)[1] for r, t in zip(rows, texts)]
    tag_texts = generate(model, tokenizer, questions, 24, cfg.gen_batch) if any(r.get("prefill") for r in rows) else texts
    text = metrics.text_scores(answers, [r["answer"] for r in rows], langs)
    gold = [r["warnings"] or ([] if r.get("sensors") else ["NO_READINGS"]) for r in rows]
    tags = metrics.warning_scores([parse_tag(t)[0] for t in tag_texts], gold, langs)
    return {"answer_loss": round(loss, 4), "answer_ppl": round(math.exp(loss), 3),
            "bleu": text["all"]["bleu"], "rouge_l": text["all"]["rouge_l"], "chrf": text["all"]["chrf"],
            "rouge_l_ko": text["ko"]["rouge_l"], "rouge_l_en": text["en"]["rouge_l"],
            "tag_acc": tags["accuracy"], "tag_acc_ko": tags["accuracy_ko"], "tag_acc_en": tags["accuracy_en"],
            "tag_rate": tags["tag_rate"], "ko_tokenizer": text["ko_tokenizer"], "eval_s": round(time.time() - started, 1),
            "samples": [{"id": r.get("id"), "gold": r["answer"], "pred": a} for r, a in list(zip(rows, answers))[:6]]}


def run(kind: str, cfg: ExperimentConfig, train_cfg: TrainConfig, model_dir: str | Path, data_dir: str | Path,
        out_dir: str | Path, teacher_dir: str | Path | None = None) -> Path:
    """Train and score every variant of `kind`; write the table, plot and results.json to out_dir."""
    import random

    from farmslm.model import merge, train
    from farmslm.model.load import load_trainable
    from farmslm.model.tokenizer import Tokenizer

    if kind == "kd" and teacher_dir is None:
        raise ConfigError("--teacher: the KD comparison needs a teacher model dir")
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    val_path = data_dir / "val.jsonl"  # experiments choose settings: the test split stays for the report
    if not val_path.exists():
        raise ConfigError(f"--data: {val_path} does not exist")
    rows = [r for r in artifacts.read_jsonl(val_path) if not r.get("abstain")]
    if cfg.eval_samples and cfg.eval_samples < len(rows):
        rows = random.Random(cfg.seed).sample(rows, cfg.eval_samples)
    started = time.time()
    results = []
    for name, vcfg in variants(kind, cfg, train_cfg).items():
        run_dir = out_dir / "runs" / name
        teacher = teacher_dir if (kind == "kd" and vcfg.kd_alpha > 0) else None
        train.run(vcfg, model_dir, data_dir, run_dir, teacher_dir=teacher)
        tmeta = artifacts.read_meta(run_dir)
        eval_path = run_dir / "eval.json"
        key = {"adapter": artifacts.hash_path(run_dir / "adapter"), "val": [r.get("id") for r in rows],
               "cfg": artifacts.hash_config(cfg)}
        cached = artifacts.read_json(eval_path) if eval_path.exists() else None
        if cached and cached.get("key") == key:
            scores = cached["scores"]
        else:
            model, tok_path, _ = load_trainable(model_dir, "cpu")
            model = merge.merge_adapter(model, run_dir / "adapter")
            scores = score(model, Tokenizer(tok_path), rows, cfg, vcfg.max_seq_len)
            artifacts.write_json(eval_path, {"key": key, "scores": scores})
            del model
        m = tmeta["metrics"]
        last = artifacts.read_jsonl(run_dir / "train_log.jsonl")[-1]
        results.append({"variant": name, "method": vcfg.method, "lora_r": vcfg.lora_r if vcfg.method != "ln_tuning" else None,
                        "kd": teacher is not None, "trainable_params": m["trainable_params"], "steps": m["steps"],
                        "train_s": m["train_s"], "tok_s": m["tok_s"], "final_loss": m["final_loss"], "final_ce": last.get("ce_plain", last["ce"]),
                        **{k: v for k, v in scores.items() if k != "samples"}})
        log.info("%s: %s", name, {k: results[-1][k] for k in ("answer_ppl", "rouge_l", "tag_acc", "train_s")})
    artifacts.write_json(out_dir / "results.json", {"kind": kind, "rows": results, "val_rows": len(rows),
                                                    "train_config": train_cfg, "config": cfg})
    artifacts.write_text(out_dir / "results.md", table(kind, results, train_cfg, len(rows)))
    plot(kind, results, out_dir / "results.png")
    artifacts.write_meta(out_dir, f"experiment-{kind}", {"experiment": cfg, "train": train_cfg},
                         {"model": str(model_dir), "data": artifacts.hash_path(data_dir / "train.jsonl")},
                         {"rows": results}, started)
    return out_dir


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def table(kind: str, rows: list[dict], train_cfg: TrainConfig, n_test: int) -> str:
    head = ("| variant | trainable params | steps | train s | tok/s | final train CE | val ppl | BLEU | ROUGE-L "
            "| tag acc | tag acc ko | tag acc en |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['variant']} | {r['trainable_params']:,} | {r['steps']} | {r['train_s']:.0f} | {r['tok_s']:.0f} "
        f"| {_f(r['final_ce'])} | {_f(r['answer_ppl'], 2)} | {_f(r['bleu'])} | {_f(r['rouge_l'])} "
        f"| {_f(r['tag_acc'])} | {_f(r['tag_acc_ko'])} | {_f(r['tag_acc_en'])} |\n" for r in rows)
    length = f"{train_cfg.max_steps} steps" if train_cfg.max_steps else f"{train_cfg.epochs:g} epoch(s)"
    setup = (f"\n{n_test} validation rows; each run: {train_cfg.max_samples or 'all'} train samples, {length} at batch "
             f"{train_cfg.batch_size}x{train_cfg.grad_accum}, lr {train_cfg.lr}, seq {train_cfg.max_seq_len}, "
             f"tag_weight {train_cfg.tag_weight}, seed {train_cfg.seed}.\n")
    if kind == "kd":
        setup += (f"KD: alpha {train_cfg.kd_alpha}, T {train_cfg.kd_temperature}, tag tokens "
                  f"{'excluded from' if train_cfg.kd_skip_tag else 'included in'} the KD term.\n")
    return f"# {kind} experiment\n\n" + head + body + setup


def plot(kind: str, rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = [r["lora_r"] for r in rows] if kind == "rank" else list(range(len(rows)))
    for key in ("rouge_l", "bleu", "tag_acc"):
        ax1.plot(x, [r[key] or 0 for r in rows], marker="o", label=key)
    ax2.bar([str(v) for v in (x if kind == "rank" else [r["variant"] for r in rows])], [r["train_s"] for r in rows])
    if kind == "rank":
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("LoRA rank")
        ax2.set_xlabel("LoRA rank")
    else:
        ax1.set_xticks(x, [r["variant"] for r in rows])
    ax1.set_ylabel("score (validation split)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("training time (s)")
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
