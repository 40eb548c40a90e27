"""Optional synthesizer backend: any OpenAI-compatible chat endpoint writes answers from knowledge facts.

For each row a scenario is drawn exactly as in synth (fact, readings, question); the rule engine gives
the warnings; the model is prompted with the fact, its actions and every warning's explanation and
asked for a short answer. Its rows then pass the same verification as synthesized ones (wrong tags,
off-domain or empty answers end in quarantine with the reason). Key: env var FARMSLM_LLM_API_KEY.

Example: farmslm data build --out /tmp/ds --llm-endpoint http://127.0.0.1:8080/v1 --llm-model gemma
"""

from __future__ import annotations

import os
import random

import httpx

from farmslm.dataset import synth
from farmslm.domain import rules
from farmslm.domain.knowledge import CATEGORIES, LANGS, facts_by_category
from farmslm.domain.sensors import format_prompt, format_sample, format_tag, parse_tag

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


def build_messages(fact, readings: dict, question: str, warnings: list[str], lang: str) -> list[dict]:
    """System prompt with the knowledge-base facts and the rule explanations; user turn = our Q: prompt."""
    facts = [f"- {fact.fact[lang]}", *[f"- {a}" for a in fact.do[lang]]]
    for code in warnings:
        e = rules.explain(code, lang)
        facts.append(f"- {code}: {e['cause']} {e['actions'][0]}")
    system = (f"You are a greenhouse tomato advisor. Answer in {_LANG_NAME[lang]}, in at most 60 words. "
              f"The rule engine's verdict for the readings is {format_tag(warnings)}: explain every warning with "
              "its threshold first, then answer the question with concrete actions. Use only these facts:\n"
              + "\n".join(facts))
    return [{"role": "system", "content": system}, {"role": "user", "content": format_prompt(readings, question)}]


def synthesize_llm(n: int, seed: int, endpoint: str, model: str, max_tokens: int = 160,
                   timeout_s: float = 60.0) -> tuple[list[dict], list[dict]]:
    """n scenarios -> (rows to verify, failed requests as quarantine rows with a `reason`)."""
    rng = random.Random(f"llm-{seed}")
    rows, failed = [], []
    for i in range(n):
        category, lang = CATEGORIES[i % len(CATEGORIES)], LANGS[i % 2]
        fact = rng.choice(facts_by_category()[category])
        readings = synth.sample_readings(rng, fact, rng.random() < 0.58)
        question = synth.compose_question(rng, fact, readings, lang)
        warnings = rules.evaluate(readings)
        base = {"id": f"llm-{lang}-{category}-{i:05d}", "lang": lang, "category": category, "sensors": readings,
                "question": question, "fact_id": fact.id, "origin": f"llm:{model}"}
        try:
            reply = chat(endpoint, model, build_messages(fact, readings, question, warnings, lang), max_tokens,
                         timeout_s=timeout_s, seed=seed + i)
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            failed.append({**base, "warnings": warnings, "answer": "", "text": "",
                           "reason": f"llm: request failed: {type(exc).__name__}: {exc}"[:300]})
            continue
        claimed, answer = parse_tag(reply.strip())
        # If the model wrote its own tag, keep it: verification then compares it with the rule engine.
        tag = warnings if claimed is None else claimed
        rows.append({**base, "warnings": tag, "answer": answer,
                     "text": format_sample(readings, question, tag, answer)})
    return rows, failed
