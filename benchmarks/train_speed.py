"""Training precision study: LoRA step speed and loss of fp32 vs bf16 (and LoRA dropout on/off) on a CPU.

a build's pruned model dir + its data dir -> the same quick-profile LoRA run (same samples, same
order, same seed) in each setting, one after the other in one process -> tokens/s as a ratio against
the fp32 baseline, the training loss of the last steps and the validation answer perplexity ->
benchmarks/results/train_speed.{json,md}. bf16 needs a CPU with native bf16 (AMX / AVX512-BF16).
Example: .venv/bin/python benchmarks/train_speed.py --model runs/quick/prune --data runs/quick/data --steps 12
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETTINGS = {  # name -> train config overrides
    "fp32, dropout 0.05 (baseline)": {"cpu_bf16": False, "lora_dropout": 0.05},
    "fp32, dropout 0": {"cpu_bf16": False, "lora_dropout": 0.0},
    "bf16, dropout 0.05": {"cpu_bf16": True, "lora_dropout": 0.05},
    "bf16, dropout 0": {"cpu_bf16": True, "lora_dropout": 0.0},
}


def main() -> None:
    import torch

    from farmslm.config import load_profile
    from farmslm.model import train as T
    from farmslm.model.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model dir (e.g. a build's prune/)")
    ap.add_argument("--data", required=True, help="dataset dir (train.jsonl, val.jsonl)")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per setting")
    args = ap.parse_args()

    base = replace(T.TrainConfig(), **{**load_profile("quick").get("train", {}), "save_steps": 10 ** 6,
                                      "max_steps": args.steps})
    if not T.native_cpu_bf16():
        raise SystemExit("this CPU has no native bf16 (AMX / AVX512-BF16): nothing to compare")
    out = {"steps": args.steps, "model": args.model, "threads": torch.get_num_threads(), "settings": {}}
    examples = val = pad = None  # the settings change neither samples nor tokenizer: encode once
    for name, over in SETTINGS.items():
        cfg = replace(base, **over)
        model, tok_path, _ = T.load_model(args.model, "cpu")  # fresh weights per setting (bf16 casts in place)
        if examples is None:
            tok = Tokenizer(tok_path)
            pad = tok.pad_id if tok.pad_id >= 0 else tok.eos_id
            examples = T.load_examples(Path(args.data) / "train.jsonl", tok, cfg, cfg.max_samples)
            val = T.load_examples(Path(args.data) / "val.jsonl", tok, cfg, cfg.val_samples)
        model = T.add_adapter(model, cfg)
        started = time.time()
        rows = T.train_loop(model, examples, cfg, Path("/tmp") / "train_speed", pad_id=pad)
        wall = time.time() - started
        tail = rows[-4:]
        out["settings"][name] = {
            "tok_s": round(sum(r["tokens"] for r in rows[1:]) / sum(r["step_s"] for r in rows[1:]), 1),
            "train_s": round(wall, 1), "loss_last4": round(sum(r["loss"] for r in tail) / len(tail), 4),
            "val_answer_ppl": round(math.exp(T.eval_loss(model, val, pad_id=pad)), 3)}
        print(name, json.dumps(out["settings"][name]), flush=True)
    save(out)


def save(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(out, indent=2))
    settings = out["settings"]
    ref = next(iter(settings.values()))["tok_s"]
    lines = [f"LoRA training speed by precision on this CPU ({out['threads']} threads; benchmarks/train_speed.py):",
             f"{out['steps']} quick-profile steps per setting on `{out['model']}`, same samples, order and seed; "
             "tokens/s over steps 2..N (the first warms up).", "",
             "| setting | tok/s | ratio | loss (last 4 steps) | val answer ppl |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {s['tok_s']} | {s['tok_s'] / ref:.2f} | {s['loss_last4']:.3f} | {s['val_answer_ppl']:.2f} |"
              for n, s in settings.items()]
    (RESULTS / "train_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
