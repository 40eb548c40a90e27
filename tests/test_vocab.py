"""Vocabulary trimming on a tiny Gemma 3 model with the real Gemma SentencePiece vocabulary (262k):
the Python SPM agrees with llama.cpp, the kept corpus tokenizes exactly, unseen text falls back to
bytes, special ids are remapped, and the trimmed model's distribution is the full one restricted."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import GEMMA_VOCAB, make_tiny_model
from farmslm.config import ConfigError
from farmslm.model import io, vocab
from farmslm.model.tokenizer import get_tokenizer, read_kvs

CORPUS = [
    "Q: [STATUS: temp_c=31.5, humidity_pct=88, period=day] 토마토 잎이 노랗게 변했어요. 왜 그런가요?\nA: "
    "[WARNING: HEAT_STRESS, HIGH_HUMIDITY] 고온 다습합니다. 즉시 환기하고 습도를 80 % 아래로 낮추세요.",
    "Q: How do I prevent blossom-end rot?\nA: [NORMAL] Keep the root zone evenly moist and EC at 2.0–3.5 dS/m.",
    "Q: 밤 온도는 몇 도가 적당한가요?\nA: [NORMAL] 야간 기온은 15~18 °C가 적당합니다.",
    "잿빛곰팡이병 (grey mould, Botrytis cinerea)",
    "  leading spaces,\ttabs\nand\n\nnewlines  <b>bold</b>",
    "Mixed 한영 text: 토마토(tomato) x3 — ok?",
]
UNSEEN = ["完全に新しい文章です。", "Ελληνικά και русский текст", "🍅🌱 emoji ✓", "쀍뙇 rare syllables",
          "Photosynthesis saturates near 1,200 µmol/m²/s."]


slow = pytest.mark.slow  # reading the 262k-piece vocabulary and a 262k-row tiny model: ~30-70 s


@pytest.fixture(scope="module")
def gemma(tmp_path_factory, default_gguf):
    """(full vocabulary GGUF without tensors, SpmVocab, tiny gemma3 model dir with that vocabulary)."""
    root = tmp_path_factory.mktemp("vocab")
    kvs = read_kvs(default_gguf)
    tok_gguf = vocab.write_kvs_gguf(kvs, "gemma3", root / "full.gguf")
    spm = vocab.SpmVocab.from_kvs(kvs, "gemma")
    model = make_tiny_model("gemma3", vocab_size=GEMMA_VOCAB)
    model_dir = io.save_model_dir(model, root / "base", tok_gguf, arch="gemma3", stage="base")
    return tok_gguf, spm, model_dir


@pytest.fixture(scope="module")
def trimmed(gemma, tmp_path_factory):
    _, _, model_dir = gemma
    out = tmp_path_factory.mktemp("trim") / "vocab"
    cfg = vocab.VocabConfig(keep_general=300, general_ko_share=0.5)
    vocab.run(cfg, str(model_dir), "", out, texts=CORPUS)
    return out


@slow
def test_python_spm_matches_llama_cpp(gemma):
    tok_gguf, spm, _ = gemma
    llama = get_tokenizer(tok_gguf)
    texts = vocab.corpus_pieces(CORPUS) + UNSEEN + ["<start_of_turn>user\n안녕<end_of_turn>", "a   b\n\n\n c"]
    for text in texts:
        for special in (True, False):
            assert spm.encode(text, special=special) == llama.encode(text, add_bos=False, special=special), text


@slow
def test_kept_corpus_tokenizes_exactly(gemma, trimmed):
    tok_gguf, _, _ = gemma
    kept = vocab.load_map(trimmed)
    meta = io.load_model_dir(trimmed)[1]
    assert meta["vocab_size"] == len(kept) < 3000 and meta["metrics"]["n_kept"] == len(kept)
    full, trim = get_tokenizer(tok_gguf), get_tokenizer(trimmed / io.TOKENIZER)
    assert trim.vocab_size == len(kept)
    for text in vocab.corpus_pieces(CORPUS):
        for special in (True, False):
            ids = trim.encode(text, special=special)
            assert [kept[i] for i in ids] == full.encode(text, special=special), text
            assert trim.decode(ids) == text
    assert kept == sorted(kept) and len(set(kept)) == len(kept)


@slow
def test_byte_fallback_for_unseen_text(gemma, trimmed):
    _, spm, _ = gemma
    trim = get_tokenizer(trimmed / io.TOKENIZER)
    tv = vocab.SpmVocab.from_gguf(trimmed / io.TOKENIZER)
    byte_ids = set(tv.byte_ids)
    assert len(byte_ids) == 256 and None not in byte_ids
    n_bytes = 0
    for text in UNSEEN:
        ids = trim.encode(text, add_bos=False)
        assert trim.decode(ids) == text  # any text still encodes, losslessly
        assert ids == tv.encode(text)  # and the Python SPM still agrees with llama.cpp
        n_bytes += sum(i in byte_ids for i in ids)
        assert len(ids) >= len(spm.encode(text))  # never fewer tokens than with the full vocabulary
    assert n_bytes > 0


@slow
def test_special_tokens_remapped(gemma, trimmed):
    tok_gguf, _, _ = gemma
    full, trim = get_tokenizer(tok_gguf), get_tokenizer(trimmed / io.TOKENIZER)
    kept = vocab.load_map(trimmed)
    for attr in ("bos_id", "eos_id", "pad_id"):
        assert kept[getattr(trim, attr)] == getattr(full, attr)
        assert trim.piece(getattr(trim, attr)) == full.piece(getattr(full, attr))
    kvs = read_kvs(trimmed / io.TOKENIZER, prefix="tokenizer.")
    unk = kvs["tokenizer.ggml.unknown_token_id"].value
    assert kvs["tokenizer.ggml.tokens"].value[unk] == b"<unk>"
    chat = f"<start_of_turn>{CORPUS[2]}<end_of_turn>\n<start_of_turn>"  # control pieces split the text first
    ids = trim.encode(chat, special=True)
    assert [kept[i] for i in ids] == full.encode(chat, special=True)
    assert trim.piece(ids[1]) == b"<start_of_turn>" and trim.piece(ids[-3]) == b"<end_of_turn>"
    assert trim.decode(ids[1:], special=True) == chat
    assert not any(t.startswith(b"<unused") for t in kvs["tokenizer.ggml.tokens"].value)
    model, _ = io.load_model_dir(trimmed)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == \
        (trim.bos_id, trim.eos_id, trim.pad_id)


@slow
def test_restricted_distribution_equality(gemma, trimmed):
    _, _, base_dir = gemma
    full_model, _ = io.load_model_dir(base_dir)
    trim_model, _ = io.load_model_dir(trimmed)
    kept = vocab.load_map(trimmed)
    assert trim_model.get_input_embeddings().weight.shape[0] == len(kept)
    rng = random.Random(0)
    new_ids = [[rng.randrange(len(kept)) for _ in range(12)] for _ in range(3)]
    old_ids = [[kept[i] for i in row] for row in new_ids]
    with torch.no_grad():
        full = full_model(torch.tensor(old_ids)).logits
        trim = trim_model(torch.tensor(new_ids)).logits
    restricted = vocab.restricted_logits(full, kept)
    torch.testing.assert_close(trim, restricted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trim.softmax(-1), restricted.softmax(-1), rtol=1e-5, atol=1e-7)
    # the renormalised restriction differs from the full distribution (the test can fail)
    assert full.softmax(-1)[..., kept].sum(-1).max() < 0.5


def test_untied_head_rows_follow_the_vocabulary():
    model = make_tiny_model("llama", vocab_size=300)
    kept = sorted(random.Random(1).sample(range(300), 57))
    ids = torch.tensor([[kept[3], kept[10], kept[0]]])
    with torch.no_grad():
        full = model(ids).logits
        vocab.trim_model(model, kept)
        trim = model(torch.tensor([[3, 10, 0]])).logits
    assert model.lm_head.weight.shape[0] == 57 and model.config.vocab_size == 57
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    torch.testing.assert_close(trim, full[..., kept])


@slow
def test_trimmed_gguf_parity_in_llama_cpp(trimmed, tmp_path):
    """Our Tokenizer (model dir's tokenizer.gguf) vs llama.cpp on the exported trimmed GGUF, and
    llama.cpp's logits on it vs torch: the trimmed vocabulary travels into every GGUF."""
    from farmslm.model.export import export_gguf
    from farmslm.runtime.engine import load_llama  # works around llama.cpp's AMX repack crash

    model, meta = io.load_model_dir(trimmed)
    gguf_path = export_gguf(model, trimmed / io.TOKENIZER, tmp_path / "t.gguf", "gemma3", dtype="f32")
    llm = load_llama(gguf_path, None, n_ctx=128, logits_all=True, n_threads=1)
    tok = get_tokenizer(trimmed / io.TOKENIZER)
    for text in vocab.corpus_pieces(CORPUS) + UNSEEN:
        assert tok.encode(text) == llm.tokenize(text.encode(), add_bos=True, special=True)
    ids = tok.encode(CORPUS[0])[:24]
    llm.eval(ids)
    ref = llm.scores[:len(ids)]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    assert abs(logits - ref).max() < 1e-2 * max(1.0, abs(logits).max())


@slow
def test_too_large_selection_names_the_flag(gemma):
    _, spm, _ = gemma
    with pytest.raises(ConfigError, match="--keep-general"):
        vocab.select(spm, CORPUS, vocab.VocabConfig(keep_general=2000, max_vocab=1000))


@slow
def test_general_rule_ranks_by_score_with_closures(gemma):
    _, spm, _ = gemma
    keep = vocab.base_ids(spm)
    added = vocab.general_ids(spm, keep, 200, 0.5)
    classes = [vocab.piece_class(spm.tokens[i]) for i in added]
    assert 190 <= len(added) <= 215 and classes.count("ko") >= 60 and classes.count("en") >= 60
    # closure: every added piece tokenizes to itself using only kept pieces
    allowed = keep | added
    for tid in added:
        used: set[int] = set()
        out: list[int] = []
        spm._spm(spm.tokens[tid], out, used)
        if out == [tid]:
            assert used <= allowed


def test_cli_names_the_flag(tmp_path):
    from typer.testing import CliRunner

    from farmslm.cli import app

    res = CliRunner().invoke(app, ["vocab", "trim", "--model", "default", "--data", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--data" in res.output
    (tmp_path / "d").mkdir()
    res = CliRunner().invoke(app, ["vocab", "trim", "--model", "default", "--data", str(tmp_path / "d"),
                                   "--out", str(tmp_path / "o"), "--keep-general", "-1"])
    assert res.exit_code == 2 and "--keep-general" in res.output
