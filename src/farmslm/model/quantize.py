"""Quantize a GGUF with llama.cpp itself, guided by an importance matrix computed in torch.

F32/F16 GGUF (+ torch model + calibration texts) -> Q8_0 | Q6_K | Q5_K_M | Q4_K_M | Q4_0 | IQ4_XS GGUF.
The imatrix is llama.cpp's: per linear layer, per input column, the sum of squared activations
over calibration tokens and the token count (quantize uses their ratio, the mean square). It is
saved in llama.cpp's GGUF imatrix format (`<tensor>.in_sum2`, `<tensor>.counts`), so
`llama-quantize --imatrix` can read it too.
Example: farmslm quantize model-f16.gguf --out model-q4_k_m.gguf --type Q4_K_M --imatrix-data runs/quick/data
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from farmslm import artifacts

log = logging.getLogger(__name__)

QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS")
# IQ4_XS needs an imatrix in llama.cpp only below 4 bits; all types here work without one.
TENSOR_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0")  # per-tensor types a mix may set (ggml names)
# Mixed files: a llama.cpp file type for the body plus per-tensor types (llama_model_quantize_params'
# token_embedding_type and tensor-type overrides, regexes on GGUF tensor names). The tied embedding is both the
# input table and the output head: 18 % of the vocab-trimmed, pruned model's weights and every logit.
# Gemma 3 270M's rows of 640 are not a multiple of K-quants' 256-blocks, so llama.cpp falls back: Q4_K_M stores
# ffn_gate/up and attn_q/k as Q5_0 and the embedding as Q8_0 (26 % of the file); the mixes set those instead.
MIXES = {
    "q4k_e5": {"qtype": "Q4_K_M", "token_embedding_type": "Q5_0"},
    "q4k_e4": {"qtype": "Q4_K_M", "token_embedding_type": "Q4_0"},
    "q4k_e5_b4": {"qtype": "Q4_K_M", "token_embedding_type": "Q5_0",
                  "tensor_types": {r"(ffn_gate|ffn_up|attn_q|attn_k)\.weight": "Q4_0"}},
    "q4k_e5_a8": {"qtype": "Q4_K_M", "token_embedding_type": "Q5_0",
                  "tensor_types": {r"attn_(q|k|v|output)\.weight": "Q8_0"}},
    "q4k_e5_b4_o6": {"qtype": "Q4_K_M", "token_embedding_type": "Q5_0",
                     "tensor_types": {r"(ffn_gate|ffn_up|attn_q|attn_k)\.weight": "Q4_0",
                                      r"(ffn_down|attn_output)\.weight": "Q6_K"}},
    "q4k_e5_b4_o5": {"qtype": "Q4_K_M", "token_embedding_type": "Q5_0",
                     "tensor_types": {r"(ffn_gate|ffn_up|attn_q|attn_k)\.weight": "Q4_0",
                                      r"(ffn_down|attn_output)\.weight": "Q5_K"}},
}

# A few domain sentences for calibration when no dataset is given (Korean and English).
FALLBACK_TEXTS = (
    "Q: [STATUS: temp_c=31.5 humidity_pct=88 period=day] 토마토 잎 끝이 갈색으로 말라요. 왜 그런가요?\nA: 고온과 "
    "높은 습도가 겹치면 증산이 막혀 칼슘이 잎끝까지 가지 못합니다. 환기창을 열고 습도를 80 % 아래로 낮추세요.",
    "Q: [STATUS: temp_c=12 humidity_pct=70 period=night] Is this night temperature too low for tomatoes?\nA: Yes. "
    "Below about 13 °C at night fruit set suffers; keep nights at 15-18 °C with the heater or thermal screen.",
    "토마토 배꼽썩음병은 칼슘 부족과 불규칙한 관수 때문에 생깁니다. 배지 수분을 일정하게 유지하세요.",
    "Tomato plants need EC 2.0-3.5 dS/m in the substrate; high EC improves flavour but reduces fruit size.",
    "Q: [STATUS: co2_ppm=1200 light_umol=900 period=day] CO2 농도가 적당한가요?\nA: 광량이 충분할 때 800-1000 ppm이면 충분합니다.",
    "Whitefly and tomato yellow leaf curl virus spread fast in warm greenhouses; use yellow sticky traps and screens.",
    "pH 5.5에서 6.5 사이의 양액이 토마토 뿌리의 양분 흡수에 가장 좋습니다.",
    "Q: [STATUS: root_temp_c=14 substrate_moisture_pct=45] Why are the leaves purple?\nA: Cold roots take up "
    "little phosphorus; warm the root zone above 18 °C.",
)


@dataclass
class QuantizeConfig:
    in_gguf: str = ""  # F32/F16/BF16 GGUF exported by farmslm export
    out: str = ""  # output GGUF path
    qtype: str = "Q4_K_M"  # llama.cpp quantization type: Q8_0 | Q6_K | Q5_K_M | Q4_K_M | Q4_0 | IQ4_XS
    imatrix: bool = True  # compute and use an importance matrix from calibration texts
    imatrix_data: str = ""  # dataset dir for calibration texts ('' = built-in sample texts)
    model_dir: str = ""  # torch model for the imatrix ('' = load in_gguf with transformers)
    max_texts: int = 256  # calibration texts used at most
    max_tokens: int = 512  # tokens per calibration text at most
    n_threads: int = 0  # quantization threads (0 = all cores)
    token_embedding_type: str = ""  # per-tensor type of token_embd (the tied output head too); "" = the file type's
    tensor_types: dict = field(default_factory=dict)  # regex on GGUF tensor names -> ggml type, e.g. {"attn_q": "Q8_0"}


# ---- importance matrix ---------------------------------------------------------------------------

@dataclass
class Imatrix:
    sums: dict[str, np.ndarray]  # GGUF tensor name -> per-input-column sum of squared activations
    counts: dict[str, int]  # GGUF tensor name -> tokens seen
    n_texts: int = 0
    dataset: str = ""

    def mean_squares(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer is given: sum / count per column (as llama-quantize computes)."""
        return {k: (v / max(self.counts[k], 1)).astype(np.float32) for k, v in self.sums.items()}


