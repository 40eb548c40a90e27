"""An external OpenAI-compatible engine as the generator: rules, retrieval and sensors stay in farmslm.

A co-op with many greenhouses can run the same GGUF in a llama.cpp server (or vLLM on a GPU box) and point
`farmslm serve --engine-url URL --model model.gguf` at it: farmslm still judges the readings, writes the rule
sentences, retrieves the facts (the model's sidecar index) and decides abstention; only the continuation of
the guarded prompt is generated remotely, through /v1/completions (streamed, greedy, stop "\\nQ:"). The local
GGUF is read for its metadata (prompt format, knowledge hash) only, never loaded.

Example: farmslm serve --model runs/quick/model.gguf --engine-url http://127.0.0.1:8081/v1
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from farmslm.runtime.engine import REPEAT_PENALTY, STOP, Engine, InputError, Timings, check_repeat_penalty, sidecar_path


def completions_url(url: str) -> str:
    u = url.rstrip("/")
    if u.endswith("/completions"):
        return u
    return u + ("/completions" if u.endswith("/v1") else "/v1/completions")


class RemoteEngine(Engine):
    """Engine.ask with generation delegated to an OpenAI-compatible /v1/completions endpoint."""

    def __init__(self, model_path: str | Path, engine_url: str, engine_model: str = "", timeout_s: float = 120.0,
                 repeat_penalty: float = REPEAT_PENALTY, index_path: str | Path | None = None,
                 contact: dict | None = None, api_key: str = ""):
        from farmslm.model.tokenizer import gguf_reader

        path = Path(model_path)
        if not path.is_file():
            raise InputError("model", f"{path} does not exist: the remote engine's GGUF is read for its metadata")
        reader = gguf_reader(path)

        def field(key: str, default: str = "") -> str:
            f = reader.fields.get(key)
            return bytes(f.parts[f.data[0]]).decode() if f is not None else default

        self.model_path, self.few_shot, self.n_ctx, self.parallel, self.scheduler = path, "", 1 << 30, 1, None
        self.repeat_penalty = check_repeat_penalty(repeat_penalty)
        self.contact = dict(contact or {})
        self.url, self.remote_model, self.timeout_s, self.api_key = completions_url(engine_url), engine_model, timeout_s, api_key
        self.name = field("general.name", path.stem)
        self.prompt_format = int(field("farmslm.prompt_format", "1") or 1)
        self.index, self.index_note = None, ""
        if self.prompt_format >= 2:
            from farmslm.domain import retrieve

            index_path = Path(index_path) if index_path else sidecar_path(path)
            if not index_path.is_file():
                raise InputError("model", f"{path} answers from a knowledge index, but {index_path} is missing")
            self.index = retrieve.load(index_path)
        self.llm = None

    def close(self) -> None:
        pass

    def _generate(self, prompt: str, guard: bool, max_tokens: int, temperature: float, penalty: float,
                  on_piece: Callable[[str], None] | None, should_stop: Callable[[], bool] | None,
                  tag_only: bool = False):
        import httpx

        if not guard:
            raise InputError("guard", "the remote engine serves guarded answers only")
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": float(temperature), "stream": True,
                "stop": list(STOP), "repeat_penalty": penalty, **({"model": self.remote_model} if self.remote_model else {})}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        t = Timings(stop="eos")
        text = ""
        t0 = time.perf_counter()
        t_first = t_last = t0
        try:
            with httpx.stream("POST", self.url, json=body, headers=headers, timeout=self.timeout_s) as resp:
                if resp.status_code != 200:
                    raise InputError("engine_url", f"{self.url} answered {resp.status_code}: {resp.read()[:200]!r}")
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    choice = (chunk.get("choices") or [{}])[0]
                    piece = choice.get("text") or ""
                    if piece:
                        now = time.perf_counter()
                        if t.gen_tokens == 0:
                            t_first = now
                            piece = piece.lstrip()
                        t_last = now
                        t.gen_tokens += 1
                        text += piece
                        if on_piece is not None and piece:
                            on_piece(piece)
                    if choice.get("finish_reason"):
                        t.stop = {"length": "length", "stop": "stop"}.get(choice["finish_reason"], "eos")
                    if (usage := chunk.get("usage")) and usage.get("prompt_tokens"):
                        t.prompt_tokens = int(usage["prompt_tokens"])
                    if should_stop is not None and should_stop():
                        t.stop = "cancelled"
                        break
        except httpx.HTTPError as exc:
            raise InputError("engine_url", f"{self.url} could not be reached ({type(exc).__name__}: {exc})") from None
        end = time.perf_counter()
        t.ttft_ms = round((t_first - t0) * 1000, 1)
        t.gen_ms = round((t_last - t_first) * 1000, 1)
        t.total_ms = round((end - t0) * 1000, 1)
        t.tok_s = round((t.gen_tokens - 1) / (t_last - t_first), 1) if t.gen_tokens > 1 and t_last > t_first else 0.0
        return text.strip(), None, t
