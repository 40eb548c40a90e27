"""The pruning evidence: five measurements on the real base, before any recovery, as plots + markdown.

base + dataset (train.jsonl for calibration, val.jsonl for domain text) + general_text.yaml ->
OUT/{study.json, report.md, fig1_sensitivity.png .. fig5_params.png, meta.json}.
  1 per-layer sensitivity   prune only layer i by 25 % (best metric) -> change in domain perplexity
  2 rate sweep              every metric, 0-50 % uniform -> perplexity on domain ko / domain en / general
  3 allocation              uniform vs layerwise at the same removed-neuron count (25 %)
  4 attention heads         zero one head at a time -> change in domain perplexity
  5 parameter shares        embedding / attention / FFN, and what a 25 % FFN cut removes in total
  + depth pruning beside it: drop the blocks whose output is most similar to their input (ShortGPT).
Masks (forward pre-hooks) stand in for removal: tests/test_prune.py shows both give the same logits.
Example: farmslm prune-study --base default --data runs/quick/data --out benchmarks/prune_study
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from farmslm import artifacts
from farmslm.evaluate.perplexity import encode_texts, perplexity_ids
from farmslm.model import prune as P
from farmslm.model.io import decoder_layers, ffn_widths

log = logging.getLogger(__name__)
GENERAL_TEXT = Path(__file__).parents[1] / "domain" / "data" / "general_text.yaml"


@dataclass
class StudyConfig:
    base: str = "default"  # base model: default | model dir | HF dir | .gguf
    data_dir: str = ""  # dataset dir (train.jsonl calibrates, val.jsonl is the domain text)
    out_dir: str = "benchmarks/prune_study"  # report, figures, study.json
    rates: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.4, 0.5])  # sweep points besides 0
    n_calib: int = 64  # calibration texts (train split, ko/en alternating)
    n_eval: int = 8  # texts per evaluation set (domain ko, domain en, general)
    n_eval_small: int = 6  # texts of the domain ko+en set used by the per-layer and per-head scans
    seq_len: int = 48  # tokens per evaluation text (the 262k-way output layer dominates the cost)
    calib_seq_len: int = 128  # tokens per calibration text (body only, cheap)
    batch_size: int = 8  # texts per forward pass
    layer_ratio: float = 0.25  # share of one layer's neurons removed in the sensitivity scan
    alloc_ratio: float = 0.25  # removed share for uniform vs layerwise
    depth_drop: list[int] = field(default_factory=lambda: [1, 2])  # blocks dropped in the depth comparison
    seed: int = 0  # text sampling
    threads: int = 1  # torch threads; 1 is several times faster than 2 when other jobs share the cores (0: default)


def _general_texts() -> dict[str, list[str]]:
    import yaml

    data = yaml.safe_load(GENERAL_TEXT.read_text(encoding="utf-8"))
    return {lang: [p.strip() for p in data[lang]] for lang in ("ko", "en")}


def _domain_texts(rows: list[dict], lang: str) -> list[str]:
    return [r["text"] for r in rows if r.get("lang") == lang]


def _pick(texts: list[str], n: int, seed: int) -> list[str]:
    import random

    texts = list(texts)
    random.Random(seed).shuffle(texts)
    return texts[:n]


def _geo(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def run(cfg: StudyConfig) -> Path:
    """Measure all five pieces and write the report; returns out_dir."""
    from farmslm.model.tokenizer import Tokenizer

    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    data_dir = Path(cfg.data_dir)
    for name in ("train.jsonl", "val.jsonl"):
        if not (data_dir / name).exists():
            raise ValueError(f"data: {data_dir / name} does not exist; build the dataset first (farmslm data build)")
    from farmslm.model.load import load_any

    loaded = load_any(cfg.base)
    model, tokenizer_gguf = loaded.model, loaded.tokenizer_gguf
    tok = Tokenizer(tokenizer_gguf)
    torch.manual_seed(cfg.seed)
    train, val = artifacts.read_jsonl(data_dir / "train.jsonl"), artifacts.read_jsonl(data_dir / "val.jsonl")
    general = _general_texts()
    sets = {
        "domain_ko": encode_texts(tok, _pick(_domain_texts(val, "ko"), cfg.n_eval, cfg.seed), cfg.seq_len),
        "domain_en": encode_texts(tok, _pick(_domain_texts(val, "en"), cfg.n_eval, cfg.seed), cfg.seq_len),
        "general": encode_texts(tok, _pick(general["ko"], cfg.n_eval // 2, cfg.seed)
                                + _pick(general["en"], cfg.n_eval - cfg.n_eval // 2, cfg.seed), cfg.seq_len),
    }
    half = cfg.n_eval_small // 2
    small = sets["domain_ko"][:half] + sets["domain_en"][:cfg.n_eval_small - half]
    timings: dict[str, float] = {}

    def ppl_all() -> dict[str, float]:
        return {k: round(perplexity_ids(model, v, cfg.batch_size), 4) for k, v in sets.items()}

    t = time.time()
    stats = P.calibrate(model, P.calibration_ids(train, tok, cfg.n_calib, cfg.calib_seq_len, cfg.seed), cfg.batch_size)
    baseline = ppl_all()
    base_small = perplexity_ids(model, small, cfg.batch_size)
    timings["calibrate_and_baseline_s"] = time.time() - t
    log.info("study: baseline %s", baseline)
    layer_scores = {m: P.scores(model, stats, m) for m in P.METRICS}
    widths = ffn_widths(model)
    n_layers = len(widths)

    # 2. rate sweep, uniform allocation (exact rates: no rounding of the kept width)
    t = time.time()
    sweep: dict[str, dict[str, dict[str, float]]] = {}
    for metric in P.METRICS:
        sweep[metric] = {"0": baseline}
        for rate in cfg.rates:
            keep = P.allocate(model, layer_scores[metric], P.PruneConfig(ratio=rate, keep_multiple=1))
            with P.masked_ffn(model, dict(enumerate(keep))):
                sweep[metric][str(rate)] = ppl_all()
            log.info("study: sweep %s %.2f %s", metric, rate, sweep[metric][str(rate)])
    timings["sweep_s"] = time.time() - t
    at = str(cfg.alloc_ratio) if str(cfg.alloc_ratio) in sweep[P.METRICS[0]] else str(cfg.rates[len(cfg.rates) // 2])
    best = min(P.METRICS, key=lambda m: _geo(sweep[m][at].values()))

    # 1. per-layer sensitivity with the best metric
    t = time.time()
    sensitivity = []
    for i in range(n_layers):
        n_keep = widths[i] - round(cfg.layer_ratio * widths[i])
        keep = torch.sort(torch.argsort(layer_scores[best][i], descending=True, stable=True)[:n_keep]).values
        with P.masked_ffn(model, {i: keep}):
            sensitivity.append(perplexity_ids(model, small, cfg.batch_size) - base_small)
    timings["sensitivity_s"] = time.time() - t

    # 3. uniform vs layerwise at the same number of removed neurons
    t = time.time()
    allocation: dict[str, dict] = {}
    for metric in dict.fromkeys([best, "seed"]):
        for alloc in P.ALLOCATIONS:
            pc = P.PruneConfig(metric=metric, allocation=alloc, ratio=cfg.alloc_ratio, keep_multiple=1)
            keep = P.allocate(model, layer_scores[metric], pc, stats)
            with P.masked_ffn(model, dict(enumerate(keep))):
                allocation[f"{metric}/{alloc}"] = {"ppl": ppl_all(), "kept": [len(k) for k in keep]}
    timings["allocation_s"] = time.time() - t

    # 4. attention heads, one at a time
    t = time.time()
    n_heads = decoder_layers(model)[0].self_attn.config.num_attention_heads
    heads = [[0.0] * n_heads for _ in range(n_layers)]
    for i in range(n_layers):
        for h in range(n_heads):
            with P.ablated_heads(model, {i: [h]}):
                heads[i][h] = perplexity_ids(model, small, cfg.batch_size) - base_small
    timings["heads_s"] = time.time() - t

    # depth pruning beside width pruning: drop the blocks that change their input least
    t = time.time()
    order = sorted(range(n_layers), key=lambda i: -stats.block_cos[i])
    depth = {}
    for k in cfg.depth_drop:
        with P.skipped_layers(model, order[:k]):
            depth[str(k)] = {"layers": sorted(order[:k]), "ppl": ppl_all()}
    timings["depth_s"] = time.time() - t

    # 5. parameter shares
    shares = P.param_shares(model)
    cut = cfg.alloc_ratio * shares["ffn"]
    layer_params = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    attn = decoder_layers(model)[0].self_attn
    params = {**shares, "ffn_cut_25_params": int(cut), "ffn_cut_25_total_pct": round(100 * cut / shares["total"], 2),
              "ffn_cut_25_non_embedding_pct": round(100 * cut / (shares["total"] - shares["embedding"]), 2),
              "one_block_params": layer_params,
              "head_params": 2 * attn.head_dim * attn.config.hidden_size,  # q rows + o columns; K/V are shared
              "layer_ffn_cut_params": 3 * round(cfg.layer_ratio * widths[0]) * attn.config.hidden_size}

    result = {"baseline": baseline, "best_metric": best, "sweep": sweep, "sensitivity_dppl": sensitivity,
              "sensitivity_base_ppl": base_small, "allocation": allocation, "heads_dppl": heads, "depth": depth,
              "block_cos": stats.block_cos, "params": params, "calib_tokens": stats.n_tokens,
              "dead_neurons": [int(stats.dead(i, 0.01).sum()) for i in range(n_layers)],
              "eval_tokens": {k: sum(len(x) - 1 for x in v) for k, v in sets.items()},
              "timings_s": {k: round(v, 1) for k, v in timings.items()}, "total_s": round(time.time() - started, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(out_dir / "study.json", result)
    _plots(result, out_dir, cfg)
    artifacts.write_text(out_dir / "report.md", _markdown(result, cfg))
    artifacts.write_meta(out_dir, "prune-study", cfg, {"train": artifacts.hash_path(data_dir / "train.jsonl")},
                         {"best_metric": best, "total_s": result["total_s"]}, started)
    return out_dir


def _plots(r: dict, out_dir: Path, cfg: StudyConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = len(r["sensitivity_dppl"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(n_layers), r["sensitivity_dppl"], color="tab:green")
    ax.set(xlabel="layer", ylabel="Δ perplexity (domain)", title=f"1. prune only layer i by {cfg.layer_ratio:.0%} "
           f"({r['best_metric']}); base ppl {r['sensitivity_base_ppl']:.2f}")
    ax.set_xticks(range(n_layers))
    fig.tight_layout(), fig.savefig(out_dir / "fig1_sensitivity.png", dpi=110), plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, name in zip(axes, ("domain_ko", "domain_en", "general")):
        for metric, by_rate in r["sweep"].items():
            xs = sorted(by_rate, key=float)
            ax.plot([float(x) * 100 for x in xs], [by_rate[x][name] for x in xs], marker="o", label=metric)
        ax.set(yscale="log", xlabel="FFN neurons removed (%)", ylabel="perplexity", title=name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("2. uniform pruning-rate sweep, before recovery")
    fig.tight_layout(), fig.savefig(out_dir / "fig2_sweep.png", dpi=110), plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = ("domain_ko", "domain_en", "general")
    keys = ["baseline"] + list(r["allocation"])
    for j, key in enumerate(keys):
        vals = [r["baseline"][n] if key == "baseline" else r["allocation"][key]["ppl"][n] for n in names]
        ax.bar([x + j * 0.8 / len(keys) for x in range(3)], vals, width=0.8 / len(keys), label=key)
    ax.set_xticks([x + 0.4 - 0.4 / len(keys) for x in range(3)], names)
    ax.set(ylabel="perplexity", yscale="log", title=f"3. uniform vs layerwise, {cfg.alloc_ratio:.0%} of FFN neurons removed")
    ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out_dir / "fig3_allocation.png", dpi=110), plt.close(fig)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]})
    im = ax.imshow(r["heads_dppl"], aspect="auto", cmap="magma")
    ax.set(xlabel="head", ylabel="layer", title="4. Δ ppl, one head zeroed")
    fig.colorbar(im, ax=ax)
    per_head = [max(h) for h in r["heads_dppl"]]
    ax2.bar([i - 0.2 for i in range(n_layers)], per_head, width=0.4, label="worst single head (1/4 of attention)")
    ax2.bar([i + 0.2 for i in range(n_layers)], r["sensitivity_dppl"], width=0.4, label=f"{cfg.layer_ratio:.0%} of the layer's FFN")
    ax2.set(xlabel="layer", ylabel="Δ perplexity (domain)", title="head vs FFN cut, per layer")
    ax2.set_xticks(range(n_layers))
    ax2.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out_dir / "fig4_heads.png", dpi=110), plt.close(fig)

    p = r["params"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    left = 0.0
    for kind, color in (("embedding", "tab:gray"), ("attention", "tab:blue"), ("ffn", "tab:orange"), ("norm", "k")):
        share = 100 * p[kind] / p["total"]
        ax.barh([0], [share], left=left, color=color, label=f"{kind} {share:.1f}%")
        left += share
    cut = p["ffn_cut_25_total_pct"]
    ax.barh([1], [cut], color="tab:red", label=f"{cfg.alloc_ratio:.0%} FFN cut = {cut:.1f}% of all params "
            f"({p['ffn_cut_25_non_embedding_pct']:.1f}% of non-embedding)")
    ax.set(yticks=[0, 1], yticklabels=["parameters", "removed"], xlabel="% of total parameters",
           title=f"5. where the parameters are ({p['total'] / 1e6:.0f}M)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    fig.tight_layout(), fig.savefig(out_dir / "fig5_params.png", dpi=110), plt.close(fig)


def _markdown(r: dict, cfg: StudyConfig) -> str:
    names = ("domain_ko", "domain_en", "general")
    lines = ["# Pruning study (before any recovery)", "",
             f"Base `{cfg.base}`. Calibration: {r['calib_tokens']} tokens of the train split; evaluation tokens "
             f"{r['eval_tokens']} (val split ko / en, general_text.yaml), {cfg.seq_len} tokens per text. Best metric at {cfg.alloc_ratio:.0%}: **{r['best_metric']}** (lowest geometric-mean "
             f"perplexity over the three sets). Run time {r['total_s']:.0f} s ({r['timings_s']}).", "",
             "## 2. Rate sweep (uniform), perplexity", "", "| metric | removed | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for metric, by_rate in r["sweep"].items():
        for rate in sorted(by_rate, key=float):
            lines.append(f"| {metric} | {float(rate):.0%} | " + " | ".join(f"{by_rate[rate][n]:.2f}" for n in names) + " |")
    lines += ["", "![sweep](fig2_sweep.png)", "", "## 1. Per-layer sensitivity", "",
              f"Δ domain perplexity when only layer i loses {cfg.layer_ratio:.0%} of its FFN neurons ({r['best_metric']}), "
              f"base {r['sensitivity_base_ppl']:.2f}:", "",
              "| layer | " + " | ".join(str(i) for i in range(len(r["sensitivity_dppl"]))) + " |",
              "|---|" + "---|" * len(r["sensitivity_dppl"]),
              "| Δppl | " + " | ".join(f"{d:+.2f}" for d in r["sensitivity_dppl"]) + " |", "",
              "![sensitivity](fig1_sensitivity.png)", "", "## 3. Uniform vs layerwise (same neuron count)", "",
              "| variant | kept per layer | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names),
              "| unpruned | all | " + " | ".join(f"{r['baseline'][n]:.2f}" for n in names) + " |"]
    for key, v in r["allocation"].items():
        kept = v["kept"]
        lines.append(f"| {key} | {min(kept)}–{max(kept)} | " + " | ".join(f"{v['ppl'][n]:.2f}" for n in names) + " |")
    heads = r["heads_dppl"]
    p = r["params"]
    med_head = sorted(d for row in heads for d in row)[len(heads) * len(heads[0]) // 2]
    med_ffn = sorted(r["sensitivity_dppl"])[len(r["sensitivity_dppl"]) // 2]
    flat = sorted(((d, i, h) for i, row in enumerate(heads) for h, d in enumerate(row)), reverse=True)
    lines += ["", "![allocation](fig3_allocation.png)", "", "## 4. Attention heads", "",
              f"Δ domain perplexity with one head zeroed: median {sorted(d for d, _, _ in flat)[len(flat) // 2]:+.2f}, "
              f"largest {', '.join(f'L{i}H{h} {d:+.2f}' for d, i, h in flat[:5])}. "
              f"Each layer has only {len(heads[0])} query heads sharing one KV head. Per parameter: one head "
              f"(its q rows + o columns, {p['head_params']:,}) costs {med_head / p['head_params'] * 1e6:+.2f} ppl per "
              f"million parameters at the median, {cfg.layer_ratio:.0%} of one layer's FFN ({p['layer_ffn_cut_params']:,}) "
              f"costs {med_ffn / p['layer_ffn_cut_params'] * 1e6:+.2f}.", "",
              "![heads](fig4_heads.png)", "", "## Depth pruning beside it (ShortGPT block cosine)", "",
              "| blocks dropped | which | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for k, v in r["depth"].items():
        lines.append(f"| {k} | {v['layers']} | " + " | ".join(f"{v['ppl'][n]:.2f}" for n in names) + " |")
    lines += ["", "## 5. Where the parameters are", "",
              "| part | params | share |", "|---|---|---|"]
    for kind in ("embedding", "attention", "ffn", "norm"):
        lines.append(f"| {kind} | {p[kind]:,} | {100 * p[kind] / p['total']:.1f}% |")
    lines += [f"| total | {p['total']:,} | 100% |", "",
              f"A {cfg.alloc_ratio:.0%} FFN cut removes {p['ffn_cut_25_params']:,} parameters: "
              f"**{p['ffn_cut_25_total_pct']:.1f}% of the model** ({p['ffn_cut_25_non_embedding_pct']:.1f}% of the "
              f"non-embedding part); the design report got 14.5% on its larger model, where the embedding weighs less. "
              f"One whole block is {p['one_block_params']:,} parameters.", "", "![params](fig5_params.png)", ""]
    return "\n".join(lines)
