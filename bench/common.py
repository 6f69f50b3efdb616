"""Shared benchmark machinery: random checkpoints in the Hub shapes, timers, memory and machine descriptions.

Nothing here is imported by the library; `transformers` is imported only where a baseline is measured.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"

# The exact shapes of the published checkpoints (config.json of microsoft/biogpt and microsoft/BioGPT-Large).
SHAPES: dict[str, dict[str, Any]] = {
    "biogpt": dict(vocab_size=42384, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096, max_position_embeddings=1024),
    "biogpt-large": dict(vocab_size=57717, hidden_size=1600, num_hidden_layers=48, num_attention_heads=25,
                         intermediate_size=6400, max_position_embeddings=2048),
    # CI smoke mode: same code paths, seconds instead of minutes.
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=640),
}


def build_checkpoint(shape: str, cache_dir: Path = OUT / "checkpoints", seed: int = 0) -> Path:
    """A random-weight checkpoint (config.json + model.safetensors, fp32) in the Hub layout, built once and cached."""
    path = Path(cache_dir) / f"random-{shape}"
    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return path
    import torch

    from biogpt import BioGptConfig, BioGptForCausalLM

    torch.manual_seed(seed)
    config = BioGptConfig(**SHAPES[shape])
    with torch.no_grad():
        model = BioGptForCausalLM.from_config(config)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    del model
    gc.collect()
    tmp.rename(path)
    return path


def count_parameters(shape: str) -> int:
    s = SHAPES[shape]
    h, i, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    return s["vocab_size"] * h + (s["max_position_embeddings"] + 2) * h + layers * per_layer + 2 * h


def weight_bytes_per_token(shape: str, bytes_per_param: float) -> float:
    """Bytes of weights a decode step must stream from memory: every layer matrix plus the (tied) output head.

    The embedding tables are only gathered (one row per token), so they do not count; the head reads the whole
    token-embedding matrix once per step.
    """
    s = SHAPES[shape]
    h, i, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    per_layer = 4 * h * h + 2 * h * i
    return (layers * per_layer + s["vocab_size"] * h) * bytes_per_param


# ----------------------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any], sync: Optional[Callable[[], None]] = None) -> tuple[float, Any]:
    if sync:
        sync()
    start = time.perf_counter()
    result = fn()
    if sync:
        sync()
    return time.perf_counter() - start, result


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Peak resident set of this process so far (Linux: ru_maxrss is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_bandwidth_gbs(size_mb: int = 512, repeats: int = 10, copy: bool = True) -> dict[str, float]:
    """Streaming bandwidth measured with torch: a large sum (read only) and a copy (read + write), best of `repeats`."""
    import torch

    n = size_mb * 2**20 // 4
    a = torch.ones(n, dtype=torch.float32)
    b = torch.empty_like(a) if copy else None
    a.sum()
    if b is not None:
        b.copy_(a)
    read, copies = [], []
    for _ in range(repeats):
        t, _ = timed(lambda: a.sum())
        read.append(a.numel() * 4 / t / 1e9)
        if b is not None:
            t, _ = timed(lambda: b.copy_(a))
            copies.append(2 * a.numel() * 4 / t / 1e9)
    del a, b
    return {"read_gbs": max(read), **({"copy_gbs": max(copies)} if copies else {})}


class BandwidthSamples:
    """Read bandwidth sampled next to the runs it is a limit for (a shared host's bandwidth drifts by tens of percent
    over minutes, so a figure taken once at the start says little about a row measured ten minutes later): call it
    between runs, read `median_gbs`.

    A sample reads what a decode run reads, `size_bytes` (one token's weights) `reads` times (a run's tokens), timed
    as a whole, so the limit and the runs it bounds are the same statistic: medians of whole runs. `peak_median_gbs`
    is the median of each sample's fastest single read, the optimistic figure results before 2026-12-03 (fifth
    session) were held to (the best of three 256 MB reads)."""

    def __init__(self, size_bytes: float = 256 * 2**20, reads: int = 3) -> None:
        self.size_bytes, self.reads = size_bytes, max(int(reads), 1)
        self.samples: list[float] = []
        self.peaks: list[float] = []
        self._buffer = None

    def __call__(self) -> None:
        import torch

        if self._buffer is None:
            self._buffer = torch.ones(max(int(self.size_bytes // 4), 1), dtype=torch.float32)
            self._buffer.sum()
        seconds = [timed(self._buffer.sum)[0] for _ in range(self.reads)]
        size = self._buffer.numel() * 4
        self.samples.append(size * len(seconds) / sum(seconds) / 1e9)
        self.peaks.append(size / min(seconds) / 1e9)

    @property
    def median_gbs(self) -> Optional[float]:
        return median(self.samples) if self.samples else None

    @property
    def peak_median_gbs(self) -> Optional[float]:
        return median(self.peaks) if self.peaks else None


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile",
                                         "amx_bf16", "amx_int8") if f" {f}" in flags]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cores"] = os.cpu_count()
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    import torch

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def run_subprocess_json(code: str, timeout: float = 600) -> dict[str, Any]:
    """Run `code` in a fresh interpreter (same venv) and parse the JSON it prints on its last line."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO), env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
