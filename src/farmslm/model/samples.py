"""Training samples: dataset rows -> token ids with the loss mask, batches, truncation accounting.

A row's `text` is `Q: [STATUS: ...] [FACTS: ...] question\\nA: [TAG] <rule sentences> <model part>`.
`prefill` (grounded rows) is the text up to and including the rule-written sentences: exactly what the
guarded engine feeds llama.cpp, tokenized as one string so training and inference see the same ids.
Loss: the tag (weight `tag_weight`, so the unguarded tag stays measurable) and the model part (+ EOS);
the rule sentences are prefilled at inference and carry no loss. Rows without `prefill` (wave-1 data)
put everything after "\\nA:" under the loss, as before.
A sample longer than `max_seq_len` loses its answer tail (counted); one whose tag would be cut is dropped
and returned with its reason, never trained on silently.
Example: python -c "from farmslm.model.samples import split_text; print(split_text('Q: hi\\nA: [NORMAL] ok'))"
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from farmslm import artifacts

IGNORE = -100  # label of masked (prompt / padding) positions
ANSWER_MARK = "\nA:"  # the question ends here; the tag follows


@dataclass
class Example:
    ids: list[int]  # BOS + prompt (+ prefill) + answer + EOS
    n_prompt: int  # leading tokens before the tag (BOS + question prompt)
    n_tag: int  # tokens that spell the tag
    n_prefill: int = 0  # rule-sentence tokens after the tag (no loss)


@dataclass
class Encoded:
    examples: list[Example] = field(default_factory=list)
    truncated: int = 0  # samples whose answer tail was cut at max_seq_len
    dropped: list[dict] = field(default_factory=list)  # {id, reason}: samples not trained on


def split_text(text: str) -> tuple[str, str]:
    """'Q: ...\\nA: [TAG] answer' -> ('Q: ...\\nA:', ' [TAG] answer'): the question prompt as inference sees it."""
    cut = text.find(ANSWER_MARK)
    if cut < 0:
        raise ValueError(f"sample has no {ANSWER_MARK!r}: {text[:60]!r}")
    cut += len(ANSWER_MARK)
    return text[:cut], text[cut:]


def _tag_tokens(tokenizer, ids: list[int]) -> int:
    """Number of leading ids whose text closes the tag's ']'."""
    for k in range(1, min(len(ids), 48) + 1):
        if "]" in tokenizer.decode(ids[:k]):
            return k
    return 0


def encode_row(tokenizer, row: dict, max_seq_len: int, tag_only: bool = False) -> tuple[Example | None, str]:
    """One row -> (Example, "" | "truncated") or (None, reason it cannot be trained on)."""
    text = row["text"]
    question, _ = split_text(text)
    q_ids = tokenizer.encode(question, add_bos=True)
    prefill = row.get("prefill")
    if prefill:
        if not text.startswith(prefill):
            return None, "prefill is not a prefix of text"
        head = tokenizer.encode(prefill, add_bos=True)
        if head[:len(q_ids)] != q_ids:  # the tag must start on a token boundary, as in the engine
            return None, "question prompt does not tokenize as a prefix of the prefill"
        n_tag = _tag_tokens(tokenizer, head[len(q_ids):])
        tail = text[len(prefill):]
        a_ids = (tokenizer.encode(tail, add_bos=False) if tail.strip() else []) + [tokenizer.eos_id]
        n_prefill = len(head) - len(q_ids) - n_tag
    else:
        head = q_ids
        a_ids = tokenizer.encode(text[len(question):], add_bos=False) + [tokenizer.eos_id]
        n_tag = _tag_tokens(tokenizer, a_ids)
        n_prefill = 0
    if n_tag == 0:
        return None, "no [TAG] after the question"
    if tag_only:
        ids = (head + a_ids)[:len(q_ids) + n_tag]
        return Example(ids, len(q_ids), n_tag), ""
    ids = head + a_ids
    if len(q_ids) + n_tag > max_seq_len:
        return None, f"the tag would be cut: it ends at token {len(q_ids) + n_tag} > max_seq_len {max_seq_len}"
    if len(head) >= max_seq_len:
        return None, f"no answer token fits: the prefill is {len(head)} tokens >= max_seq_len {max_seq_len}"
    note = "truncated" if len(ids) > max_seq_len else ""
    return Example(ids[:max_seq_len], len(q_ids), n_tag, n_prefill), note


def encode_example(tokenizer, text: str, max_seq_len: int, tag_only: bool = False) -> Example:
    """A bare sample text (no prefill) -> Example; raises when it cannot be trained on."""
    ex, note = encode_row(tokenizer, {"text": text}, max_seq_len, tag_only)
    if ex is None:
        raise ValueError(note)
    return ex


def labels_and_weights(ex: Example, tag_weight: float) -> tuple[list[int], list[float]]:
    """Per position: the target id (IGNORE on prompt and prefill) and its CE weight (tag_weight on the tag)."""
    n = len(ex.ids)
    start, tag_end, fill_end = ex.n_prompt, ex.n_prompt + ex.n_tag, ex.n_prompt + ex.n_tag + ex.n_prefill
    labels, weights = [], []
    for i in range(n):
        if i < start or tag_end <= i < fill_end:
            labels.append(IGNORE)
            weights.append(0.0)
        else:
            labels.append(ex.ids[i])
            weights.append(tag_weight if i < tag_end else 1.0)
    return labels, weights


def epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort by length inside chunks of 32 batches, shuffle the batches.

    Padding then costs little CPU time while the order stays random and seeded per epoch.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = 32 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(examples[i].ids))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], tag_weight: float, pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(e.ids) for e in examples)
    ids, mask, labels, weights, tag = [], [], [], [], []
    for e in examples:
        lab, w = labels_and_weights(e, tag_weight)
        pad = n - len(e.ids)
        ids.append(e.ids + [pad_id] * pad)
        mask.append([1] * len(e.ids) + [0] * pad)
        labels.append(lab + [IGNORE] * pad)
        weights.append(w + [0.0] * pad)
        tag.append([e.n_prompt <= i < e.n_prompt + e.n_tag for i in range(n)])
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels), "weights": torch.tensor(weights), "tag": torch.tensor(tag)}


def load_examples(path: Path, tokenizer, max_seq_len: int, limit: int, seed: int, drills: int = 0) -> Encoded:
    """`limit` full samples (seeded draw; 0 = all rows), then up to `drills` tag drills from the rows left over."""
    rows = artifacts.read_jsonl(path)
    rest: list[dict] = []
    if limit and limit < len(rows):
        order = random.Random(seed).sample(range(len(rows)), len(rows))
        rest = [rows[i] for i in order[limit:limit + drills]]
        rows = [rows[i] for i in order[:limit]]  # the same draw as random.sample(rows, limit)
    out = Encoded()
    for row, tag_only in [(r, False) for r in rows] + [(r, True) for r in rest]:
        ex, note = encode_row(tokenizer, row, max_seq_len, tag_only)
        if ex is None:
            out.dropped.append({"id": row.get("id"), "reason": note})
            continue
        out.truncated += note == "truncated"
        out.examples.append(ex)
    return out
