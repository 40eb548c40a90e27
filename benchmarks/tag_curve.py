"""Tag-learning curve: how fast does LoRA teach the `[WARNING: ...]` / `[NORMAL]` tag on 2 CPU cores?

a build's pruned model dir + its data dir -> one LoRA run (the quick profile's settings unless
overridden) that stops every K steps to write the tag of a fixed draw of test rows (torch, greedy,
unguarded) and score it exact-set against the rule engine -> benchmarks/results/tag_curve_<name>.{json,md}
(`tag_curve.md` summarises the runs measured so far). The share of the commonest predicted tag is
reported too: a model that writes [NORMAL] everywhere scores the NORMAL share of the rows.
Example: .venv/bin/python benchmarks/tag_curve.py --model runs/quick/prune --data runs/quick/data \
    --name drills --set '{"max_samples": 192, "tag_drills": 1344}' --every 24
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    import torch

    from farmslm import artifacts
    from farmslm.config import load_profile
    from farmslm.domain.sensors import parse_tag
    from farmslm.evaluate import metrics
    from farmslm.model import train as T
    from farmslm.model.experiments import generate
    from farmslm.model.tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model dir (e.g. a build's prune/)")
    ap.add_argument("--data", required=True, help="dataset dir (train.jsonl, test.jsonl)")
    ap.add_argument("--name", required=True, help="run name (section of the results)")
    ap.add_argument("--set", default="{}", help="JSON overrides of the quick profile's train config")
    ap.add_argument("--every", type=int, default=20, help="score the tag every N optimizer steps")
    ap.add_argument("--rows", type=int, default=60, help="test rows scored (seeded draw)")
    ap.add_argument("--synthetic-drills", type=int, default=0,
                    help="add N tag drills from freshly synthesized rows (dataset.synth, another seed: new readings)")
    ap.add_argument("--save", help="also write the final adapter + train log here (a train dir for `farmslm merge`)")
    args = ap.parse_args()

    over = {**load_profile("quick").get("train", {}), "save_steps": 10 ** 6, **json.loads(args.set)}
    cfg = replace(T.TrainConfig(), **over)
    torch.manual_seed(cfg.seed)
    model, tok_path, _ = T.load_model(args.model, "cpu")
    tok = Tokenizer(tok_path)
    data = Path(args.data)
    examples = T.load_examples(data / "train.jsonl", tok, cfg, cfg.max_samples, cfg.tag_drills)
    if args.synthetic_drills:
        from farmslm.dataset import synth

        fresh = synth.synthesize(args.synthetic_drills, seed=1000 + cfg.seed)
        examples += [T.encode_example(tok, r["text"], cfg.max_seq_len, tag_only=True) for r in fresh]
    rows = random.Random(0).sample(artifacts.read_jsonl(data / "test.jsonl"), args.rows)
    prompts = [T.split_text(r["text"])[0] for r in rows]
    model = T.add_adapter(model, cfg)
    pad = tok.pad_id if tok.pad_id >= 0 else tok.eos_id
    total = T.n_steps(len(examples), cfg)
    started, curve = time.time(), []

    def hook(step: int, log_row: dict) -> None:
        if step % args.every and step != total:
            return
        train_s = round(time.time() - started)
        model.eval()
        texts = generate(model, tok, prompts, 32, 12)
        codes = [parse_tag(t)[0] for t in texts]
        s = metrics.warning_scores(codes, [r["warnings"] for r in rows], [r["lang"] for r in rows])
        top = Counter(t.split("]")[0].strip() + "]" for t in texts).most_common(1)[0]
        point = {"step": step, "train_s": train_s, "loss": log_row["loss"], "acc": s["accuracy"],
                 "acc_ko": s["accuracy_ko"], "acc_en": s["accuracy_en"], "top_tag": top[0],
                 "top_tag_share": round(top[1] / len(texts), 3)}
        curve.append(point)
        print(json.dumps(point, ensure_ascii=False), flush=True)

    rows_log = T.train_loop(model, examples, cfg, Path("/tmp") / f"tag_curve_{args.name}", None, False, pad,
                            on_step=hook)
    if args.save:
        model.save_pretrained(Path(args.save) / "adapter")
        artifacts.write_jsonl(Path(args.save) / "train_log.jsonl", rows_log)
    save(args.name, {"config": artifacts._jsonable(cfg), "samples": len(examples), "rows": args.rows,
                     "synthetic_drills": args.synthetic_drills,
                     "model": args.model, "curve": curve})


def save(name: str, run: dict) -> None:
    """results/tag_curve_<name>.{json,md}; results/tag_curve.md summarises the runs measured so far."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"tag_curve_{name}.json").write_text(json.dumps(run, indent=2, ensure_ascii=False))
    c = run["config"]
    drills, synthetic = c.get("tag_drills", 0), run.get("synthetic_drills", 0)
    lines = [f"Tag-learning curve `{name}` (benchmarks/tag_curve.py): exact-set accuracy of the model's own tag "
             "on a fixed draw of test rows (torch, greedy), against training time on this machine.", "",
             f"{run['samples']} samples ({run['samples'] - drills - synthetic} full + {drills} tag drills + "
             f"{synthetic} synthetic drills), "
             f"{c['epochs']} epochs, lr {c['lr']}, cpu_bf16 {c.get('cpu_bf16', False)}, "
             f"tag weight {c['tag_weight']}, batch {c['batch_size']}x{c['grad_accum']}, {run['rows']} test rows, "
             f"model {run['model']}", "",
             "| step | train s | loss | acc | ko | en | commonest tag (share) |", "|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {p['step']} | {p['train_s']} | {p['loss']:.3f} | {p['acc']:.2f} | {p['acc_ko']:.2f} | "
              f"{p['acc_en']:.2f} | {p['top_tag']} ({p['top_tag_share']:.2f}) |" for p in run["curve"]]
    (RESULTS / f"tag_curve_{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
