"""End-to-end smoke build on a tiny gemma3: every stage, the report, resume, the final GGUF."""

from __future__ import annotations

from pathlib import Path

SMOKE_TOKENIZER = Path(__file__).parent / "data" / "smoke_tokenizer.gguf"


def make_smoke_tokenizer(out: Path, keep_general: int = 3000) -> Path:
    """A ~5k-token cut of the packaged Gemma 3 vocabulary (domain texts + general pieces + bytes).

    Trimming the 262k vocabulary takes minutes in Python, so the smoke test uses this file,
    checked in and rebuilt by this function when missing.
    """
    from farmslm.domain import rules
    from farmslm.model import vocab as V
    from farmslm.model.load import default_gguf
    from farmslm.model.quantize import FALLBACK_TEXTS

    texts = list(FALLBACK_TEXTS) + [rules.message(c, lang) for c in rules.CODES for lang in ("ko", "en")]
    src = default_gguf()
    kept, _ = V.select(V.SpmVocab.from_gguf(src), texts, V.VocabConfig(keep_general=keep_general))
    return V.write_trimmed_tokenizer(src, kept, out)


def smoke_overrides(variants: list[str]) -> dict[str, dict]:
    """Tiny sizes for every stage: the same code path as a real build, seconds instead of minutes."""
    return {
        "build": {"variants": variants, "stock": False, "threads": 2},
        "data": {"size": 160, "seed": 0},
        "index": {"n_fit": 60},
        "vocab": {"keep_general": 200, "verify": True},
        "prune": {"ratio": 0.25, "keep_multiple": 128, "n_calib": 8, "calib_seq_len": 64, "n_eval": 4},
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_samples": 16, "val_samples": 4,
                  "max_seq_len": 1024, "save_steps": 1},
        "quantize": {"max_texts": 8, "max_tokens": 64},
        "eval": {"n_answer": 4, "n_heldout": 2, "n_tag": 4, "max_tokens": 12, "tag_tokens": 12, "n_ppl": 4,
                 "ppl_ctx": 64, "n_ctx": 2048, "bench_repeats": 1, "threads": 1, "validation": True},
    }


def tiny_base(tmp_path: Path) -> Path:
    """A random tiny gemma3 (hidden 256 so k-quants apply) with the smoke vocabulary, in our model format."""
    from conftest import make_tiny_model

    from farmslm.model.io import save_model_dir
    from farmslm.model.tokenizer import Tokenizer

    tok_path = SMOKE_TOKENIZER if SMOKE_TOKENIZER.exists() else make_smoke_tokenizer(SMOKE_TOKENIZER)
    n_vocab = Tokenizer(tok_path).vocab_size
    model = make_tiny_model("gemma3", vocab_size=n_vocab, n_layers=2, hidden=256, ffn=512, n_heads=2,
                            n_kv_heads=1, head_dim=64)
    return save_model_dir(model, tmp_path / "tiny_base", tok_path, "gemma3", "tiny")


from farmslm.evaluate.report import SUMMARY_FIELDS as SCHEMA


