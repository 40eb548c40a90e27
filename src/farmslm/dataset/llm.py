"""Optional synthesizer backend: any OpenAI-compatible chat endpoint writes answers from knowledge facts.

For each row a scenario is drawn exactly as in synth (fact, readings, question, the retrieved facts); the rule
engine writes the tag and its sentences (the row's prefill); the LLM writes only the model part from the facts.
Its rows then pass the same verification as synthesized ones (off-domain or empty answers end in quarantine
with the reason). Key: env var FARMSLM_LLM_API_KEY.

Example: farmslm data build --out /tmp/ds --llm-endpoint http://127.0.0.1:8080/v1 --llm-model gemma
"""

from __future__ import annotations

import os
import random

import httpx

from farmslm.dataset import synth
from farmslm.domain import rules
from farmslm.domain.knowledge import CATEGORIES, facts_by_category
from farmslm.domain.lang import LANGS
from farmslm.domain.prompt import MAX_ACTIONS
from farmslm.domain.sensors import parse_tag

API_KEY_ENV = "FARMSLM_LLM_API_KEY"
_LANG_NAME = {"en": "English", "ko": "Korean (한국어)"}


def chat_url(endpoint: str) -> str:
    """Accept a base URL, a .../v1 URL or the full .../chat/completions URL."""
    e = endpoint.rstrip("/")
    if e.endswith("/chat/completions"):
        return e
    return e + ("/chat/completions" if e.endswith("/v1") else "/v1/chat/completions")


def chat(endpoint: str, model: str, messages: list[dict], max_tokens: int, temperature: float = 0.3,
         timeout_s: float = 60.0, seed: int | None = None) -> str:
    """One chat completion -> the assistant's text. Raises httpx errors on HTTP / network failure."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(API_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if seed is not None:
        body["seed"] = seed
    resp = httpx.post(chat_url(endpoint), json=body, headers=headers, timeout=timeout_s)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"] or ""


def build_messages(facts: list[dict], question: str, rule_text: str, lang: str) -> list[dict]:
    """System prompt with the retrieved facts and the rule engine's sentences; user turn = the grower's question."""
    shown = [f"- {f[lang]['fact']} ({'; '.join(f[lang]['do'][:MAX_ACTIONS])})" for f in facts]
    system = (f"You are a greenhouse tomato advisor. Answer in {_LANG_NAME[lang]}, in at most 50 words, using only "
              "these facts; do not restate sensor readings or warnings (they are already given to the grower: "
              f"{rule_text}). If the facts do not answer the question, say you have no verified information.\n"
              + "\n".join(shown))
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def synthesize_llm(n: int, seed: int, endpoint: str, model: str, max_tokens: int = 160,
                   timeout_s: float = 60.0, index=None) -> tuple[list[dict], list[dict]]:
    """n scenarios -> (rows to verify, failed requests as quarantine rows with a `reason`)."""
    from farmslm.domain import explain, retrieve
    from farmslm.domain.prompt import FORMAT, guarded_prompt, sample_text

    index = index or retrieve.build()
    rng = random.Random(f"llm-{seed}")
    rows, failed = [], []
    for i in range(n):
        category, lang = CATEGORIES[i % len(CATEGORIES)], LANGS[i % 2]
        if not facts_by_category()[category]:
            continue
        fact = rng.choice(facts_by_category()[category])
        readings = synth.sample_readings(rng, fact, rng.random() < 0.58)
        question = synth.compose_question(rng, fact, readings, lang)
        warnings = rules.evaluate(readings)
        facts = synth.prompt_facts(rng, index, fact, question, lang, frozenset(), abstain=False)
        prefill = guarded_prompt(readings, question, facts, lang, explain.prefill(readings, lang, warnings))
        base = {"id": f"llm-{lang}-{category}-{i:05d}", "format": FORMAT, "lang": lang, "category": category,
                "fact_id": fact.id, "sensors": readings, "question": question, "warnings": warnings,
                "retrieved": [f["id"] for f in facts], "abstain": False, "prefill": prefill,
                "origin": f"llm:{model}"}
        try:
            reply = chat(endpoint, model, build_messages(facts, question, explain.rule_text(readings, lang, warnings),
                                                         lang), max_tokens, timeout_s=timeout_s, seed=seed + i)
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            failed.append({**base, "answer": "", "text": "",
                           "reason": f"llm: request failed: {type(exc).__name__}: {exc}"[:300]})
            continue
        _, answer = parse_tag(reply.strip())  # a tag the model wrote anyway is not part of its text
        rows.append({**base, "answer": answer, "text": sample_text(prefill, answer)})
    return rows, failed
