"""Export a torch model (our model dir) to a GGUF file that llama.cpp loads: F32, F16 or BF16.

model dir (model.safetensors, config.json, tokenizer.gguf, meta.json) -> X.gguf with
tensor names from gguf-py's name maps, Gemma's (1 + w) norm storage, llama.cpp's hyper-parameter
keys, the vocabulary KVs copied verbatim from tokenizer.gguf, and farmslm.* provenance keys.
Example: farmslm export runs/quick/merged --out model-f16.gguf --dtype f16
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from farmslm import artifacts

log = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "bf16")
EXPORT_ARCHS = ("gemma3", "llama", "qwen2", "qwen3")
# llama.cpp hard-codes Gemma 3's local/global attention layout: every 6th layer is global.
GEMMA3_SWA_PERIOD = 6


class ExportError(ValueError):
    """A model llama.cpp could not load as exported; the message says why and what to do."""


@dataclass
class ExportConfig:
    model_dir: str = ""  # our model directory (model.safetensors + config.json + tokenizer.gguf + meta.json)
    out: str = ""  # output .gguf path
    dtype: str = "f16"  # tensor type of 2-D weights: f32 | f16 | bf16 (norms stay f32)
    name: str = "farmslm"  # general.name written into the file
    profile: str = ""  # build profile, recorded as farmslm.profile
    dataset_hash: str = ""  # hash of the training data, recorded as farmslm.dataset_hash
    extra: dict = field(default_factory=dict)  # further farmslm.* string keys


def rope_thetas(config) -> tuple[float, float | None]:
    """(global rope base, sliding-window rope base or None) from a transformers 4 or 5 config."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        local = params.get("sliding_attention", {}).get("rope_theta")
        return float(params["full_attention"]["rope_theta"]), (float(local) if local else None)
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    local = getattr(config, "rope_local_base_freq", None)
    return float(theta), (float(local) if local else None)


def _rope_scaling(config) -> dict | None:
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)
    if params.get("rope_type", "default") in ("default", None):
        return None
    return params


def _permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved rope order (as convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_exportable(model: torch.nn.Module, arch: str) -> None:
    """Raise ExportError for models llama.cpp's loader for `arch` cannot represent."""
    from farmslm.model.io import ffn_widths

    if arch not in EXPORT_ARCHS:
        raise ExportError(f"architecture {arch!r} cannot be exported to GGUF by farmslm; "
                          f"supported: {', '.join(EXPORT_ARCHS)}")
    widths = ffn_widths(model)
    if len(set(widths)) > 1:
        raise ExportError(
            f"FFN widths differ per layer ({min(widths)}..{max(widths)}): llama.cpp's {arch} loader reads one "
            "feed_forward_length for all layers, so this model cannot be loaded there. "
            "Prune with a uniform allocation (prune: allocation=uniform) to get one width.")
    c = model.config
    if arch == "gemma3":
        head_dim = c.head_dim
        if getattr(c, "query_pre_attn_scalar", head_dim) != head_dim:
            raise ExportError(f"gemma3: query_pre_attn_scalar={c.query_pre_attn_scalar} != head_dim={head_dim}; "
                              "llama.cpp scales attention by 1/sqrt(head_dim) for this size")
        expected = ["full_attention" if (i + 1) % GEMMA3_SWA_PERIOD == 0 else "sliding_attention"
                    for i in range(c.num_hidden_layers)]
        if getattr(c, "layer_types", None) and list(c.layer_types) != expected:
            raise ExportError("gemma3: layer_types differ from llama.cpp's fixed 5 local : 1 global pattern")
        if getattr(c, "final_logit_softcapping", None) or getattr(c, "attn_logit_softcapping", None):
            raise ExportError("gemma3: logit soft-capping is not supported by llama.cpp's gemma3 graph")


def _add_hparams(w, model: torch.nn.Module, arch: str, n_vocab: int) -> None:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_context_length(int(c.max_position_embeddings))
    w.add_embedding_length(int(c.hidden_size))
    w.add_block_count(int(c.num_hidden_layers))
    w.add_feed_forward_length(int(model.model.layers[0].mlp.gate_proj.out_features))
    w.add_head_count(int(c.num_attention_heads))
    w.add_head_count_kv(int(c.num_key_value_heads))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    theta, theta_local = rope_thetas(c)
    w.add_rope_freq_base(theta)
    if arch != "gemma3":
        w.add_rope_dimension_count(int(head_dim))
        w.add_vocab_size(n_vocab)
    else:
        w.add_sliding_window(int(c.sliding_window))
        if theta_local:
            w.add_rope_freq_base_swa(theta_local)
    scaling = _rope_scaling(c)
    if scaling:
        import gguf

        if scaling.get("rope_type") != "linear":
            raise ExportError(f"{arch}: rope scaling {scaling.get('rope_type')!r} is not supported by the exporter")
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))


