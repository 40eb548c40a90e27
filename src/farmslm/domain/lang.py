"""The two languages farmslm speaks, defined once, and how a question's language is told.

Example: python -c "from farmslm.domain.lang import detect_lang; print(detect_lang('잎이 시들어요'))"
"""

from __future__ import annotations

import re

LANGS = ("en", "ko")
_HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")


def check_lang(lang: str, field: str = "lang") -> str:
    """lang if it is one of LANGS; else ValueError naming the field and the allowed values."""
    if lang not in LANGS:
        raise ValueError(f"{field}: got {lang!r}; expected one of {'|'.join(LANGS)}")
    return lang


def detect_lang(text: str) -> str:
    """'ko' when the text holds any Hangul (Korean growers mix in 'EC', 'pH', 'CO2'), else 'en'."""
    return "ko" if _HANGUL.search(text or "") else "en"
