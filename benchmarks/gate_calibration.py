"""Where the quality gate's threshold comes from: degeneration rate of the base pruned 0-90 %.

Default base, minitron importance, uniform allocation, the 30 validation questions, few-shot prompt.
-> benchmarks/results/gate_calibration.{json,md} (rate and reasons per pruning rate, sample answers).
Example: .venv/bin/python benchmarks/gate_calibration.py --data runs/quick/data
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from farmslm import artifacts
from farmslm.evaluate import gate
from farmslm.model import prune as P
from farmslm.model.load import load_base
from farmslm.model.tokenizer import Tokenizer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset dir (train.jsonl, validation_questions.jsonl)")
    ap.add_argument("--rates", default="0,0.25,0.5,0.75,0.9", help="FFN shares removed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: shared cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    loaded = load_base("default")
    base, tokenizer_gguf = loaded.model, loaded.tokenizer_gguf
    tok = Tokenizer(tokenizer_gguf)
    data = Path(args.data)
    questions = artifacts.read_jsonl(data / "validation_questions.jsonl")
    stats = P.calibrate(base, P.calibration_ids(artifacts.read_jsonl(data / "train.jsonl"), tok, 64, 128))
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        model = copy.deepcopy(base)
        if rate:
            P.prune(model, stats, P.PruneConfig(metric="minitron", ratio=rate, keep_multiple=1))
        t = time.time()
        res = gate.check(model, tok, questions)
        rows.append({"removed": rate, "rate": res["rate"], "passed": res["passed"], "reasons": res["reasons"],
                     "seconds": round(time.time() - t, 1),
                     "samples": [a["answer"][:160] for a in res["answers"][:2] + res["answers"][-2:]]})
        print(rows[-1], flush=True)
    artifacts.write_json(RESULTS / "gate_calibration.json", {"threshold": gate.GateConfig().max_rate, "rows": rows,
                                                             "seconds": round(time.time() - started, 1)})
    md = ["# Quality gate calibration (minitron, uniform, 30 validation questions, few-shot)", "",
          f"Threshold: the gate passes at a degeneration rate <= {gate.GateConfig().max_rate}.", "",
          "| FFN removed | degeneration rate | gate | reasons |", "|---|---|---|---|"]
    md += [f"| {r['removed']:.0%} | {r['rate']:.2f} | {'pass' if r['passed'] else 'FAIL'} | {r['reasons']} |" for r in rows]
    artifacts.write_text(RESULTS / "gate_calibration.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
