"""Load time, memory footprint and decode speed of fp32 / bf16 / int8 / int4 (PyTorch weight-only, `TorchAoConfig`)
and bitsandbytes 4-bit (nf4) on a random checkpoint.

    python -m bench.quantization            # microsoft/biogpt shape (347M parameters; minutes on a small CPU)
    python -m bench.quantization --tiny     # smoke test: same code paths, seconds

Each mode runs in a fresh interpreter so its peak RSS is its own. Not a test: nothing asserts, it prints a table
(and writes bench/out/quantization-<shape>.json).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

MODES = ("fp32", "bf16", "int8", "int4", "4bit")


def measure(checkpoint: str, mode: str, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    """Load `checkpoint` in `mode`, then time a greedy cached decode of `new_tokens` after a random prompt."""
    import time

    import torch

    from bench.common import peak_rss_bytes
    from biogpt import BioGptForCausalLM, BitsAndBytesConfig
    from biogpt.modeling import KVCache
    from biogpt.quantization import cpu_quantization_config

    dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    quantization = None
    if mode in ("int8", "int4"):  # the app's presets (ModelSpec quantization="int8" / "int4")
        quantization = cpu_quantization_config(mode)
    elif mode == "4bit":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                          bnb_4bit_use_double_quant=True)
    start = time.perf_counter()
    model = BioGptForCausalLM.from_pretrained(checkpoint, torch_dtype=dtype, quantization_config=quantization)
    load_seconds = time.perf_counter() - start

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (1, prompt_tokens), generator=generator)
    with torch.inference_mode():
        # Warm-up (first-call kernel selection / compilation in bitsandbytes) stays out of the timings.
        warm = KVCache.for_model(model, batch_size=1, capacity=prompt_tokens + 2)
        model(input_ids=ids, past_key_values=warm, use_cache=True, logits_to_keep=1)
        model(input_ids=ids[:, :1], past_key_values=warm, use_cache=True)
        cache = KVCache.for_model(model, batch_size=1, capacity=prompt_tokens + new_tokens)
        start = time.perf_counter()
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
        decode_seconds = time.perf_counter() - start
    return {"mode": mode, "load_seconds": load_seconds, "footprint_bytes": model.get_memory_footprint(),
            "prefill_seconds": prefill_seconds, "decode_tokens_per_second": new_tokens / decode_seconds,
            "peak_rss_bytes": peak_rss_bytes()}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from bench.common import OUT, build_checkpoint, run_subprocess_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, for a quick smoke run")
    parser.add_argument("--shape", default="biogpt", help="a shape of bench.common.SHAPES (default: biogpt)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    shape = "tiny" if args.tiny else args.shape

    checkpoint = build_checkpoint(shape)
    rows = []
    for mode in args.modes:
        code = ("import json; from bench.quantization import measure; "
                f"print(json.dumps(measure({str(checkpoint)!r}, {mode!r}, {args.prompt_tokens}, {args.new_tokens})))")
        rows.append(run_subprocess_json(code))

    fp32 = next((r["footprint_bytes"] for r in rows if r["mode"] == "fp32"), None)
    print(f"shape={shape}  checkpoint={checkpoint}  prompt={args.prompt_tokens}  new tokens={args.new_tokens}")
    print(f"{'mode':<6}{'load s':>9}{'footprint MiB':>15}{'vs fp32':>9}{'prefill s':>11}{'decode tok/s':>14}"
          f"{'peak RSS MiB':>14}")
    for r in rows:
        ratio = f"{r['footprint_bytes'] / fp32:.2f}" if fp32 else "-"
        print(f"{r['mode']:<6}{r['load_seconds']:>9.2f}{r['footprint_bytes'] / 2**20:>15.1f}{ratio:>9}"
              f"{r['prefill_seconds']:>11.3f}{r['decode_tokens_per_second']:>14.1f}{r['peak_rss_bytes'] / 2**20:>14.0f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"quantization-{shape}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
