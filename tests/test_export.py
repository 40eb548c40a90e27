"""GGUF export and quantization: llama.cpp must say what torch says.

Tiny models (Gemma vocabulary, so llama.cpp loads them) go through our model dir → GGUF → llama.cpp
logits; a `slow` test does the same for the real 270M and checks Q4_K_M against the stock file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import GEMMA_VOCAB, make_tiny_model
from test_tokenizer import domain_texts

from farmslm.model.export import ExportConfig, ExportError, check_exportable, export_gguf, run
from farmslm.model.io import save_model_dir
from farmslm.model.tokenizer import get_tokenizer, read_kvs, write_tokenizer_gguf
from farmslm.runtime.bench import llama_logits


@pytest.fixture(scope="module")
def vocab_gguf(tmp_path_factory, default_gguf):
    return write_tokenizer_gguf(default_gguf, tmp_path_factory.mktemp("vocab") / "tokenizer.gguf")


@pytest.fixture(scope="module")
def token_lists(vocab_gguf):
    tok = get_tokenizer(vocab_gguf)
    texts = domain_texts(24, seed=3)  # 12 Korean, 12 English, with STATUS tags
    return [tok.encode(t)[:48] for t in texts]


def torch_logits(model, token_lists):
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in token_lists]


def compare(model, gguf_path, token_lists):
    """(fraction of positions with the same argmax, max |logit diff|) of llama.cpp vs torch."""
    ref, got = torch_logits(model, token_lists), llama_logits(gguf_path, token_lists)
    same = np.concatenate([r.argmax(-1) == g.argmax(-1) for r, g in zip(ref, got)])
    return float(same.mean()), float(max(np.abs(r - g).max() for r, g in zip(ref, got)))


def sharpen(model):
    """Scale the (tied) embedding so random logits have clear winners (argmax ties are meaningless)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)  # tied models: the same tensor as the embedding
    return model


@pytest.mark.parametrize("arch", ["gemma3", "llama", "qwen2", "qwen3"])
def test_f32_export_matches_torch(arch, vocab_gguf, token_lists, tmp_path):
    model = sharpen(make_tiny_model(arch, vocab_size=GEMMA_VOCAB))
    model_dir = save_model_dir(model, tmp_path / "model", vocab_gguf, arch, stage="test")
    out = run(ExportConfig(model_dir=str(model_dir), out=str(tmp_path / "m.gguf"), dtype="f32", profile="quick",
                           dataset_hash="abc123"))
    agree, max_diff = compare(model, out, token_lists)
    print(f"{arch}: argmax agreement {agree:.4f}, max logit diff {max_diff:.2e} on {len(token_lists)} texts")
    assert agree >= 0.99
    assert max_diff < 1e-2
    kvs = read_kvs(out, prefix="farmslm.")
    assert kvs["farmslm.profile"].value == b"quick" and kvs["farmslm.dataset_hash"].value == b"abc123"


def test_gemma_norms_stored_as_one_plus_w(vocab_gguf, tmp_path):
    from gguf import GGUFReader

    model = make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB)
    out = export_gguf(model, vocab_gguf, tmp_path / "m.gguf", "gemma3", "f32")
    tensors = {t.name: np.asarray(t.data) for t in GGUFReader(str(out)).tensors}
    layer = model.model.layers[0]
    for gguf_name, p in [("blk.0.attn_q_norm.weight", layer.self_attn.q_norm.weight),
                         ("blk.0.attn_k_norm.weight", layer.self_attn.k_norm.weight),
                         ("blk.0.ffn_norm.weight", layer.pre_feedforward_layernorm.weight),
                         ("blk.0.post_ffw_norm.weight", layer.post_feedforward_layernorm.weight),
                         ("blk.0.post_attention_norm.weight", layer.post_attention_layernorm.weight),
                         ("output_norm.weight", model.model.norm.weight)]:
        np.testing.assert_allclose(tensors[gguf_name], p.detach().numpy() + 1.0, rtol=0, atol=1e-6)
    assert "output.weight" not in tensors  # tied head written once


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_exports_load_and_agree(dtype, vocab_gguf, token_lists, tmp_path):
    from gguf import GGUFReader

    model = sharpen(make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB))
    out = export_gguf(model, vocab_gguf, tmp_path / "m.gguf", "gemma3", dtype)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_up.weight"] == dtype.upper() and types["blk.0.attn_norm.weight"] == "F32"
    agree, max_diff = compare(model, out, token_lists[:8])
    print(f"{dtype}: argmax agreement {agree:.4f}, max logit diff {max_diff:.2e}")
    assert agree >= 0.95


