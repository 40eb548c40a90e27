"""The build report: every variant side by side, the final model's targets, plots, sample answers.

per-variant eval JSONs (evaluate.py) + stage durations + training logs ->
    report.json   {"profile", "final", "durations_s", "variants": {name: {<SUMMARY_FIELDS>}}}
    report.md     the variants table, targets of the final model, figures published elsewhere,
                  each variant's answers to the validation questions
    loss.png      training loss per trained variant
    quality_vs_size.png, speed.png
Example: python -c "from farmslm.evaluate.report import write_report; ..." (the build calls it)
"""

from __future__ import annotations

from pathlib import Path

from farmslm import artifacts

SUMMARY_FIELDS = ("bleu", "rouge_l", "chrf", "warning_accuracy", "warning_accuracy_ko", "warning_accuracy_en",
                  "term_match", "perplexity", "degenerate_rate", "size_mb", "params_m", "gen_tok_s",
                  "prompt_tok_s", "ttft_ms", "latency_s_avg", "latency_s_max", "rss_mb_avg", "rss_mb_max")
DEFAULT_FINAL = "pruned_lora_kd_q4_k_m"
STOCK = "stock"
# Figures measured elsewhere, on other data and hardware: context, not comparable numbers.
PUBLISHED = [
    ("design report (seed 000), LoRA rank 16", "BLEU 0.1343, ROUGE-L 0.2384 (its own test set; not run on a CPU device)"),
    ("earlier implementation (seed 001)", "3,405 MB model; 5.71 s mean / 8.18 s max response; "
                                          "1,264 / 1,345 MB memory (its own hardware; answers degenerate)"),
]
# Columns of the main table: (header, field, format).
COLUMNS = [("BLEU", "bleu", ".3f"), ("ROUGE-L", "rouge_l", ".3f"), ("chrF", "chrf", ".3f"),
           ("warn acc", "warning_accuracy", ".2f"), ("ko", "warning_accuracy_ko", ".2f"),
           ("en", "warning_accuracy_en", ".2f"), ("terms", "term_match", ".2f"), ("ppl", "perplexity", ".2f"),
           ("degen", "degenerate_rate", ".2f"), ("MB", "size_mb", ".1f"), ("params M", "params_m", ".1f"),
           ("gen tok/s", "gen_tok_s", ".1f"), ("prompt tok/s", "prompt_tok_s", ".0f"), ("TTFT ms", "ttft_ms", ".0f"),
           ("lat avg s", "latency_s_avg", ".2f"), ("lat max s", "latency_s_max", ".2f"),
           ("RSS avg MB", "rss_mb_avg", ".0f"), ("RSS max MB", "rss_mb_max", ".0f")]


def targets(v: dict, stock: dict | None, reference: dict | None) -> dict[str, bool | None]:
    """The quick build's targets for one variant; None where a figure is missing."""
    def ge(a, b):
        return None if a is None or b is None else a >= b

    ref_rouge = (reference or {}).get("rouge_l")
    return {
        "warning_accuracy_ko >= 0.90": ge(v.get("warning_accuracy_ko"), 0.90),
        "warning_accuracy_en >= 0.90": ge(v.get("warning_accuracy_en"), 0.90),
        "rouge_l >= 0.95 x finetuned_f16": ge(v.get("rouge_l"), None if ref_rouge is None else 0.95 * ref_rouge),
        "degenerate_rate == 0": None if v.get("degenerate_rate") is None else v["degenerate_rate"] == 0,
        "gen_tok_s >= stock": ge(v.get("gen_tok_s"), (stock or {}).get("gen_tok_s")),
        "size_mb < stock": None if v.get("size_mb") is None or not (stock or {}).get("size_mb")
        else v["size_mb"] < stock["size_mb"],
    }


def choose_final(variants: dict[str, dict], default: str = DEFAULT_FINAL) -> tuple[str, str]:
    """The default final model unless another quantized variant meets more targets (then say why)."""
    stock, ref = variants.get(STOCK), variants.get("finetuned_f16")
    candidates = {n: v for n, v in variants.items() if n != STOCK and not n.startswith("base") and "_f16" not in n}
    if not candidates:
        return default, "no quantized trained variant was evaluated"

    def score(name: str) -> tuple:
        t = targets(candidates[name], stock, ref)
        return (sum(bool(x) for x in t.values()), candidates[name].get("rouge_l") or 0.0, -(candidates[name].get("size_mb") or 1e9))

    best = max(candidates, key=score)
    if default in candidates and score(default)[0] >= score(best)[0]:
        return default, f"{default} meets {score(default)[0]} of 6 targets, no other variant meets more"
    missed = [k for k, ok in targets(candidates[default], stock, ref).items() if not ok] if default in candidates else []
    return best, (f"{best} meets {score(best)[0]} of 6 targets"
                  + (f"; {default} meets {score(default)[0]} (misses: {', '.join(missed)})" if default in candidates
                     else f"; {default} was not built"))


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(variants: dict[str, dict]) -> str:
    head = "| variant | " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {name} | " + " | ".join(_fmt(v.get(f), s) for _, f, s in COLUMNS) + " |" for name, v in variants.items()]
    return "\n".join([head, sep, *rows])


