"""The build report: every variant side by side, the final model's targets, plots, sample answers.

per-variant eval JSONs (evaluate.py, test split) + the candidates' validation runs + stage durations + logs ->
    report.json   {"schema_version", "profile", "final", "durations_s", "variants": {name: {<SUMMARY_FIELDS>}},
                   "selection": {candidate: {<SUMMARY_FIELDS> on val}}, "index": {retrieval/abstention dev figures}}
    report.md     the variants table, targets of the final model, figures published elsewhere,
                  each variant's answers to the validation questions
    loss.png      training loss per trained variant
    quality_vs_size.png, speed.png
Example: python -c "from farmslm.evaluate.report import write_report; ..." (the build calls it)
"""

from __future__ import annotations

from pathlib import Path

from farmslm import artifacts

SCHEMA_VERSION = 2  # report.json only gains keys; version 1 had no faithfulness, retrieval or abstention
SUMMARY_FIELDS = ("bleu", "rouge_l", "chrf", "rouge_l_ko", "rouge_l_en", "faithful_rate", "faithful_rate_ko",
                  "faithful_rate_en", "unsupported_number_rate", "contradiction_rate", "invented_reading_rate",
                  "faithful_rate_validation", "fact_recall", "fact_precision", "false_abstention", "abstention_oos",
                  "abstention_oos_ko", "abstention_oos_en", "recall_at_2", "recall_at_2_paraphrase", "rouge_l_heldout",
                  "fact_recall_heldout", "warning_accuracy", "warning_accuracy_ko", "warning_accuracy_en",
                  "perplexity", "degenerate_rate", "size_mb", "params_m", "gen_tok_s", "prompt_tok_s", "ttft_ms",
                  "latency_s_avg", "latency_s_max", "rss_mb_avg", "rss_mb_max")
DEFAULT_FINAL = "pruned_lora_kd_q4_k_m"
STOCK = "stock"
REFERENCE = "finetuned_f16"
# Figures measured elsewhere, on other data and hardware: context, not comparable numbers.
PUBLISHED = [
    ("design report (seed 000), LoRA rank 16", "BLEU 0.1343, ROUGE-L 0.2384 (its own test set, whole answers; "
                                               "not run on a CPU device)"),
    ("earlier implementation (seed 001)", "3,405 MB model; 5.71 s mean / 8.18 s max response; "
                                          "1,264 / 1,345 MB memory (its own hardware; answers degenerate)"),
]
# Columns of the main table: (header, field, format).
COLUMNS = [("faithful", "faithful_rate", ".2f"), ("ko", "faithful_rate_ko", ".2f"), ("en", "faithful_rate_en", ".2f"),
           ("ROUGE-L", "rouge_l", ".3f"), ("fact recall", "fact_recall", ".2f"), ("held-out recall", "fact_recall_heldout", ".2f"),
           ("abstain OOS", "abstention_oos", ".2f"), ("false abst.", "false_abstention", ".2f"),
           ("tag acc", "warning_accuracy", ".2f"), ("ppl", "perplexity", ".2f"), ("degen", "degenerate_rate", ".2f"),
           ("MB", "size_mb", ".1f"), ("gen tok/s", "gen_tok_s", ".1f"), ("prompt tok/s", "prompt_tok_s", ".0f"),
           ("lat avg s", "latency_s_avg", ".2f"), ("RSS max MB", "rss_mb_max", ".0f")]


def targets(v: dict, stock: dict | None, reference: dict | None) -> dict[str, bool | None]:
    """The targets of the final model; None where a figure is missing."""
    def ge(a, b):
        return None if a is None or b is None else a >= b

    def le(a, b):
        return None if a is None or b is None else a <= b

    ref_rouge = (reference or {}).get("rouge_l")
    return {
        "faithful_rate >= 0.95 (test answers)": ge(v.get("faithful_rate"), 0.95),
        "faithful_rate >= 0.95 (validation questions)": ge(v.get("faithful_rate_validation"), 0.95),
        "abstention >= 0.90 on out-of-scope": ge(v.get("abstention_oos"), 0.90),
        "false abstention <= 0.05": le(v.get("false_abstention"), 0.05),
        "retrieval recall@2 >= 0.95 (test)": ge(v.get("recall_at_2"), 0.95),
        "retrieval recall@2 >= 0.85 (paraphrases)": ge(v.get("recall_at_2_paraphrase"), 0.85),
        "rouge_l >= 0.95 x finetuned_f16": ge(v.get("rouge_l"), None if ref_rouge is None else 0.95 * ref_rouge),
        "degenerate_rate == 0": None if v.get("degenerate_rate") is None else v["degenerate_rate"] == 0,
        "gen_tok_s > stock": None if v.get("gen_tok_s") is None or not (stock or {}).get("gen_tok_s")
        else v["gen_tok_s"] > stock["gen_tok_s"],
        "size_mb < stock": None if v.get("size_mb") is None or not (stock or {}).get("size_mb")
        else v["size_mb"] < stock["size_mb"],
    }


