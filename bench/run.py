"""biogpt vs transformers (and biogpt.cpp) on the same random weights, in the same process, runs alternated,
medians of repeats.

    python -m bench.run                 # microsoft/biogpt shape (347M): CPU fp32, bf16, int8, int4, nf4, the batching
                                        # engine, biogpt.cpp at the same bits when built (+ GPU rows on CUDA)
    python -m bench.run --tiny          # seconds; what CI runs (tests/test_bench_smoke.py) - not a speed test
    python -m bench.run --rows fp32,bf16 --no-anchor
    python -m bench.run --markdown bench/out/results-<date>.json   # a section for bench/RESULTS.md

Writes bench/out/results-<date>.json (override with --out) and prints the tables. See bench/RESULTS.md.
int8 / int4 are ours only (`TorchAoConfig`, the app's presets: head quantized too, int4 in groups of 64):
transformers needs torchao for them, so their transformers column is transformers' bf16. The anchor
(biogpt.cpp, `bench/anchor.py`) runs at the same bits: f32, f16, q8_0, q4_0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from . import anchor
from .common import (OUT, SHAPES, BandwidthSamples, build_checkpoint, count_parameters, machine, median,
                     memory_bandwidth_gbs, run_subprocess_json, timed, weight_bytes_per_token)

ALL_ROWS = ("fp32", "bf16", "int8", "int4", "nf4", "concurrency", "anchor", "gpu")
PRECISIONS = ("fp32", "bf16", "int8", "int4")  # the per-precision summary: ours vs transformers vs biogpt.cpp
# Bits per weight of a matrix as each format stores it (scales and zeros included), for the bandwidth limit.
BITS = {"fp32": 32, "bf16": 16, "int8": 8 + 16 / 1024, "int4": 4 + 32 / 64, "nf4": 4 + 32 / 64,
        "f32": 32, "f16": 16, "q8_0": 8.5, "q4_0": 4.5}
QUANTIZED = ("int8", "int4")


# ----------------------------------------------------------------------------------------------------------------
# Loading both libraries
# ----------------------------------------------------------------------------------------------------------------
def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "nf4": torch.float32,
            "int8": torch.bfloat16, "int4": torch.bfloat16}[name]


def load_ours(path: Path, kind: str, device: str = "cpu", attn: str = "sdpa"):
    import biogpt
    from biogpt.quantization import cpu_quantization_config

    kwargs: dict[str, Any] = dict(torch_dtype=_dtype(kind), attn_implementation=attn)
    if kind == "nf4":
        kwargs["quantization_config"] = biogpt.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    elif kind in QUANTIZED:
        kwargs["quantization_config"] = cpu_quantization_config(kind)
    if device != "cpu":
        kwargs["device_map"] = device
    return biogpt.BioGptForCausalLM.from_pretrained(path, **kwargs)


def reference_kind(kind: str) -> str:
    """What transformers runs in a row: the same precision, except bf16 for int8/int4 (it needs torchao there)."""
    return "bf16" if kind in QUANTIZED else kind


def load_reference(path: Path, kind: str, device: str = "cpu", attn: str = "sdpa"):
    import transformers

    kind = reference_kind(kind)
    kwargs: dict[str, Any] = dict(dtype=_dtype(kind), attn_implementation=attn)
    if kind == "nf4":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_4bit=True,
                                                                        bnb_4bit_quant_type="nf4")
    if device != "cpu":
        kwargs["device_map"] = device
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    return transformers.BioGptForCausalLM.from_pretrained(path, **kwargs).eval()


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------
def _greedy(model, ids, new_tokens: int):
    import torch

    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=1)
    return out[:, ids.shape[1]:]


def _forward_last(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, sync=None) -> dict[str, list[float]]:
    """Run each function once per round, in alternating order, and collect wall times."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            t, _ = timed(fns[name], sync)
            times[name].append(t)
    return times


def _seconds_to_generate(model, vocab: int) -> Callable[[int, int], float]:
    """(prompt tokens, new tokens) -> seconds of one greedy `generate` (a fixed random prompt of that length)."""
    import torch

    def run(prompt_tokens: int, new_tokens: int) -> float:
        ids = torch.randint(3, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(1))
        ids[0, 0] = 2
        return timed(lambda: _greedy(model, ids, new_tokens))[0]

    return run


