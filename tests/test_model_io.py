"""Our model directory: exact reload, per-layer FFN widths, tokenizer vocabulary kept."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from farmslm.model import io
from farmslm.model.load import ModelError, load_base


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.mark.parametrize("arch", ["gemma3", "llama", "qwen2", "qwen3"])
def test_roundtrip_exact_with_per_layer_widths(tmp_path, default_gguf, arch):
    model = make_tiny_model(arch, n_layers=3)
    # Shrink layer widths differently per layer, as layerwise pruning does.
    for layer, width in zip(io.decoder_layers(model), [128, 96, 64]):
        mlp = layer.mlp
        keep = torch.arange(width)
        gate, up, down = mlp.gate_proj.weight[keep], mlp.up_proj.weight[keep], mlp.down_proj.weight[:, keep]
        io.set_ffn_width(mlp, width)
        with torch.no_grad():
            mlp.gate_proj.weight.copy_(gate), mlp.up_proj.weight.copy_(up), mlp.down_proj.weight.copy_(down)
    ids = [2, 17, 300, 45, 9, 100]
    before = _logits(model, ids)
    out = io.save_model_dir(model, tmp_path / "m", default_gguf, arch=arch, stage="test", config={"x": 1})
    reloaded, meta = io.load_model_dir(out)
    assert meta["ffn_widths"] == [128, 96, 64] == io.ffn_widths(reloaded)
    assert meta["arch"] == arch and meta["status"] == "done"
    assert torch.equal(before, _logits(reloaded, ids))
    assert (out / io.TOKENIZER).stat().st_size < 50_000_000  # vocabulary only, no weights
    assert not list(tmp_path.glob(".m.*")), "temporary directory left behind"


def test_unknown_arch_and_missing_path_are_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(ModelError, match="'mamba'.*not supported"):
        load_base(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        load_base(tmp_path / "nope")