SELECT_TARGETS = ("faithful_rate", "false_abstention", "abstention_oos", "degenerate_rate")


def choose_final(selection: dict[str, dict], default: str = DEFAULT_FINAL) -> tuple[str, str]:
    """On the validation split, among trained, quantized candidates: the one meeting the most answer-quality
    targets, then the most faithful, then the best ROUGE-L, then the smallest; the default when it ties."""
    if not selection:
        return default, "no candidate was evaluated on the validation split"

    def score(name: str) -> tuple:
        v = selection[name]
        met = sum(bool(x) for x in (
            (v.get("faithful_rate") or 0) >= 0.95, (v.get("false_abstention") or 1) <= 0.05,
            (v.get("abstention_oos") or 0) >= 0.90, v.get("degenerate_rate") == 0))
        return met, v.get("faithful_rate") or 0.0, v.get("rouge_l") or 0.0, -(v.get("size_mb") or 1e9)

    best = max(selection, key=score)
    if default in selection and score(default)[:1] >= score(best)[:1] and score(default)[1] >= score(best)[1] - 0.02:
        best = default
    v = selection[best]
    why = (f"{best} on the validation split: faithful {v.get('faithful_rate')}, false abstention "
           f"{v.get('false_abstention')}, ROUGE-L {v.get('rouge_l')}, {v.get('size_mb')} MB; candidates: "
           + "; ".join(f"{n} {selection[n].get('faithful_rate')}/{selection[n].get('rouge_l')}" for n in selection))
    return best, why


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(variants: dict[str, dict]) -> str:
    head = "| variant | " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join(_fmt(v.get(f), s) for _, f, s in COLUMNS) + " |" for name, v in variants.items()]
    return "\n".join([head, sep, *rows])


def language_table(evals: dict[str, dict]) -> str:
    """Per language: the answers' faithfulness, ROUGE-L, fact recall, false abstention; OOS abstention; tags."""
    head = ("| variant | set | faithful ko | faithful en | ROUGE-L ko | ROUGE-L en | fact recall ko | fact recall en | "
            "false abst. ko | false abst. en | OOS abst. ko | OOS abst. en | tag ko | tag en |")
    rows = [head, "|---|---|" + "---:|" * 12]
    for name, e in evals.items():
        for part in ("answers", "heldout", "validation"):
            r = e.get(part) or {}
            if not r.get("n"):
                continue
            ko, en = r.get("ko") or {}, r.get("en") or {}
            oos = (e.get("out_of_scope") or {}) if part == "answers" else {}
            tags = (e.get("tags") or {}) if part == "answers" else {}
            cells = [ko.get("faithful_rate"), en.get("faithful_rate"), ko.get("rouge_l"), en.get("rouge_l"),
                     ko.get("fact_recall"), en.get("fact_recall"), ko.get("false_abstention"), en.get("false_abstention"),
                     (oos.get("ko") or {}).get("abstention"), (oos.get("en") or {}).get("abstention"),
                     tags.get("accuracy_ko"), tags.get("accuracy_en")]
            rows.append(f"| {name} | {part} | " + " | ".join(_fmt(c, ".2f") for c in cells) + " |")
    return "\n".join(rows)


