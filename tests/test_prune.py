"""Pruning: removed neurons == zeroed neurons (exact), calibration sums, allocation rules, the stage."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import GEMMA_VOCAB, make_tiny_model
from farmslm.model import io
from farmslm.model import prune as P


def _ids(n=6, seq=12, vocab=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (seq - i % 4,), generator=g).tolist() for i in range(n)]


def _logits(model, ids):
    x, mask = next(P.batches(ids, len(ids)))
    with torch.no_grad():
        return model(input_ids=x, attention_mask=mask).logits


def _zeroed(model, keep):
    """Reference: the original model with every removed neuron's gate/up rows and down column zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, idx in zip(io.decoder_layers(ref), keep):
            drop = torch.ones(layer.mlp.gate_proj.out_features, dtype=torch.bool)
            drop[idx] = False
            layer.mlp.gate_proj.weight[drop] = 0
            layer.mlp.up_proj.weight[drop] = 0
            layer.mlp.down_proj.weight[:, drop] = 0
    return ref


@pytest.mark.parametrize("allocation", P.ALLOCATIONS)
@pytest.mark.parametrize("metric", P.METRICS)
def test_pruned_equals_zeroed(metric, allocation):
    model = make_tiny_model("gemma3", n_layers=6, ffn=128).double()  # fp64: zero terms cannot move a sum
    ids = _ids()
    stats = P.calibrate(model, ids, batch_size=4)
    cfg = P.PruneConfig(metric=metric, allocation=allocation, ratio=0.25, keep_multiple=1)
    pruned = copy.deepcopy(model)
    keep = P.prune(pruned, stats, cfg)
    widths = io.ffn_widths(pruned)
    assert sum(widths) == 6 * 128 - round(0.25 * 6 * 128)
    if allocation == "uniform":
        assert widths == [96] * 6
    else:
        assert len(set(widths)) > 1 and widths[0] < widths[-1]  # early layers pruned harder than late ones
    assert [len(k) for k in keep] == widths
    ref = _zeroed(model, keep)
    assert torch.equal(_logits(pruned, ids), _logits(ref, ids))
    with P.masked_ffn(model, dict(enumerate(keep))):  # the study's no-copy path agrees too
        assert torch.equal(_logits(model, ids), _logits(ref, ids))


def test_pruned_equals_zeroed_fp32_close():
    model = make_tiny_model("gemma3", n_layers=2)
    pruned = copy.deepcopy(model)
    keep = P.prune(pruned, P.calibrate(model, _ids()), P.PruneConfig(metric="wanda", keep_multiple=1))
    torch.testing.assert_close(_logits(pruned, _ids()), _logits(_zeroed(model, keep), _ids()), rtol=0, atol=1e-5)


