"""Quality of weight-only int8 / int4 (`TorchAoConfig`) against bf16, measured on trained models, not assumed.

    python -m bench.quant_quality                    # both models (trains the small one first, once: minutes)
    python -m bench.quant_quality --models demo      # the bundled demo LM only (seconds)
    python -m bench.quant_quality --steps 600        # train the small real-vocabulary model longer

Two trained models:

- `demo`: the bundled demo LM (`biogpt.catalog.demo_path("causal-lm")`, 4M parameters, 2,790-token vocabulary),
  on 600 held-out passages of `tools.demo.corpus` (templates it never saw in training);
- `bc5cdr-hoc`: a small BioGPT (4 layers, hidden 256, 14M parameters) with the real BioGPT vocabulary (42,384
  tokens, from ../shared/data/biogpt-vocab/base), trained here from scratch on the BC5CDR training abstracts and
  the HoC training sentences, evaluated on the BC5CDR development abstracts and HoC validation sentences. It is
  cached in bench/out/quality-lm/ (delete it to train again).

For each variant: perplexity on the held-out text (teacher-forced windows) and its change against bf16, and the
per-token argmax agreement with bf16 at the same positions. Targets: within 1% (int8) and 5% (int4) of bf16.
Writes bench/out/quant-quality.json and prints a markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .common import OUT, machine

if TYPE_CHECKING:  # torch is imported where it is used: `--help` stays fast
    import torch

WINDOW = 128
VARIANTS: dict[str, Optional[dict[str, Any]]] = {
    "fp32": None,
    "bf16": None,
    "int8": {"quant_type": "int8_weight_only"},
    "int8 + head": {"quant_type": "int8_weight_only", "include_input_output_embeddings": True},
    "int4 g32": {"quant_type": "int4_weight_only", "group_size": 32},
    "int4 g64": {"quant_type": "int4_weight_only", "group_size": 64},
    "int4 g128": {"quant_type": "int4_weight_only", "group_size": 128},
    "int4 g64 + head": {"quant_type": "int4_weight_only", "group_size": 64, "include_input_output_embeddings": True},
    "int4 g32 + head": {"quant_type": "int4_weight_only", "group_size": 32, "include_input_output_embeddings": True},
}
TARGETS = {"int8": 0.01, "int4": 0.05}


def _shared() -> Path:
    return Path(os.environ.get("BIOGPT_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


def _windows(ids: list[int], limit: int) -> "torch.Tensor":
    import torch

    count = min(limit, len(ids) // WINDOW)
    return torch.tensor(ids[: count * WINDOW]).view(count, WINDOW)


def _stream(tokenizer, texts: list[str]) -> list[int]:
    """Every text as `</s> text` (BioGPT's document separator), one token stream."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text)["input_ids"]
    return ids


# ----------------------------------------------------------------------------------------------------------------
# The two models and their held-out text
# ----------------------------------------------------------------------------------------------------------------
def demo_model(args) -> tuple[Path, "torch.Tensor", str]:
    from biogpt import BioGptTokenizer
    from biogpt.catalog import demo_path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tools.demo.corpus import lm_sentences

    path = demo_path("causal-lm")
    tokenizer = BioGptTokenizer.from_pretrained(path)
    texts = lm_sentences(600, seed=1234, split="heldout")
    return path, _windows(_stream(tokenizer, texts), args.windows), "600 held-out demo-corpus passages"


def _corpus(split: str) -> list[str]:
    from biogpt.tasks.data import read_classification_tsv, read_pubtator

    data = _shared() / "data"
    bc5cdr = read_pubtator(data / "bc5cdr" / ("CDR_TrainingSet.PubTator.txt" if split == "train"
                                               else "CDR_DevelopmentSet.PubTator.txt"))
    hoc = read_classification_tsv(data / "hoc" / ("train.tsv" if split == "train" else "valid.tsv"))
    texts = [doc.text for doc in bc5cdr]
    texts += [example.text for example in hoc]
    random.Random(0).shuffle(texts)
    return texts


def trained_model(args) -> tuple[Path, "torch.Tensor", str]:
    """The small real-vocabulary model, trained once (cached), and its held-out windows."""
    from biogpt import BioGptTokenizer
    from biogpt.bpe import convert_fairseq_vocab

    out = OUT / "quality-lm"
    vocab = _shared() / "data" / "biogpt-vocab" / "base"
    if not (out / "model.safetensors").is_file():
        out.mkdir(parents=True, exist_ok=True)
        convert_fairseq_vocab(vocab / "dict.txt", vocab / "bpecodes", out)
        _train(out, BioGptTokenizer.from_pretrained(out), args)
    tokenizer = BioGptTokenizer.from_pretrained(out)
    held_out = _windows(_stream(tokenizer, _corpus("valid")), args.windows)
    return out, held_out, f"{len(held_out)} windows of BC5CDR dev abstracts + HoC valid sentences"


def _train(out: Path, tokenizer, args) -> None:
    import torch

    from biogpt import BioGptConfig, BioGptForCausalLM

    start = time.perf_counter()
    train = _windows(_stream(tokenizer, _corpus("train")), 10**9)
    print(f"[quality] training on {len(train)} windows of {WINDOW} tokens ({time.perf_counter() - start:.0f} s to "
          "tokenize)", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=len(tokenizer), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=1024, max_position_embeddings=256, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    model = BioGptForCausalLM.from_config(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.05, 1 - step / args.steps)))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(args.steps):
        batch = train[torch.randint(len(train), (args.batch,), generator=generator)]
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"[quality] step {step} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    model.eval().save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "steps": args.steps, "batch": args.batch, "window": WINDOW, "lr": args.lr, "train_windows": len(train),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.perf_counter() - start,
        "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
