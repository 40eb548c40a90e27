"""Fine-tuning: answer-only masking, KD loss, merge = W + scale·B·A, exact resume, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from farmslm.config import ConfigError
from farmslm.model import merge, samples, train
from conftest import make_tiny_model

SAMPLES = [
    "Q: [STATUS: temp_c=36.0, period=day] Is it too hot?\nA: [WARNING: HEAT_STRESS] Yes, vent the house now.",
    "Q: [STATUS: temp_c=24.0, period=day] How is the climate?\nA: [NORMAL] The air is fine for tomatoes.",
    "Q: 토마토 잎이 말려요?\nA: [NORMAL] 고온이나 수분 부족을 확인하세요.",
    "Q: [STATUS: humidity_pct=95.0, period=night] Mould risk?\nA: [WARNING: HIGH_HUMIDITY, BOTRYTIS_RISK] Yes, dehumidify.",
]


class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (0 pad, 1 eos, 2 bos): a tokenizer for the 512-token tiny models."""
    bos_id, eos_id, pad_id = 2, 1, 0

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return ([self.bos_id] if add_bos else []) + [b + 3 for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode(errors="ignore")


def tiny_cfg(**kw) -> train.TrainConfig:
    base = dict(lora_r=4, lora_alpha=8, batch_size=2, grad_accum=2, max_steps=6, lr=1e-2, warmup_ratio=0.2,
                save_steps=2, max_seq_len=160, lora_dropout=0.1)
    base.update(kw)
    return train.TrainConfig(**base)


def examples(n_copies: int = 2) -> list[samples.Example]:
    tok = ByteTokenizer()
    return [samples.encode_example(tok, s, 160) for s in SAMPLES * n_copies]


def test_answer_masking_is_exact():
    tok = ByteTokenizer()
    for text in SAMPLES:
        ex = samples.encode_example(tok, text, 512)
        prompt, answer = text.split("\nA:", 1)
        labels, weights = samples.labels_and_weights(ex, tag_weight=3.0)
        n_prompt = 1 + len((prompt + "\nA:").encode())  # BOS + prompt bytes
        assert labels[:n_prompt] == [samples.IGNORE] * n_prompt
        assert labels[n_prompt:] == tok.encode(answer, add_bos=False) + [tok.eos_id]
        assert tok.decode(ex.ids[:ex.n_prompt]).endswith("\nA:")
        tag = answer[:answer.index("]") + 1]
        assert tok.decode(ex.ids[ex.n_prompt:ex.n_prompt + ex.n_tag]) == tag
        assert weights[n_prompt:n_prompt + ex.n_tag] == [3.0] * ex.n_tag
        assert set(weights[n_prompt + ex.n_tag:]) == {1.0} and set(weights[:n_prompt]) == {0.0}
    batch = samples.collate([samples.encode_example(tok, t, 512) for t in SAMPLES[:2]], 1.0, 0)
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == samples.IGNORE).all() and pad.any()


