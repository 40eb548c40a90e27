"""Quantization table for the default base: each llama.cpp type's size, domain perplexity (Korean
and English separately) and generation speed, with and without the importance matrix.

default base (Q4_K_M stock GGUF, dequantized by transformers) -> F32 GGUF -> each type ± imatrix
-> benchmarks/results/quant_table.{md,json} and quant_size_vs_ppl.png. The stock file is a row too.
The base weights only exist as the stock Q4_K_M, so every type here is re-quantized from its
dequantized weights; that is the pipeline the project runs, and what the stock row is compared with.
Example: .venv/bin/python benchmarks/quant_table.py --data runs/quick/data --types Q8_0,Q4_K_M
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# Built-in held-out domain texts, used when no dataset is given.
BUILTIN = {
    "ko": ["Q: [STATUS: temp_c=33.0, humidity_pct=85] 토마토 잎이 시들어요. 어떻게 해야 하나요?\nA: 고온 다습합니다. "
           "환기창을 열고 차광막을 치세요. 관수는 아침에 하세요.",
           "토마토 배꼽썩음병은 칼슘 흡수가 부족할 때 생깁니다. 배지 수분을 일정하게 유지하고 습도를 너무 높이지 마세요.",
           "Q: 밤 온도는 몇 도가 적당한가요?\nA: 토마토는 밤 온도 15~18도가 좋습니다. 13도 아래로 내려가면 착과가 나빠집니다.",
           "잿빛곰팡이병은 습도가 높고 환기가 부족할 때 잘 생깁니다. 병든 잎은 바로 제거하고 하우스 밖으로 버리세요.",
           "Q: [STATUS: ec_ds_m=4.8, ph=5.2] 양액 상태가 괜찮나요?\nA: EC가 너무 높고 pH가 낮습니다. 물을 보충해 EC를 낮추세요.",
           "온실 안 이산화탄소 농도는 해가 뜬 뒤 빠르게 떨어지므로 오전에 탄산가스를 공급하면 광합성이 늘어납니다.",
           "뿌리 온도가 너무 낮으면 인산 흡수가 줄어 잎 뒷면이 보라색으로 변할 수 있습니다.",
           "Q: 꽃이 떨어져요. 왜 그런가요?\nA: 낮 기온이 32도를 넘거나 밤 기온이 너무 낮으면 꽃가루가 약해져 낙화가 생깁니다."],
    "en": ["Q: [STATUS: temp_c=33.0, humidity_pct=85] The tomato leaves are wilting. What should I do?\nA: It is hot "
           "and humid. Open the vents, close the shade screen and water in the morning.",
           "Blossom-end rot in tomatoes comes from poor calcium uptake. Keep substrate moisture even and avoid very high humidity.",
           "Q: What night temperature is right?\nA: Tomatoes do best at 15-18 °C at night; below 13 °C fruit set suffers.",
           "Grey mould thrives when humidity is high and ventilation is poor. Remove infected leaves at once and take them out.",
           "Q: [STATUS: ec_ds_m=4.8, ph=5.2] Is the nutrient solution fine?\nA: EC is too high and pH too low; add water to lower EC.",
           "CO2 in a closed greenhouse drops quickly after sunrise, so enriching in the morning raises photosynthesis.",
           "Cold roots take up little phosphorus, and the undersides of the leaves can turn purple.",
           "Q: The flowers are dropping. Why?\nA: Day temperatures above 32 °C or cold nights weaken pollen and flowers abort."],
}


def load_texts(data_dir: str | None, n: int) -> dict[str, list[str]]:
    """Validation-split texts by language (dataset rows: lang, text), else the built-in ones. Validation, not
    test: this table chooses the default quantization, and test is read only by a build's report."""
    if data_dir and (Path(data_dir) / "val.jsonl").exists():
        from farmslm.artifacts import read_jsonl

        rows = read_jsonl(Path(data_dir) / "val.jsonl")
        return {lang: [r["text"] for r in rows if r["lang"] == lang][:n] for lang in ("ko", "en")}
    return {lang: texts[:n] for lang, texts in BUILTIN.items()}


