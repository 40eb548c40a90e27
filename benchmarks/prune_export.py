"""Uniform 25 % FFN pruning of the default base -> GGUF -> llama.cpp: does it load, what does it cost?

Runs `farmslm prune` (PruneConfig defaults: the study's best metric, uniform), exports the pruned and
the unpruned model to F16 GGUF, quantizes both to Q4_K_M, and measures perplexity before any
recovery in torch and in llama.cpp on the val split. -> benchmarks/results/prune_export.{json,md}
Example: .venv/bin/python benchmarks/prune_export.py --data runs/quick/data --work /tmp/prune_export
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from farmslm import artifacts
from farmslm.evaluate.perplexity import encode_texts, perplexity_ids
from farmslm.model import prune as P
from farmslm.model.load import load_base
from farmslm.model.export import export_gguf
from farmslm.model.io import load_model_dir, param_count
from farmslm.model.quantize import quantize_gguf
from farmslm.model.tokenizer import Tokenizer
from farmslm.runtime.bench import perplexity as llama_perplexity

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset dir (train.jsonl, val.jsonl, validation_questions.jsonl)")
    ap.add_argument("--work", default="/tmp/prune_export", help="scratch dir for model dirs and GGUFs")
    ap.add_argument("--n-texts", type=int, default=24, help="val texts for perplexity")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: shared cores)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    started = time.time()

    cfg = P.PruneConfig(data_dir=args.data, out_dir=str(work / "prune"), n_eval=args.n_texts)
    pruned_dir = P.run(cfg)
    pruned, meta = load_model_dir(pruned_dir)
    loaded = load_base("default")
    base, base_gguf, arch = loaded.model, loaded.tokenizer_gguf, loaded.arch
    tok = Tokenizer(pruned_dir / "tokenizer.gguf")
    val = [r["text"] for r in artifacts.read_jsonl(Path(args.data) / "val.jsonl")]
    ids = encode_texts(tok, val[:args.n_texts], 128)

    files = {}
    for name, model in (("unpruned", base), ("pruned", pruned)):
        f16 = export_gguf(model, pruned_dir / "tokenizer.gguf", work / f"{name}-f16.gguf", arch, "f16", f"farmslm-{name}")
        files[f"{name}_f16"] = f16
        files[f"{name}_q4_k_m"] = quantize_gguf(f16, work / f"{name}-q4_k_m.gguf", "Q4_K_M")
    result = {
        "config": {"metric": cfg.metric, "allocation": cfg.allocation, "ratio": cfg.ratio},
        "ffn_widths": sorted(set(meta["ffn_widths"])),
        "n_params": {"unpruned": param_count(base), "pruned": param_count(pruned)},
        "torch_ppl": {"unpruned": perplexity_ids(base, ids), "pruned": perplexity_ids(pruned, ids)},
        "llama_cpp_ppl": {k: llama_perplexity(v, ids) for k, v in files.items()},
        "size_mb": {k: round(v.stat().st_size / 1e6, 1) for k, v in files.items()},
        "gate": meta["metrics"].get("gate"),
        "val_tokens": sum(len(x) - 1 for x in ids),
        "seconds": round(time.time() - started, 1),
    }
    result["params_removed_pct"] = round(100 * (1 - result["n_params"]["pruned"] / result["n_params"]["unpruned"]), 2)
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(RESULTS / "prune_export.json", result)
    rows = ["| model | llama.cpp ppl | size MB |", "|---|---|---|"]
    rows += [f"| {k} | {result['llama_cpp_ppl'][k]:.2f} | {result['size_mb'][k]} |" for k in files]
    md = [f"# Uniform {cfg.ratio:.0%} FFN pruning ({cfg.metric}) in llama.cpp, before recovery", "",
          f"FFN width {result['ffn_widths']}, parameters {result['n_params']['unpruned']:,} -> "
          f"{result['n_params']['pruned']:,} (-{result['params_removed_pct']}%). Torch perplexity on "
          f"{result['val_tokens']} val tokens: {result['torch_ppl']['unpruned']:.2f} -> {result['torch_ppl']['pruned']:.2f}. "
          f"Quality gate on the pruned model: {json.dumps(result['gate'])}.", "", *rows, ""]
    artifacts.write_text(RESULTS / "prune_export.md", "\n".join(md))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
