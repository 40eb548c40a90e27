"""Domain vocabulary trimming: keep the tokens the domain needs, drop the rest of the 262k.

model dir | base spec + dataset dir -> model dir whose embedding (and untied head) holds only the
kept rows, whose tokenizer.gguf holds only the kept pieces (in old-id order, so SPM scores keep
their meaning), plus vocab_map.json (new id i <-> old id kept_ids[i]).

Kept: every piece llama.cpp's SentencePiece tokenizer passes through on the domain corpus (final
and intermediate merge products, matched user-defined pieces), so the corpus tokenizes to the same
pieces; all byte-fallback tokens (any text still encodes); the control tokens except <unusedN>; all
user-defined tokens (newline/space/tab runs, HTML tags); and `keep_general` general tokens:
the highest-scoring Korean and ASCII pieces, each with its merge closure (see `general_ids`).
Example: farmslm vocab trim --model default --data runs/quick/data --out runs/quick/vocab
"""

from __future__ import annotations

import heapq
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from farmslm import artifacts
from farmslm.config import ConfigError
from farmslm.model.tokenizer import write_kvs_gguf

log = logging.getLogger(__name__)

VOCAB_MAP = "vocab_map.json"
# gguf.TokenType values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581".encode()  # SentencePiece's escaped space
_UNUSED_RE = re.compile(rb"^<unused\d+>$")
# llama.cpp's unicode_len_utf8: sequence length from the lead byte's high nibble (continuations -> 1)
_UTF8_LEN = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)


@dataclass
class VocabConfig:
    keep_general: int = 22_000  # general (non-corpus) tokens kept, merge closures included
    general_ko_share: float = 0.4  # share of keep_general given to Korean pieces (the rest: ASCII)
    max_vocab: int = 32_000  # upper bound on the kept vocabulary; a larger selection is an error
    verify: bool = True  # check the corpus tokenizes identically with llama.cpp (full vs trimmed)


