"""Our model format: a directory that reloads exactly, FFN widths per layer included.

    model.safetensors   weights (HF names; tied embedding stored once)
    config.json         HF config (intermediate_size = the widest layer)
    tokenizer.gguf      the vocabulary, source of truth for training and llama.cpp
    meta.json           stage metadata, `arch`, `ffn_widths` (one per layer), `vocab_size`

transformers' configs hold one FFN width, so per-layer widths (layerwise pruning) are rebuilt on
load by resizing each layer's gate/up/down projections before the weights are read.
Example: model, meta = load_model_dir("runs/quick/prune")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farmslm import artifacts

TOKENIZER = "tokenizer.gguf"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a *ForCausalLM (gemma3 / llama / qwen2 / qwen3)."""
    return model.model.layers


def ffn_widths(model: nn.Module) -> list[int]:
    return [layer.mlp.gate_proj.out_features for layer in decoder_layers(model)]


def param_count(model: nn.Module) -> int:
    """Parameters, tied embedding counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def set_ffn_width(mlp: nn.Module, width: int) -> None:
    """Replace gate/up/down of one gated MLP with empty ones of the given intermediate width."""
    hidden = mlp.gate_proj.in_features
    dtype = mlp.gate_proj.weight.dtype
    mlp.gate_proj = nn.Linear(hidden, width, bias=False, dtype=dtype)
    mlp.up_proj = nn.Linear(hidden, width, bias=False, dtype=dtype)
    mlp.down_proj = nn.Linear(width, hidden, bias=False, dtype=dtype)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = width


def save_model_dir(model: nn.Module, out_dir: str | Path, tokenizer_gguf: str | Path, arch: str,
                   stage: str, config: Any = None, inputs: dict | None = None,
                   metrics: dict | None = None, started: float | None = None, **extra: Any) -> Path:
    """Write the model directory atomically (built in a temp dir, then renamed into place)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        widths = ffn_widths(model)
        model.config.intermediate_size = max(widths)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "generation_config.json").unlink(missing_ok=True)
        _write_tokenizer(Path(tokenizer_gguf), tmp / TOKENIZER)
        artifacts.write_meta(tmp, stage, config, inputs, metrics, started, arch=arch, ffn_widths=widths,
                             vocab_size=model.config.vocab_size, n_params=param_count(model), **extra)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _write_tokenizer(src: Path, dst: Path) -> None:
    """Keep only the vocabulary (all metadata, no tensors) when the source GGUF also holds weights."""
    from farmslm.model.tokenizer import gguf_reader

    if len(gguf_reader(src).tensors) == 0:
        shutil.copyfile(src, dst)
        return
    from farmslm.model.tokenizer import write_tokenizer_gguf

    write_tokenizer_gguf(src, dst)


def load_model_dir(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """Reload a model directory exactly (fp32, eval mode) and return it with its meta."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    meta = artifacts.read_meta(model_dir)
    if meta is None or not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{model_dir} is not a farmslm model directory (model.safetensors + meta.json)")
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for layer, width in zip(decoder_layers(model), meta["ffn_widths"]):
        if layer.mlp.gate_proj.out_features != width:
            set_ffn_width(layer.mlp, width)
    state = load_file(model_dir / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir}: weights do not fit the config (missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    model.eval()
    return model, meta