def worst_answers(evals: dict[str, dict], name: str, n: int = 12) -> list[str]:
    """The final model's flagged answers first (test split and validation questions), with their flags."""
    e = evals.get(name) or {}
    rows = [r for part in ("answers", "validation") for r in (e.get("rows") or {}).get(part, []) if "flags" in r]
    bad = [r for r in rows if any(r["flags"].values())]
    bad.sort(key=lambda r: -sum(r["flags"].values()))
    out = []
    for r in bad[:n]:
        flags = ", ".join(f for f, x in r["flags"].items() if x)
        out.append(f"- **{r['id']}** ({r['lang']}, {flags}) {r['question']}  \n  answer: {' '.join(r['answer'].split())[:400]}"
                   f"  \n  why: {'; '.join(r.get('reasons', []))[:300]}")
    return out or ["- none: no answer of the final model carries a flag"]



def _save(fig, path: Path) -> Path:
    """Write a figure atomically as PNG and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

def plot_loss(train_logs: dict[str, list[dict]], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(train_logs.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in train_logs.items():
        if rows:
            ax.plot([r.get("step", i + 1) for i, r in enumerate(rows)], [r["loss"] for r in rows], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend()
    return _save(fig, path)


def plot_quality_vs_size(variants: dict[str, dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(n, v["size_mb"], v.get("rouge_l"), v.get("faithful_rate")) for n, v in variants.items()
           if v.get("size_mb") and (v.get("rouge_l") is not None or v.get("faithful_rate") is not None)]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, idx, marker in (("ROUGE-L (model-written part)", 2, "o"), ("faithful share", 3, "s")):
        xs = [p[1] for p in pts if p[idx] is not None]
        ys = [p[idx] for p in pts if p[idx] is not None]
        ax.scatter(xs, ys, marker=marker, label=label)
        for p in pts:
            if p[idx] is not None:
                ax.annotate(p[0], (p[1], p[idx]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("file size (MB, log)")
    ax.set_ylabel("score")
    ax.set_title("Quality vs size")
    ax.legend()
    return _save(fig, path)


def plot_speed(variants: dict[str, dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in variants.items() if v.get("gen_tok_s")]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [variants[n]["gen_tok_s"] for n in names], color="tab:green")
    for i, n in enumerate(names):
        ax.annotate(f"{variants[n]['gen_tok_s']:.0f}", (variants[n]["gen_tok_s"], i), fontsize=8,
                    xytext=(3, -3), textcoords="offset points")
    ax.set_xlabel("generation tokens/s (llama.cpp, this machine)")
    ax.set_title("Speed per variant")
    ax.invert_yaxis()
    return _save(fig, path)


def index_lines(v: dict, m: dict) -> list[str]:
    """Recall and abstention of the final model's index: test figures (the report) and dev figures (tuning)."""
    return [f"- retrieval recall@2: test split {_fmt(v.get('recall_at_2'), '.3f')}, paraphrase set (test half) "
            f"{_fmt(v.get('recall_at_2_paraphrase'), '.3f')}; on the dev material the threshold was tuned on: "
            f"val {((m.get('recall_val') or {}).get('all') or {}).get('recall_at_2')}, paraphrase dev "
            f"{((m.get('recall_paraphrase_dev') or {}).get('all') or {}).get('recall_at_2')}",
            f"- abstention on the out-of-scope test half {_fmt(v.get('abstention_oos'), '.2f')} (ko "
            f"{_fmt(v.get('abstention_oos_ko'), '.2f')}, en {_fmt(v.get('abstention_oos_en'), '.2f')}); false abstention on "
            f"answered test rows {_fmt(v.get('false_abstention'), '.2f')}; dev: OOS "
            f"{((m.get('abstention_oos_dev') or {}).get('all') or {}).get('rate')}, val "
            f"{((m.get('false_abstention_val') or {}).get('all') or {}).get('rate')}",
            f"- {m.get('facts')} facts indexed, analyzer {m.get('analyzer')}, knowledge hash {m.get('knowledge_hash')}"]