def language_table(evals: dict[str, dict]) -> str:
    """Per language and split: BLEU / ROUGE-L / chrF / warning accuracy / terms (test and validation)."""
    head = ("| variant | split | BLEU ko | BLEU en | ROUGE-L ko | ROUGE-L en | chrF ko | chrF en | "
            "warn ko | warn en | terms ko | terms en |")
    rows = [head, "|---|---|" + "---:|" * 10]
    for name, e in evals.items():
        for split in ("test", "validation"):
            r = e.get(split) or {}
            text, warn, terms = r.get("text") or {}, r.get("warnings") or {}, r.get("term_match") or {}
            if not (text or warn):
                continue
            cells = [(text.get(lang) or {}).get(m) for m in ("bleu", "rouge_l", "chrf") for lang in ("ko", "en")]
            cells += [warn.get(f"accuracy_{lang}") for lang in ("ko", "en")] + [terms.get(lang) for lang in ("ko", "en")]
            rows.append(f"| {name} | {split} | " + " | ".join(_fmt(c, ".3f") for c in cells) + " |")
    return "\n".join(rows)



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

    pts = [(n, v["size_mb"], v.get("rouge_l"), v.get("warning_accuracy")) for n, v in variants.items()
           if v.get("size_mb") and (v.get("rouge_l") is not None or v.get("warning_accuracy") is not None)]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, idx, marker in (("ROUGE-L", 2, "o"), ("warning accuracy", 3, "s")):
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


def _answers_md(evals: dict[str, dict]) -> list[str]:
    """Each variant's answers to the validation questions, grouped by question."""
    by_q: dict[tuple, list[tuple[str, dict]]] = {}
    for name, e in evals.items():
        for a in (e.get("answers") or {}).get("validation", []):
            by_q.setdefault((a.get("id"), a["lang"], a["question"]), []).append((name, a))
    lines = []
    for (qid, lang, question), answers in by_q.items():
        gold = answers[0][1].get("gold") or []
        lines += ["", f"**{qid} ({lang})** {question}  ", f"rule engine: `{', '.join(gold) or 'NORMAL'}`", ""]
        for name, a in answers:
            tag = "no tag" if a.get("pred") is None else (", ".join(a["pred"]) or "NORMAL")
            text = " ".join((a.get("answer") or "").split())
            lines.append(f"- *{name}* [{tag}]: {text[:400]}")
    return lines


def write_report(out_dir: str | Path, profile: str, evals: dict[str, dict], durations_s: dict[str, float],
                 train_logs: dict[str, list[dict]] | None = None, notes: list[str] | None = None,
                 default_final: str = DEFAULT_FINAL) -> dict:
    """Write report.json, report.md and the plots into out_dir; return the report.json object."""
    out_dir = Path(out_dir)
    variants = {name: {f: e.get("summary", {}).get(f) for f in SUMMARY_FIELDS} for name, e in evals.items()}
    final, why = choose_final(variants, default_final)
    report = {"profile": profile, "final": final, "durations_s": {k: round(v, 1) for k, v in durations_s.items()},
              "variants": variants}
    artifacts.write_json(out_dir / "report.json", report)
    plots = [p for p in (plot_loss(train_logs or {}, out_dir / "loss.png"),
                         plot_quality_vs_size(variants, out_dir / "quality_vs_size.png"),
                         plot_speed(variants, out_dir / "speed.png")) if p]
    t = targets(variants.get(final, {}), variants.get(STOCK), variants.get("finetuned_f16"))
    total = sum(durations_s.values())
    ko_tok = next((e["test"]["text"].get("ko_tokenizer") for e in evals.values()
                   if (e.get("test") or {}).get("text")), None)
    md = [f"# farmslm build report ({profile})", "",
          f"Final model: **{final}** → `model.gguf` ({why}). Build time {total / 60:.1f} min.", "",
          "All variants measured in this run, on the same data and this machine. Quality on the test split "
          "subset (BLEU / ROUGE-L / chrF / terms on the fully answered rows; warning accuracy = the model's own "
          "tag, unguarded, vs the rule engine), perplexity by llama.cpp on test texts, degeneration on the "
          "validation questions; speed by the bench; RSS of the evaluating process. Untrained variants "
          f"(base, pruned) get a few-shot prompt. Korean BLEU/ROUGE tokenizer: {ko_tok or 'n/a'}.", "",
          table(variants), "",
          "`stock` (the packaged file) is measured for speed, memory and size only. "
          "Per language (Korean tokenized by morphemes for BLEU/ROUGE-L), test split and validation questions:", "",
          language_table(evals), "",
          "## Targets of the final model", "",
          *[f"- {'PASS' if ok else ('n/a' if ok is None else 'FAIL')}: {k}" for k, ok in t.items()], "",
          "## Measured elsewhere, on other data and hardware (published figures, not comparable)", "",
          *[f"- {who}: {what}" for who, what in PUBLISHED], "",
          "## Stage durations", "", "| stage | s |", "|---|---:|",
          *[f"| {k} | {v:.1f} |" for k, v in durations_s.items()], f"| total | {total:.1f} |", ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    md += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], "",
           "## Answers to the validation questions", *_answers_md(evals), ""]
    artifacts.write_text(out_dir / "report.md", "\n".join(md))
    return report
