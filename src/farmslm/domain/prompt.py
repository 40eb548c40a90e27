"""The grounded prompt (format 2): readings, retrieved facts, question; the tag and rule sentences prefilled.

    Q: [STATUS: temp_c=21.4, period=night] [FACTS: (1) <fact> Do: <action>; <action>. (2) ...] <question>
    A: [WARNING: HIGH_TEMP] <rule-written sentences> <the model writes from here>

One builder for the dataset, training, the engine and the server, so they agree token for token.
Format 1 (wave-1 models, `--model default`): `Q: [STATUS: ...] question\\nA:` and the model writes the rest.
A model's GGUF metadata `farmslm.prompt_format` says which one it was trained on.

Example: python -c "from farmslm.domain.prompt import facts_block; print(facts_block([], 'en'))"
"""

from __future__ import annotations

import re

from farmslm.domain.lang import check_lang
from farmslm.domain.sensors import Readings, format_status

FORMAT = 2
DO_LABEL = {"en": "Do:", "ko": "조치:"}
MAX_ACTIONS = 1  # actions per fact in the prompt (and in the answer): prompt tokens cost edge time (p90 ~350)
_BRACKETS = re.compile(r"[\[\]]")


def fact_line(n: int, fact: dict, lang: str) -> str:
    """`(1) <fact sentence> Do: a; b.` from an index record ({lang: {fact, do}})."""
    part = fact[lang]
    text = _BRACKETS.sub("", part["fact"].strip())
    do = "; ".join(_BRACKETS.sub("", a.strip().rstrip(".")) for a in part["do"][:MAX_ACTIONS])
    return f"({n}) {text} {DO_LABEL[lang]} {do}." if do else f"({n}) {text}"


def facts_block(facts: list[dict], lang: str) -> str:
    """[FACTS: (1) ... (2) ...], or "" when no fact was retrieved."""
    check_lang(lang)
    if not facts:
        return ""
    return "[FACTS: " + " ".join(fact_line(i + 1, f, lang) for i, f in enumerate(facts)) + "]"


def question_prompt(readings: Readings | None, question: str, facts: list[dict] | None = None,
                    lang: str = "en", prompt_format: int = FORMAT) -> str:
    """The prompt up to and including "A:" (format 1: no FACTS block)."""
    parts = [format_status(readings)] if readings else []
    if prompt_format >= 2:
        block = facts_block(facts or [], lang)
        if block:
            parts.append(block)
    parts.append(question.strip())
    return "Q: " + " ".join(parts) + "\nA:"


def guarded_prompt(readings: Readings | None, question: str, facts: list[dict], lang: str, prefill: str) -> str:
    """Format 2, guarded: the question prompt, then the rule engine's `[TAG] sentences`."""
    return question_prompt(readings, question, facts, lang) + " " + prefill


def sample_text(prompt_with_prefill: str, answer: str) -> str:
    """A training sample: the guarded prompt and the model-written part."""
    answer = answer.strip()
    return prompt_with_prefill + (" " + answer if answer else "")