def _load(path: Path, variant: str):
    import torch

    from biogpt import BioGptForCausalLM, TorchAoConfig

    spec = VARIANTS[variant]
    dtype = torch.float32 if variant == "fp32" else torch.bfloat16
    config = TorchAoConfig(**spec) if spec else None
    return BioGptForCausalLM.from_pretrained(path, torch_dtype=dtype, quantization_config=config)


def evaluate(model, windows) -> tuple[float, "torch.Tensor"]:
    """(mean next-token NLL over every position of every window, argmax of each position)."""
    import torch
    import torch.nn.functional as F

    total, count, argmax = 0.0, 0, []
    with torch.inference_mode():
        for batch in windows.split(16):
            logits = model(batch).logits.float()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                  reduction="sum")
            total += nll.item()
            count += batch[:, 1:].numel()
            argmax.append(logits[:, :-1].argmax(-1))
    return total / count, torch.cat(argmax)


def measure(name: str, path: Path, windows, description: str) -> dict[str, Any]:
    from biogpt import kernels

    rows: dict[str, dict[str, Any]] = {}
    reference = None
    for variant in VARIANTS:
        model = _load(path, variant)
        head = {"Int8Linear": "int8", "Int4Linear": "int4"}.get(type(model.output_projection).__name__,
                                                              str(model.output_projection.weight.dtype)[6:])
        nll, argmax = evaluate(model, windows)
        if variant == "bf16":
            reference = (nll, argmax)
        rows[variant] = {"nll": nll, "perplexity": math.exp(nll), "argmax": argmax,
                         "head": head,
                         "footprint_bytes": model.get_memory_footprint(),
                         "decoder_kind": type(model.biogpt.layers[0].fc1).__name__}
        del model
    ref_nll, ref_argmax = reference
    for variant, row in rows.items():
        row["perplexity_change_vs_bf16"] = math.exp(row["nll"] - ref_nll) - 1
        row["argmax_agreement_vs_bf16"] = (row.pop("argmax") == ref_argmax).float().mean().item()
        kind = variant.split()[0]
        if kind in TARGETS:
            row["target"] = TARGETS[kind]
            row["within_target"] = abs(row["perplexity_change_vs_bf16"]) <= TARGETS[kind]
    return {"model": name, "path": str(path), "held_out": description, "positions": int(windows[:, 1:].numel()),
            "int4_layout_known": kernels.int4_layout_known(), "variants": rows}


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [f"## {time.strftime('%Y-%m-%d')} - int8 / int4 quality against bf16 (`python -m bench.quant_quality`)", "",
             f"Machine: {info.get('cpu')}; torch {info.get('torch')}. Perplexity of teacher-forced windows of "
             f"{WINDOW} tokens; argmax agreement = share of positions whose top token equals bf16's. Targets: "
             "perplexity within 1% (int8) and 5% (int4) of bf16. `+ head` also quantizes the output head "
             "(`include_input_output_embeddings=True`).", ""]
    for result in results:
        lines += [f"**{result['model']}** ({result['held_out']}, {result['positions']:,} positions):", "",
                  "| variant | perplexity | vs bf16 | argmax agreement | head | footprint MiB | target met |",
                  "|---|---|---|---|---|---|---|"]
        for variant, row in result["variants"].items():
            met = {True: "yes", False: "**no**"}.get(row.get("within_target"), "-")
            lines.append(f"| {variant} | {row['perplexity']:.3f} | {100 * row['perplexity_change_vs_bf16']:+.2f}% | "
                         f"{100 * row['argmax_agreement_vs_bf16']:.2f}% | {row['head']} | "
                         f"{row['footprint_bytes'] / 2**20:.1f} | {met} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quant_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,bc5cdr-hoc", help="comma-separated: demo, bc5cdr-hoc")
    parser.add_argument("--windows", type=int, default=400, help=f"held-out windows of {WINDOW} tokens per model")
    parser.add_argument("--steps", type=int, default=500, help="training steps of the small model (first run)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    builders = {"demo": demo_model, "bc5cdr-hoc": trained_model}
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        path, windows, description = builders[name](args)
        print(f"[quality] {name}: {description}", file=sys.stderr, flush=True)
        results.append(measure(name, path, windows, description))
    info = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quant-quality.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    print(markdown(results, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
