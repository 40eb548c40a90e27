"""The dataset card: counts per split / language / category, lengths, verification figures, sources.

splits + verification figures -> `card.json` (stable keys for scripts) and `card.md` (for people).

Example: python -c "from farmslm.dataset.card import card_markdown; help(card_markdown)"
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from farmslm.domain.knowledge import CATEGORIES, CATEGORY_NAMES, load_facts, load_sources
from farmslm.domain.lang import LANGS

_CORE = re.compile(r"[^\w\s]")


def _stats(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values, dtype=float)
    return {"mean": round(float(a.mean()), 1), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "min": float(a.min())}


def answer_length(row: dict) -> int:
    """English: words; Korean: characters without spaces (the usual measure for Hangul text)."""
    return len(row["answer"].split()) if row["lang"] == "en" else len(row["answer"].replace(" ", ""))


def token_lengths(texts: list[str]) -> list[int] | None:
    """Token counts with the packaged base model's tokenizer (llama.cpp, vocab only); None if unavailable."""
    try:
        from farmslm.model.load import default_gguf
        from farmslm.model.tokenizer import Tokenizer

        tok = Tokenizer(default_gguf())
        return [len(tok.encode(t, add_bos=True)) for t in texts]
    except Exception:  # noqa: BLE001 - the card still builds without a tokenizer
        return None


def describe(rows: list[dict]) -> dict:
    n = len(rows)
    if n == 0:
        return {"rows": 0}
    pct = lambda k: round(100.0 * k / n, 1)  # noqa: E731
    n_warn = sum(1 for r in rows if r["warnings"])
    return {
        "rows": n,
        "by_lang": {lang: sum(r["lang"] == lang for r in rows) for lang in LANGS},
        "by_lang_pct": {lang: pct(sum(r["lang"] == lang for r in rows)) for lang in LANGS},
        "by_category": {c: sum(r["category"] == c for r in rows) for c in CATEGORIES},
        "by_category_pct": {c: pct(sum(r["category"] == c for r in rows)) for c in CATEGORIES},
        "warning_pct": pct(n_warn), "normal_pct": pct(n - n_warn),
        "n_warnings_hist": dict(sorted(Counter(len(r["warnings"]) for r in rows).items())),
        "n_sensors_hist": dict(sorted(Counter(sum(k not in ("period", "growth_stage") for k in r["sensors"])
                                              for r in rows).items())),
        "codes": dict(Counter(c for r in rows for c in r["warnings"]).most_common()),
    }


def phrasings(rows: list[dict]) -> dict:
    """Distinct question strings, and distinct question cores (the fact question inside), per language."""
    out = {}
    for lang in LANGS:
        qs = [r["question"] for r in rows if r["lang"] == lang]
        joined = "\n".join(x.lower() for x in qs)
        cores = {q for f in load_facts() for q in f.q[lang] if q.lower() in joined}
        out[lang] = {"distinct_questions": len(set(qs)), "distinct_question_cores": len(cores)}
    return out


def knowledge_card(knowledge_dir=None) -> dict:
    """The knowledge base in figures: facts per category and language, sources per publisher, verified share."""
    facts = load_facts(knowledge_dir)
    sources = load_sources(knowledge_dir)
    by_cat = Counter(f.category for f in facts)
    pubs = Counter(sources[s].get("publisher", "?") for s in sources)
    cited = Counter(sources[s].get("publisher", "?") for f in facts for s in f.source)
    return {
        "facts": len(facts),
        "verified": sum(f.verified for f in facts),
        "verified_share": round(sum(f.verified for f in facts) / len(facts), 3) if facts else None,
        "by_category": {c: {"facts": by_cat.get(c, 0), "verified": sum(f.verified for f in facts if f.category == c),
                            **{f"{lang}_question_cores": sum(len(f.q[lang]) for f in facts if f.category == c)
                               for lang in LANGS}} for c in CATEGORIES},
        "languages": {lang: {"facts": sum(bool(f.fact[lang]) for f in facts),
                             "question_cores": sum(len(f.q[lang]) for f in facts),
                             "actions": sum(len(f.do[lang]) for f in facts)} for lang in LANGS},
        "sources": len(sources),
        "sources_by_publisher": dict(pubs.most_common()),
        "citations_by_publisher": dict(cited.most_common()),
        "with_thresholds": sum(bool(f.thresholds) for f in facts),
    }


def knowledge_markdown(k: dict) -> list[str]:
    lines = ["## Knowledge base", "",
             f"{k['facts']} facts, {k['verified']} verified ({100 * (k['verified_share'] or 0):.0f} %: claim and numbers "
             f"seen on the page the fact links, with a quote); {k['with_thresholds']} declare sensor numbers checked "
             f"against rules.yaml; {k['sources']} sources.", "",
             "| category | facts | verified | ko cores | en cores |", "|---|---:|---:|---:|---:|"]
    for c, d in k["by_category"].items():
        lines.append(f"| {CATEGORY_NAMES[c][0]} ({c}) | {d['facts']} | {d['verified']} | {d['ko_question_cores']} "
                     f"| {d['en_question_cores']} |")
    lines += ["", "| publisher | sources | facts citing |", "|---|---:|---:|"]
    for pub, n in k["sources_by_publisher"].items():
        lines.append(f"| {pub} | {n} | {k['citations_by_publisher'].get(pub, 0)} |")
    return lines + [""]