def test_smoke_build_end_to_end_and_resume(tmp_path):
    import time

    from farmslm import artifacts, build
    from farmslm.runtime.engine import Engine

    variants = ["base_q4_k_m", "finetuned_f16", "pruned_lora_q4_k_m", "pruned_lora_kd_f16", "pruned_lora_kd_q4_k_m"]
    out = tmp_path / "run"
    base = tiny_base(tmp_path)
    t0 = time.time()
    model = build.run(out, "quick", str(base), smoke_overrides(variants), show_progress=False)
    first_s = time.time() - t0

    assert model == out / "model.gguf" and model.stat().st_size > 0
    report = artifacts.read_json(out / "report.json")
    assert set(report) == {"schema_version", "profile", "final", "durations_s", "variants", "selection", "index"}
    assert set(report["variants"]) == set(variants)
    references = {"base_q4_k_m", "finetuned_f16", "pruned_lora_kd_f16"}  # cannot ship (untrained or f16): the quick
    for name, v in report["variants"].items():                            # profile scores their answers only
        assert set(v) == set(SCHEMA), name
        assert v["size_mb"] > 0 and v["params_m"] > 0 and v["rss_mb_max"] > 0 and 0 <= v["faithful_rate"] <= 1
        if name in references:
            assert v["gen_tok_s"] is None and v["warning_accuracy"] is None and v["abstention_oos"] is None, name
            continue
        assert v["gen_tok_s"] > 0 and 0 <= v["warning_accuracy"] <= 1 and v["perplexity"] > 1
        assert 0 <= v["abstention_oos"] <= 1 and 0 <= v["recall_at_2"] <= 1
    # the final model is chosen on the validation split, among trained and quantized files only
    assert set(report["selection"]) == {"pruned_lora_q4_k_m", "pruned_lora_kd_q4_k_m"}
    assert report["final"] in report["selection"]
    assert (out / "model.knowledge.json").exists() and (out / "select" / "pruned_lora_kd_q4_k_m" / "result.json").exists()
    sizes = report["variants"]
    assert sizes["pruned_lora_kd_q4_k_m"]["size_mb"] < sizes["pruned_lora_kd_f16"]["size_mb"]
    assert sizes["pruned_lora_kd_f16"]["params_m"] < sizes["finetuned_f16"]["params_m"]  # pruning removed FFN rows
    for png in ("loss.png", "quality_vs_size.png", "speed.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "| pruned_lora_kd_q4_k_m |" in md and "0.1343" in md and "3,405 MB" in md
    assert md.count("*pruned_lora_kd_q4_k_m* [") == 30  # its answers to the 15 x 2 validation questions
    for stage in ("data", "index", "base", "vocab", "prune", "train/finetuned", "merged/pruned_lora_kd",
                  "export/pruned_lora_kd", "eval/pruned_lora_kd_q4_k_m", "select/pruned_lora_kd_q4_k_m"):
        assert artifacts.read_meta(out / stage)["status"] == "done", stage
    assert {"data", "index", "base", "vocab", "prune", "train_pruned_lora_kd", "eval_base_q4_k_m"} <= \
        set(report["durations_s"])
    result = artifacts.read_json(out / "eval" / "pruned_lora_kd_q4_k_m" / "result.json")
    assert result["split"] == "test" and result["prompt_format"] == 2
    assert artifacts.read_json(out / "select" / "pruned_lora_kd_q4_k_m" / "result.json")["split"] == "val"

    engine = Engine(model, n_threads=2, n_ctx=1024)  # finds model.knowledge.json beside it
    try:
        answer = engine.ask("Is it too hot for tomato fruit set?", {"temp_c": 36.0, "period": "day"}, max_tokens=8)
    finally:
        engine.close()
    assert answer.tag_source == "rules" and "HIGH_TEMP" in answer.warnings and engine.prompt_format == 2
    assert answer.answer.startswith("Air temperature too high by day (36 °C > 30 °C)")

    # a finished build re-runs as a no-op; a build killed before its last stages resumes there
    stamps = {p: artifacts.read_meta(p)["finished_at"] for p in out.glob("*/**/") if (p / "meta.json").exists()}
    import shutil

    shutil.rmtree(out / "merged" / "pruned_lora_kd")
    shutil.rmtree(out / "eval" / "pruned_lora_kd_q4_k_m")
    (out / "report.json").unlink()
    (out / "model.gguf").unlink()
    t0 = time.time()
    build.run(out, "quick", str(base), smoke_overrides(variants), show_progress=False)
    resume_s = time.time() - t0
    for p, stamp in stamps.items():
        if "pruned_lora_kd" not in str(p.relative_to(out)):
            assert artifacts.read_meta(p)["finished_at"] == stamp, f"{p} was redone"
    assert artifacts.read_json(out / "report.json")["final"] == report["final"]
    assert (out / "model.gguf").exists()
    assert resume_s < first_s


def test_variants_and_profile_errors_name_the_field():
    import pytest

    from farmslm import build
    from farmslm.config import ConfigError

    assert build._split_variant("pruned_lora_kd_q4_k_m") == ("pruned_lora_kd", "q4_k_m")
    assert build._split_variant("base_f16") == ("base", "f16")
    assert build._split_variant("pruned_lora_kd_q8_0") == ("pruned_lora_kd", "q8_0")
    with pytest.raises(ConfigError, match="build.variants: unknown variant 'pruned_q3_k'.*_<f16|q8_0"):
        build.stage_configs("quick", {"build": {"variants": ["pruned_q3_k"]}})
    with pytest.raises(ConfigError, match="unknown variant 'tuned_q4_k_m'"):
        build.stage_configs("quick", {"build": {"variants": ["tuned_q4_k_m"]}})
    with pytest.raises(ConfigError, match="--set: unknown stage 'trian'"):
        build.stage_configs("quick", {"trian": {"lr": 1e-4}})
    with pytest.raises(ConfigError, match="unknown field"):
        build.stage_configs("quick", {"eval": {"n_tests": 3}})
    for profile in ("quick", "standard", "full"):
        cfgs = build.stage_configs(profile)
        assert cfgs["build"].final in cfgs["build"].variants


KILL_VARIANTS = ["finetuned_q8_0"]
_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from test_build_smoke import smoke_overrides
from farmslm import build
build.run({out!r}, "quick", {base!r}, smoke_overrides({variants!r}) | {{"train": {{**smoke_overrides([])["train"],
          "max_steps": 6, "save_steps": 1}}}}, show_progress=False)
"""


def _build_proc(out: Path, base: Path):
    import subprocess
    import sys

    code = _RUNNER.format(tests=str(Path(__file__).parent), out=str(out), base=str(base), variants=KILL_VARIANTS)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc, ready, what: str) -> None:
    import signal
    import time

    end = time.monotonic() + 600
    while time.monotonic() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return
        if proc.poll() is not None:
            raise AssertionError(f"the build ended before it could be killed {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    raise AssertionError(f"never reached the point to kill {what}")


def _final_hashes(out: Path) -> dict[str, str]:
    from farmslm import artifacts

    files = [out / "model.gguf", out / "model.knowledge.json", *sorted((out / "export").rglob("*.gguf")),
             *sorted((out / "merged").rglob("model.safetensors"))]
    return {str(p.relative_to(out)): artifacts.hash_path(p) for p in files}


def test_sigkill_during_training_and_export_resumes_to_identical_files(tmp_path):
    """A build killed with SIGKILL in the middle of training, then of export, resumes; its final files are
    byte-identical to an uninterrupted build's."""
    from farmslm import build

    base = tiny_base(tmp_path)
    ref = tmp_path / "ref"
    overrides = smoke_overrides(KILL_VARIANTS)
    overrides["train"] = {**overrides["train"], "max_steps": 6, "save_steps": 1}
    build.run(ref, "quick", str(base), overrides, show_progress=False)

    out = tmp_path / "killed"
    train_dir = out / "train" / "finetuned"
    proc = _build_proc(out, base)
    _kill_when(proc, lambda: (train_dir / "checkpoints" / "last.pt").exists(), "during training")
    assert not (train_dir / "meta.json").exists()  # killed mid-stage, a checkpoint behind it
    proc = _build_proc(out, base)
    export_dir = out / "export" / "finetuned"
    _kill_when(proc, lambda: export_dir.exists(), "during export")
    assert not (export_dir / "meta.json").exists()
    assert not list(export_dir.glob("*.gguf")) or all(p.stat().st_size > 0 for p in export_dir.glob("*.gguf"))
    build.run(out, "quick", str(base), overrides, show_progress=False)  # resume to the end

    assert _final_hashes(out) == _final_hashes(ref)
    assert not list(out.rglob("*.tmp"))  # no half-written file left behind
