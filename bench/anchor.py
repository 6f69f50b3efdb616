"""The CPU anchor: biogpt.cpp (ggml, C/C++) on the same checkpoint, timed per generated token.

biogpt.cpp is what a user who wants CPU speed would pick instead of us, so `python -m bench.run --rows anchor`
(part of the default rows) measures it in the same run. Nothing of it is in this repository: build it once, outside
the repository, as ../shared/tools/ggml-anchor.md says (PABannier/biogpt.cpp at HEAD with its pinned ggml commit
f04b02bc in `ggml/`, cmake Release with AVX-512 on), into `$BIOGPT_ANCHOR_DIR` (default `~/.cache/biogpt-anchor`):

    $BIOGPT_ANCHOR_DIR/src/             the biogpt.cpp sources (convert.py, data/, ...)
    $BIOGPT_ANCHOR_DIR/src/build/bin/   biogpt, quantize, libbiogpt.cpp.so, libggml.so (after cmake --build)

`python -m bench.anchor --build` runs that cmake step on sources already unpacked there. When the binaries are
absent the bench skips the anchor rows and says why.

Timing: its `predict time` counts the prompt too (evaluated in batches of 8), so decode speed is taken from the
difference of two runs that differ only in the number of generated tokens:
`(new_long - new_short) / (predict_long - predict_short)`.
Converted models (f32, f16, q8_0, q4_0) are cached next to the build, under `models/`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from .common import median

ANCHOR_DIR = Path(os.path.expanduser(os.environ.get("BIOGPT_ANCHOR_DIR", "~/.cache/biogpt-anchor")))
# our precision -> the ggml type at the same bits (bf16 has no ggml counterpart in that version: f16 is its 16-bit)
GGML_TYPES = {"fp32": "f32", "bf16": "f16", "int8": "q8_0", "int4": "q4_0"}
_QUANTIZE_CODES = {"q8_0": 7, "q4_0": 2}
# biogpt.cpp reads this as 16 tokens (</s> + 15) with the real BioGPT vocabulary, like the bench's 16-token prompts.
PROMPT = "Ibuprofen is a nonsteroidal anti-inflammatory drug used to treat pain and"
_PREDICT = re.compile(r"predict time =\s*([0-9.]+) ms")
_PROMPT_TOKENS = re.compile(r"number of tokens in prompt = (\d+)")


def bin_dir() -> Path:
    return ANCHOR_DIR / "src" / "build" / "bin"


def unavailable_reason() -> Optional[str]:
    """Why the anchor cannot run here (a sentence for the bench output), or None when it can."""
    missing = [name for name in ("biogpt", "quantize") if not (bin_dir() / name).is_file()]
    if missing:
        return (f"biogpt.cpp is not built ({', '.join(missing)} missing in {bin_dir()}): build it as "
                "../shared/tools/ggml-anchor.md says, into $BIOGPT_ANCHOR_DIR (default ~/.cache/biogpt-anchor)")
    if not (ANCHOR_DIR / "src" / "convert.py").is_file():
        return f"biogpt.cpp's convert.py is missing from {ANCHOR_DIR / 'src'}"
    return None


def build() -> None:
    """cmake configure + build of the sources unpacked in $BIOGPT_ANCHOR_DIR/src (AVX-512 where the CPU has it)."""
    src = ANCHOR_DIR / "src"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    options = ["-DCMAKE_BUILD_TYPE=Release"]
    if " avx512f" in flags:
        options += ["-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON"]
    subprocess.run(["cmake", "-S", str(src), "-B", str(src / "build"), *options], check=True)
    subprocess.run(["cmake", "--build", str(src / "build"), "-j", str(os.cpu_count() or 1)], check=True)


def convert(checkpoint: Path, vocab_dir: Path, kind: str) -> Path:
    """The ggml model file for our `checkpoint` (a bench random checkpoint) at the bits of `kind`, built once."""
    ggml_type = GGML_TYPES[kind]
    models = ANCHOR_DIR / "models"
    out = models / f"{checkpoint.name}-{ggml_type}.bin"
    if out.is_file():
        return out
    models.mkdir(parents=True, exist_ok=True)
    if ggml_type in ("f32", "f16"):
        _convert_float(checkpoint, vocab_dir, out, f16=ggml_type == "f16")
    else:
        source = convert(checkpoint, vocab_dir, "fp32")
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(bin_dir() / "quantize"), "-f", str(source), "-o", str(tmp),
                        "-t", str(_QUANTIZE_CODES[ggml_type])], check=True, capture_output=True, cwd=bin_dir())
        tmp.rename(out)
    return out


def _convert_float(checkpoint: Path, vocab_dir: Path, out: Path, f16: bool) -> None:
    """convert.py wants config.json, pytorch_model.bin (with the tied head), vocab.json, merges.txt in one folder."""
    import torch
    from safetensors.torch import load_file

    staging = out.parent / f"staging-{checkpoint.name}"
    staging.mkdir(exist_ok=True)
    state = load_file(str(checkpoint / "model.safetensors"))
    state.setdefault("output_projection.weight", state["biogpt.embed_tokens.weight"].clone())
    torch.save(state, str(staging / "pytorch_model.bin"))
    del state
    shutil.copy(checkpoint / "config.json", staging / "config.json")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab_dir / name, staging / name)
    work = out.parent / f"work-{out.stem}"
    subprocess.run([sys.executable, str(ANCHOR_DIR / "src" / "convert.py"), "--dir-model", str(staging),
                    "--out-dir", str(work), *(["--use-f16"] if f16 else [])], check=True, capture_output=True)
    (work / "ggml-model.bin").rename(out)
    shutil.rmtree(work)
    shutil.rmtree(staging)


def _run(model: Path, threads: int, new_tokens: int) -> tuple[float, int]:
    """(predict seconds, prompt tokens) of one greedy run (top-k 1); from bin/ (its tokenizer opens ../data/)."""
    proc = subprocess.run(["./biogpt", "-m", str(model), "-t", str(threads), "-n", str(new_tokens),
                           "--top_k", "1", "-s", "0", "-p", PROMPT], cwd=bin_dir(), capture_output=True, text=True,
                          timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"biogpt.cpp failed ({proc.returncode}): {proc.stderr[-1000:]}")
    predict = _PREDICT.search(proc.stdout)
    prompt = _PROMPT_TOKENS.search(proc.stdout)
    if not predict or not prompt:
        raise RuntimeError(f"unexpected biogpt.cpp output: {proc.stdout[-500:]}")
    return float(predict.group(1)) / 1000, int(prompt.group(1))


def decode_tok_s(model: Path, threads: int, new_tokens: int, repeats: int,
                 ours: Optional[Callable[[int, int], float]] = None) -> dict[str, Any]:
    """Decode tok/s after the prompt: the difference of runs with 4 and 4 + `new_tokens` generated tokens.

    With `ours` ((prompt tokens, new tokens) -> seconds of one greedy run in this process), ours is measured the same
    way, run for run alternated with biogpt.cpp: a shared host's speed drifts by tens of percent over minutes, so
    only runs taken side by side compare (`ours_decode_tok_s`)."""
    short, long = 4, 4 + new_tokens
    _, prompt_tokens = _run(model, threads, short)  # warm-up: page cache, first-touch of the weights
    runners: dict[str, Callable[[int], float]] = {"ggml": lambda n: _run(model, threads, n)[0]}
    if ours is not None:
        ours(prompt_tokens, short)  # warm-up
        runners["ours"] = lambda n: ours(prompt_tokens, n)
    deltas: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            runs = {n: runners[name](n) for n in ((short, long) if r % 2 == 0 else (long, short))}
            deltas[name].append(runs[long] - runs[short])
    result = {"decode_tok_s": new_tokens / median(deltas["ggml"]), "runs_s": deltas["ggml"],
              "prompt_tokens": prompt_tokens, "threads": threads, "model": str(model)}
    if ours is not None:
        result.update(ours_decode_tok_s=new_tokens / median(deltas["ours"]), ours_runs_s=deltas["ours"])
    return result


def measure(checkpoint: Path, vocab_dir: Path, kind: str, threads: int, new_tokens: int, repeats: int,
            ours: Optional[Callable[[int, int], float]] = None) -> dict[str, Any]:
    """The anchor's decode speed at the bits of `kind` (fp32, bf16 -> f16, int8 -> q8_0, int4 -> q4_0), alternated
    with `ours` when given (see `decode_tok_s`)."""
    model = convert(checkpoint, vocab_dir, kind)
    result = decode_tok_s(model, threads, new_tokens, repeats, ours)
    result["ggml_type"] = GGML_TYPES[kind]
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anchor", description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="run cmake on $BIOGPT_ANCHOR_DIR/src")
    args = parser.parse_args(argv)
    if args.build:
        build()
    print(unavailable_reason() or f"biogpt.cpp ready in {bin_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