def test_tag_drill_is_prompt_and_tag_only(tmp_path):
    import json

    tok = ByteTokenizer()
    for text in SAMPLES:
        full, drill = samples.encode_example(tok, text, 512), samples.encode_example(tok, text, 512, tag_only=True)
        assert drill.ids == full.ids[:full.n_prompt + full.n_tag] and drill.n_tag == full.n_tag
        labels, weights = samples.labels_and_weights(drill, tag_weight=2.0)
        answer = text.split("\nA:", 1)[1]
        assert tok.decode([t for t in labels if t != samples.IGNORE]) == answer[:answer.index("]") + 1]
        assert tok.eos_id not in drill.ids and set(weights[drill.n_prompt:]) == {2.0}
    rows = [{"text": SAMPLES[i % 4].replace("?", f"? #{i}")} for i in range(20)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    exs = samples.load_examples(path, tok, 160, limit=5, seed=0, drills=8).examples
    full, drills = exs[:5], exs[5:]
    assert len(drills) == 8 and all(tok.eos_id in e.ids for e in full) and not any(tok.eos_id in e.ids for e in drills)
    prompts = [tok.decode(e.ids[:e.n_prompt]) for e in exs]
    assert len(set(prompts)) == 13  # drills come from rows the full samples did not use
    assert full == samples.load_examples(path, tok, 160, limit=5, seed=0).examples  # drills do not change the draw
    # a batch of drills alone: no KD term (nothing outside the tag), the loss stays finite
    model, teacher = make_tiny_model("gemma3", seed=1), make_tiny_model("gemma3", seed=2)
    loss, parts = train.batch_loss(model, samples.collate(drills[:2], 1.0, 0), tiny_cfg(kd_alpha=0.5), teacher)
    assert parts["kd"] == 0.0 and loss.item() == pytest.approx(0.5 * parts["ce"], rel=1e-6)


def test_grounded_rows_mask_the_prefilled_rule_sentences():
    """Format 2: the tag carries loss (the research figure), the rule sentences do not, the model part does."""
    tok = ByteTokenizer()
    prefill = "Q: [STATUS: temp_c=36, period=day] [FACTS: (1) Shade above 30 °C.] Hot?\nA: [WARNING: HIGH_TEMP] Too hot."
    row = {"text": prefill + " Shade the house.", "prefill": prefill}
    ex, note = samples.encode_row(tok, row, 512)
    labels, weights = samples.labels_and_weights(ex, tag_weight=2.0)
    learnt = tok.decode([t for t in labels if t != samples.IGNORE])
    assert learnt == " [WARNING: HIGH_TEMP] Shade the house." and note == ""
    assert tok.decode(ex.ids[:ex.n_prompt]).endswith("\nA:") and ex.n_prefill == len(" Too hot.".encode())
    assert ex.ids[:len(tok.encode(prefill))] == tok.encode(prefill)  # the prefill is one string, as in the engine


def test_truncation_is_counted_and_a_cut_tag_is_dropped_with_its_reason(tmp_path):
    import json

    tok = ByteTokenizer()
    prefill = "Q: [STATUS: temp_c=36, period=day] Hot?\nA: [WARNING: HIGH_TEMP] Too hot."
    rows = [{"id": "ok", "text": prefill + " Shade.", "prefill": prefill},
            {"id": "long", "text": prefill + " Shade the house at noon and run the fog.", "prefill": prefill},
            {"id": "cut-tag", "text": "Q: " + "x" * 80 + "\nA: [NORMAL] fine"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = samples.load_examples(path, tok, max_seq_len=len(tok.encode(prefill)) + 10, limit=0, seed=0)
    assert len(enc.examples) == 2 and enc.truncated == 1
    assert enc.dropped == [{"id": "cut-tag", "reason": enc.dropped[0]["reason"]}]
    assert "tag would be cut" in enc.dropped[0]["reason"]


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    temp = 2.0
    want = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist()):
        zs = [math.exp(v / temp) for v in row_s]
        zt = [math.exp(v / temp) for v in row_t]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        want += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    want = temp ** 2 * want / 2
    assert train.kd_loss(s, t, temp).item() == pytest.approx(want, rel=1e-6)
    assert train.kd_loss(s, s.clone(), temp).item() == pytest.approx(0.0, abs=1e-7)


def test_batch_loss_mixes_ce_and_kd():
    model = make_tiny_model("gemma3", seed=1)
    teacher = make_tiny_model("gemma3", seed=2)
    batch = samples.collate(examples(1)[:2], 1.0, 0)
    cfg = tiny_cfg(kd_alpha=0.3, kd_temperature=2.0)
    loss, parts = train.batch_loss(model, batch, cfg, teacher)
    assert loss.item() == pytest.approx(0.7 * parts["ce"] + 0.3 * parts["kd"], rel=1e-5)
    # CE on answer positions equals HF's own loss with the same labels
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert parts["ce"] == pytest.approx(ref.item(), rel=1e-5)
    _, same = train.batch_loss(model, batch, cfg, model)
    assert same["kd"] == pytest.approx(0.0, abs=1e-6)


def test_tag_weight_reweights_ce():
    model = make_tiny_model("gemma3", seed=1)
    exs = examples(1)[:2]
    _, plain = train.batch_loss(model, samples.collate(exs, 1.0, 0), tiny_cfg())
    _, heavy = train.batch_loss(model, samples.collate(exs, 5.0, 0), tiny_cfg(tag_weight=5.0))
    assert heavy["ce_plain"] == pytest.approx(plain["ce"], rel=1e-6)
    assert heavy["ce"] != pytest.approx(plain["ce"], rel=1e-3)


def test_buckets_cover_every_example_once():
    exs = examples(10)
    batches = samples.epoch_batches(exs, 3, seed=0, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(exs)))
    assert samples.epoch_batches(exs, 3, 0, 0) == batches != samples.epoch_batches(exs, 3, 0, 1)


def _train(tmp_path, cfg, resume=False, on_step=None):
    model = train.add_adapter(make_tiny_model("gemma3", seed=0), cfg)
    rows = train.train_loop(model, examples(), cfg, tmp_path, resume=resume, on_step=on_step)
    return model, rows


def test_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = tiny_cfg()
    full_model, full = _train(tmp_path / "a", cfg)
    assert full[-1]["loss"] < full[0]["loss"]

    def stop(step, row):
        if step == 3:
            raise train.Interrupted

    with pytest.raises(train.Interrupted):
        _train(tmp_path / "b", cfg, on_step=stop)
    resumed_model, rows = _train(tmp_path / "b", cfg, resume=True)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] == full[-1]["loss"]
    a, b = train.trainable_state(full_model), train.trainable_state(resumed_model)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["lora", "dora", "ln_tuning"])
