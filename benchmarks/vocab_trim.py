"""Vocabulary trimming study on the default base: size, speed, exactness, fallback, readability.

default base + dataset dir -> benchmarks/results/vocab_trim.{json,md}:
  kept vocabulary, parameters, Q4_K_M file (export F16 -> llama.cpp quantize) vs the stock file;
  generation tok/s of both in one bench run (farmslm.runtime.bench); the restricted-distribution
  check on the real model; tokenization of every dataset text (llama.cpp, full vs trimmed); the share
  of held-out ko/en questions (test split + validation questions: never in the corpus, which is the training
  split + knowledge base)
  whose tokenization is unchanged; tokens, bytes/token and byte-fallback share on a general text
  sample; greedy answers of the trimmed (untrained) model to validation questions.
Example: .venv/bin/python benchmarks/vocab_trim.py --data runs/quick/data --work /tmp/vocab_bench
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

from farmslm import artifacts
from farmslm.model import io, vocab
from farmslm.model.load import default_gguf, load_base
from farmslm.model.tokenizer import get_tokenizer, read_kvs

RESULTS = Path(__file__).parent / "results"
# General (non-domain) text: everyday Korean and English, none of it about tomatoes or greenhouses.
GENERAL_TEXT = {
    "ko": ["오늘 아침에는 지하철이 늦게 와서 회사에 조금 늦었습니다.",
           "주말에 가족과 함께 바닷가에 가서 산책을 하고 맛있는 회를 먹었어요.",
           "이 책은 조선 시대 선비들의 생활과 사상을 쉽게 설명하고 있습니다.",
           "내일은 전국에 비가 내리고 기온이 크게 떨어질 것으로 예상됩니다.",
           "컴퓨터를 켜면 화면이 깜박이다가 꺼지는데 어떻게 고쳐야 할까요?",
           "그는 어릴 때부터 피아노를 배워서 지금은 작은 음악 학원을 운영한다.",
           "은행 계좌를 새로 만들려면 신분증과 도장을 가지고 가야 합니다.",
           "축구 대표팀이 어젯밤 경기에서 극적인 역전승을 거두었다."],
    "en": ["The train was delayed this morning, so I arrived at the office a little late.",
           "On the weekend we walked along the beach and had dinner at a small seafood restaurant.",
           "This book explains the daily life and philosophy of scholars in the Joseon dynasty.",
           "Heavy rain is expected across the country tomorrow, with temperatures dropping sharply.",
           "When I turn on my computer the screen flickers and then goes dark; how can I fix it?",
           "She learned the piano as a child and now runs a small music school downtown.",
           "To open a new bank account you need to bring an identity card and proof of address.",
           "The national football team won last night's match with a dramatic late comeback."],
}


def held_out_share(full_kvs: dict, spm: vocab.SpmVocab, texts: list[str], held: list[dict],
                   cfg: vocab.VocabConfig, work: Path, full_gguf: Path) -> dict:
    """Select without the held-out rows (the corpus is train + knowledge base, so they are never in it), then: share
    of their questions and prompts tokenized as with the full vocabulary (a validation question has no prompt)."""
    held_texts = {r.get("text") for r in held}
    kept, stats = vocab.select(spm, [t for t in texts if t not in held_texts], cfg)
    gguf_path = vocab.write_kvs_gguf(vocab.trimmed_kvs(full_kvs, kept), "gemma3", work / "heldout_tokenizer.gguf")
    full, trim = get_tokenizer(full_gguf), get_tokenizer(gguf_path)
    out = {"n_kept": len(kept)}
    for lang in ("ko", "en"):
        rows = [r for r in held if r["lang"] == lang]
        same_q = same_p = 0
        for r in rows:
            prompt = r["text"].partition("\nA:")[0] + "\nA:" if r.get("text") else r["question"]
            same_q += [kept[i] for i in trim.encode(r["question"])] == full.encode(r["question"])
            same_p += [kept[i] for i in trim.encode(prompt)] == full.encode(prompt)
        out[lang] = {"n": len(rows), "question_unchanged_pct": round(100 * same_q / max(len(rows), 1), 1),
                     "prompt_unchanged_pct": round(100 * same_p / max(len(rows), 1), 1)}
    return out


def fallback_rates(full_gguf: Path, trim_gguf: Path, kept: list[int]) -> dict:
    full, trim = get_tokenizer(full_gguf), get_tokenizer(trim_gguf)
    tv = vocab.SpmVocab.from_gguf(trim_gguf)
    byte_ids = set(tv.byte_ids)
    out = {}
    for lang, lines in GENERAL_TEXT.items():
        n_bytes = sum(len(s.encode()) for s in lines)
        f = [full.encode(s, add_bos=False) for s in lines]
        t = [trim.encode(s, add_bos=False) for s in lines]
        n_f, n_t = sum(map(len, f)), sum(map(len, t))
        n_fb = sum(i in byte_ids for ids in t for i in ids)
        out[lang] = {"utf8_bytes": n_bytes, "tokens_full": n_f, "tokens_trimmed": n_t,
                     "bytes_per_token_full": round(n_bytes / n_f, 2), "bytes_per_token_trimmed": round(n_bytes / n_t, 2),
                     "byte_fallback_tokens_pct": round(100 * n_fb / n_t, 1),
                     "unchanged_lines_pct": round(100 * sum([kept[i] for i in b] == a for a, b in zip(f, t)) / len(lines), 1)}
    return out


def restricted_check(trim_dir: Path, kept: list[int], prompts: list[str], full_gguf: Path) -> dict:
    """Max |trimmed logits - full logits on kept ids| and of the renormalised probabilities."""
    full_model = load_base("default").model
    trim_model, _ = io.load_model_dir(trim_dir)
    full_tok, trim_tok = get_tokenizer(full_gguf), get_tokenizer(trim_dir / io.TOKENIZER)
    d_logit = d_prob = 0.0
    kept_mass = []
    with torch.no_grad():
        for p in prompts:
            ids_t = trim_tok.encode(p)
            ids_f = [kept[i] for i in ids_t]
            assert ids_f == full_tok.encode(p)
            lf = full_model(torch.tensor([ids_f])).logits[0]
            lt = trim_model(torch.tensor([ids_t])).logits[0]
            lr = vocab.restricted_logits(lf, kept)
            d_logit = max(d_logit, (lt - lr).abs().max().item())
            d_prob = max(d_prob, (lt.softmax(-1) - lr.softmax(-1)).abs().max().item())
            kept_mass.append(lf.softmax(-1)[:, kept].sum(-1).mean().item())
    return {"max_abs_logit_diff": d_logit, "max_abs_prob_diff": d_prob,
            "full_model_mass_on_kept_pct": round(100 * sum(kept_mass) / len(kept_mass), 2)}


def generate(model_path: Path, questions: list[dict], max_tokens: int) -> list[dict]:
    from farmslm.domain.sensors import format_prompt
    from farmslm.runtime.engine import load_llama  # works around llama.cpp's AMX repack crash

    llm = load_llama(model_path, None, n_ctx=512, n_threads=2)
    out = []
    for r in questions:
        prompt = format_prompt(None, r["question"])
        res = llm(prompt, max_tokens=max_tokens, temperature=0.0, stop=["\nQ:", "\n\n"])
        out.append({"lang": r["lang"], "question": r["question"], "answer": res["choices"][0]["text"].strip()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset dir (farmslm data build)")
    ap.add_argument("--work", default="/tmp/vocab_bench", help="scratch dir for model dirs and GGUFs")
    ap.add_argument("--keep-general", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="bench repeats per model")
    ap.add_argument("--out", default=str(RESULTS / "vocab_trim"), help="results path without suffix")
    ap.add_argument("--bench-only", action="store_true", help="re-run only the speed bench into existing results")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from farmslm.config import make_config
    from farmslm.dataset.corpus import domain_texts
    from farmslm.model.export import ExportConfig
    from farmslm.model.export import run as export_run
    from farmslm.model.quantize import quantize_gguf
    from farmslm.runtime.bench import weight_bytes
    work, data, out = Path(args.work), Path(args.data), Path(args.out)
    if args.bench_only:
        res = artifacts.read_json(out.with_suffix(".json"))
        res["bench"] = speed(work / "vocab-q4_k_m.gguf", default_gguf(), args.repeats)
        res["done_when"]["gen_speedup_ge_2x"] = res["bench"]["vs"]["gen_speedup"] >= 2.0
        return write_results(res, out)
    work.mkdir(parents=True, exist_ok=True)
    cfg = make_config(vocab.VocabConfig, {}, keep_general=args.keep_general)
    stock = default_gguf()
    t0 = time.time()
    trim_dir = vocab.run(cfg, "default", data, work / "vocab")
    kept = vocab.load_map(trim_dir)
    meta = artifacts.read_meta(trim_dir)
    res: dict = {"config": cfg, "vocab": vocab.summary(trim_dir), "trim_s": round(time.time() - t0, 1)}

    f16, q4 = work / "vocab-f16.gguf", work / "vocab-q4_k_m.gguf"
    if not q4.exists():
        export_run(ExportConfig(model_dir=str(trim_dir), out=str(f16), dtype="f16", name="farmslm-vocab"))
        quantize_gguf(f16, q4, "Q4_K_M")
    res["size"] = {"stock_q4_k_m_bytes": stock.stat().st_size, "trimmed_q4_k_m_bytes": q4.stat().st_size,
                   "trimmed_f16_bytes": f16.stat().st_size if f16.exists() else None,
                   "ratio_pct": round(100 * q4.stat().st_size / stock.stat().st_size, 1),
                   "stock_weight_bytes": weight_bytes(stock), "trimmed_weight_bytes": weight_bytes(q4),
                   "params_before": meta["metrics"]["n_params_before"], "params_after": meta["metrics"]["n_params_after"]}

    # every dataset text (and prompt/answer apart): llama.cpp on trimmed vs full vocabulary
    texts = vocab.corpus_pieces(domain_texts(data))
    cmp = vocab.compare_tokenization(stock, trim_dir / io.TOKENIZER, kept, texts)
    res["corpus_tokenization"] = {"n_texts": cmp["n_texts"], "n_identical": cmp["n_identical"]}

    full_kvs = read_kvs(stock)
    spm = vocab.SpmVocab.from_kvs(full_kvs, str(stock))
    held = artifacts.read_jsonl(data / "test.jsonl") + artifacts.read_jsonl(data / "validation_questions.jsonl")
    res["held_out"] = held_out_share(full_kvs, spm, domain_texts(data), held, cfg, work, stock)
    res["general_text"] = fallback_rates(stock, trim_dir / io.TOKENIZER, kept)

    val = artifacts.read_jsonl(data / "validation_questions.jsonl")
    res["restricted_distribution"] = restricted_check(trim_dir, kept, [r.get("text") or r["question"] for r in val[:4]], stock)
    sample = [r for r in val if r["lang"] == "ko"][:3] + [r for r in val if r["lang"] == "en"][:3]
    res["generation_trimmed"] = generate(q4, sample, 48)
    res["generation_stock"] = generate(stock, sample, 48)

    res["bench"] = speed(q4, stock, args.repeats)
    b = res["bench"]
    res["done_when"] = {"vocab_le_32000": len(kept) <= 32000,
                        "every_dataset_text_identical": cmp["n_identical"] == cmp["n_texts"],
                        "q4_k_m_le_45pct_of_stock": res["size"]["ratio_pct"] <= 45.0,
                        "gen_speedup_ge_2x": b["vs"]["gen_speedup"] >= 2.0}
    write_results(res, out)


def speed(trimmed: Path, stock: Path, repeats: int) -> dict:
    """Both models in one bench run (farmslm.runtime.bench), 2 threads."""
    from farmslm.runtime import bench

    b = bench.run(bench.BenchConfig(model=str(trimmed), vs=str(stock), threads=2, repeats=repeats))
    keys = ("gen_tok_s", "prompt_tok_s", "peak_rss_bytes", "file_bytes", "runs")
    return {"trimmed": {k: b["models"][0][k] for k in keys}, "stock": {k: b["models"][1][k] for k in keys},
            "vs": b["vs"], "machine": b["machine"], "settings": b["settings"],
            "load_avg_1min": round(os.getloadavg()[0], 1)}


def write_results(res: dict, out: Path) -> None:
    artifacts.write_json(out.with_suffix(".json"), res)
    artifacts.write_text(out.with_suffix(".md"), report_md(res))
    print(report_md(res))


def report_md(r: dict) -> str:
    s, v, bn = r["size"], r["vocab"], r["bench"]
    lines = ["# Vocabulary trimming (default Gemma 3 270M base, default dataset)", "",
             "| | stock | trimmed |", "|---|---:|---:|",
             f"| vocabulary | {v['n_full']:,} | {v['n_kept']:,} |",
             f"| parameters | {s['params_before'] / 1e6:.1f} M | {s['params_after'] / 1e6:.1f} M |",
             f"| Q4_K_M file | {s['stock_q4_k_m_bytes'] / 1e6:.1f} MB | {s['trimmed_q4_k_m_bytes'] / 1e6:.1f} MB ({s['ratio_pct']} %) |",
             f"| generation (2 threads) | {bn['stock']['gen_tok_s']:.1f} tok/s | {bn['trimmed']['gen_tok_s']:.1f} tok/s "
             f"(×{bn['vs']['gen_speedup']}) |",
             f"| prompt processing | {bn['stock']['prompt_tok_s']:.1f} tok/s | {bn['trimmed']['prompt_tok_s']:.1f} tok/s |",
             f"| peak RSS | {bn['stock']['peak_rss_bytes'] / 1e6:.0f} MB | {bn['trimmed']['peak_rss_bytes'] / 1e6:.0f} MB |",
             f"| weights read per generated token | {s['stock_weight_bytes'] / 1e6:.1f} MB | "
             f"{s['trimmed_weight_bytes'] / 1e6:.1f} MB (bandwidth-bound speedup ×"
             f"{s['stock_weight_bytes'] / s['trimmed_weight_bytes']:.2f}) |",
             "", f"Speed: medians of {bn['settings']['repeats']} runs ({bn['settings']['gen_tokens']} generated tokens) "
             f"in one bench run; machine load average during the run {bn.get('load_avg_1min', '?')} on "
             f"{os.cpu_count()} cores (shared): absolute tok/s are low and the ratio is noisy; the weight-bytes ratio above is what a quiet "
             "machine approaches.",
             "", f"Kept: {v['n_corpus']:,} corpus pieces (final + intermediate), {v['n_general']:,} general, the rest "
             "bytes / control / user-defined.",
             f"Dataset texts tokenized identically (llama.cpp, full vs trimmed): "
             f"{r['corpus_tokenization']['n_identical']}/{r['corpus_tokenization']['n_texts']}.",
             f"Restricted distribution on the real model: max |Δlogit| {r['restricted_distribution']['max_abs_logit_diff']:.2e}, "
             f"max |Δp| {r['restricted_distribution']['max_abs_prob_diff']:.2e}; the full model puts "
             f"{r['restricted_distribution']['full_model_mass_on_kept_pct']} % of its mass on the kept tokens.", "",
             f"Held-out questions (test split + validation questions, never in the selection's corpus: train + knowledge; "
             f"{r['held_out']['n_kept']:,} kept):", "", "| lang | n | question unchanged | prompt unchanged |", "|---|---:|---:|---:|"]
    for lang in ("ko", "en"):
        h = r["held_out"][lang]
        lines.append(f"| {lang} | {h['n']} | {h['question_unchanged_pct']} % | {h['prompt_unchanged_pct']} % |")
    lines += ["", "General (non-domain) text sample:", "",
              "| lang | bytes/token full | bytes/token trimmed | byte-fallback tokens | lines unchanged |", "|---|---:|---:|---:|---:|"]
    for lang, g in r["general_text"].items():
        lines.append(f"| {lang} | {g['bytes_per_token_full']} | {g['bytes_per_token_trimmed']} | "
                     f"{g['byte_fallback_tokens_pct']} % | {g['unchanged_lines_pct']} % |")
    lines += ["", "Greedy answers of the trimmed, untrained model (stock in brackets):", ""]
    for a, b in zip(r["generation_trimmed"], r["generation_stock"]):
        lines.append(f"- **{a['question']}** → {a['answer']!r}  \n  (stock: {b['answer']!r})")
    lines += ["", "Done when: " + ", ".join(f"{k}={'yes' if ok else 'NO'}" for k, ok in r["done_when"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
