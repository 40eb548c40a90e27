"""Continuous batching: several answers share one llama.cpp context, one decode call per step for all.

requests (token ids, greedy, repeat penalty, max tokens) -> per request a stream of token ids. A scheduler
thread admits a request into a free sequence slot (its prompt decoded alone into that sequence), then each
step samples one token per active slot from its last logits and decodes all of them together in a single
llama_decode with one token per sequence: a memory-bound decode reads the weights once for the whole batch,
so eight zones get nearly eight times the tokens per second of one. A finished slot's KV cells are freed
(llama_memory_seq_rm) and the slot takes the next request at once. Greedy sampling with llama.cpp's repeat
penalty rule (over the request's last `penalty_last_n` generated tokens, prompt not counted).
llama-cpp-python's own server does not batch across requests; this uses its low-level batch API.

Example: BatchScheduler(llm, n_seq=8).generate(ids, max_tokens=60) -> iterator of token ids
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

log = logging.getLogger("farmslm.batch")
_DONE = -2


@dataclass
class _Request:
    prompt: list[int]
    max_tokens: int
    penalty: float
    penalty_last_n: int
    min_tokens: int = 0  # end-of-generation is masked until this many tokens are generated
    out: queue.Queue = field(default_factory=queue.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    slot: int = -1
    pos: int = 0
    generated: list[int] = field(default_factory=list)
    logits_index: int = -1  # where this slot's next logits are in the last decoded batch
    next_tok: int | None = None  # sampled, not yet emitted (sampled before any other decode overwrites logits)


def end_of_generation_ids(llm) -> np.ndarray:
    """The vocabulary's end-of-generation token ids (EOS, end-of-turn, ...), read once per model."""
    import llama_cpp

    vocab = llm._model.vocab
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    return np.array([i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)], dtype=np.int64)


class BatchScheduler:
    """Owns the context's sequences 0..n_seq-1; generate() may be called from many threads at once."""

    def __init__(self, llm, n_seq: int, n_batch: int = 512, eog_ids: np.ndarray | None = None):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llm
        self.ctx = llm._ctx.ctx
        self.vocab = llm._model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eog_ids = end_of_generation_ids(llm) if eog_ids is None else eog_ids
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(max(n_batch, n_seq), 0, 1)
        self.pending: queue.Queue[_Request] = queue.Queue()
        self.active: dict[int, _Request] = {}
        self.closed = False
        self.steps = 0  # decode calls with at least two sequences (how much batching happened)
        self._thread = threading.Thread(target=self._loop, name="farmslm-batch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.closed = True
        self.pending.put(None)  # type: ignore[arg-type]
        self._thread.join(30)
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None

    def generate(self, prompt: list[int], max_tokens: int, penalty: float = 1.0, penalty_last_n: int = 64,
                 cancel: threading.Event | None = None, min_tokens: int = 0) -> Iterator[int]:
        """Token ids of the greedy continuation; stops at EOS (not yielded, and not before min_tokens), max_tokens
        or cancel."""
        if self.closed:
            raise RuntimeError("the batch scheduler is closed")
        req = _Request(list(prompt), max_tokens, penalty, penalty_last_n, min_tokens, cancel=cancel or threading.Event())
        self.pending.put(req)
        try:
            while (tok := req.out.get()) != _DONE:
                if isinstance(tok, BaseException):
                    raise tok
                yield tok
        finally:
            req.cancel.set()  # the caller stopped reading (a stop string, a client gone): free the slot

    # ---- the scheduler thread -------------------------------------------------------------------

    def _memory(self):
        return self.lib.llama_get_memory(self.ctx)

    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, pos, seq, wants_logits)."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = want

    def _decode(self, entries) -> None:
        self._fill(entries)
        rc = self.lib.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _admit(self, req: _Request, slot: int) -> None:
        """Decode the prompt into the slot's sequence (in chunks of n_batch); its last logits come next."""
        req.slot, req.pos = slot, 0
        ids = req.prompt
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start:start + self.n_batch]
            last = start + len(chunk) == len(ids)
            self._decode([(t, start + i, slot, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        req.pos = len(ids)
        req.logits_index = len(ids) - 1 - (len(ids) - 1) // self.n_batch * self.n_batch
        req.next_tok = self._next_token(req)  # now, before another decode replaces the logits
        self.active[slot] = req

    def _next_token(self, req: _Request) -> int:
        ptr = self.lib.llama_get_logits_ith(self.ctx, req.logits_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)
        if req.penalty != 1.0 and req.generated:
            seen = np.unique(np.asarray(req.generated[-req.penalty_last_n:], dtype=np.int64))
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / req.penalty, vals * req.penalty)
        if len(req.generated) < req.min_tokens:
            logits[self.eog_ids] = -np.inf
        return int(np.argmax(logits))

    def _finish(self, req: _Request, error: BaseException | None = None) -> None:
        self.lib.llama_memory_seq_rm(self._memory(), req.slot, -1, -1)
        self.active.pop(req.slot, None)
        req.out.put(error if error is not None else _DONE)

    def _loop(self) -> None:
        while not self.closed:
            try:
                for req in self.active.values():  # the last step's logits, before an admission decodes anything
                    if req.next_tok is None:
                        req.next_tok = self._next_token(req)
                self._admit_pending(block=not self.active)
                step: list[tuple[int, int, int, bool]] = []
                for req in list(self.active.values()):
                    tok, req.next_tok = req.next_tok, None
                    if req.cancel.is_set() or tok is None or self.lib.llama_vocab_is_eog(self.vocab, tok):
                        self._finish(req)
                        continue
                    req.generated.append(tok)
                    req.out.put(tok)
                    if len(req.generated) >= req.max_tokens:
                        self._finish(req)
                        continue
                    step.append((tok, req.pos, req.slot, True))
                if step:
                    self._decode(step)
                    self.steps += len(step) > 1
                    for i, (_, _, slot, _) in enumerate(step):
                        self.active[slot].logits_index = i
                        self.active[slot].pos += 1
            except Exception as exc:  # a failed decode ends every active request with the error, not the server
                log.error("batch step failed: %s", exc)
                for req in list(self.active.values()):
                    self._finish(req, exc)

    def _admit_pending(self, block: bool) -> None:
        free = [s for s in range(self.n_seq) if s not in self.active]
        while free:
            try:
                req = self.pending.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            if req is None:  # close()
                self.closed = True
                return
            if req.cancel.is_set():
                req.out.put(_DONE)
                continue
            try:
                self._admit(req, free.pop(0))
            except Exception as exc:
                self.lib.llama_memory_seq_rm(self._memory(), req.slot, -1, -1)
                req.out.put(exc)
            block = False
