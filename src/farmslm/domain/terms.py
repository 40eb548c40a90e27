"""The tomato terminology dictionary (data/terminology.yaml) and the terminology match rate.

match_rate(text, lang) is the share of the text's sentences that mention at least one dictionary term:
- STATUS / WARNING / NORMAL tags are removed first;
- sentences are split on ". ", "! ", "? " (punctuation followed by whitespace or the end, so "2.0" is not a
  break), "。" and newlines; fragments without any letter (list numbers, bare figures) are not sentences;
- a sentence matches if it contains a canonical term or synonym of either script:
  Hangul forms (>= 2 syllables) by substring; forms of >= 4 syllables also match with spaces between
  syllables ("잿빛 곰팡이병" matches "잿빛곰팡이병"), shorter ones only as written, so that two words
  side by side ("하고 토요일") do not make a term ("고토");
  Latin forms (>= 2 characters) as whole words: both sides are cut into runs of [A-Za-z0-9] and compared as
  token sequences (so "dS/m" matches "dS/m" and "dS m"), with an optional plural "s"/"es" on the last word,
  case-insensitively, except short symbols with a capital (<= 4 chars: "pH", "EC", "DO", "Ca"): exact case.
Both scripts are matched whatever `lang` is (Korean answers say "EC", "pH"); `lang` picks the language
of the canonical names find_terms returns. A text with no sentence scores 0.0. Used by the dataset verification (rows below 0.70 are discarded).

Example: python -c "from farmslm.domain.terms import match_rate; print(match_rate('Ventilate the greenhouse.', 'en'))"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from farmslm.domain.lang import LANGS, check_lang

CATEGORIES = ("disease", "pest", "nutrient", "environment", "equipment", "practice")

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_LETTER = re.compile(r"[A-Za-z\uac00-\ud7a3]")
_TAGS = re.compile(r"\[(?:STATUS|WARNING):[^\]]*\]|\[NORMAL\]")
_SPLIT = re.compile(r"[.!?](?=\s|$)|。|\n")


@dataclass(frozen=True)
class Term:
    en: str
    ko: str
    synonyms: tuple[str, ...]
    category: str

    def forms(self) -> tuple[str, ...]:
        return (self.en, self.ko, *self.synonyms)


@lru_cache(maxsize=1)
def load_terms() -> tuple[Term, ...]:
    """All terms of data/terminology.yaml, checked: both languages, known category, unique canonicals."""
    text = resources.files("farmslm.domain").joinpath("data/terminology.yaml").read_text(encoding="utf-8")
    terms = []
    seen: set[str] = set()
    for i, raw in enumerate(yaml.safe_load(text)["terms"]):
        term = Term(en=str(raw["en"]).strip(), ko=str(raw["ko"]).strip(),
                    synonyms=tuple(str(s).strip() for s in raw.get("synonyms") or ()), category=raw["category"])
        if not term.en or not term.ko or term.category not in CATEGORIES:
            raise ValueError(f"terminology.yaml term {i}: needs en, ko and a category in {CATEGORIES}")
        for key in (f"en:{term.en.lower()}", f"ko:{term.ko}"):
            if key in seen:
                raise ValueError(f"terminology.yaml term {i}: duplicate canonical term {key}")
            seen.add(key)
        terms.append(term)
    return tuple(terms)


def _exact_case(form: str) -> bool:
    return len(form) <= 4 and any(c.isupper() for c in form)


_TOKEN = re.compile(r"[A-Za-z0-9]+")


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text))


@dataclass(frozen=True)
class _Matcher:
    hangul: re.Pattern | None
    hangul_map: dict  # form (no spaces) -> term index
    latin_exact: dict  # token tuple -> term index (short symbols with a capital: "pH", "EC", "DO")
    latin_fold: dict  # lowercased token tuple -> term index
    max_tokens: int

    def indices(self, sentence: str) -> set[int]:
        found = set()
        if self.hangul is not None:
            for m in self.hangul.finditer(sentence):
                found.add(self.hangul_map[re.sub(r"\s+", "", m.group(0))])
        # Latin forms: whole runs of [A-Za-z0-9] compared as token n-grams (a dict lookup per n-gram
        # instead of one huge regex alternation, which was ~10x slower)
        toks = _tokens(sentence)
        for i in range(len(toks)):
            for n in range(1, min(self.max_tokens, len(toks) - i) + 1):
                gram = toks[i:i + n]
                last = gram[-1]
                for cut in (0, 1, 2):  # plural "s" / "es" on the last word
                    if cut and not (last.endswith("s") if cut == 1 else last.endswith("es")):
                        continue
                    g = gram[:-1] + (last[:len(last) - cut],) if cut else gram
                    idx = self.latin_exact.get(g)
                    if idx is None:
                        idx = self.latin_fold.get(tuple(t.lower() for t in g))
                    if idx is not None:
                        found.add(idx)
                        break
        return found


@lru_cache(maxsize=1)
def _matcher() -> _Matcher:
    hangul_map: dict[str, int] = {}
    hangul_words: dict[str, list[str]] = {}  # short forms keep their own word breaks ("잎 황화")
    latin_exact: dict[tuple, int] = {}
    latin_fold: dict[tuple, int] = {}
    for idx, term in enumerate(load_terms()):
        for form in term.forms():
            if _HANGUL.search(form):
                key = re.sub(r"\s+", "", form)
                if len(key) >= 2 and key not in hangul_map:
                    hangul_map[key] = idx
                    hangul_words[key] = form.split()
            elif len(form) >= 2 and _tokens(form):
                if _exact_case(form):
                    latin_exact.setdefault(_tokens(form), idx)
                else:
                    latin_fold.setdefault(_tokens(form.lower()), idx)
    by_len = lambda forms: sorted(set(forms), key=len, reverse=True)  # noqa: E731  longest form wins
    spaced = [r"\s?".join(map(re.escape, key if len(key) >= 4 else hangul_words[key])) for key in by_len(hangul_map)]
    hangul = re.compile("|".join(spaced)) if spaced else None
    max_tokens = max(len(k) for k in (*latin_exact, *latin_fold))
    return _Matcher(hangul, hangul_map, latin_exact, latin_fold, max_tokens)


def sentences(text: str) -> list[str]:
    """Tags removed, split as documented above; only fragments with a letter count."""
    parts = _SPLIT.split(_TAGS.sub(" ", text))
    return [p.strip() for p in parts if _LETTER.search(p)]


def _check_lang(lang: str) -> None:
    check_lang(lang)


def match_rate(text: str, lang: str) -> float:
    """Share of sentences (see module docstring) that contain at least one dictionary term; 0.0 if none."""
    _check_lang(lang)
    parts = sentences(text)
    if not parts:
        return 0.0
    m = _matcher()
    return sum(1 for s in parts if m.indices(s)) / len(parts)


def find_term_ids(text: str) -> list[int]:
    """Indices (into load_terms()) of the terms a text mentions, in dictionary order."""
    m = _matcher()
    found: set[int] = set()
    for s in sentences(text):
        found |= m.indices(s)
    return sorted(found)


def find_terms(text: str, lang: str) -> list[str]:
    """Canonical terms (in `lang`) mentioned in the text, in dictionary order, without repeats."""
    _check_lang(lang)
    m = _matcher()
    found: set[int] = set()
    for s in sentences(text):
        found |= m.indices(s)
    terms = load_terms()
    return [getattr(terms[i], lang) for i in sorted(found)]
