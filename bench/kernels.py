"""Every CPU kernel candidate on the microsoft/biogpt-shaped weights: what the load-time probe chooses between.

    python -m bench.kernels                       # fp32, bf16, int8, int4: GB/s of weights per candidate
    python -m bench.kernels --formats bf16 --rounds 15 --threads 1

For each format, the whole decoder + head of the random `microsoft/biogpt`-shaped checkpoint is loaded as the app
loads it (`cpu_kernels="aten"`, so nothing is chosen yet); then `biogpt.kernels.measure_candidates` times every
candidate of every regime on the same layers as the probe would (all of them for decoding, not just the probe's
sample), alternating candidates, best of `--rounds` (the least disturbed by other processes). Prints weight
bytes streamed per second for one-row products (the decode step's bound) and GFLOP/s for 8 and 128 rows, and
the choice `biogpt.kernels.pick` makes from those numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

from .common import OUT, build_checkpoint, machine

FORMATS = ("fp32", "bf16", "int8", "int4")


def measure(fmt: str, rounds: int) -> dict[str, Any]:
    import torch

    from biogpt import BioGptForCausalLM, kernels
    from biogpt.quantization import cpu_quantization_config

    path = build_checkpoint("biogpt")
    model = BioGptForCausalLM.from_pretrained(
        path, torch_dtype=torch.float32 if fmt == "fp32" else torch.bfloat16, cpu_kernels="aten",
        quantization_config=cpu_quantization_config(fmt) if fmt in ("int8", "int4") else None)
    layers = [module for _, module in kernels.cpu_linears(model)]
    weight_format = kernels.weight_format(layers[0])
    layer_bytes = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    rows_out: dict[str, Any] = {"format": weight_format, "weight_bytes": layer_bytes, "regimes": {}}
    for regime in kernels.REGIMES:
        names = kernels.candidates(weight_format, regime)
        sample = layers if regime == "decode" else kernels.probe_sample(layers, regime)
        seconds = kernels.measure_candidates(weight_format, sample, regime, names, rounds=rounds)
        flops = 2 * kernels.PROBE_ROWS[regime] * sum(layer.in_features * layer.out_features for layer in sample)
        sample_bytes = sum(layer.weight.numel() * layer.weight.element_size() for layer in sample)
        rows_out["regimes"][regime] = {
            "seconds": seconds, "choice": kernels.pick(seconds, regime),
            "gb_per_s": {n: sample_bytes / t / 1e9 for n, t in seconds.items()},
            "gflop_per_s": {n: flops / t / 1e9 for n, t in seconds.items()}}
    return rows_out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    load_start = os.getloadavg()
    results = {fmt: measure(fmt, args.rounds) for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]}
    print(f"{info.get('cpu')} ({', '.join(info.get('cpu_flags', []))}), torch {info.get('torch')}, "
          f"{args.threads} threads, load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    from biogpt.kernels import PROBE_ROWS, REGIMES

    print("| format | " + " | ".join(f"{regime} ({PROBE_ROWS[regime]} rows): "
                                     + ("GB/s of weights" if regime == "decode" else "GFLOP/s") for regime in REGIMES)
          + " |")
    print("|---" * (len(REGIMES) + 1) + "|")
    for fmt, result in results.items():
        cells = []
        for regime in REGIMES:
            r = result["regimes"][regime]
            values = r["gb_per_s"] if regime == "decode" else r["gflop_per_s"]
            cells.append(", ".join(f"{'**' + n + '**' if n == r['choice'] else n} {v:.1f}"
                                   for n, v in values.items()))
        print(f"| {result['format']} | " + " | ".join(cells) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "kernels.json").write_text(json.dumps({"machine": info, "threads": args.threads, "results": results},
                                                 indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
