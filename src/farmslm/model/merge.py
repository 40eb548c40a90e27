"""Merge a trained adapter into its base in full precision and save our model dir (ready for export).

train dir (adapter/ + meta.json naming the base) [+ base model dir] -> model dir with
W' = W + (alpha / r)·B·A on every adapted projection (DoRA and LayerNorm-tuning merged alike).
The base is always reloaded in fp32, never the 4-bit weights a QLoRA run trained against.
Example: farmslm merge --adapter runs/quick/train --out runs/quick/merged
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from farmslm import artifacts
from farmslm.config import ConfigError

log = logging.getLogger(__name__)


def merge_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> torch.nn.Module:
    """fp32 base + peft adapter dir -> plain model with the adapter folded into its weights."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model.float(), str(adapter_dir))
    return peft_model.merge_and_unload()


def run(train_dir: str | Path, out_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """Fold train_dir/adapter into the base it was trained on (or `base_dir`); write out_dir."""
    from farmslm.model.io import save_model_dir
    from farmslm.model.load import load_trainable

    train_dir, out_dir = Path(train_dir), Path(out_dir)
    train_meta = artifacts.read_meta(train_dir)
    if train_meta is None or not (train_dir / "adapter" / "adapter_config.json").exists():
        raise ConfigError(f"--adapter: {train_dir} holds no finished training run (adapter/ + meta.json); "
                          "run `farmslm train` first")
    base_dir = Path(base_dir or train_meta["base_model"])
    if not base_dir.exists():
        raise ConfigError(f"--model: base {base_dir} does not exist; give the model dir the adapter was trained on")
    inputs = {"adapter": artifacts.hash_path(train_dir / "adapter"), "base": artifacts.hash_path(base_dir)}
    config = {"train_config_hash": train_meta.get("config_hash")}
    if artifacts.is_done(out_dir, config, inputs):
        log.info("%s: already merged; skipping", out_dir)
        return out_dir
    started = time.time()
    model, tok, meta = load_trainable(base_dir, "cpu")
    merged = merge_adapter(model, train_dir / "adapter")
    arch = meta.get("arch") or train_meta.get("arch")
    return save_model_dir(merged, out_dir, tok, arch, "merge", config, inputs,
                          metrics={"train": train_meta.get("metrics", {})}, started=started,
                          method=train_meta.get("config", {}).get("method"))
