"""The `biogpt` command.

    echo "Ibuprofen is best used for" | python -m biogpt run --task text-generation --model microsoft/biogpt
    python -m biogpt run --task relations|pubmedqa|hoc --model DIR ...     one text through a paper task model
    python -m biogpt convert-fairseq SRC_DIR OUT_DIR [--vocab base|large]  a fine-tuned fairseq checkpoint -> Hub layout
    python -m biogpt eval TASK --model DIR --data FILE [--limit N]         the paper's metric on a data set
    python -m biogpt finetune ner|classify ...                             train a task head
    python -m biogpt annotate CORPUS --task ner --model M --output DIR [--engine ray]   a corpus, resumably
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import catalog
from .annotate import cli as annotate_cli
from .errors import BioGptError
from .pipelines import pipeline
from .tasks import evaluate, finetune

# Subcommands whose arguments their own module parses (main() hands them everything after the command's name).
_DELEGATED = {"finetune": finetune.main, "eval": evaluate.main, "convert-fairseq": evaluate.convert_main,
              "annotate": annotate_cli.main}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biogpt", description="BioGPT from the command line.")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{run,annotate,convert-fairseq,eval,finetune}")
    run = commands.add_parser("run", help="stream the continuation of each prompt (stdin lines or --prompt); with "
                                          "--task relations|pubmedqa|hoc, run a paper task model on one text")
    run.add_argument("--task", default="text-generation", choices=["text-generation"])
    run.add_argument("--model", required=True, help="Hub id (e.g. microsoft/biogpt), local checkpoint directory, or "
                                                     "a catalog name such as demo (the bundled offline model)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or a GPU index (default: cpu)")
    run.add_argument("--dtype", default=None, help="float32, float16, bfloat16 or auto")
    run.add_argument("--prompt", default=None, help="the prompt (default: one prompt per line of stdin)")
    run.add_argument("--max-new-tokens", type=int, default=None)
    run.add_argument("--max-length", type=int, default=None)
    run.add_argument("--do-sample", action="store_true")
    run.add_argument("--temperature", type=float, default=None)
    run.add_argument("--top-k", type=int, default=None)
    run.add_argument("--top-p", type=float, default=None)
    run.add_argument("--num-beams", type=int, default=None)
    run.add_argument("--seed", type=int, default=None)
    # Listed for --help only: main() hands their arguments to their own modules unparsed.
    commands.add_parser("convert-fairseq", help="convert a fine-tuned fairseq checkpoint to the Hugging Face layout",
                        add_help=False)
    commands.add_parser("eval", help="score a paper task model with the paper's metric", add_help=False)
    commands.add_parser("finetune", help="fine-tune a checkpoint (arguments: biogpt finetune --help)", add_help=False)
    commands.add_parser("annotate", help="annotate a corpus into resumable shards, locally or on Ray "
                                         "(arguments: biogpt annotate --help)", add_help=False)
    return parser


def _run(args: argparse.Namespace) -> int:
    model = catalog.local_source(args.model)
    generator = pipeline(args.task, model=model, device=args.device, torch_dtype=args.dtype)
    prompts = [args.prompt] if args.prompt is not None else [line.rstrip("\n") for line in sys.stdin]
    options = dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams, seed=args.seed)
    if args.do_sample:
        options["do_sample"] = True
    for prompt in prompts:
        for delta in generator.stream(prompt, **options):
            sys.stdout.write(delta.text)
            sys.stdout.flush()  # show each piece as soon as it is final
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return int(_DELEGATED[argv[0]](argv[1:]) or 0)
    if argv and argv[0] == "run" and evaluate.wants_task_run(argv[1:]):
        return evaluate.run_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BioGptError as error:  # device, checkpoint and parameter problems: one line, no traceback
        print(f"biogpt: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