def measure_pair(ours, ref, *, shape: str, kind: str, args, device: str = "cpu") -> dict[str, Any]:
    """Decode tok/s (batch 1 and 8), 512-token prefill, time to first token: both libraries, alternated."""
    import torch

    vocab = SHAPES[shape]["vocab_size"]
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (8, args.prompt_tokens), generator=g)
    prompt[:, 0] = 2
    one = prompt[:1].to(device)
    eight = prompt.to(device)
    long_prompt = torch.randint(3, vocab, (1, args.prefill_tokens), generator=g).to(device)
    n = args.new_tokens if kind != "nf4" else max(4, args.new_tokens // 4)
    models = {"ours": ours, "transformers": ref}
    result: dict[str, Any] = {"new_tokens": n, "prompt_tokens": args.prompt_tokens}

    # warm-up (and the greedy tokens of both, which must agree)
    tokens = {name: _greedy(m, one, n) for name, m in models.items()}
    result["same_greedy_tokens_b1"] = bool(torch.equal(tokens["ours"].cpu(), tokens["transformers"].cpu()))
    result["tokens_b1"] = {name: t[0].tolist() for name, t in tokens.items()}

    bandwidth = BandwidthSamples(token_bytes(shape, kind), n) if kind in BITS else None
    for batch, ids in ((1, one), (8, eight)):
        if batch == 8 and args.skip_batch8:
            continue
        runs = {name: (lambda m=m: _greedy(m, ids, n)) for name, m in models.items()}
        if batch == 1 and device == "cpu" and bandwidth:  # the limit of batch-1 decoding, sampled between its runs
            runs["bandwidth"] = bandwidth
        times = alternate(runs, args.repeats, sync)
        times.pop("bandwidth", None)
        result[f"decode_b{batch}_tok_s"] = {name: batch * n / median(ts) for name, ts in times.items()}
        result[f"decode_b{batch}_runs_s"] = times
    if bandwidth and bandwidth.samples:
        result["read_gbs_b1"], result["read_gbs_b1_peak"] = bandwidth.median_gbs, bandwidth.peak_median_gbs
    times = alternate({name: (lambda m=m: _forward_last(m, long_prompt)) for name, m in models.items()},
                      args.repeats, sync)
    result[f"prefill_{args.prefill_tokens}_s"] = {name: median(ts) for name, ts in times.items()}
    times = alternate({name: (lambda m=m: _greedy(m, one, 1)) for name, m in models.items()}, args.repeats, sync)
    result["ttft_s"] = {name: median(ts) for name, ts in times.items()}
    # Decode speed after the prompt (what biogpt.cpp's numbers mean): the n - 1 tokens after the first one.
    result["decode_b1_after_prompt_tok_s"] = {
        name: (n - 1) / max(n / result["decode_b1_tok_s"][name] - result["ttft_s"][name], 1e-9) for name in models}
    if device.startswith("cuda"):
        result["gpu_peak_mem_bytes"] = torch.cuda.max_memory_allocated()
    return result


def measure_load(path: Path, kind: str, repeats: int, device: str = "cpu") -> dict[str, float]:
    """Files to ready (in process, page cache warm), alternated."""
    def ours():
        m = load_ours(path, kind, device)
        del m
        gc.collect()

    def ref():
        m = load_reference(path, kind, device)
        del m
        gc.collect()

    times = alternate({"ours": ours, "transformers": ref} if kind not in QUANTIZED else {"ours": ours}, repeats)
    return {name: median(ts) for name, ts in times.items()}


_FIRST_TOKEN_CODE = r"""
import time, json
t0 = time.perf_counter()
import torch
torch.set_num_threads({threads})
{imports}
t_import = time.perf_counter()
model = {load}
t_load = time.perf_counter()
ids = torch.tensor([[2] + list(range(10, 10 + {prompt} - 1))])
with torch.inference_mode():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=1)
t_first = time.perf_counter()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps(dict(import_s=t_import - t0, load_s=t_load - t_import, first_token_s=t_first - t_load,
                      total_s=t_first - t0, peak_rss_bytes=peak)))
"""


def measure_load_to_first_token(path: Path, kind: str, repeats: int, prompt: int, threads: int) -> dict[str, Any]:
    """Fresh interpreters: import + load + one greedy token, and the peak RSS of that process."""
    dtype = {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[kind]
    codes = {
        "ours": _FIRST_TOKEN_CODE.format(
            threads=threads, prompt=prompt, imports="import biogpt",
            load=f"biogpt.BioGptForCausalLM.from_pretrained({str(path)!r}, torch_dtype={dtype})"),
        "transformers": _FIRST_TOKEN_CODE.format(
            threads=threads, prompt=prompt, imports="import transformers",
            load=f"transformers.BioGptForCausalLM.from_pretrained({str(path)!r}, dtype={dtype}).eval()"),
    }
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for r in range(repeats):
        for name in (list(codes) if r % 2 == 0 else list(codes)[::-1]):
            runs[name].append(run_subprocess_json(codes[name]))
    return {name: {key: median([x[key] for x in rs]) for key in rs[0]} for name, rs in runs.items()}


def logit_margins(path: Path, shape: str, args) -> dict[str, Any]:
    """How often bf16 could flip fp32's greedy choice: top-1 vs top-2 margin (fp32) < |bf16 - fp32| logit error.

    Teacher-forced on the fp32 greedy continuation of several prompts, all positions of the continuation.
    """
    import torch

    fp32 = load_ours(path, "fp32")
    bf16 = load_ours(path, "bf16")
    vocab = SHAPES[shape]["vocab_size"]
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, vocab, (args.margin_prompts, args.prompt_tokens), generator=g)
    prompts[:, 0] = 2
    sequences = _greedy(fp32, prompts, args.new_tokens)
    full = torch.cat([prompts, sequences], dim=1)
    with torch.inference_mode():
        a = fp32(full).logits[:, args.prompt_tokens - 1:-1].float()
        b = bf16(full).logits[:, args.prompt_tokens - 1:-1].float()
    top2 = a.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    error_max = (a - b).abs().amax(dim=-1)
    # what decides a flip: the error of the top-2 gap itself
    top_idx = a.topk(2, dim=-1).indices
    gap_b = b.gather(-1, top_idx[..., :1]) - b.gather(-1, top_idx[..., 1:2])
    gap_error = (margin - gap_b[..., 0]).abs()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    bf16_tokens = _greedy(bf16, prompts, args.new_tokens)
    del fp32, bf16
    gc.collect()
    return {
        "positions": int(margin.numel()),
        "fraction_margin_below_max_logit_error": (margin < error_max).float().mean().item(),
        "fraction_margin_below_top2_gap_error": (margin < gap_error).float().mean().item(),
        "median_margin": margin.median().item(),
        "median_max_logit_error": error_max.median().item(),
        "argmax_agreement_teacher_forced": agree,
        "greedy_sequences_identical": int((bf16_tokens == sequences).all(dim=1).sum()),
        "greedy_sequences": int(sequences.shape[0]),
        "note": "random-weight checkpoint (near-uniform logits: small margins); the real microsoft/biogpt "
                "checkpoint could not be downloaded here (no network).",
    }


# ----------------------------------------------------------------------------------------------------------------
# Concurrency: the batching engine
# ----------------------------------------------------------------------------------------------------------------
class _IdTokenizer:
    """A stand-in tokenizer over ids (no vocabulary files needed): every id is one word."""

    def __call__(self, text, return_tensors=None):
        import torch

        ids = [2] + [int(w[1:]) for w in text.split()]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        return [f"t{i}</w>" for i in ids]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(f"t{i}" for i in ids if not (skip_special_tokens and i in (0, 1, 2, 3)))


def real_vocab_dir(shape: str) -> Optional[Path]:
    """microsoft/biogpt's vocab.json + merges.txt (converted once from ../shared), for the biogpt shape; else None."""
    shared = Path(os.environ.get("BIOGPT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    base = shared / "data" / "biogpt-vocab" / "base"
    if shape != "biogpt" or not (base / "dict.txt").is_file():
        return None
    from biogpt.bpe import convert_fairseq_vocab

    out = OUT / "vocab-biogpt"
    if not (out / "vocab.json").is_file():
        convert_fairseq_vocab(base / "dict.txt", base / "bpecodes", out)
    return out


def _bench_tokenizer(shape: str):
    """The real BioGPT vocabulary when ../shared has it (its Moses detokenization is part of the cost)."""
    vocab = real_vocab_dir(shape)
    if vocab is not None:
        import biogpt

        return biogpt.BioGptTokenizer.from_pretrained(vocab), "microsoft/biogpt vocabulary"
    return _IdTokenizer(), "id tokenizer (no vocabulary files)"


def measure_concurrency(path: Path, shape: str, kind: str, args) -> dict[str, Any]:
    """Aggregate tokens/s of N concurrent streams through the engine vs one stream alone (same engine)."""
    import threading

    import torch

    from biogpt.batching import BatchingEngine

    model = load_ours(path, kind)
    tokenizer, tok_name = _bench_tokenizer(shape)
    vocab = min(SHAPES[shape]["vocab_size"], 40000)
    g = torch.Generator().manual_seed(2)
    prompts = [[2] + torch.randint(4, vocab, (args.prompt_tokens - 1,), generator=g).tolist()
               for _ in range(args.streams)]
    n = args.new_tokens
    engine = BatchingEngine(model, tokenizer, max_batch_size=args.streams)

    def run(k: int) -> float:
        counts = [0] * k

        def user(i):
            for delta in engine.submit(prompts[i], max_new_tokens=n, min_new_tokens=n):
                counts[i] += len(delta.token_ids)

        threads = [threading.Thread(target=user, args=(i,)) for i in range(k)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        assert sum(counts) == k * n, counts
        return sum(counts) / elapsed

    run(1)  # warm-up
    single, multi = [], []
    for r in range(args.repeats):
        for which in ((1, args.streams) if r % 2 == 0 else (args.streams, 1)):
            (single if which == 1 else multi).append(run(which))
    engine.close()
    del model
    gc.collect()
    s, m = median(single), median(multi)
    return {"dtype": kind, "streams": args.streams, "new_tokens": n, "tokenizer": tok_name,
            "one_stream_tok_s": s, "concurrent_aggregate_tok_s": m, "speedup": m / s,
            "runs_tok_s": {"one": single, "concurrent": multi}}


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------
def _ratio(d: dict, better_high: bool = True) -> Optional[float]:
    try:
        return d["ours"] / d["transformers"] if better_high else d["transformers"] / d["ours"]
    except (KeyError, ZeroDivisionError, TypeError):
        return None


# The output projection (tied to the token embeddings) stays in the compute dtype when ours quantizes, as
# transformers leaves it (biogpt.cpp's q8_0 / q4_0 quantize it too): bytes of each of its weights.
UNQUANTIZED_HEAD_BYTES = {"nf4": 4, "int8": 2, "int4": 2}


def token_bytes(shape: str, fmt: str) -> float:
    """Bytes of weights a batch-1 decode step streams in format `fmt`."""
    s = SHAPES[shape]
    head = s["vocab_size"] * s["hidden_size"] * (UNQUANTIZED_HEAD_BYTES[fmt] - BITS[fmt] / 8) \
        if fmt in UNQUANTIZED_HEAD_BYTES else 0
    return weight_bytes_per_token(shape, BITS[fmt] / 8) + head


def limit_tok_s(bandwidth_gbs: float, shape: str, fmt: str) -> float:
    """The memory-bandwidth limit of batch-1 decoding: read bandwidth / bytes of weights streamed per token."""
    return bandwidth_gbs * 1e9 / token_bytes(shape, fmt)


def _anchor_reason(shape: str) -> Optional[str]:
    if shape != "biogpt":
        return "biogpt.cpp runs the microsoft/biogpt shape only (its converter needs the real vocabulary)"
    if real_vocab_dir(shape) is None:
        return "the real BioGPT vocabulary (../shared/data/biogpt-vocab/base) is absent"
    return anchor.unavailable_reason()


def measure_cpu_row(path: Path, shape: str, kind: str, args, bandwidth: dict) -> dict[str, Any]:
    """One CPU precision: ours vs transformers (alternated), the kernels the probe chose, biogpt.cpp if asked."""
    row: dict[str, Any] = {"device": "cpu", "dtype": kind, "transformers_dtype": reference_kind(kind)}
    if kind == "nf4":
        from biogpt.quantization import quantization_unavailable_reason

        reason = quantization_unavailable_reason("cpu", 4)
        if reason:
            raise RuntimeError(reason)
    start = time.perf_counter()
    ours = load_ours(path, kind)  # the first load of this format runs the kernel probe (fresh cache: see run())
    row["first_load_s"] = time.perf_counter() - start
    row["kernels"] = getattr(ours, "cpu_kernel_plan", None)
    if kind != "nf4":
        row["load_s"] = measure_load(path, kind, args.repeats)
    ref = load_reference(path, kind)
    row.update(measure_pair(ours, ref, shape=shape, kind=kind, args=args))
    del ref
    gc.collect()
    # The limit at the bandwidth sampled between this row's batch-1 runs (the start's figure when there is none).
    read_gbs = row.get("read_gbs_b1", bandwidth["read_gbs"])
    ceiling = row["bandwidth_ceiling_tok_s"] = limit_tok_s(read_gbs, shape, kind)
    if args.anchor and kind in anchor.GGML_TYPES:
        reason = _anchor_reason(shape)
        if reason:
            row["ggml"] = {"skipped": reason}
        else:
            print(f"[bench] biogpt.cpp {anchor.GGML_TYPES[kind]}, alternated with ours ...", file=sys.stderr,
                  flush=True)
            samples = BandwidthSamples(token_bytes(shape, kind), args.new_tokens)
            seconds = _seconds_to_generate(ours, SHAPES[shape]["vocab_size"])

            def ours_run(prompt_tokens: int, new_tokens: int) -> float:
                samples()  # the bandwidth of this side-by-side comparison, between its runs
                return seconds(prompt_tokens, new_tokens)

            ggml = anchor.measure(path, real_vocab_dir(shape), kind, args.threads, args.new_tokens, args.repeats,
                                  ours=ours_run)
            ggml["read_gbs"], ggml["read_gbs_peak"] = samples.median_gbs, samples.peak_median_gbs
            ggml["bandwidth_ceiling_tok_s"] = limit_tok_s(samples.median_gbs, shape, ggml["ggml_type"])
            ggml["ours_bandwidth_ceiling_tok_s"] = limit_tok_s(samples.median_gbs, shape, kind)
            row["ggml"] = ggml
    del ours
    gc.collect()
    b1 = row["decode_b1_tok_s"]
    row["fraction_of_ceiling_b1"] = {k: v / ceiling for k, v in row["decode_b1_after_prompt_tok_s"].items()}
    row["ratio_decode_b1"] = _ratio(b1)
    row["ratio_decode_b1_after_prompt"] = _ratio(row["decode_b1_after_prompt_tok_s"])
    if "decode_b8_tok_s" in row:
        row["ratio_decode_b8"] = _ratio(row["decode_b8_tok_s"])
    row["ratio_prefill"] = _ratio(row[f"prefill_{args.prefill_tokens}_s"], better_high=False)
    row["ratio_ttft"] = _ratio(row["ttft_s"], better_high=False)
    if kind in ("fp32", "bf16") and not (args.tiny and kind == "bf16"):
        row["load_to_first_token"] = measure_load_to_first_token(path, kind, 1 if args.tiny else args.repeats,
                                                                 args.prompt_tokens, args.threads)
        lf = row["load_to_first_token"]
        row["ratio_load_to_first_token"] = lf["ours"]["total_s"] / lf["transformers"]["total_s"]
    if kind == "bf16" and not args.skip_margins:
        row["bf16_vs_fp32_margins"] = logit_margins(path, shape, args)
    return row


def run(args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    shape = "tiny" if args.tiny else args.shape
    path = build_checkpoint(shape)
    info = machine()
    bandwidth = memory_bandwidth_gbs(64 if args.tiny else 512)
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    # A kernel cache of this run only: the first load of each format probes this machine now (a cache filled on a
    # busier day would measure that day), later loads read it like any second load.
    kernel_cache = Path(args.out).with_suffix(".kernels.json") if args.out else OUT / "cpu-kernels-bench.json"
    kernel_cache.unlink(missing_ok=True)
    os.environ["BIOGPT_KERNEL_CACHE"] = str(kernel_cache)
    os.environ.setdefault("BIOGPT_CPU_KERNELS", "auto")
    results: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "shape": shape, "config": SHAPES[shape],
        "parameters": count_parameters(shape), "machine": info, "memory_bandwidth": bandwidth,
        "settings": {k: v for k, v in vars(args).items()}, "cpu_kernels": os.environ["BIOGPT_CPU_KERNELS"],
        "rows": {},
    }
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    args.anchor = args.anchor and "anchor" in rows
    order = ["fp32", "bf16", "int8", "int4", "concurrency", "nf4"]  # the slow 4-bit bitsandbytes row last
    for kind in [k for k in order if k in rows]:
        if kind == "concurrency":
            for dtype in [d.strip() for d in args.concurrency_dtypes.split(",") if d.strip()]:
                print(f"[bench] concurrency {dtype} ...", file=sys.stderr, flush=True)
                try:
                    results["rows"][f"concurrency-{dtype}"] = measure_concurrency(path, shape, dtype, args)
                except Exception as exc:  # a failed row is recorded and the others still run
                    results["rows"][f"concurrency-{dtype}"] = {"error": f"{type(exc).__name__}: {exc}"}
                _write(results, args)
            continue
        print(f"[bench] cpu {kind} ...", file=sys.stderr, flush=True)
        try:
            row = measure_cpu_row(path, shape, kind, args, bandwidth)
        except Exception as exc:  # e.g. bitsandbytes without a CPU backend: record why, go on
            row = {"device": "cpu", "dtype": kind, "error": f"{type(exc).__name__}: {exc}"}
        results["rows"][f"cpu-{kind}"] = row
        _write(results, args)
    fp32 = results["rows"].get("cpu-fp32", {}).get("decode_b1_tok_s", {})
    bf16_row = results["rows"].get("cpu-bf16", {})
    if "transformers" in fp32 and "decode_b1_tok_s" in bf16_row:
        bf16_row["ours_vs_transformers_fp32_b1"] = bf16_row["decode_b1_tok_s"]["ours"] / fp32["transformers"]

    if "gpu" in rows and torch.cuda.is_available():
        from biogpt.devices import attention_unavailable_reason

        for kind in ("fp16", "bf16"):
            for attn in ("eager", "sdpa", "flash_attention_2"):
                name = f"cuda-{kind}-{attn}"
                row = {"device": "cuda", "dtype": kind, "attention": attn}
                try:
                    reason = attention_unavailable_reason(attn, torch.device("cuda"), _dtype(kind))
                    if reason:
                        raise RuntimeError(reason)
                    torch.cuda.reset_peak_memory_stats()
                    ours = load_ours(path, kind, "cuda", attn)
                    ref = load_reference(path, kind, "cuda", attn)
                    row.update(measure_pair(ours, ref, shape=shape, kind=kind, args=args, device="cuda"))
                    row["ratio_decode_b1"] = _ratio(row["decode_b1_tok_s"])
                    del ours, ref
                except Exception as exc:  # a failed row is recorded and the others still run
                    row["error"] = f"{type(exc).__name__}: {exc}"
                gc.collect()
                torch.cuda.empty_cache()
                results["rows"][name] = row
        _write(results, args)
    try:
        results["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    _write(results, args)
    return results


def _write(results: dict, args) -> Path:
    out = Path(args.out) if args.out else OUT / f"results-{_dt.date.today().isoformat()}{'-tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["_path"] = str(out)
    return out


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def _share(tok_s: float, limit: float, peak_limit: Optional[float]) -> str:
    """tok/s as a share of the limit; in brackets, of the limit at the samples' fastest single reads."""
    return f"{100 * tok_s / limit:.0f}%" + (f" ({100 * tok_s / peak_limit:.0f}%)" if peak_limit else "")


def precision_summary(results: dict) -> list[list[str]]:
    """Rows of [precision, ours, transformers, biogpt.cpp, limit, ours % of limit, ggml % of its limit, ours/hf,
    ours/ggml]: batch-1 decode tok/s after the prompt."""
    table = []
    for kind in PRECISIONS:
        row = results["rows"].get(f"cpu-{kind}")
        if row is None:
            continue
        if "error" in row:
            table.append([kind, f"error: {row['error'][:80]}"] + [""] * 8)
            continue
        after = row.get("decode_b1_after_prompt_tok_s", {})
        ours, hf = after.get("ours"), after.get("transformers")
        ggml = row.get("ggml", {})
        ggml_tok, beside = ggml.get("decode_tok_s"), ggml.get("ours_decode_tok_s")
        ggml_cell = (f"{ggml_tok:.1f} ({ggml['ggml_type']})" if ggml_tok else
                     ("skipped" if "skipped" in ggml else "-"))
        # ours beside biogpt.cpp is held to the bandwidth sampled between those runs (older results: the row's)
        limit = (beside and ggml.get("ours_bandwidth_ceiling_tok_s")) or row.get("bandwidth_ceiling_tok_s")
        peak_gbs = ggml.get("read_gbs_peak") if beside and ggml.get("ours_bandwidth_ceiling_tok_s") \
            else row.get("read_gbs_b1_peak")
        table.append([
            kind, _fmt(ours, ".1f"), f"{_fmt(hf, '.1f')} ({row.get('transformers_dtype', kind)})", ggml_cell,
            _fmt(beside, ".1f"), _fmt(limit, ".1f"),
            _share(beside or ours, limit, peak_gbs and limit_tok_s(peak_gbs, results["shape"], kind)) if ours else "-",
            _share(ggml_tok, ggml["bandwidth_ceiling_tok_s"],
                   peak_gbs and limit_tok_s(peak_gbs, results["shape"], ggml["ggml_type"])) if ggml_tok else "-",
            f"{ours / hf:.2f}x" if ours and hf else "-",
            f"{beside / ggml_tok:.2f}x" if beside and ggml_tok else "-"])
    return table


# "ours beside biogpt.cpp": ours again, run for run alternated with biogpt.cpp, measured as biogpt.cpp is (the
# difference of two generation lengths): the last column's ratio and, where present, "ours % of limit" use it.
_SUMMARY_HEADER = ["precision", "ours tok/s", "transformers tok/s", "biogpt.cpp tok/s", "ours beside biogpt.cpp",
                   "limit tok/s", "ours % of limit", "biogpt.cpp % of its limit", "ours / transformers",
                   "ours / biogpt.cpp"]


def _concurrency_lines(results: dict) -> list[str]:
    lines = []
    for name, conc in results["rows"].items():
        if not name.startswith("concurrency"):
            continue
        if "error" in conc:
            lines.append(f"{name}: error {conc['error'][:100]}")
        else:
            lines.append(f"Concurrency (BatchingEngine, {conc['dtype']}, {conc['new_tokens']} new tokens each, "
                         f"{conc['tokenizer']}): one stream {conc['one_stream_tok_s']:.2f} tok/s; {conc['streams']} "
                         f"concurrent streams {conc['concurrent_aggregate_tok_s']:.2f} tok/s aggregate = "
                         f"**{conc['speedup']:.2f}x**.")
    return lines


def _header(results: dict) -> str:
    m, bw = results["machine"], results["memory_bandwidth"]
    def gbs(sustained: float, peak: Optional[float]) -> str:
        return f"{sustained:.1f}" + (f" ({peak:.1f})" if peak else "")

    during = [f"{name[4:]} {gbs(row['read_gbs_b1'], row.get('read_gbs_b1_peak'))}"
              for name, row in results["rows"].items() if name.startswith("cpu-") and "read_gbs_b1" in row]
    during += [f"{name[4:]} beside biogpt.cpp {gbs(row['ggml']['read_gbs'], row['ggml'].get('read_gbs_peak'))}"
               for name, row in results["rows"].items()
               if name.startswith("cpu-") and row.get("ggml", {}).get("read_gbs")]
    return (f"Machine: {m.get('cpu')} ({', '.join(m.get('cpu_flags', []))}), {m.get('cores')} cores, "
            f"{m.get('ram_gib')} GiB RAM; torch {m.get('torch')} ({m.get('cpu_capability')}), transformers "
            f"{m.get('transformers')}, {m.get('torch_threads')} threads. Load average at start/end: "
            f"{m.get('loadavg_start')} / {m.get('loadavg_end')}. Measured read bandwidth {bw['read_gbs']:.1f} GB/s "
            f"(copy {bw['copy_gbs']:.1f} GB/s) at the start" + (
                f"; between the batch-1 runs the limits are taken from (median GB/s of reading a token's weights "
                f"as many times as a run generates tokens; in brackets the median of each sample's fastest single "
                f"read): {', '.join(during)}."
                if during else "."))


def format_table(results: dict) -> str:
    lines = [f"shape={results['shape']} params={results['parameters'] / 1e6:.0f}M", _header(results), "",
             "batch-1 decode after the prompt (tok/s):"]
    widths = [9, 10, 20, 18, 11, 15, 25, 19, 17]
    lines.append(" ".join(h.rjust(w) for h, w in zip(_SUMMARY_HEADER, widths)))
    for cells in precision_summary(results):
        lines.append(" ".join(c.rjust(w) for c, w in zip(cells, widths)))
    lines += ["", f"{'row':10s} {'b1 ours':>8s} {'b1 hf':>8s} {'x':>5s} {'b8 ours':>8s} {'b8 hf':>8s} {'x':>5s} "
              f"{'prefill o/h (s)':>16s} {'ttft o/h (s)':>14s} {'load->1st o/h (s)':>18s}  kernels"]
    for name, row in results["rows"].items():
        if not name.startswith("cpu-") and not name.startswith("cuda-"):
            continue
        if "error" in row:
            lines.append(f"{name:10s} error: {row['error'][:100]}")
            continue
        b1, b8 = row.get("decode_b1_tok_s", {}), row.get("decode_b8_tok_s", {})
        pre = next((v for k, v in row.items() if k.startswith("prefill_") and isinstance(v, dict)), {})
        lf = row.get("load_to_first_token", {})
        lines.append(
            f"{name:10s} {_fmt(b1.get('ours')):>8s} {_fmt(b1.get('transformers')):>8s} {_fmt(row.get('ratio_decode_b1')):>5s}"
            f" {_fmt(b8.get('ours')):>8s} {_fmt(b8.get('transformers')):>8s} {_fmt(row.get('ratio_decode_b8')):>5s}"
            f" {_fmt(pre.get('ours'), '.3f') + '/' + _fmt(pre.get('transformers'), '.3f'):>16s}"
            f" {_fmt(row['ttft_s'].get('ours'), '.3f') + '/' + _fmt(row['ttft_s'].get('transformers'), '.3f'):>14s}"
            f" {(_fmt(lf['ours']['total_s']) + '/' + _fmt(lf['transformers']['total_s'])) if lf else '-':>18s}"
            f"  {row.get('kernels')}")
    lines += [""] + _concurrency_lines(results)
    return "\n".join(lines)


def format_markdown(results: dict) -> str:
    """A dated section for bench/RESULTS.md."""
    from biogpt.kernels import REGIMES

    out = [f"## {results['date'][:10]} - {results['shape']} shape ({results['parameters'] / 1e6:.0f}M params), "
           f"random weights", "", _header(results), "",
           "Batch-1 greedy decode after a 16-token prompt (tok/s; transformers runs bf16 in the int8/int4 rows, "
           "biogpt.cpp the same bits: f32, f16, q8_0, q4_0). The limit is read bandwidth / bytes of weights per "
           "token at ours' bits, the bandwidth sampled between the runs it bounds (ours beside biogpt.cpp: between "
           "those) by reading a token's weights as many times as a run generates tokens; in brackets the share of the "
           "limit at each sample's fastest single read.", "",
           "| " + " | ".join(_SUMMARY_HEADER) + " |", "|" + "---|" * len(_SUMMARY_HEADER)]
    out += ["| " + " | ".join(cells) + " |" for cells in precision_summary(results)]
    out += ["", "| row | decode b1 ours / hf tok/s (x) | decode b8 ours / hf tok/s (x) | prefill 512 ours / hf s (x) "
            "| TTFT ours / hf s | load ours / hf s | load->1st token ours / hf s (x) | peak RSS ours / hf MiB "
            f"| kernels ({' / '.join(REGIMES)}) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        if not name.startswith("cpu-") and not name.startswith("cuda-"):
            continue
        if "error" in row:
            out.append(f"| {name} | error: {row['error'][:120]} |||||||| ")
            continue
        b1, b8 = row.get("decode_b1_tok_s", {}), row.get("decode_b8_tok_s", {})
        pre = next((v for k, v in row.items() if k.startswith("prefill_") and isinstance(v, dict)), {})
        lf = row.get("load_to_first_token")
        load = row.get("load_s", {})

        def pair(d, spec=".2f"):
            return " / ".join(format(d[k], spec) for k in ("ours", "transformers") if k in d) if d else "-"
        kernels = "; ".join(f"{fmt}: {'/'.join(plan.get(r, '-') for r in REGIMES)}"  # '-': a file from before a regime
                            for fmt, plan in (row.get("kernels") or {}).items())
        out.append(
            f"| {name} | {pair(b1)} ({_fmt(row.get('ratio_decode_b1'))}x) | {pair(b8)} ({_fmt(row.get('ratio_decode_b8'))}x)"
            f" | {pair(pre, '.3f')} ({_fmt(row.get('ratio_prefill'))}x) | {pair(row.get('ttft_s'), '.3f')} | {pair(load)} | "
            + (f"{lf['ours']['total_s']:.2f} / {lf['transformers']['total_s']:.2f} "
               f"({row['ratio_load_to_first_token']:.2f}x) | {lf['ours']['peak_rss_bytes'] / 2**20:.0f} / "
               f"{lf['transformers']['peak_rss_bytes'] / 2**20:.0f} |" if lf else "- | - |") + f" {kernels or '-'} |")
    bf16 = results["rows"].get("cpu-bf16", {})
    if "ours_vs_transformers_fp32_b1" in bf16:
        out += ["", f"bf16 (ours) vs transformers fp32, batch-1 decode: {bf16['ours_vs_transformers_fp32_b1']:.2f}x."]
    margins = bf16.get("bf16_vs_fp32_margins")
    if margins:
        out += ["", f"bf16 vs fp32 logits on {margins['positions']} teacher-forced positions: the fp32 top-1/top-2 "
                f"margin is below the max bf16 logit error at {100 * margins['fraction_margin_below_max_logit_error']:.1f}%"
                f" of positions and below the error of the top-2 gap itself at "
                f"{100 * margins['fraction_margin_below_top2_gap_error']:.1f}% (median margin "
                f"{margins['median_margin']:.4f}, median max error {margins['median_max_logit_error']:.4f}); argmax "
                f"agreement {100 * margins['argmax_agreement_teacher_forced']:.1f}%; greedy sequences identical "
                f"{margins['greedy_sequences_identical']}/{margins['greedy_sequences']}. {margins['note']}"]
    skipped = {row["ggml"]["skipped"] for row in results["rows"].values() if "skipped" in row.get("ggml", {})}
    if skipped:
        out += [""] + [f"biogpt.cpp skipped: {reason}." for reason in sorted(skipped)]
    conc = _concurrency_lines(results)
    if conc:
        out += [""] + conc
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small config, 2 repeats, few tokens (CI smoke)")
    p.add_argument("--shape", default="biogpt", choices=[s for s in SHAPES if s != "tiny"])
    p.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated subset of {','.join(ALL_ROWS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--concurrency-dtypes", default="bf16,int8",
                   help="comma-separated dtypes of the BatchingEngine rows (fp32, bf16, int8, int4)")
    p.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True,
                   help="run biogpt.cpp at the same bits when it is built (bench/anchor.py); skipped with a reason "
                        "when not")
    p.add_argument("--margin-prompts", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-batch8", action="store_true")
    p.add_argument("--skip-margins", action="store_true")
    p.add_argument("--out", default=None, help="JSON path (default bench/out/results-<date>.json)")
    p.add_argument("--markdown", default=None, metavar="JSON", help="print a RESULTS.md section for a results file")
    args = p.parse_args(argv)
    if args.tiny:
        args.repeats, args.new_tokens, args.prompt_tokens, args.prefill_tokens = 2, 4, 8, 32
        args.margin_prompts, args.streams = 2, 3
        args.concurrency_dtypes = "fp32"
        if args.rows == ",".join(ALL_ROWS):
            args.rows = ",".join(r for r in ALL_ROWS if r not in ("nf4", "gpu"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(format_markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    results = run(args)
    print(format_table(results))
    print(f"[bench] wrote {results['_path']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