def compute_imatrix(model: torch.nn.Module, arch: str, token_lists: list[list[int]], dataset: str = "") -> Imatrix:
    """Collect per-column squared activations at the input of every linear layer in the blocks.

    Like llama-imatrix without --process-output: the output head / tied embedding is left out.
    """
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], model.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].detach().to(torch.float64).reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    for mod_name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, torch.nn.Linear):
            gguf_name = name_map.get_name(f"{mod_name}.weight", try_suffixes=(".weight",))
            if gguf_name is None:
                raise ValueError(f"{arch}: no GGUF name for {mod_name}")
            hooks.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    try:
        with torch.no_grad():
            for ids in token_lists:
                model.model(torch.tensor([ids]))  # the decoder only: the 262k-row head would dominate
    finally:
        for h in hooks:
            h.remove()
    return Imatrix({k: v.numpy() for k, v in sums.items()}, counts, len(token_lists), dataset)


def write_imatrix(imx: Imatrix, path: str | Path) -> Path:
    """llama.cpp's GGUF imatrix format: `<name>.in_sum2` [1 x n_cols] and `<name>.counts` [1 x 1] F32."""
    import gguf

    path = Path(path)
    with artifacts.atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "imatrix")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", [imx.dataset or "farmslm"])
        w.add_uint32("imatrix.chunk_count", imx.n_texts)
        w.add_uint32("imatrix.chunk_size", 0)  # variable: one chunk per calibration text
        for name in sorted(imx.sums):
            w.add_tensor(f"{name}.in_sum2", imx.sums[name].astype(np.float32).reshape(1, -1))
            w.add_tensor(f"{name}.counts", np.array([[imx.counts[name]]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def read_imatrix(path: str | Path) -> Imatrix:
    from farmslm.model.tokenizer import gguf_reader

    r = gguf_reader(path)
    sums, counts = {}, {}
    for t in r.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float64).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = int(np.asarray(t.data).reshape(-1)[0])
    field = r.fields.get("imatrix.chunk_count")
    return Imatrix(sums, counts, int(field.parts[field.data[0]][0]) if field else 0)


# ---- llama.cpp quantization ----------------------------------------------------------------------

def _ggml_type(name: str, field_name: str) -> int:
    import llama_cpp

    if name.upper() not in TENSOR_TYPES:
        raise ValueError(f"{field_name}: {name!r} is not one of {', '.join(TENSOR_TYPES)}")
    return getattr(llama_cpp, f"GGML_TYPE_{name.upper()}")


def quantize_gguf(in_gguf: str | Path, out: str | Path, qtype: str = "Q4_K_M", imatrix: Imatrix | None = None,
                  n_threads: int = 0, token_embedding_type: str = "", tensor_types: dict | None = None) -> Path:
    """Run llama.cpp's llama_model_quantize (the same code as `llama-quantize`), optionally with per-tensor types."""
    import llama_cpp

    from farmslm.runtime.engine import route_llama_logs

    route_llama_logs()
    if qtype not in QUANT_TYPES:
        raise ValueError(f"--type: {qtype!r} is not one of {', '.join(QUANT_TYPES)}")
    out = Path(out)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = n_threads
    keep = []  # ctypes buffers must outlive the call
    if token_embedding_type:
        params.token_embedding_type = _ggml_type(token_embedding_type, "token_embedding_type")
    if tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, ttype) in enumerate(sorted(tensor_types.items())):
            cpat = pattern.encode()
            keep.append(cpat)
            overrides[i].pattern = cpat
            overrides[i].type = _ggml_type(ttype, "tensor_types")
        overrides[len(tensor_types)].pattern = None  # array terminator
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(overrides)
    if imatrix is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix.sums) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.mean_squares().items())):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            cname = name.encode()
            keep += [arr, cname]
            entries[i].name = cname
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix.sums)].name = None  # array terminator
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_path(out) as tmp:
        rc = llama_cpp.llama_model_quantize(str(in_gguf).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({in_gguf} -> {qtype}) failed with code {rc}")
    del keep
    return out


def calibration_texts(data_dir: str | Path | None, max_texts: int) -> list[str]:
    """Domain texts for the imatrix: the dataset's corpus when given, else the built-in sample."""
    if not data_dir:
        return list(FALLBACK_TEXTS)[:max_texts]
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"--imatrix-data: {data_dir} is not a directory")
    try:
        from farmslm.dataset.corpus import domain_texts

        texts = domain_texts(data_dir)
    except ImportError:
        texts = [row["text"] for row in artifacts.read_jsonl(data_dir / "train.jsonl")]
    if not texts:
        raise ValueError(f"--imatrix-data: no texts found in {data_dir}")
    step = max(1, len(texts) // max_texts)  # spread over the corpus, deterministic
    return texts[::step][:max_texts]


def build_imatrix(cfg: QuantizeConfig) -> Imatrix | None:
    """The importance matrix of cfg's model on its calibration texts; None when cfg.imatrix is False."""
    if not cfg.imatrix:
        return None
    from farmslm.model.load import load_any
    from farmslm.model.tokenizer import get_tokenizer

    loaded = load_any(cfg.model_dir or cfg.in_gguf)
    tok = get_tokenizer(cfg.in_gguf)
    texts = calibration_texts(cfg.imatrix_data, cfg.max_texts)
    # the calibration data by content, not by path: the same build in another directory writes the same file
    dataset = (f"train.jsonl sha256:{artifacts.hash_path(Path(cfg.imatrix_data) / 'train.jsonl')[:16]}"
               if cfg.imatrix_data else "builtin")
    return compute_imatrix(loaded.model, loaded.arch, [tok.encode(t)[: cfg.max_tokens] for t in texts],
                           dataset=dataset)


def run(cfg: QuantizeConfig, imx: Imatrix | None = None) -> Path:
    """Quantize cfg.in_gguf to cfg.out; with an imatrix (imx, else computed) unless cfg.imatrix is False.

    Pass imx to quantize one model to several types with one imatrix computation.
    """
    if not cfg.out:
        raise ValueError("--out: give the output .gguf path")
    if not cfg.imatrix:
        imx = None
    elif imx is None:
        imx = build_imatrix(cfg)
    if imx is not None:
        write_imatrix(imx, Path(cfg.out).with_suffix(".imatrix.gguf"))
    return quantize_gguf(cfg.in_gguf, cfg.out, cfg.qtype, imx, cfg.n_threads, cfg.token_embedding_type,
                         cfg.tensor_types)