class SpmVocab:
    """A SentencePiece-style ('llama') GGUF vocabulary with llama.cpp's tokenization, in Python.

    Written here because the kept set needs the intermediate merge products, which no tokenizer
    library exposes; `check_against_llama` proves it agrees with llama.cpp before it is trusted.
    """

    def __init__(self, tokens: list[bytes], scores: list[float], types: list[int], add_space_prefix: bool = False):
        self.tokens, self.scores, self.types = tokens, scores, types
        self.add_space_prefix = add_space_prefix
        self.ids = {t: i for i, t in enumerate(tokens)}  # last duplicate wins, as in llama.cpp
        self.byte_ids = [self.ids.get(b"<0x%02X>" % b, self.ids.get(bytes([b]))) for b in range(256)]

        # special pieces llama.cpp splits the text on, grouped by first byte (only a few can occur)
        self._partition: dict[bool, dict[int, list[int]]] = {False: {}, True: {}}
        for i, (tok, kind) in enumerate(zip(tokens, types)):
            if tok and kind in (USER_DEFINED, CONTROL, UNKNOWN):
                for special in (True, False) if kind == USER_DEFINED else (True,):
                    self._partition[special].setdefault(tok[0], []).append(i)

    @classmethod
    def from_kvs(cls, kvs: dict, where: str = "") -> "SpmVocab":
        """From read_kvs() of a GGUF (reading a 262k vocabulary takes ~10 s: read it once)."""
        model = kvs.get("tokenizer.ggml.model")
        if model is None or model.value != b"llama":
            raise ConfigError(f"--model: vocabulary of {where} is {model.value if model else '?'!r}; "
                              "vocabulary trimming supports SentencePiece ('llama') vocabularies only")
        for key in ("tokenizer.ggml.merges", "tokenizer.ggml.precompiled_charsmap"):
            if key in kvs:
                raise ConfigError(f"--model: {where} has {key}; only plain SentencePiece vocabularies can be trimmed")
        tokens = kvs["tokenizer.ggml.tokens"].value
        scores = kvs["tokenizer.ggml.scores"].value if "tokenizer.ggml.scores" in kvs else [0.0] * len(tokens)
        types = kvs["tokenizer.ggml.token_type"].value if "tokenizer.ggml.token_type" in kvs else [NORMAL] * len(tokens)
        prefix = kvs.get("tokenizer.ggml.add_space_prefix")  # llama.cpp's default for SPM: true
        return cls(list(tokens), [float(x) for x in scores], [int(x) for x in types],
                   add_space_prefix=bool(prefix.value) if prefix else True)

    @classmethod
    def from_gguf(cls, path: str | Path) -> "SpmVocab":
        from farmslm.model.tokenizer import read_kvs

        return cls.from_kvs(read_kvs(path, prefix="tokenizer."), str(path))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, special: bool = True, used: set[int] | None = None) -> list[int]:
        """llama.cpp's llama_tokenize (no BOS); adds every piece the merges pass through to `used`."""
        data = text.encode()
        groups = self._partition[special]
        order = [i for b in set(data) for i in groups.get(b, ())]
        order.sort(key=lambda i: (-len(self.tokens[i]), i))  # llama.cpp: longest special piece first
        fragments: list[bytes | int] = [data]
        for tid in order:
            piece, split = self.tokens[tid], []
            for frag in fragments:
                if isinstance(frag, int) or piece not in frag:
                    split.append(frag)
                    continue
                parts = frag.split(piece)
                for k, part in enumerate(parts):
                    if k:
                        split.append(tid)
                    if part:
                        split.append(part)
            fragments = split
        out: list[int] = []
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            raw = (b" " if self.add_space_prefix and prev_special else b"") + frag
            self._spm(raw.replace(b" ", SPACE), out, used)
            prev_special = False
        if used is not None:
            used.update(out)
        return out

    def _spm(self, text: bytes, out: list[int], used: set[int] | None) -> None:
        """llm_tokenizer_spm_session: merge the best-scoring adjacent pair while one is a token."""
        ids, scores = self.ids, self.scores
        start, size = [], []
        i = 0
        while i < len(text):
            n = min(_UTF8_LEN[text[i] >> 4], len(text) - i)
            start.append(i)
            size.append(n)
            i += n
        m = len(start)
        prev = list(range(-1, m - 1))
        nxt = list(range(1, m)) + [-1] if m else []
        heap: list[tuple[float, int, int, int]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            n = size[left] + size[right]
            tid = ids.get(text[start[left]:start[left] + n])
            if tid is not None:  # ties: the leftmost pair first, as llama.cpp's comparator
                heapq.heappush(heap, (-scores[tid], left, right, n))

        for k in range(1, m):
            push(k - 1, k)
        while heap:
            _, left, right, n = heapq.heappop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != n:
                continue  # stale: one side was merged since
            size[left] = n
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            if used is not None:
                used.add(ids[text[start[left]:start[left] + n]])
            push(prev[left], left)
            push(left, nxt[left])
        k = 0 if m else -1
        while k != -1:
            piece = text[start[k]:start[k] + size[k]]
            tid = ids.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # a character that is no token: its UTF-8 bytes
                out.extend(self.byte_ids[b] for b in piece)
            k = nxt[k]


def corpus_pieces(texts: Iterable[str]) -> list[str]:
    """The texts, plus prompt and answer of every 'Q: ...\\nA: ...' sample apart: training and
    inference tokenize the prompt on its own, so its boundary must tokenize exactly too."""
    out = []
    for text in texts:
        out.append(text)
        prompt, mark, answer = text.partition("\nA:")
        if mark:
            out += [prompt + mark, answer]
    return list(dict.fromkeys(out))


def base_ids(vocab: SpmVocab) -> set[int]:
    """Byte fallback, control tokens (except <unusedN>) and user-defined pieces: always kept."""
    keep = {i for i in vocab.byte_ids if i is not None}
    for i, (tok, kind) in enumerate(zip(vocab.tokens, vocab.types)):
        if kind in (UNKNOWN, USER_DEFINED) or (kind == CONTROL and not _UNUSED_RE.match(tok)):
            keep.add(i)
    return keep


def _is_hangul(c: str) -> bool:
    o = ord(c)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


def piece_class(piece: bytes) -> str | None:
    """'ko' (Hangul, optionally with ASCII/▁), 'en' (printable ASCII/▁ only) or None (other scripts)."""
    try:
        text = piece.decode().replace("\u2581", " ")
    except UnicodeDecodeError:
        return None
    if not text.strip() or not all(c.isascii() and (c.isprintable()) or _is_hangul(c) for c in text):
        return None
    return "ko" if any(_is_hangul(c) for c in text) else "en"


def general_ids(vocab: SpmVocab, keep: set[int], n_general: int, ko_share: float) -> set[int]:
    """The rule for general tokens: normal pieces ranked by SPM score (higher = merged earlier in
    training = more frequent), Korean and ASCII ranked apart; Korean gets round(n * ko_share) tokens
    (fewer when the vocabulary has fewer Korean pieces), ASCII the rest. Each piece comes with its
    merge closure (the pieces its own text passes through), counted in the budget, and is skipped
    when its own text does not tokenize to it."""
    ranked = sorted((i for i, t in enumerate(vocab.types) if t == NORMAL), key=lambda i: -vocab.scores[i])
    added: set[int] = set()
    left = n_general
    for lang, share in (("ko", ko_share), ("en", 1.0)):
        budget, spent = min(left, round(n_general * share)), 0
        for tid in ranked:
            if spent >= budget:
                break
            if tid in keep or tid in added or piece_class(vocab.tokens[tid]) != lang:
                continue
            closure: set[int] = set()
            pieces: list[int] = []
            vocab._spm(vocab.tokens[tid], pieces, closure)
            if pieces != [tid]:
                continue
            new = (closure | {tid}) - keep - added
            added |= new
            spent += len(new)
        left -= spent
    return added


def select(vocab: SpmVocab, texts: Iterable[str], cfg: VocabConfig) -> tuple[list[int], dict]:
    """Old ids to keep (ascending) and counts per reason."""
    corpus: set[int] = set()
    for text in corpus_pieces(texts):
        vocab.encode(text, special=True, used=corpus)
        vocab.encode(text, special=False, used=corpus)
    keep = base_ids(vocab)
    n_base = len(keep)
    n_corpus_new = len(corpus - keep)
    keep |= corpus
    general = general_ids(vocab, keep, cfg.keep_general, cfg.general_ko_share)
    keep |= general
    kept = sorted(keep)
    stats = {"n_kept": len(kept), "n_full": len(vocab), "n_corpus": len(corpus), "n_base": n_base,
             "n_corpus_beyond_base": n_corpus_new, "n_general": len(general)}
    if len(kept) > cfg.max_vocab:
        raise ConfigError(f"keep_general: {len(kept)} tokens selected ({len(corpus)} for the corpus, "
                          f"{len(general)} general) > max_vocab {cfg.max_vocab}; lower --keep-general")
    return kept, stats


def check_against_llama(vocab: SpmVocab, tokenizer_gguf: Path, texts: list[str]) -> int:
    """Texts whose Python tokenization differs from llama.cpp's (both special settings); must be 0."""
    from farmslm.model.tokenizer import get_tokenizer

    tok = get_tokenizer(tokenizer_gguf)
    bad = 0
    for text in texts:
        for special in (True, False):
            if vocab.encode(text, special=special) != tok.encode(text, add_bos=False, special=special):
                bad += 1
                log.warning("python SPM differs from llama.cpp on %r (special=%s)", text[:80], special)
                break
    return bad


# ---- writing the trimmed vocabulary and model ---------------------------------------------------

def trimmed_kvs(kvs: dict, kept: list[int]) -> dict:
    """Vocabulary KVs with only the kept pieces (old-id order) and the *_token_id keys remapped."""
    from gguf import GGUFValueType

    from farmslm.model.tokenizer import KV

    new_id = {old: new for new, old in enumerate(kept)}
    out = dict(kvs)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if key in kvs:
            kv = kvs[key]
            out[key] = KV([kv.value[i] for i in kept], kv.vtype, kv.sub_type)
    for key, kv in kvs.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            if kv.value not in new_id:
                raise ValueError(f"{key}={kv.value} is not among the kept tokens")
            out[key] = KV(new_id[kv.value], kv.vtype)
    out["farmslm.vocab.source_size"] = KV(len(kvs["tokenizer.ggml.tokens"].value), GGUFValueType.UINT32)
    return out


def write_trimmed_tokenizer(src_gguf: Path, kept: list[int], out: Path) -> Path:
    """The vocabulary GGUF of `src_gguf` (metadata only) trimmed to `kept`."""
    from farmslm.model.tokenizer import gguf_arch_of, read_kvs

    return write_kvs_gguf(trimmed_kvs(read_kvs(src_gguf), kept), gguf_arch_of(src_gguf), out)


def trim_model(model: torch.nn.Module, kept: list[int]) -> torch.nn.Module:
    """Keep only the rows `kept` of the input embedding and (untied) output head, in place."""
    idx = torch.tensor(kept, dtype=torch.long)
    new_id = {old: new for new, old in enumerate(kept)}
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    with torch.no_grad():
        emb.weight = torch.nn.Parameter(emb.weight[idx].clone())
        emb.num_embeddings = len(kept)
        if emb.padding_idx is not None:
            emb.padding_idx = new_id.get(emb.padding_idx)
        if head is not None:
            if tied:
                head.weight = emb.weight
            else:
                head.weight = torch.nn.Parameter(head.weight[idx].clone())
            if getattr(head, "bias", None) is not None:
                head.bias = torch.nn.Parameter(head.bias[idx].clone())
            head.out_features = len(kept)
    config = model.config
    config.vocab_size = len(kept)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        old = getattr(config, key, None)
        if isinstance(old, list):
            setattr(config, key, [new_id[o] for o in old if o in new_id])
        elif old is not None:
            setattr(config, key, new_id.get(old))
    return model


def restricted_logits(full_logits: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """The full model's logits on the kept ids: softmax of these is the renormalised restriction."""
    return full_logits[..., torch.tensor(kept, dtype=torch.long)]


def compare_tokenization(full_gguf: Path, trimmed_gguf: Path, kept: list[int], texts: list[str]) -> dict:
    """llama.cpp on both vocabularies: texts whose trimmed ids differ from the mapped full ids."""
    from farmslm.model.tokenizer import get_tokenizer

    full, trim = get_tokenizer(full_gguf), get_tokenizer(trimmed_gguf)
    differ = []
    for text in texts:
        a = [kept[i] for i in trim.encode(text, add_bos=True)]
        if a != full.encode(text, add_bos=True):
            differ.append(text)
    return {"n_texts": len(texts), "n_identical": len(texts) - len(differ), "differ": differ}


def run(cfg: VocabConfig, model: str, data_dir: str | Path, out_dir: str | Path,
        texts: list[str] | None = None) -> Path:
    """Trim `model` ('default', base spec or our model dir) to the corpus of `data_dir` -> out_dir.

    `texts` replaces the dataset's domain texts (tests, studies)."""
    from farmslm.model import io

    started = time.time()
    out_dir = Path(out_dir)
    src = Path(model)
    inputs = {"model": artifacts.hash_path(src) if src.exists() else str(model)}
    if texts is None:
        from farmslm.dataset.corpus import domain_texts

        if not Path(data_dir).is_dir():
            raise ConfigError(f"--data: {data_dir} is not a dataset directory (run `farmslm data build`)")
        texts = domain_texts(data_dir)
        inputs["data"] = artifacts.hash_path(Path(data_dir) / "train.jsonl")  # the only split the corpus reads
        inputs["knowledge"] = artifacts.hash_config(texts)
    else:
        inputs["texts"] = artifacts.hash_config(texts)
    inputs["code"] = artifacts.code_hash("farmslm.model.vocab")
    if artifacts.is_done(out_dir, cfg, inputs) and (out_dir / VOCAB_MAP).exists():
        log.info("vocab: %s is up to date, skipping", out_dir)
        return out_dir
    from farmslm.model.load import load_any

    loaded = load_any(model)
    net, tokenizer_gguf, arch = loaded.model, loaded.tokenizer_gguf, loaded.arch
    from farmslm.model.tokenizer import read_kvs

    kvs = read_kvs(tokenizer_gguf)  # every metadata KV (hparams too: llama.cpp needs them)
    vocab = SpmVocab.from_kvs(kvs, str(tokenizer_gguf))
    if net.get_input_embeddings().weight.shape[0] != len(vocab):
        raise ConfigError(f"--model: embedding has {net.get_input_embeddings().weight.shape[0]} rows, "
                          f"vocabulary {len(vocab)} tokens")
    texts = corpus_pieces(texts)
    if cfg.verify:
        bad = check_against_llama(vocab, tokenizer_gguf, texts)
        if bad:
            raise RuntimeError(f"the Python SPM tokenizer differs from llama.cpp on {bad} corpus texts; "
                               "the kept set would not be exact")
    kept, stats = select(vocab, texts, cfg)
    n_params_before = io.param_count(net)
    trim_model(net, kept)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_path(out_dir.parent / f".{out_dir.name}.tokenizer.gguf") as tmp_tok:
        write_kvs_gguf(trimmed_kvs(kvs, kept), arch, tmp_tok)
        if cfg.verify:
            cmp = compare_tokenization(tokenizer_gguf, tmp_tok, kept, texts)
            if cmp["differ"]:
                raise RuntimeError(f"{len(cmp['differ'])} corpus texts tokenize differently after trimming, "
                                   f"e.g. {cmp['differ'][0][:80]!r}")
            stats["corpus_texts_identical"] = cmp["n_identical"]
        stats.update(n_params_before=n_params_before, n_params_after=io.param_count(net))
        io.save_model_dir(net, out_dir, tmp_tok, arch=arch, stage="vocab", config=cfg, inputs=inputs,
                          metrics=stats, started=started)
    artifacts.write_json(out_dir / VOCAB_MAP, {"source_vocab_size": len(vocab), "kept_ids": kept})
    log.info("vocab: kept %d of %d tokens -> %s", len(kept), len(vocab), out_dir)
    return out_dir


def load_map(model_dir: str | Path) -> list[int]:
    """kept_ids of a trimmed model dir: new id i is old id kept_ids[i]."""
    return artifacts.read_json(Path(model_dir) / VOCAB_MAP)["kept_ids"]


def summary(model_dir: str | Path) -> dict:
    """The figures meta.json records for a trimmed model dir."""
    meta = artifacts.read_meta(model_dir) or {}
    keys = ("n_kept", "n_full", "n_corpus", "n_general", "corpus_texts_identical", "n_params_before", "n_params_after")
    return {k: meta.get("metrics", {}).get(k) for k in keys}
