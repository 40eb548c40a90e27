"""Shared fixtures: tiny models built from a config on the CPU, and the packaged base GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

GEMMA_VOCAB = 262_144  # the packaged tokenizer's size; tiny models exported to llama.cpp need it


def tiny_config(arch: str = "gemma3", vocab_size: int = 512, n_layers: int = 2, hidden: int = 64,
                ffn: int = 128, n_heads: int = 2, n_kv_heads: int = 1, head_dim: int = 32):
    """A small HF config of the given GGUF architecture (gemma3 | llama | qwen2 | qwen3)."""
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=n_layers,
                  num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, head_dim=head_dim,
                  max_position_embeddings=2048, rms_norm_eps=1e-6)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(**common, sliding_window=16, query_pre_attn_scalar=head_dim,
                                tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(**common, tie_word_embeddings=True)
    raise ValueError(arch)


def make_tiny_model(arch: str = "gemma3", seed: int = 0, **kw) -> torch.nn.Module:
    """Random tiny model, norms perturbed away from their init so norm storage bugs show."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **kw), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def tiny_model_factory():
    return make_tiny_model


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from farmslm.model.load import default_gguf as packaged

    return packaged()


# `python -m llama_cpp.server`, with llama.cpp's extra (repacked/AMX) weight buffers off: llama-cpp-python
# 0.3.36 segfaults in decode with them on AMX CPUs (see runtime/engine.py); the server has no flag for it.
_LLAMA_SERVER = """
import runpy, sys
import llama_cpp.llama_cpp as lib
default_params = lib.llama_model_default_params
def params():
    p = default_params()
    p.use_extra_bufts = False
    return p
lib.llama_model_default_params = params
sys.argv = ["llama_cpp.server", *{args!r}]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(model: Path, log_path: Path, *extra: str):
    """A real llama.cpp server process on a free port -> (process, base url); waits until it answers."""
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    log = open(log_path, "w")
    args = ["--model", str(model), "--port", str(port), "--n_ctx", "2048", *extra]
    proc = subprocess.Popen([sys.executable, "-c", _LLAMA_SERVER.format(args=args)], stdout=log, stderr=log)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError("llama.cpp server did not start: " + log_path.read_text()[-2000:])
