"""farmslm bench: documented JSON, per-model subprocess measurements, bandwidth bound; perplexity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import GEMMA_VOCAB, make_tiny_model

from farmslm.runtime import bench


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory, default_gguf):
    from farmslm.model.export import export_gguf
    from farmslm.model.quantize import quantize_gguf
    from farmslm.model.tokenizer import write_tokenizer_gguf

    d = tmp_path_factory.mktemp("bench")
    vocab = write_tokenizer_gguf(default_gguf, d / "tokenizer.gguf")
    f32 = export_gguf(make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB), vocab, d / "f32.gguf", "gemma3", "f32")
    return f32, quantize_gguf(f32, d / "q8.gguf", "Q8_0")


def test_weight_bytes_counts_every_tensor(tiny_ggufs):
    from gguf import GGUFReader

    f32, q8 = tiny_ggufs
    n_params = sum(int(np.prod(t.shape)) for t in GGUFReader(str(f32)).tensors)
    assert bench.weight_bytes(f32) == 4 * n_params  # F32: 4 bytes each, tied embedding included once
    assert bench.weight_bytes(q8) < bench.weight_bytes(f32) * 0.3
    assert bench.weight_bytes(f32) < f32.stat().st_size


def test_bench_json_and_vs(tiny_ggufs):
    from typer.testing import CliRunner

    from farmslm.cli import app

    f32, q8 = tiny_ggufs
    res = CliRunner().invoke(app, ["bench", str(q8), "--vs", str(f32), "--json", "--prompt-tokens", "32",
                                   "--gen-tokens", "8", "--repeats", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"machine", "settings", "models", "vs"}
    assert out["machine"]["read_bandwidth_gb_s"] > 0.1
    a, b = out["models"]
    for m in (a, b):
        assert m["prompt_tok_s"] > 0 and m["gen_tok_s"] > 0 and m["ttft_ms"] > 0 and m["peak_rss_bytes"] > 1e6
        assert len(m["runs"]) == 2 and 0 < m["bound_pct"]
        assert m["bound_gen_tok_s"] == pytest.approx(out["machine"]["read_bandwidth_gb_s"] * 1e9 / m["weight_bytes"], rel=0.01)
        # our wall-clock timing and llama.cpp's own counters describe the same runs
        # (llama.cpp's clock covers the decodes only, ours adds the Python around them)
        assert m["llama_gen_tok_s"] >= m["gen_tok_s"] * 0.95
        assert m["llama_prompt_tok_s"] >= m["prompt_tok_s"] * 0.95
    assert out["vs"]["size_ratio"] == pytest.approx(a["file_bytes"] / b["file_bytes"], abs=1e-3)
    assert out["vs"]["size_ratio"] < 0.5
    assert out["machine"]["omp_wait_policy"] in ("passive", "brief", "active") and a["ask_ratio"] is not None


def test_bench_rss_is_the_models_own_peak(tiny_ggufs):
    """RSS is VmHWM of a fresh process holding what `ask` holds: a big file and a small one differ by about the
    bytes that differ (ru_maxrss of a child carried the parent's 512 MiB bandwidth array before)."""
    f32, q8 = tiny_ggufs
    out = bench.run(bench.BenchConfig(model=str(f32), vs=str(q8), threads=1, prompt_tokens=16, gen_tokens=4,
                                      repeats=1))
    big, small = out["models"]
    assert big["peak_rss_bytes"] - small["peak_rss_bytes"] >= 0.5 * (big["weight_bytes"] - small["weight_bytes"])
    assert small["peak_rss_bytes"] < 400e6  # not the parent's 512 MiB array


@pytest.mark.slow
def test_bench_matches_llama_cpp_own_report_on_stock_file(default_gguf):
    """On the packaged 270M, our timing and llama.cpp's own perf counters agree within 10 %."""
    cfg = bench.BenchConfig(model=str(default_gguf), threads=2, prompt_tokens=64, gen_tokens=16, repeats=2)
    m = bench.run(cfg)["models"][0]
    assert m["gen_tok_s"] == pytest.approx(m["llama_gen_tok_s"], rel=0.1)
    assert m["prompt_tok_s"] == pytest.approx(m["llama_prompt_tok_s"], rel=0.1)


def test_bench_refuses_missing_file(tmp_path):
    from typer.testing import CliRunner

    from farmslm.cli import app

    res = CliRunner().invoke(app, ["bench", str(tmp_path / "nope.gguf")])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_perplexity_is_exp_mean_nll(tiny_ggufs, default_gguf):
    from farmslm.model.tokenizer import get_tokenizer

    f32, _ = tiny_ggufs
    tok = get_tokenizer(default_gguf)
    lists = [tok.encode("토마토 잎이 노랗게 변했어요."), tok.encode("Open the vents when it is hot.")]
    logits = bench.llama_logits(f32, lists)
    nll = []
    for ids, lg in zip(lists, logits):
        lg = lg[:-1].astype(np.float64)
        logz = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
        nll += list(logz - lg[np.arange(len(ids) - 1), ids[1:]])
    assert bench.perplexity(f32, lists) == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-4)
