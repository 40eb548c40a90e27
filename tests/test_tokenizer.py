"""Tokenizer parity: our training tokenizer vs llama.cpp, and vs an independent SentencePiece
rebuilt from the same Gemma vocabulary; tensor-free vocabulary GGUFs; HF → GGUF conversion."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from farmslm.model.tokenizer import get_tokenizer, read_vocab, tokenizer_gguf_from_hf, write_tokenizer_gguf

QUESTIONS_KO = ["토마토 잎이 노랗게 변했어요. 왜 그런가요?", "온도가 너무 높은가요?", "지금 환기해야 하나요?",
                "배꼽썩음병을 예방하려면 어떻게 해야 하나요?", "양액 EC를 얼마로 맞춰야 하나요?", "밤 온도는 몇 도가 적당한가요?",
                "잿빛곰팡이병이 생겼어요!", "CO₂ 시비는 언제 하나요?", "뿌리가 갈색으로 변했어요…", "착과가 잘 안 돼요."]
QUESTIONS_EN = ["Why are the lower leaves turning yellow?", "Is the temperature too high right now?",
                "Should I open the vents?", "How do I prevent blossom-end rot?", "What EC should the nutrient solution have?",
                "What night temperature is best for fruit set?", "I see grey mould on the stems!",
                "When should I enrich CO2?", "The roots look brown...", "Fruit set is poor this week."]
ANSWERS = ["환기창을 열고 습도를 80 % 아래로 낮추세요.", "Keep the night temperature at 15-18 °C.",
           "[WARNING: HEAT_STRESS, HIGH_HUMIDITY] 고온 다습합니다. 즉시 환기하세요.", "pH 5.5–6.5, EC 2.0~3.5 dS/m.",
           "  leading spaces,\ttabs\nand\n\nnewlines  ", "Mixed 한영 text: 토마토(tomato) 🍅 x3 — ok?"]


def domain_texts(n: int = 520, seed: int = 0) -> list[str]:
    """Korean and English domain texts with STATUS tags, built from the sensors module's own formatter."""
    from farmslm.domain import sensors

    rng = random.Random(seed)
    texts = []
    for i in itertools.count():
        if len(texts) >= n:
            break
        raw = {"temp_c": round(rng.uniform(5, 40), 1), "humidity_pct": rng.randint(30, 99),
               "co2_ppm": rng.randint(300, 1500), "ph": round(rng.uniform(4.5, 8), 2)}
        if i % 3 == 0:
            raw["period"] = rng.choice(["day", "night"])
        readings = sensors.validate(raw)
        question = rng.choice(QUESTIONS_KO if i % 2 else QUESTIONS_EN)
        texts.append(sensors.format_prompt(readings if i % 4 else None, question) + " " + rng.choice(ANSWERS))
    return texts


def test_encode_matches_llama_cpp(default_gguf):
    import llama_cpp

    tok = get_tokenizer(default_gguf)
    llm = llama_cpp.Llama(model_path=str(default_gguf), vocab_only=True, verbose=False)
    texts = domain_texts()
    assert len(texts) >= 500 and any("[STATUS:" in t for t in texts)
    for text in texts:
        ids = tok.encode(text)
        assert ids == llm.tokenize(text.encode(), add_bos=True, special=True)
        assert ids[0] == tok.bos_id and tok.decode(ids) == text
        assert tok.encode(text, add_bos=False) == ids[1:]