def test_merge_equals_adapted_model(tmp_path, method):
    model = train.add_adapter(make_tiny_model("gemma3", seed=0), tiny_cfg(method=method))
    with torch.no_grad():  # LoRA's B starts at zero: give every adapter weight a value
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        want = model.eval()(input_ids=ids).logits
    base = make_tiny_model("gemma3", seed=0)
    merged = merge.merge_adapter(base, tmp_path / "adapter")
    assert not any("lora" in n or "ln_tuning" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if method == "lora":
        ref = make_tiny_model("gemma3", seed=0)
        scale = 8 / 4
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                w = mod.base_layer.weight + scale * mod.lora_B["default"].weight @ mod.lora_A["default"].weight
                key = name.split("base_model.model.", 1)[1] + ".weight"
                torch.testing.assert_close(merged.state_dict()[key], w.detach())
                assert not torch.equal(ref.state_dict()[key], w.detach())


def test_refusals():
    with pytest.raises(ConfigError, match="qlora"):
        train.check_config(train.TrainConfig(qlora=True), "cpu")
    with pytest.raises(ConfigError, match="method"):
        train.check_config(train.TrainConfig(method="bitfit"), "cpu")
    with pytest.raises(ConfigError, match="kd_alpha"):
        train.check_config(train.TrainConfig(kd_alpha=1.5), "cpu")


def test_teacher_with_other_vocabulary_is_refused(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"vocab-a")
    b.write_bytes(b"vocab-b")
    student, teacher = make_tiny_model(vocab_size=512), make_tiny_model(vocab_size=512)
    with pytest.raises(ConfigError, match="--teacher"):
        train.check_same_vocab(a, b, student, teacher)
    with pytest.raises(ConfigError, match="--teacher"):
        train.check_same_vocab(a, a, student, make_tiny_model(vocab_size=256))
    train.check_same_vocab(a, a, student, teacher)


def test_answer_logits_equal_full_forward():
    model = make_tiny_model("gemma3", seed=3)
    batch = samples.collate(examples(1), 1.0, 0)
    logits, sel = train.answer_logits(model, batch)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][sel]
    torch.testing.assert_close(logits.detach(), full)
    targets = batch["labels"][:, 1:][sel]
    assert F.cross_entropy(logits, targets).item() > 0


