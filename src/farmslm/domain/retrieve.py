"""The knowledge index: BM25 over the facts in both languages, a calibrated "does it answer?" signal.

knowledge facts -> Index (saved as one JSON sidecar beside the model, loaded without torch) ->
search(question, lang, k) -> hits (fact id, score) and answerability features.
Documents: per fact and language, its question cores, fact sentence and actions, plus the dictionary
synonyms of the terms they name (a grower's "grey mould" finds the gray-mold fact). Tokens:
English words, Porter-stemmed, stopwords out; Korean by `analyzer`: `mecab` (MeCab-ko morphemes, content
parts of speech) or `ngram` (Hangul character bigrams, no dictionary: ~0 MB on the edge). BM25 is bm25s
(Lucene variant), rebuilt at load from the stored token lists (600 documents: milliseconds).

Example: farmslm index --out runs/quick/model.knowledge.json
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from farmslm.domain.lang import LANGS, check_lang

FORMAT = 1
ANALYZERS = ("ngram", "mecab")
DEFAULT_ANALYZER = "mecab"  # recall@2, paraphrase dev half (89 ko): 0.876 (mecab) vs 0.831 (ngram); en alike
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*|\d+(?:\.\d+)?")
_HANGUL_RUN = re.compile(r"[\uac00-\ud7a3]+")
_EN_STOP = frozenset("""a an the and or but if then so of to in on at by for with from into onto about as is are was were be
been being do does did doing have has had i my me we our you your it its this that these those there here what which who whom
how why when where can could should would will shall may might must not no yes very too much many more most some any all
each per than also just only get got please help tell know want need does dont don t s""".split())
# Korean function words and question endings that carry no topic (ngram analyzer only; mecab drops them by POS)
_KO_STOP = frozenset("""어떻게 어떤 무엇 무슨 왜 언제 얼마나 어디 뭐 좀 너무 정말 지금 혹시 그냥 우리 제가 저희 이거 이게 그게 하나요 되나요 있나요 인가요
해야 하면 할까요 합니다 입니다 있습니다 됩니다 하세요 주세요 알려""".split())
_MECAB_KEEP = ("NNG", "NNP", "NR", "XR", "VV", "VA", "SL", "SN", "MAG")


@lru_cache(maxsize=1)
def _stemmer():
    """NLTK's Porter stemmer. `import nltk` runs the package's __init__, which pulls in ~200 MB (scipy, sklearn)
    that the edge process does not need, so when nltk is not loaded yet its porter module is imported under
    temporary package stubs that are removed again: same stems, ~13 MB (a later `import nltk` is the real one)."""
    import importlib
    import importlib.util
    import sys
    import types

    if "nltk" in sys.modules:
        return importlib.import_module("nltk.stem.porter").PorterStemmer()
    root = Path(importlib.util.find_spec("nltk").submodule_search_locations[0])
    try:
        for name, path in (("nltk", root), ("nltk.stem", root / "stem")):
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            sys.modules[name] = stub
        porter = importlib.import_module("nltk.stem.porter")
    finally:
        for name in [n for n in sys.modules if n == "nltk" or n.startswith("nltk.")]:
            del sys.modules[name]
    return porter.PorterStemmer()


@lru_cache(maxsize=1)
def _mecab():
    import mecab_ko

    return mecab_ko.Tagger()


def _en_tokens(text: str) -> list[str]:
    stem = _stemmer().stem
    return [stem(w.lower()) for w in _WORD.findall(text) if w.lower() not in _EN_STOP]


def _ko_tokens(text: str, analyzer: str) -> list[str]:
    out = [w.lower() for w in _WORD.findall(text)]  # Latin and numbers inside Korean text (EC, pH, TYLCV, 2.0)
    if analyzer == "mecab":
        for line in _mecab().parse(text).splitlines():
            surface, _, feats = line.partition("\t")
            f = feats.split(",")
            if len(f) < 8 or not _HANGUL_RUN.search(surface):
                continue
            if f[4] == "Inflect" and f[7] != "*":  # 생겨요 -> 생기 (the stem of an inflected form)
                stem, pos = f[7].split("+")[0].split("/")[:2]
                if pos in _MECAB_KEEP:
                    out.append(stem)
            elif f[0].split("+")[0] in _MECAB_KEEP:
                out.append(surface)
        return out
    for run in _HANGUL_RUN.findall(text):
        if run in _KO_STOP:
            continue
        out += [run[i:i + 2] for i in range(len(run) - 1)] if len(run) > 1 else [run]
    return out


def tokens(text: str, lang: str, analyzer: str = DEFAULT_ANALYZER) -> list[str]:
    """Index/query tokens of a text: Korean by the analyzer, Latin words stemmed either way, plus one
    `#<term>` token per dictionary term named (in any of its forms, either language): a question that
    says "grey mould" and a fact that says "Botrytis" meet on the same concept token."""
    if analyzer not in ANALYZERS:
        raise ValueError(f"analyzer: got {analyzer!r}; expected one of {'|'.join(ANALYZERS)}")
    return list(_tokens(text, check_lang(lang), analyzer))


@lru_cache(maxsize=512)
def _tokens(text: str, lang: str, analyzer: str) -> tuple[str, ...]:
    """Cached: one answer reads its question's tokens for retrieval, abstention and citing."""
    from farmslm.domain import terms

    words = _ko_tokens(text, analyzer) if lang == "ko" else _en_tokens(text)
    return tuple(words + [f"#{i}" for i in terms.find_term_ids(text)])


@dataclass
class Hit:
    fact_id: str
    score: float
    coverage: float  # share of the query's distinct tokens the fact's document holds