def gguf_tensors(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """GGUF name -> fp32 tensor in llama.cpp's storage convention (tied head written once)."""
    import gguf

    c = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    tied = getattr(c, "tie_word_embeddings", False)
    out = {}
    for hf_name, p in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"{arch}: no GGUF name for tensor {hf_name!r}")
        t = p.detach().to(torch.float32).cpu()
        if arch == "gemma3" and hf_name.endswith("norm.weight"):
            t = t + 1.0  # Gemma RMSNorm computes x * (1 + w); llama.cpp multiplies by the stored weight
        if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            t = _permute_qk(t, c.num_attention_heads)
        if arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            t = _permute_qk(t, c.num_key_value_heads)
        out[name] = t
    return out


def export_gguf(model: torch.nn.Module, tokenizer_gguf: str | Path, out: str | Path, arch: str,
                dtype: str = "f32", name: str = "farmslm", provenance: dict[str, str] | None = None) -> Path:
    """Write `model` as a GGUF llama.cpp loads; the vocabulary KVs come verbatim from tokenizer_gguf."""
    import gguf

    from farmslm.model.tokenizer import read_kvs

    if dtype not in DTYPES:
        raise ExportError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    check_exportable(model, arch)
    tok_kvs = read_kvs(tokenizer_gguf, prefix="tokenizer.")
    n_vocab = len(tok_kvs["tokenizer.ggml.tokens"].value)
    emb_rows = model.get_input_embeddings().weight.shape[0]
    if emb_rows != n_vocab:
        raise ExportError(f"the embedding has {emb_rows} rows but {tokenizer_gguf} has {n_vocab} tokens; "
                          "the vocabulary and the model must come from the same stage")
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    out = Path(out)
    with artifacts.atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        _add_hparams(w, model, arch, n_vocab)
        w.add_file_type(int(ftype))
        for key, kv in tok_kvs.items():
            w.add_key_value(key, kv.value, kv.vtype, kv.sub_type)
        for key, value in (provenance or {}).items():
            if value not in (None, ""):
                w.add_string(f"farmslm.{key}", str(value))
        for tname, t in gguf_tensors(model, arch).items():
            data = t.numpy()
            if t.ndim < 2 or dtype == "f32":  # norms and biases stay F32, as llama.cpp's converter does
                w.add_tensor(tname, np.ascontiguousarray(data, dtype=np.float32))
            elif dtype == "f16":
                w.add_tensor(tname, data.astype(np.float16))
            else:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
                w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    log.info("wrote %s (%s, %.1f MB)", out, dtype, out.stat().st_size / 1e6)
    return out


def run(cfg: ExportConfig) -> Path:
    """Export our model directory `cfg.model_dir` to `cfg.out`."""
    from farmslm.model.io import TOKENIZER, load_model_dir

    model_dir = Path(cfg.model_dir)
    if not cfg.out:
        raise ExportError("--out: give the output .gguf path")
    model, meta = load_model_dir(model_dir)
    arch = meta.get("arch")
    if not arch:
        raise ExportError(f"{model_dir}/meta.json has no 'arch'")
    provenance = {"base": meta.get("base") or meta.get("source", ""), "stage": meta.get("stage", ""),
                  "profile": cfg.profile, "dataset_hash": cfg.dataset_hash, **cfg.extra}
    from farmslm import __version__ as version

    provenance["version"] = version
    return export_gguf(model, model_dir / TOKENIZER, cfg.out, arch, cfg.dtype, cfg.name, provenance)