def _tiny_dirs(tmp_path):
    """A tiny gemma3 model dir over the checked-in smoke vocabulary and a 4-row dataset dir."""
    import json
    from pathlib import Path

    from farmslm.model.io import save_model_dir
    from farmslm.model.tokenizer import Tokenizer

    tok_path = Path(__file__).parent / "data" / "smoke_tokenizer.gguf"
    if not tok_path.exists():
        pytest.skip("tests/data/smoke_tokenizer.gguf missing")
    model = make_tiny_model("gemma3", vocab_size=Tokenizer(tok_path).vocab_size)
    model_dir = save_model_dir(model, tmp_path / "model", tok_path, "gemma3", "tiny")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": str(i), "lang": "ko" if "토마토" in t else "en", "text": t,
             "answer": t.split("] ", 1)[1], "warnings": []} for i, t in enumerate(SAMPLES)]
    for split in ("train", "val", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return model_dir, data


def test_run_cli_merge_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from farmslm.cli import app
    from farmslm.model.io import load_model_dir

    model_dir, data = _tiny_dirs(tmp_path)
    out = tmp_path / "train"
    args = ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--max-steps", "2",
            "--lr", "0.01"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for name in ("adapter/adapter_config.json", "train_log.jsonl", "loss.png", "meta.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "meta.json").stat().st_mtime_ns == stamp  # same config and inputs: skipped
    res = CliRunner().invoke(app, ["merge", "--adapter", str(out), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    merged, meta = load_model_dir(tmp_path / "merged")
    assert meta["stage"] == "merge" and (tmp_path / "merged" / "tokenizer.gguf").exists()
    from peft import PeftModel

    base, _ = load_model_dir(model_dir)
    adapted = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ids = torch.tensor([[2, 100, 200, 300]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    res = CliRunner().invoke(app, ["train", "--model", str(model_dir), "--data", str(data), "--out",
                                   str(tmp_path / "q"), "--qlora"])
    assert res.exit_code != 0 and "qlora" in res.output


def test_resume_refuses_a_checkpoint_from_other_data(tmp_path, monkeypatch):
    """A checkpoint written on other data (or another base, teacher, config, code) is refused, naming what
    differs; the same run resumes."""
    model_dir, data = _tiny_dirs(tmp_path)
    cfg = train.TrainConfig(max_steps=4, batch_size=2, grad_accum=1, save_steps=1, val_samples=0, max_seq_len=96,
                            lr=0.01)
    out = tmp_path / "t"
    real_save = train._save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise train.Interrupted

    monkeypatch.setattr(train, "_save_checkpoint", save_then_die)
    with pytest.raises(train.Interrupted):
        train.run(cfg, model_dir, data, out)
    monkeypatch.setattr(train, "_save_checkpoint", real_save)
    assert (out / "checkpoints" / "last.pt").exists()
    with open(data / "train.jsonl", "a", encoding="utf-8") as f:  # the data changed since the checkpoint
        f.write((data / "train.jsonl").read_text().splitlines()[0].replace('"0"', '"9"') + "\n")
    with pytest.raises(train.ResumeMismatch, match="data differ"):
        train.run(cfg, model_dir, data, out, resume=True)
    with pytest.raises(train.ResumeMismatch, match="config"):
        train.run(train.TrainConfig(**{**cfg.__dict__, "lr": 0.02}), model_dir, data, out, resume=True)


def test_experiment_peft_compare_on_tiny_model(tmp_path):
    from farmslm import artifacts
    from farmslm.model import experiments

    model_dir, data = _tiny_dirs(tmp_path)
    cfg = experiments.ExperimentConfig(methods=["lora", "dora", "ln_tuning"], eval_samples=4, max_new_tokens=6)
    tcfg = train.TrainConfig(max_steps=1, batch_size=2, grad_accum=1, val_samples=0, max_seq_len=96)
    assert experiments.variants("rank", experiments.ExperimentConfig(), tcfg)["lora_r32"].lora_alpha == 64
    out = experiments.run("peft", cfg, tcfg, model_dir, data, tmp_path / "peft")
    rows = artifacts.read_json(out / "results.json")["rows"]
    assert [r["variant"] for r in rows] == ["lora", "dora", "ln_tuning"]
    assert rows[2]["trainable_params"] < rows[0]["trainable_params"] < rows[1]["trainable_params"]
    for r in rows:
        assert r["answer_ppl"] > 1 and 0 <= r["rouge_l"] <= 1 and r["tag_acc"] is not None
    assert "| ln_tuning |" in (out / "results.md").read_text() and (out / "results.png").exists()
    with pytest.raises(ConfigError, match="--teacher"):
        experiments.run("kd", cfg, tcfg, model_dir, data, tmp_path / "kd")


def test_cpu_bf16_only_where_asked_and_native(monkeypatch):
    model = make_tiny_model("gemma3", seed=0)
    assert not train.use_cpu_bf16(model, tiny_cfg())  # cpu_bf16 off: fp32
    monkeypatch.setattr(train, "native_cpu_bf16", lambda: False)
    assert not train.use_cpu_bf16(model, tiny_cfg(cpu_bf16=True))  # emulated bf16 would be slower: fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(not train.native_cpu_bf16(), reason="needs a CPU with native bf16 (AMX / AVX512-BF16)")
def test_cpu_bf16_trains_an_fp32_adapter_like_fp32(tmp_path):
    _, ref = _train(tmp_path / "fp32", tiny_cfg())
    cfg = tiny_cfg(cpu_bf16=True)
    model = train.add_adapter(make_tiny_model("gemma3", seed=0), cfg)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    rows = train.train_loop(model, examples(), cfg, tmp_path / "bf16")
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], abs=0.15)
