"""`python -m tools.demo build [--quick] [--out DIR] [--seed N]`: (re)build the bundled demo models."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split(":")[1].strip())
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="train demo-lm, demo-ner and demo-classify and write their cards")
    build.add_argument("--out", default="biogpt/demo_models", help="output directory (default: biogpt/demo_models)")
    build.add_argument("--quick", action="store_true", help="tiny sizes and few steps (CI smoke test, < 1 minute)")
    build.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from .build import build as run_build  # imports torch; keep --help fast

    metrics = run_build(args.out, quick=args.quick, seed=args.seed)
    summary = {
        "demo-lm held-out perplexity": metrics["demo-lm"]["heldout"]["perplexity"],
        "demo-ner held-out entity F1": metrics["demo-ner"]["heldout"]["f1"],
        "demo-classify held-out accuracy": metrics["demo-classify"]["heldout"]["accuracy"],
        "build_seconds": metrics["build_seconds"],
        "cpu_seconds": metrics["cpu_seconds"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