def build_card(splits: dict[str, list[dict]], validation: list[dict], verify_figures: dict, leakage: dict,
               config: dict, heldout: dict[str, str] | None = None) -> dict:
    """Everything here is a function of the rows and the config, so the card is deterministic too."""
    all_rows = [r for s in splits.values() for r in s]
    lengths = {lang: _stats([answer_length(r) for r in all_rows if r["lang"] == lang]) for lang in LANGS}
    toks = token_lengths([r["text"] for r in all_rows])
    used = Counter(s for r in all_rows for f in load_facts() if f.id == r.get("fact_id") for s in f.source)
    sources = load_sources()
    return {
        "name": "farmslm tomato greenhouse QA",
        "rows_total": len(all_rows),
        "splits": {s: describe(rows) for s, rows in splits.items()},
        "overall": describe(all_rows),
        "phrasings": phrasings(all_rows),
        "lengths": {"answer_words_en": lengths["en"], "answer_chars_ko": lengths["ko"],
                    "text_chars": _stats([len(r["text"]) for r in all_rows]),
                    "text_tokens": _stats(toks) if toks else None},
        "verification": verify_figures,
        "leakage": {k: v for k, v in leakage.items() if k != "moved_to_train"} | {"moved_ids": leakage.get("moved_to_train", [])},
        "validation_questions": {"rows": len(validation), "questions": len({r["qid"] for r in validation}),
                                 "with_warnings": sum(1 for r in validation if r["warnings"])},
        "sources": [{"id": k, **v, "facts_rows": used.get(k, 0)} for k, v in sources.items()],
        "knowledge": knowledge_card(),
        "heldout_facts": {"val": sorted(f for f, s in (heldout or {}).items() if s == "val"),
                          "test": sorted(f for f, s in (heldout or {}).items() if s == "test")},
        "config": {k: v for k, v in config.items() if k != "out_dir"},
    }


def card_markdown(card: dict) -> str:
    o = card["overall"]
    v = card["verification"]
    lines = [f"# Dataset card: {card['name']}", "",
             "Synthesized from the knowledge base (`domain/data/knowledge/*.yaml`) and the rule engine "
             "(`domain/data/rules.yaml`); every row passed the four verification checks (structure, warning "
             "consistency, terminology, deduplication).", "",
             "## Counts", "", "| split | rows | ko | en | with warning | normal |", "|---|---|---|---|---|---|"]
    for s, d in card["splits"].items():
        if d.get("rows"):
            lines.append(f"| {s} | {d['rows']} | {d['by_lang']['ko']} | {d['by_lang']['en']} | {d['warning_pct']} % | {d['normal_pct']} % |")
    lines += [f"| all | {o['rows']} | {o['by_lang']['ko']} ({o['by_lang_pct']['ko']} %) | {o['by_lang']['en']} "
              f"({o['by_lang_pct']['en']} %) | {o['warning_pct']} % | {o['normal_pct']} % |", "",
              "| category | rows | % |", "|---|---|---|"]
    for c in CATEGORIES:
        lines.append(f"| {CATEGORY_NAMES[c][0]} ({c}) | {o['by_category'][c]} | {o['by_category_pct'][c]} |")
    p = card["phrasings"]
    lines += ["", "## Questions and lengths", "",
              f"- distinct questions: ko {p['ko']['distinct_questions']}, en {p['en']['distinct_questions']}; "
              f"distinct question cores: ko {p['ko']['distinct_question_cores']}, en {p['en']['distinct_question_cores']}",
              f"- answer length: en words {card['lengths']['answer_words_en']}; ko characters {card['lengths']['answer_chars_ko']}",
              f"- text tokens (base tokenizer): {card['lengths']['text_tokens']}",
              f"- sensors per row: {o['n_sensors_hist']}; warnings per row: {o['n_warnings_hist']}",
              "", "## Verification", "",
              f"- rows synthesized: {v['n_in']}; verified: {v['n_verified']}; quarantined: {v['n_quarantined']} "
              "(`quarantine.jsonl`, each with its reason)",
              f"- rejected by check: {v['rejected_by_check']}",
              f"- duplicates removed (cosine >= {v['dup_threshold']}, char n-gram TF-IDF): {v['duplicates_removed']}",
              f"- terminology match: mean {v['term_match_mean_verified']} over verified rows "
              f"({v['term_match_mean_all']} over all checked); rows below {v['term_threshold']} discarded",
              f"- split leakage (cross-split cosine >= {v['dup_threshold']}): {card['leakage']['pairs_found']} rows moved "
              f"to train, {card['leakage']['pairs_left']} pairs left",
              f"- validation questions: {card['validation_questions']['questions']} × ko/en = "
              f"{card['validation_questions']['rows']} rows", "",
              f"- held-out facts (rows in val/test only, never in training): val {len(card['heldout_facts']['val'])}, "
              f"test {len(card['heldout_facts']['test'])}", "", *knowledge_markdown(card["knowledge"]),
              "## Sources", ""]
    for s in card["sources"]:
        mark = "" if s.get("verified", True) else " *(unverified)*"
        lines.append(f"- `{s['id']}`: {s['title']}, {s.get('publisher', '?')} <{s.get('url', '')}>{mark} "
                     f"(rows: {s['facts_rows']})")
    lines += ["", f"Config: `{card['config']}` (build time: see meta.json)", ""]
    return "\n".join(lines)
