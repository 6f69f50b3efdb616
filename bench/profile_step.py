"""Where a batch-1 decode step's time goes besides the matrix products (torch.profiler), on the microsoft/biogpt shape.

    python -m bench.profile_step                   # bf16, the kernels the probe picks on this machine
    python -m bench.profile_step --precision int4 --kernels aten --threads 1

Loads the random `microsoft/biogpt`-shaped checkpoint as the app would, runs a 16-token prompt, then times
`--steps` single-token forward steps without the profiler (min and median) and profiles as many again. Op self
times are grouped: the native decoder's layers (where `kernels.NativeDecoder` runs them: every layer's products,
attention and the rest in one call), matrix products (every ATen / oneDNN linear kernel), attention (SDPA), GELU,
LayerNorm, the other ATen ops (adds, views, the KV-cache copies, the causal mask), and "Python + dispatch" = the
profiled step's wall time minus all op self times (the interpreter, module calls, argument parsing, our own
per-call native products such as the output head's, the profiler's own cost). Also times the same
steps through `generate` so the decoding loop's own cost per token shows (generate's per-token time minus the bare
forward's).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from typing import Any, Optional

from biogpt.kernels import NATIVE_DECODER_EVENT

from .common import build_checkpoint, machine

LINEAR_OPS = {"aten::mv", "aten::addmv", "aten::addmm", "aten::mm", "aten::bmm", "mkldnn::_linear_pointwise",
              "aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu"}


def _group(name: str) -> str:
    if name == NATIVE_DECODER_EVENT:
        return "native decoder layers (one call)"
    if name in LINEAR_OPS:
        return "matrix products"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention (SDPA)"
    if name == "aten::gelu":
        return "GELU"
    if "layer_norm" in name:
        return "LayerNorm"
    return "other ATen ops"


def profile(precision: str, kernels: str, steps: int, context: int) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from biogpt import BioGptForCausalLM
    from biogpt.cache import KVCache
    from biogpt.quantization import cpu_quantization_config

    model = BioGptForCausalLM.from_pretrained(
        build_checkpoint("biogpt"), torch_dtype=torch.float32 if precision == "fp32" else torch.bfloat16,
        quantization_config=cpu_quantization_config(precision) if precision in ("int8", "int4") else None,
        cpu_kernels=kernels)
    ids = torch.randint(4, 40000, (1, context), generator=torch.Generator().manual_seed(0))
    ids[0, 0] = 2
    with torch.inference_mode():
        cache = KVCache.for_model(model, 1, context + 3 * steps + 8)
        token = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, True)

        def step():
            nonlocal token
            token = model(token, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)

        for _ in range(3):
            step()
        walls = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            walls.append(time.perf_counter() - start)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            profiled = (time.perf_counter() - start) / steps
    groups: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        groups[_group(event.key)] += event.self_cpu_time_total / steps / 1e3
        calls[_group(event.key)] += event.count / steps
        if _group(event.key) == "other ATen ops":
            ops[event.key] += event.count / steps
    op_ms = sum(groups.values())
    groups["Python + dispatch"] = profiled * 1e3 - op_ms
    # generate() per token: the difference of two lengths, min of alternated runs
    prompt = ids[:, :16]
    runs: dict[int, list[float]] = {1: [], steps + 1: []}
    for r in range(6):
        for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            runs[n].append(time.perf_counter() - start)
    generate_ms = (min(runs[steps + 1]) - min(runs[1])) / steps * 1e3
    return {"precision": precision, "kernels": getattr(model, "cpu_kernel_plan", None), "steps": steps,
            "context": context, "step_ms_min": min(walls) * 1e3, "step_ms_median": statistics.median(walls) * 1e3,
            "profiled_step_ms": profiled * 1e3, "groups_ms": dict(groups), "calls": dict(calls),
            "other_ops_per_step": dict(ops.most_common(15)), "generate_ms_per_token": generate_ms,
            "threads": torch.get_num_threads()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "int8", "int4"])
    parser.add_argument("--kernels", default="auto", help="BIOGPT_CPU_KERNELS for this load (auto, aten, ...)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--context", type=int, default=16, help="prompt tokens before the profiled steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = profile(args.precision, args.kernels, args.steps, args.context)
    info = machine()
    print(f"{info.get('cpu')}, torch {info.get('torch')}, {result['threads']} threads, load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}; {args.precision}, kernels {result['kernels']}")
    print(f"decode step (no profiler): min {result['step_ms_min']:.2f} ms, median {result['step_ms_median']:.2f} ms; "
          f"profiled {result['profiled_step_ms']:.2f} ms; through generate(): {result['generate_ms_per_token']:.2f} "
          "ms per token")
    print("| part of the step | ms | share | ops per step |")
    print("|---|---|---|---|")
    total = result["profiled_step_ms"]
    for name, ms in sorted(result["groups_ms"].items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {ms:.2f} | {100 * ms / total:.0f}% | {result['calls'].get(name, 0):.0f} |")
    print("other ops per step: " + ", ".join(f"{k} x{v:.0f}" for k, v in result["other_ops_per_step"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