def _answers_md(evals: dict[str, dict]) -> list[str]:
    """Each variant's answers to the validation questions, grouped by question."""
    by_q: dict[tuple, list[tuple[str, dict]]] = {}
    for name, e in evals.items():
        for a in (e.get("rows") or {}).get("validation", []):
            by_q.setdefault((a.get("id"), a["lang"], a["question"]), []).append((name, a))
    lines = []
    for (qid, lang, question), answers in by_q.items():
        gold = answers[0][1].get("gold") or []
        lines += ["", f"**{qid} ({lang})** {question}  ", f"rule engine: `{', '.join(gold) or 'NORMAL'}`", ""]
        for name, a in answers:
            flags = ", ".join(f for f, x in (a.get("flags") or {}).items() if x) or "faithful"
            text = " ".join((a.get("answer") or "").split())
            lines.append(f"- *{name}* [{flags}]: {text[:500]}")
    return lines


def write_report(out_dir: str | Path, profile: str, evals: dict[str, dict], durations_s: dict[str, float],
                 train_logs: dict[str, list[dict]] | None = None, notes: list[str] | None = None,
                 default_final: str = DEFAULT_FINAL, selection: dict[str, dict] | None = None,
                 index_metrics: dict | None = None) -> dict:
    """Write report.json, report.md and the plots into out_dir; return the report.json object."""
    out_dir = Path(out_dir)
    variants = {name: {f: e.get("summary", {}).get(f) for f in SUMMARY_FIELDS} for name, e in evals.items()}
    picked = {name: {f: e.get("summary", {}).get(f) for f in SUMMARY_FIELDS} for name, e in (selection or {}).items()}
    final, why = choose_final(picked, default_final)
    report = {"schema_version": SCHEMA_VERSION, "profile": profile, "final": final,
              "durations_s": {k: round(v, 1) for k, v in durations_s.items()}, "variants": variants,
              "selection": picked, "index": {k: v for k, v in (index_metrics or {}).items() if k != "abstain"}}
    artifacts.write_json(out_dir / "report.json", report)
    plots = [p for p in (plot_loss(train_logs or {}, out_dir / "loss.png"),
                         plot_quality_vs_size(variants, out_dir / "quality_vs_size.png"),
                         plot_speed(variants, out_dir / "speed.png")) if p]
    t = targets(variants.get(final, {}), variants.get(STOCK), variants.get(REFERENCE))
    total = sum(durations_s.values())
    from farmslm.evaluate.metrics import ko_tokenizer_name

    ko_tok = ko_tokenizer_name()
    md = [f"# farmslm build report ({profile})", "",
          f"Final model: **{final}** → `model.gguf` ({why}). Build time {total / 60:.1f} min.", "",
          "All variants measured in this run, on the same data and this machine, on the test split (read once, "
          "here). Answers are guarded and grounded, as growers get them: the rule engine writes the tag and its "
          "sentences, retrieval puts the facts in the prompt, the model writes the rest, and only that part is "
          "scored. faithful = no flag (unsupported number, contradiction, invented reading; evaluate/faithful.py, "
          "validated on tests/data/faithfulness_labelled.jsonl); fact recall = the gold fact's numbers and terms "
          "the answer carries; held-out = facts no training row showed; OOS = the out-of-scope set's test half; "
          "tag acc = the model's own tag, unguarded (a research figure, not a target: warnings are the rule "
          f"engine's); degeneration on the validation questions. Korean ROUGE tokenizer: {ko_tok or 'n/a'}.", "",
          table(variants), "",
          "`stock` (the packaged file) is measured for speed, memory and size only. Per language:", "",
          language_table(evals), "",
          "## Retrieval and abstention (the knowledge index)", "",
          *index_lines(variants.get(final, {}), index_metrics or {}), "",
          "## Choosing the final model (validation split)", "", f"{why}", "",
          "## Targets of the final model", "",
          *[f"- {'PASS' if ok else ('n/a' if ok is None else 'FAIL')}: {k}" for k, ok in t.items()], "",
          "## Measured elsewhere, on other data and hardware (published figures, not comparable)", "",
          *[f"- {who}: {what}" for who, what in PUBLISHED], "",
          "## Stage durations", "", "| stage | s |", "|---|---:|",
          *[f"| {k} | {v:.1f} |" for k, v in durations_s.items()], f"| total | {total:.1f} |", ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    md += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], "",
           f"## The final model's flagged answers ({final})", "", *worst_answers(evals, final), "",
           "## Answers to the validation questions", *_answers_md(evals), ""]
    artifacts.write_text(out_dir / "report.md", "\n".join(md))
    return report