def _spm_from_gguf(gguf_path, out_path):
    """A SentencePiece model with the GGUF's pieces, scores and types, and Gemma's normalizer settings."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    vocab = read_vocab(gguf_path)
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(vocab.tokens)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 3, 2, 1, 0
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for piece, score, ttype in zip(vocab.tokens, vocab.scores, vocab.token_types):
        m.pieces.add(piece=piece.decode("utf-8"), score=float(score), type=int(ttype))
    out_path.write_bytes(m.SerializeToString())
    return out_path


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory, default_gguf):
    d = tmp_path_factory.mktemp("spm")
    _spm_from_gguf(default_gguf, d / "tokenizer.model")
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "vocab_size": 262144,
                                               "max_position_embeddings": 32768}))
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                         "bos_token": "<bos>", "eos_token": "<eos>",
                                                         "pad_token": "<pad>", "unk_token": "<unk>"}))
    return d


def test_independent_sentencepiece_reference(default_gguf, spm_dir):
    """llama.cpp's SPM code vs Google's sentencepiece on the same vocabulary, differences reported.

    Known difference: Gemma's vocabulary holds runs of spaces as user-defined tokens ('  ', '   ', ...)
    with literal spaces; llama.cpp (like HF tokenizers' added vocabulary) matches them on the raw text,
    the rebuilt SentencePiece model escapes spaces to '▁' first and never matches them. Every other
    text must tokenize identically."""
    import re

    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    tok = get_tokenizer(default_gguf)
    texts = domain_texts()
    diffs = [t for t in texts if [tok.bos_id] + sp.encode(t) != tok.encode(t, special=False)]
    multi_space = [t for t in texts if re.search(r" {2,}", t)]
    print(f"sentencepiece vs llama.cpp: {len(texts) - len(diffs)}/{len(texts)} identical; "
          f"{len(diffs)} differ, all with runs of spaces ({len(multi_space)} such texts)")
    assert set(diffs) <= set(multi_space)
    plain = [t for t in texts if t not in multi_space]
    assert len(plain) >= 400


def test_tokenizer_gguf_from_hf_sentencepiece(default_gguf, spm_dir, tmp_path):
    out = tokenizer_gguf_from_hf(spm_dir, tmp_path / "tok.gguf")
    ours, ref = get_tokenizer(out), get_tokenizer(default_gguf)
    assert (ours.vocab_size, ours.bos_id, ours.eos_id) == (ref.vocab_size, ref.bos_id, ref.eos_id)
    for text in domain_texts(100, seed=1):
        assert ours.encode(text) == ref.encode(text)


def test_write_tokenizer_gguf_is_tensor_free_and_equivalent(default_gguf, tmp_path):
    from gguf import GGUFReader

    out = write_tokenizer_gguf(default_gguf, tmp_path / "tokenizer.gguf")
    assert len(GGUFReader(str(out)).tensors) == 0
    assert out.stat().st_size < default_gguf.stat().st_size / 10
    ours, ref = get_tokenizer(out), get_tokenizer(default_gguf)
    for text in domain_texts(50, seed=2):
        assert ours.encode(text) == ref.encode(text)
    vocab = read_vocab(out)
    assert len(vocab.tokens) == ref.vocab_size == len(vocab.scores)
    assert vocab.tokens[ref.bos_id] == b"<bos>" and ref.piece(ref.bos_id) == b"<bos>"


def test_fast_gguf_reader_reads_what_gguf_py_reads(default_gguf, tmp_path):
    """The fast reader (plain-ndarray slicing) yields gguf-py's own fields and tensors; the architecture comes
    from the header without parsing the vocabulary."""
    import numpy as np
    from gguf import GGUFReader

    from farmslm.model.tokenizer import gguf_arch_of, gguf_reader, one_gguf_read, read_kvs

    small = write_tokenizer_gguf(default_gguf, tmp_path / "tokenizer.gguf")
    for path in (small, default_gguf):
        fast, ref = gguf_reader(path), GGUFReader(str(path))
        assert list(fast.fields) == list(ref.fields)
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "general.architecture"):
            a, b = fast.fields[key], ref.fields[key]
            assert a.types == b.types and a.data == b.data
            assert all(np.array_equal(a.parts[i], b.parts[i]) for i in a.data[:2000])
        assert [(t.name, t.tensor_type, t.n_bytes) for t in fast.tensors] == \
               [(t.name, t.tensor_type, t.n_bytes) for t in ref.tensors]
        assert gguf_arch_of(path) == "gemma3"
    assert np.array_equal(np.asarray(gguf_reader(default_gguf).tensors[0].data), np.asarray(ref.tensors[0].data))
    assert read_kvs(small, "tokenizer.")["tokenizer.ggml.tokens"].value[:5] == \
           [bytes(ref.fields["tokenizer.ggml.tokens"].parts[i]) for i in ref.fields["tokenizer.ggml.tokens"].data[:5]]
    import gguf

    with one_gguf_read():
        assert gguf.GGUFReader(str(small)) is gguf.GGUFReader(str(small))  # one parse per file while inside
    assert gguf.GGUFReader is GGUFReader
    with pytest.raises(ValueError, match="not a GGUF"):
        gguf_arch_of(tmp_path / "x.bin") if (tmp_path / "x.bin").write_bytes(b"nope" * 8) else None