@dataclass
class Index:
    """BM25 per language over fact documents; `facts` keeps what the prompt and the answer need."""
    facts: list[dict]  # {id, category, source: [...], verified, url, en: {fact, do, q}, ko: {...}}
    analyzer: str = DEFAULT_ANALYZER
    knowledge_hash: str = ""
    abstain: dict = field(default_factory=dict)  # calibrated answerability model (see farmslm.domain.abstain)
    sources: dict = field(default_factory=dict)  # source id -> {title, publisher, url}
    docs: dict = field(default_factory=dict)  # lang -> list of token lists (one per fact)
    _bm25: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"analyzer: got {self.analyzer!r}; expected one of {'|'.join(ANALYZERS)}")
        if not self.docs:
            self.docs = _docs(self.knowledge_hash or knowledge_hash(self.facts), self.analyzer, self.facts)
        self.by_id = {f["id"]: f for f in self.facts}

    def _retriever(self, lang: str):
        if lang not in self._bm25:
            import bm25s

            retriever = bm25s.BM25()
            retriever.index(self.docs[lang], show_progress=False)
            self._bm25[lang] = retriever
        return self._bm25[lang]

    def search(self, question: str, lang: str, k: int = 2, exclude: frozenset[str] = frozenset()) -> list[Hit]:
        """The k best facts for the question (facts in `exclude` skipped), best first."""
        import numpy as np

        query = tokens(question, lang, self.analyzer)
        if not query or not self.facts:
            return []
        retriever = self._retriever(lang)
        vocab = retriever.vocab_dict
        ids = [vocab[t] for t in query if t in vocab]
        if not ids:
            return []
        scores = np.asarray(retriever.get_scores(list(dict.fromkeys(t for t in query if t in vocab))))
        order = np.argsort(-scores, kind="stable")
        qset = set(query)
        hits = []
        for i in order:
            fid = self.facts[int(i)]["id"]
            if fid in exclude:
                continue
            if scores[i] <= 0 or len(hits) >= k:
                break
            doc = set(self.docs[lang][int(i)])
            hits.append(Hit(fid, round(float(scores[i]), 4), round(len(qset & doc) / len(qset), 4)))
        return hits

    def save(self, path: str | Path) -> Path:
        from farmslm import artifacts

        body = {"format": FORMAT, "analyzer": self.analyzer, "knowledge_hash": self.knowledge_hash,
                "abstain": self.abstain, "sources": self.sources, "facts": self.facts, "docs": self.docs}
        return artifacts.write_text(path, json.dumps(body, ensure_ascii=False, separators=(",", ":")))


_DOCS: dict[tuple[str, str], dict] = {}


def _docs(key: str, analyzer: str, facts: list[dict]) -> dict:
    """Token lists per language, computed once per knowledge base and analyzer in a process (a build
    indexes the same facts for the dataset and for the model; term matching costs ~7 ms a document)."""
    if (key, analyzer) not in _DOCS:
        _DOCS[(key, analyzer)] = {lang: [tokens(document_text(f, lang), lang, analyzer) for f in facts] for lang in LANGS}
    return {lang: list(v) for lang, v in _DOCS[(key, analyzer)].items()}


def load(path: str | Path) -> Index:
    """A saved index (the model's sidecar); ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"knowledge index: cannot read {path} ({exc})") from None
    if body.get("format") != FORMAT:
        raise ValueError(f"knowledge index: {path} has format {body.get('format')!r}; this farmslm reads {FORMAT}")
    return Index(body["facts"], body["analyzer"], body["knowledge_hash"], body.get("abstain") or {},
                 body.get("sources") or {}, body["docs"])


def document_text(fact: dict, lang: str) -> str:
    """What BM25 sees of a fact: its question cores, the fact and its actions (terms become concept tokens)."""
    part = fact[lang]
    return " ".join([*part["q"], part["fact"], *part["do"]])


_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def numbers(text: str) -> set[str]:
    """Numbers written in a text, normalised ("1,000" -> "1000", "2.0" -> "2")."""
    out = set()
    for m in _NUMBER.findall(text):
        m = m.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", m) else m.replace(",", ".")
        out.add(f"{float(m):g}")
    return out


def carried(text: str, fact: dict, lang: str, analyzer: str = DEFAULT_ANALYZER, min_share: float = 0.3) -> bool:
    """Whether an answer carries a fact: one of its numbers, or min_share of its fact sentence's tokens."""
    part = fact[lang]
    if numbers(text) & numbers(part["fact"] + " " + " ".join(part["do"])):
        return True
    fact_tokens = set(tokens(part["fact"], lang, analyzer))
    return bool(fact_tokens) and len(fact_tokens & set(tokens(text, lang, analyzer))) / len(fact_tokens) >= min_share


def fact_record(f) -> dict:
    """A knowledge.Fact -> the plain dict the index stores (no torch, no YAML at run time)."""
    return {"id": f.id, "category": f.category, "source": list(f.source), "verified": f.verified, "url": f.url,
            **{lang: {"fact": f.fact[lang], "do": list(f.do[lang]), "q": list(f.q[lang])} for lang in LANGS}}


def knowledge_hash(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


def build(analyzer: str = DEFAULT_ANALYZER, knowledge_dir: str | Path | None = None, abstain: dict | None = None) -> Index:
    """Index every fact of the knowledge base (the packaged one, or `knowledge_dir`)."""
    from farmslm.domain import knowledge

    facts = knowledge.load_facts(knowledge_dir)
    records = [fact_record(f) for f in facts]
    sources = {sid: {k: s.get(k, "") for k in ("title", "publisher", "url")}
               for sid, s in knowledge.load_sources(knowledge_dir).items()}
    return Index(records, analyzer, knowledge_hash(records), dict(abstain or {}), sources)