def test_calibration_sums_match_stored_activations():
    model = make_tiny_model("gemma3", n_layers=2)
    ids = _ids(n=5)
    seen = []
    h = io.decoder_layers(model)[1].mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0][0].clone()))
    for x in ids:  # unpadded, one text at a time
        with torch.no_grad():
            model(torch.tensor([x]))
    h.remove()
    a = torch.cat(seen).double()
    stats = P.calibrate(model, ids, batch_size=3, active_eps=0.05)  # padded batches: padding must not count
    assert stats.n_tokens == a.shape[0]
    torch.testing.assert_close(stats.sum_abs[1], a.abs().sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.max_abs[1], a.abs().amax(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.sum_sq[1], (a * a).sum(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(stats.n_active[1], (a.abs() > 0.05).sum(0).double())
    assert all(-1 <= c <= 1 for c in stats.block_cos)


def test_dead_neurons_go_first_in_seed():
    model = make_tiny_model("gemma3", n_layers=2)
    with torch.no_grad():
        io.decoder_layers(model)[0].mlp.up_proj.weight[[3, 7]] = 0  # a == 0 on every token
    stats = P.calibrate(model, _ids())
    assert stats.dead(0, 0.01)[[3, 7]].all()
    keep = P.allocate(model, P.scores(model, stats, "seed"), P.PruneConfig(metric="seed", ratio=0.02, keep_multiple=1))
    assert 3 not in keep[0] and 7 not in keep[0]


def test_layerwise_rules():
    cfg = P.PruneConfig(allocation="layerwise")
    assert P.layer_scales(26, cfg.group_scales) == [0.2] * 9 + [1.0] * 9 + [2.2] * 8  # the report's 0-8/9-17/18-25
    widths = [6912] * 26
    counts = P.layerwise_counts(widths, 0.25, cfg)
    assert sum(counts) == round(0.25 * sum(widths))
    assert max(counts) <= 0.30 * 6912 and min(w - c for w, c in zip(widths, counts)) >= 800
    assert counts[0] >= counts[12] >= counts[25]
    protected = P.layerwise_counts(widths, 0.25, P.PruneConfig(allocation="layerwise", protect_layers=[12]))
    assert protected[12] <= counts[12] // 2 + 1 and protected[11] <= counts[11] // 2 + 1
    with_dead = P.layerwise_counts(widths, 0.2, cfg, n_dead=[0] * 25 + [1500])
    assert with_dead[25] >= 1500
    with pytest.raises(ValueError, match="ratio"):
        P.layerwise_counts(widths, 0.29, P.PruneConfig(allocation="layerwise", protect_layers=list(range(26))))


def test_uniform_counts_and_config_errors():
    assert P.uniform_counts([2048] * 3, 0.25, 256) == [512] * 3
    assert P.uniform_counts([2048] * 3, 0.10, 256) == [256] * 3  # 1843 rounds down to 1792
    assert P.uniform_counts([2048] * 3, 0.30, 256) == [512] * 3  # 1434 rounds to 1536 (25 %), not down to 1280 (37.5 %)
    assert P.uniform_counts([2048] * 3, 0.40, 256) == [768] * 3  # 1229 -> 1280
    for bad, field in ((dict(metric="x"), "metric"), (dict(allocation="x"), "allocation"), (dict(ratio=1.0), "ratio"),
                       (dict(allocation="layerwise", ratio=0.4), "ratio")):
        with pytest.raises(ValueError, match=f"^{field}:"):
            P.check_config(P.PruneConfig(**bad))


def test_head_ablation_and_layer_skip_change_output_and_restore():
    model = make_tiny_model("gemma3", n_layers=2)
    ids = _ids()
    base = _logits(model, ids)
    with P.ablated_heads(model, {0: [1]}):
        assert not torch.equal(_logits(model, ids), base)
    with P.skipped_layers(model, [1]):
        assert not torch.equal(_logits(model, ids), base)
    assert torch.equal(_logits(model, ids), base)


def test_param_shares_sum():
    model = make_tiny_model("gemma3", n_layers=2)
    shares = P.param_shares(model)
    assert shares["total"] == io.param_count(model)
    assert shares["ffn"] == 2 * 3 * 64 * 128


class _ByteTokenizer:
    """Test-only stand-in with the Tokenizer interface (ids < 512)."""
    bos_id, eos_id = 2, 1

    def __init__(self, *_):
        pass

    def encode(self, text, add_bos=True):
        return ([2] if add_bos else []) + [3 + b for b in text.encode()]

    def decode(self, ids, special=False):
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")


@pytest.mark.slow
def test_run_saves_pruned_model_dir_and_skips_when_done(tmp_path, default_gguf, monkeypatch):
    import farmslm.model.tokenizer as tokmod

    monkeypatch.setattr(tokmod, "Tokenizer", _ByteTokenizer, raising=False)
    base = io.save_model_dir(make_tiny_model("gemma3", n_layers=3, ffn=512), tmp_path / "base", default_gguf,
                             arch="gemma3", stage="base")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"lang": "ko" if i % 2 else "en", "text": f"Q: sample {i} 토마토 온도\nA: answer {i}"} for i in range(12)]
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = P.PruneConfig(base=str(base), data_dir=str(data), out_dir=str(tmp_path / "prune"), n_calib=8, n_eval=4,
                        gate=False, ratio=0.4)
    out = P.run(cfg)
    model, meta = io.load_model_dir(out)
    assert meta["ffn_widths"] == [256] * 3 == io.ffn_widths(model)  # 307 kept, rounded to the nearest 256
    m = meta["metrics"]
    assert m["n_params_after"] < m["n_params_before"] and m["val_ppl_after"] > 0
    mtime = (out / "meta.json").stat().st_mtime_ns
    assert P.run(cfg) == out and (out / "meta.json").stat().st_mtime_ns == mtime  # done: skipped