def main() -> None:
    from farmslm.model.export import export_gguf
    from farmslm.model.load import default_gguf, load_base
    from farmslm.model.quantize import calibration_texts, compute_imatrix, quantize_gguf, write_imatrix
    from farmslm.model.tokenizer import get_tokenizer
    from farmslm.runtime.bench import BenchConfig, measure, perplexity, read_bandwidth_gb_s

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset dir (val.jsonl for perplexity, corpus for calibration)")
    ap.add_argument("--types", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,IQ4_XS")
    ap.add_argument("--texts", type=int, default=8, help="texts per language for perplexity")
    ap.add_argument("--calib", type=int, default=64, help="calibration texts for the imatrix")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="skip the speed columns")
    ap.add_argument("--f32", action="store_true", help="also measure the F32 export (slow)")
    ap.add_argument("--work", default="/tmp/farmslm_quant_table", help="where the GGUFs are written")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    from farmslm.model.quantize import read_imatrix

    tok = get_tokenizer(default_gguf())
    f32, imx_path = work / "base-f32.gguf", work / "imatrix.gguf"
    calib = calibration_texts(args.data, args.calib)
    if f32.exists() and imx_path.exists():  # cached from an earlier run with the same work dir
        imx = read_imatrix(imx_path)
    else:
        base = load_base("default")
        export_gguf(base.model, base.tokenizer_gguf, f32, base.arch, "f32", name="gemma-3-270m")
        imx = compute_imatrix(base.model, base.arch, [tok.encode(t)[:256] for t in calib],
                              dataset=args.data or "builtin")
        write_imatrix(imx, imx_path)
        del base

    eval_ids = {lang: [tok.encode(t) for t in texts] for lang, texts in load_texts(args.data, args.texts).items()}
    bandwidth = read_bandwidth_gb_s(args.threads)
    bench_cfg = BenchConfig(threads=args.threads, prompt_tokens=64, gen_tokens=32, repeats=2)

    def row(name: str, path: Path, qtype: str, imatrix: bool | None) -> dict:
        speed = measure(path, bench_cfg, bandwidth) if args.speed else {"gen_tok_s": None, "prompt_tok_s": None}
        r = {"name": name, "type": qtype, "imatrix": imatrix, "size_mb": round(path.stat().st_size / 1e6, 1),
             **{f"ppl_{lang}": round(perplexity(path, ids, args.threads), 3) for lang, ids in eval_ids.items()},
             "gen_tok_s": speed["gen_tok_s"], "prompt_tok_s": speed["prompt_tok_s"]}
        print(json.dumps(r, ensure_ascii=False), flush=True)
        return r

    source = f"validation split of {args.data}" if args.data and (Path(args.data) / "val.jsonl").exists() else "built-in texts"
    rows: list[dict] = []

    def save() -> None:
        RESULTS.mkdir(exist_ok=True)
        meta = {"texts_per_lang": args.texts, "ppl_source": source, "calibration_texts": len(calib),
                "threads": args.threads, "read_bandwidth_gb_s": round(bandwidth, 2),
                "duration_s": round(time.time() - t_start)}
        (RESULTS / "quant_table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False))
        lines = [f"Default base (Gemma 3 270M), perplexity on {source} ({args.texts} per language), "
                 f"imatrix from {len(calib)} calibration texts, {args.threads} threads; speed: `farmslm bench`, "
                 "median of 2 runs (64 prompt + 32 generated tokens) after a warm-up, all rows in one run.", "",
                 "| variant | size MB | ppl ko | ppl en | gen tok/s | prompt tok/s |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['size_mb']} | {r['ppl_ko']} | {r['ppl_en']} | {r['gen_tok_s']} | "
                  f"{r['prompt_tok_s']} |" for r in rows]
        (RESULTS / "quant_table.md").write_text("\n".join(lines) + "\n")
        plot(rows, RESULTS / "quant_size_vs_ppl.png")

    rows.append(row("stock Q4_K_M (packaged)", default_gguf(), "Q4_K_M", None))
    for qtype in args.types.split(","):
        for use_imx in (False, True):
            out = work / f"{qtype.lower()}{'-imx' if use_imx else ''}.gguf"
            quantize_gguf(f32, out, qtype, imx if use_imx else None, args.threads)
            rows.append(row(f"{qtype}{' + imatrix' if use_imx else ''}", out, qtype, use_imx))
            out.unlink()
            save()
    if args.f32:
        rows.append(row("F32 (our export)", f32, "F32", None))
        save()
    print((RESULTS / "quant_table.md").read_text())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, lang in zip(axes, ("ko", "en")):
        for r in rows:
            marker = {None: "s", False: "o", True: "^"}[r["imatrix"]]
            color = {None: "black", False: "tab:blue", True: "tab:orange"}[r["imatrix"]]
            ax.scatter(r["size_mb"], r[f"ppl_{lang}"], marker=marker, color=color)
            ax.annotate(r["name"].replace(" + imatrix", "+i"), (r["size_mb"], r[f"ppl_{lang}"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("file size (MB, log)")
        ax.set_ylabel(f"perplexity ({lang})")
        ax.set_title(f"{lang}: ○ no imatrix, △ imatrix, □ reference")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