def drop_ffn_neurons(model, keep: int, seed: int = 0):
    """Uniform pruning: keep the same `keep` random neurons' rows/columns in every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            mlp = layer.mlp
            idx = torch.randperm(mlp.gate_proj.out_features, generator=g)[:keep].sort().values
            for name in ("gate_proj", "up_proj"):
                old = getattr(mlp, name)
                new = torch.nn.Linear(old.in_features, keep, bias=False)
                new.weight.copy_(old.weight[idx])
                setattr(mlp, name, new)
            old = mlp.down_proj
            new = torch.nn.Linear(keep, old.out_features, bias=False)
            new.weight.copy_(old.weight[:, idx])
            mlp.down_proj = new
    return model


def test_uniform_pruned_ffn_exports_and_matches(vocab_gguf, token_lists, tmp_path):
    model = sharpen(make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB))
    drop_ffn_neurons(model, keep=96)
    model_dir = save_model_dir(model, tmp_path / "pruned", vocab_gguf, "gemma3", stage="test")
    out = run(ExportConfig(model_dir=str(model_dir), out=str(tmp_path / "pruned.gguf"), dtype="f32"))
    from farmslm.model.tokenizer import read_kvs as kvs

    assert kvs(out, prefix="gemma3.feed_forward_length")["gemma3.feed_forward_length"].value == 96
    agree, max_diff = compare(model, out, token_lists)
    print(f"pruned gemma3 (ffn 128 -> 96): argmax agreement {agree:.4f}, max logit diff {max_diff:.2e}")
    assert agree >= 0.99 and max_diff < 1e-2


def test_per_layer_widths_refused_for_gemma3():
    model = make_tiny_model("gemma3", vocab_size=512)
    drop_ffn_neurons(model, keep=96)
    layer = model.model.layers[1].mlp
    for name, shape in (("gate_proj", (64, 80)), ("up_proj", (64, 80)), ("down_proj", (80, 64))):
        setattr(layer, name, torch.nn.Linear(*shape, bias=False))
    with pytest.raises(ExportError, match=r"llama\.cpp's gemma3 loader.*uniform"):
        check_exportable(model, "gemma3")


def test_unknown_arch_and_vocab_mismatch_are_clear(vocab_gguf, tmp_path):
    model = make_tiny_model("llama", vocab_size=512)
    with pytest.raises(ExportError, match="'phi3'"):
        check_exportable(model, "phi3")
    with pytest.raises(ExportError, match="512 rows"):
        export_gguf(model, vocab_gguf, tmp_path / "x.gguf", "llama")
    with pytest.raises(ExportError, match="--dtype"):
        export_gguf(model, vocab_gguf, tmp_path / "x.gguf", "llama", dtype="q4")
    assert not (tmp_path / "x.gguf").exists()


def test_imatrix_matches_definition_and_quantizes(vocab_gguf, token_lists, tmp_path):
    """imatrix = per-column sum of squared inputs (checked against a direct computation); llama.cpp
    quantizes with it and the result still tracks torch."""
    from farmslm.model.quantize import compute_imatrix, quantize_gguf, read_imatrix, write_imatrix

    model = sharpen(make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB, hidden=256, ffn=512))
    lists = token_lists[:6]
    imx = compute_imatrix(model, "gemma3", lists)
    assert len(imx.sums) == 2 * 7  # q, k, v, o, gate, up, down per layer
    captured = []
    h = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0][0]))
    torch_logits(model, lists)
    h.remove()
    x = torch.cat(captured).double()
    np.testing.assert_allclose(imx.sums["blk.1.ffn_down.weight"], (x * x).sum(0).numpy(), rtol=1e-6)
    assert imx.counts["blk.1.ffn_down.weight"] == sum(len(ids) for ids in lists)
    path = write_imatrix(imx, tmp_path / "imatrix.gguf")
    back = read_imatrix(path)
    np.testing.assert_allclose(back.sums["blk.0.attn_q.weight"], imx.sums["blk.0.attn_q.weight"], rtol=1e-6)

    f32 = export_gguf(model, vocab_gguf, tmp_path / "m.gguf", "gemma3", "f32")
    q = quantize_gguf(f32, tmp_path / "q4.gguf", "Q4_0", imatrix=back)
    agree, _ = compare(model, q, lists)
    assert q.stat().st_size < f32.stat().st_size / 4 and agree >= 0.8
    with pytest.raises(ValueError, match="--type"):
        quantize_gguf(f32, tmp_path / "bad.gguf", "Q3_X")


def _tensor(path, name: str) -> np.ndarray:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    t = next(t for t in GGUFReader(str(path)).tensors if t.name == name)
    return dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))


def test_imatrix_steers_a_type_that_uses_it(vocab_gguf, token_lists, tmp_path):
    """Q4_0 uses the importance matrix (Q8_0 ignores it, so a broken matrix would pass there): all the
    importance on one input column makes llama.cpp spend its precision there; no matrix, another result."""
    from farmslm.model.quantize import Imatrix, compute_imatrix, quantize_gguf

    model = sharpen(make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB, hidden=256, ffn=512))
    f32 = export_gguf(model, vocab_gguf, tmp_path / "m.gguf", "gemma3", "f32")
    real = compute_imatrix(model, "gemma3", token_lists[:4])
    col = 7
    focus = Imatrix({k: np.where(np.arange(len(v)) == col, 1e6, 1e-6) for k, v in real.sums.items()},
                    {k: 1 for k in real.counts})
    plain = quantize_gguf(f32, tmp_path / "plain.gguf", "Q4_0")
    steered = quantize_gguf(f32, tmp_path / "focus.gguf", "Q4_0", imatrix=focus)
    used = quantize_gguf(f32, tmp_path / "real.gguf", "Q4_0", imatrix=real)
    assert plain.read_bytes() != used.read_bytes()  # the real matrix changes the result
    name = "blk.0.ffn_down.weight"
    w = _tensor(f32, name)
    err_plain = np.abs(_tensor(plain, name) - w)
    err_focus = np.abs(_tensor(steered, name) - w)
    assert err_focus[:, col].mean() < 0.5 * err_plain[:, col].mean()  # precision went to the important column
    assert err_focus[:, col].mean() < np.delete(err_focus, col, axis=1).mean()


@pytest.fixture(scope="module")
def real_base(tmp_path_factory):
    from farmslm.model.load import load_base

    base = load_base("default")
    out = export_gguf(base.model, base.tokenizer_gguf, tmp_path_factory.mktemp("real") / "base-f32.gguf",
                      base.arch, "f32", name="gemma-3-270m")
    return base, out


@pytest.mark.slow
def test_real_270m_f32_export_matches_torch(real_base):
    base, f32 = real_base
    tok = get_tokenizer(base.tokenizer_gguf)
    lists = [tok.encode(t)[:40] for t in domain_texts(20, seed=7)]
    agree, max_diff = compare(base.model, f32, lists)
    print(f"gemma-3-270m F32: argmax agreement {agree:.4f}, max logit diff {max_diff:.3e} on {len(lists)} texts")
    assert agree >= 0.99


@pytest.mark.slow
def test_real_270m_q4_k_m_no_worse_than_stock(real_base, default_gguf, tmp_path):
    """Q4_K_M through our pipeline (imatrix from domain text) vs the packaged Q4_K_M, domain perplexity."""
    from farmslm.model.quantize import FALLBACK_TEXTS, compute_imatrix, quantize_gguf
    from farmslm.runtime.bench import perplexity

    base, f32 = real_base
    tok = get_tokenizer(base.tokenizer_gguf)
    imx = compute_imatrix(base.model, base.arch, [tok.encode(t) for t in FALLBACK_TEXTS])
    ours = quantize_gguf(f32, tmp_path / "q4_k_m.gguf", "Q4_K_M", imx)
    lists = [tok.encode(t) for t in domain_texts(16, seed=11)]
    ppl_ours, ppl_stock = perplexity(ours, lists), perplexity(default_gguf, lists)
    print(f"domain perplexity: ours Q4_K_M+imatrix {ppl_ours:.3f}, stock Q4_K_M {ppl_stock:.3f}")
    assert ppl_ours <= ppl_stock * 1.01
    assert ours.stat().st_size <= default_gguf.stat().st_size * 1.05
