"""`biogpt annotate`: annotate a corpus from the command line, on this machine or on a Ray cluster.

    python -m biogpt annotate abstracts.jsonl --task ner --model DIR_OR_ID --output out/
    python -m biogpt annotate corpus/ --task relations --model RE-BC5CDR-BioGPT --output out/ --engine ray --workers 4

Running the same command again after a crash or Ctrl-C continues where the first run stopped. Exit status: 0 when
the output is complete, 130 when interrupted, 1 on an error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import BioGptError
from ..tasks.entities import STRATEGIES
from .engine import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, RunConfig, Summary, run_local
from .ray_engine import run_ray
from .readers import DEFAULT_MAX_CHARS, FORMATS, ReaderOptions
from .registry import TASKS

def _yes_no(value: str) -> bool:
    if value.lower() not in ("yes", "no"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {value!r}")
    return value.lower() == "yes"


# Task options: (flag, parameter name, type, help). Each is passed only when given, so a task's defaults apply and
# an option that does not belong to the task is refused by name (AnnotationTask.parameters).
_TASK_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--aggregation", "aggregation_strategy", str, f"ner: how sub-tokens form entities ({', '.join(STRATEGIES)}; "
                                                   "default simple)"),
    ("--threshold", "threshold", float, "ner: drop entities scoring below this (default 0)"),
    ("--whole-words", "whole_words", _yes_no, "ner: yes widens entities to whole words, as the app shows them "
                                              "(default no: transformers' pipeline spans)"),
    ("--sentencizer", "sentencizer", str, "ner: an installed spaCy pipeline that splits sentences (default: "
                                          "rule-based)"),
    ("--top-k", "top_k", int, "classify: keep the k most probable labels (default: all)"),
    ("--max-new-tokens", "max_new_tokens", int, "generate: tokens to add to each text (default 32)"),
    ("--family", "family", str, "relations: bc5cdr, ddi or kd-dti (default: the one the checkpoint was trained on)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biogpt annotate", description="Annotate every document of a corpus, resumably.",
        epilog="Output: OUT/shards/*.jsonl (one record per document), *.pubtator (ner, relations) or *.csv "
               "(classify), OUT/rejects.jsonl and OUT/manifest.json.")
    parser.add_argument("input", help="a JSONL, CSV, TSV, PubTator or text file (.gz too), a directory or a glob")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--model", required=True, help="Hub id, local checkpoint directory, fine-tuned fairseq "
                        "checkpoint directory, a fine-tuned catalog name (e.g. RE-BC5CDR-BioGPT) or demo")
    parser.add_argument("--output", required=True, type=Path, help="output directory (created; reused to resume)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", default=None, help="ray: the cluster to join ('auto': the running one; "
                                                            "default: start a local Ray)")
    parser.add_argument("--workers", type=int, default=1, help="ray: model actors (default 1)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per actor (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor (default 0)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"model windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"records per output shard, the unit of resumption (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                        help=f"longer texts are rejected (default {DEFAULT_MAX_CHARS:,})")
    parser.add_argument("--format", dest="input_format", choices=("auto",) + FORMATS, default="auto",
                        help="input format (default: from each file's name)")
    parser.add_argument("--id-field", default="id", help="JSONL key / CSV column of the id (default id)")
    parser.add_argument("--text-field", default="text", help="JSONL key / CSV column of the text (default text; "
                                                             "else title + abstract)")
    parser.add_argument("--device", default="cpu", help="local engine: cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="precision of the model (default float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag, _, kind, help_text in _TASK_OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=help_text)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    params = {name: getattr(args, flag[2:].replace("-", "_")) for flag, name, _, _ in _TASK_OPTIONS
              if getattr(args, flag[2:].replace("-", "_")) is not None}
    reader = ReaderOptions(max_chars=args.max_chars, id_field=args.id_field, text_field=args.text_field,
                           input_format=args.input_format)
    return RunConfig(args.input, args.task, args.model, args.output, params, args.batch_size, args.shard_size,
                     reader, args.device, args.dtype)


def _run(args: argparse.Namespace) -> Summary:
    config = config_from_args(args)
    if args.engine == "ray":
        return run_ray(config, address=args.ray_address, workers=args.workers, num_cpus=args.cpus_per_worker,
                       num_gpus=args.gpus_per_worker, progress=not args.no_progress)
    return run_local(config, progress=not args.no_progress)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = _run(args)
    except BioGptError as error:  # bad input, options, checkpoint: one line, no traceback
        print(f"biogpt annotate: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: committed shards are intact, the unfinished one is redone
        print("biogpt annotate: stopped. Run the same command to continue where it stopped.", file=sys.stderr)
        return 130
    print(summary, file=sys.stderr)
    return 130 if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
