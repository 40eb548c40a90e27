"""Perplexity of a torch causal LM over texts, tokenized with our (llama.cpp) tokenizer.

texts -> exp(mean next-token NLL over all real tokens). Shared by pruning, training and evaluation.
Example: perplexity(model, Tokenizer("runs/quick/prune/tokenizer.gguf"), ["토마토는 ..."], max_len=128)
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn


def batches(ids: Sequence[Sequence[int]], batch_size: int, pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) batches, longest first so padding stays small."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = [ids[i] for i in order[start:start + batch_size]]
        width = max(len(c) for c in chunk)
        x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, c in enumerate(chunk):
            x[row, :len(c)] = torch.tensor(c, dtype=torch.long)
            mask[row, :len(c)] = 1
        yield x, mask


def encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """BOS + tokens, truncated to max_len; texts shorter than 2 tokens carry no prediction and are dropped."""
    ids = [tokenizer.encode(t, add_bos=True)[:max_len] for t in texts]
    return [x for x in ids if len(x) >= 2]


@torch.no_grad()
def nll_ids(model: nn.Module, ids: Sequence[Sequence[int]], batch_size: int = 8) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of predicted tokens."""
    total, count = 0.0, 0
    for x, mask in batches(ids, batch_size):
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        target = x[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                   ignore_index=-100, reduction="sum").item()
        count += int((target != -100).sum())
    return total, count


def perplexity_ids(model: nn.Module, ids: Sequence[Sequence[int]], batch_size: int = 8) -> float:
    total, count = nll_ids(model, ids, batch_size)
    if count == 0:
        raise ValueError("perplexity: no text with at least 2 tokens")
    return math.exp(total / count)


def perplexity(model: nn.Module, tokenizer, texts: Sequence[str], max_len: int = 128, batch_size: int = 8) -> float:
    """exp(mean NLL) over texts (each truncated to max_len tokens, BOS included)."""
    return perplexity_ids(model, encode_texts(tokenizer, texts, max_len), batch_size)
