"""Fine-tuning recipe on the real data (NOT a CI test: minutes to hours): BC5CDR NER and HoC classification.

No pretrained weights can be downloaded where this was written, so the model is randomly initialised (a `small`
preset: hidden 256, 4 layers) with the REAL BioGPT vocabulary (../shared/data/biogpt-vocab/base). Numbers from
such a model measure the training pipeline, not BioGPT: fine-tuning microsoft/biogpt itself is the same command
with `--model microsoft/biogpt`.

    python -m bench.finetune_recipe --task ner --epochs 6 --max-time 1000
    python -m bench.finetune_recipe --task hoc --epochs 2 --max-time 1000 --pos-weight sqrt

Each run writes bench/out/finetune/<task>/ (checkpoint + metrics.json) and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from bench.common import OUT, REPO, machine

SHARED = Path(os.environ.get("BIOGPT_SHARED_DIR", REPO.parent / "shared"))


def _summary(task: str, metrics: dict[str, Any], wall: float) -> str:
    best, config = metrics["best"], metrics["config"]
    lines = [f"### {task} ({metrics['task']})", "",
             f"- model: random init, preset shape {config}, {metrics['parameters'] / 1e6:.1f} M parameters",
             f"- train examples {metrics['train_examples']} ({metrics['train_features']} training sequences), "
             f"dev examples {metrics['dev_examples']}",
             f"- {metrics['steps']} optimizer steps, {metrics['epochs_completed']} epochs, best at step "
             f"{best['step']}; training {metrics['train_seconds']:.0f} s, wall {wall:.0f} s",
             f"- args: {json.dumps({k: v for k, v in metrics['args'].items() if v is not None})}", ""]
    if metrics["task"] == "ner":
        lines += ["| type | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for kind, row in best["per_type"].items():
            lines.append(f"| {kind} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
                         f"{row['support']} |")
        lines.append(f"| **micro** | {best['precision']:.3f} | {best['recall']:.3f} | **{best['f1']:.3f}** | |")
        lines.append("")
        lines.append("Baseline (all tokens O): F1 0.000.")
    else:
        lines.insert(-1, f"- pos_weight: {metrics['pos_weight']}, threshold {metrics['threshold']}")
        lines += ["| | accuracy (exact set) | micro-F1 | macro-F1 |", "|---|---|---|---|",
                  f"| fine-tuned | {best['accuracy']:.3f} | **{best['micro_f1']:.3f}** | {best['macro_f1']:.3f} |"]
        for name, row in metrics["baseline"].items():
            lines.append(f"| baseline: {name} | {row['accuracy']:.3f} | {row['micro_f1']:.3f} | "
                         f"{row['macro_f1']:.3f} |")
    lines.append("")
    lines.append("Dev metric per evaluation: " + ", ".join(
        f"{h['step']}: {h[metrics['metric'] if metrics['task'] != 'ner' else 'f1']:.3f}" for h in metrics["history"]))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("ner", "hoc"), required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-time", type=float, help="seconds of training (safety net)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pos-weight", choices=("ratio", "sqrt"), help="HoC: weigh rare labels' positives")
    parser.add_argument("--out", type=Path, default=OUT / "finetune")
    options = parser.parse_args(argv)
    if not (SHARED / "data").is_dir():
        raise SystemExit(f"{SHARED} is absent: the recipe needs ../shared (BC5CDR, HoC, the BioGPT vocabulary).")

    from biogpt.tasks.finetune import TrainingArguments, finetune_classifier, finetune_ner

    data = SHARED / "data"
    out = options.out / options.task
    args = TrainingArguments(output_dir=out, epochs=options.epochs, max_steps=options.max_steps,
                             max_time=options.max_time, lr=options.lr, seed=options.seed, warmup_ratio=0.06,
                             batch_size=options.batch_size or (8 if options.task == "ner" else 32),
                             max_length=options.max_length or (256 if options.task == "ner" else 128),
                             eval_batch_size=32, progress=False)
    common = dict(preset=options.preset, tokenizer=data / "biogpt-vocab" / "base", args=args)
    started = time.perf_counter()
    if options.task == "ner":
        metrics = finetune_ner(data / "bc5cdr" / "CDR_TrainingSet.PubTator.txt",
                               data / "bc5cdr" / "CDR_DevelopmentSet.PubTator.txt", **common)
        title = "BC5CDR NER (train -> dev)"
    else:
        metrics = finetune_classifier(data / "hoc" / "train.tsv", data / "hoc" / "valid.tsv",
                                      pos_weight=options.pos_weight, **common)
        title = "HoC multi-label classification (train -> valid)"
    wall = time.perf_counter() - started
    (out / "machine.json").write_text(json.dumps({**machine(), "wall_seconds": round(wall, 1)}, indent=2) + "\n")
    print(_summary(title, metrics, wall))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
