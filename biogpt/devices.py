"""Devices and dtypes: which ones exist on this machine, what "auto" means, and the rules that hold everywhere.

Every part of the library (loading, the model manager, fine-tuning, the pipeline) asks these questions here, so
the answers are the same wherever a device or a dtype is chosen:

- `parse_device` turns "cpu", "cuda", "cuda:1", 0 or "mps" into a `torch.device` that exists here, or raises a
  `DeviceError` that says why not; `resolve_device("auto")` picks CUDA, else MPS, else the CPU.
- `parse_dtype` turns a name ("bf16", "torch.float16", "auto") into a `torch.dtype`; `resolve_dtype("auto",
  device)` picks bfloat16 (or float16) on a GPU and float32 on the CPU.
- `cpu_safe_dtype` applies the one rule about float16 on a CPU: it becomes float32, with a warning.
- `cpu_identity` names this CPU (model and instruction-set flags): what a kernel measured or compiled here is for.
- `place_on_huge_pages` moves CPU tensors that are streamed from memory every token onto 2 MiB pages.
"""

from __future__ import annotations

import functools
import importlib.util
import mmap
import platform
import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from .errors import ConfigError, DeviceError

# Every dtype name the library accepts, with the aliases users write.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "half": torch.float16,
    "float": torch.float32,
}
# What a model can be computed in (the choices a UI offers, "auto" first).
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2")

DeviceLike = Union[str, int, torch.device]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16", the spelling of config.json files."""
    return str(dtype).replace("torch.", "")


def parse_dtype(value: Union[str, torch.dtype, None]) -> Union[torch.dtype, str, None]:
    """A torch.dtype from its name ('float16', 'bf16', 'torch.float16'); 'auto' and None pass through."""
    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return value
    name = str(value).replace("torch.", "")
    if name not in DTYPES:
        raise ConfigError(f"torch_dtype must be 'auto', a torch dtype or one of {', '.join(DTYPES)}; got {value!r}.")
    return DTYPES[name]


def parse_device(value: DeviceLike) -> torch.device:
    """A torch.device that exists on this machine, or a `DeviceError` that says why not."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        value = f"cuda:{int(value)}"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{value!r} is not a device: use 'cpu', 'cuda', 'cuda:N', 'mps' or a GPU index.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"CUDA was requested ({value!r}) but this machine has no usable CUDA GPU "
                "(torch.cuda.is_available() is False). Use device='cpu' (or device_map='auto', which picks the CPU)."
            )
        index = device.index if device.index is not None else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{value!r} was requested but this machine has {torch.cuda.device_count()} CUDA GPU(s).")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise DeviceError(f"{value!r} was requested but the Apple MPS backend is not available on this machine.")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"Unsupported device {value!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return device


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(device: DeviceLike = "auto") -> str:
    """'auto' -> 'cuda:0' if CUDA is available, else 'mps' if available, else 'cpu'; others are validated."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        return "mps" if _mps_available() else "cpu"
    return str(parse_device(device))


def cpu_safe_dtype(dtype: torch.dtype, device: Union[str, torch.device]) -> torch.dtype:
    """float16 on a CPU is slow or unsupported for matmuls: it becomes float32, with a warning."""
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        warnings.warn("float16 is slow or unsupported on the CPU: loading in float32 instead "
                      "(use bfloat16 to halve the memory on the CPU).", stacklevel=3)
        return torch.float32
    return dtype


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype name a model on `device` computes in: 'auto' -> bfloat16 (float16 where a GPU lacks bf16) on a
    GPU, float16 on MPS, float32 on the CPU; other names pass through `cpu_safe_dtype`."""
    kind = torch.device(device).type
    if dtype == "auto":
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float16" if kind == "mps" else "float32"
    return dtype_name(cpu_safe_dtype(DTYPES[dtype], device))


def available_devices() -> list[str]:
    """The device choices to offer: "auto", "cpu", then "cuda:0", "cuda:1", ... and "mps" where present."""
    devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def on_gpu(device: str) -> bool:
    """True for CUDA and MPS devices (they have a memory of their own)."""
    return torch.device(device).type in ("cuda", "mps")


def default_concurrency() -> int:
    """How many requests an app should run at once by default: 4 with a CUDA GPU, 2 on the CPU."""
    return 4 if torch.cuda.is_available() else 2


def attention_unavailable_reason(attn_implementation: str, device: DeviceLike = "auto",
                                 dtype: Union[str, torch.dtype] = "auto") -> Optional[str]:
    """Why `attn_implementation` cannot run on `device` in `dtype` ("auto" resolved as above), or None when it can.

    eager and sdpa run everywhere; flash_attention_2 needs the flash_attn package, a CUDA GPU and fp16/bf16.
    """
    if attn_implementation not in ATTENTION_BACKENDS:
        return f"unknown attention backend {attn_implementation!r} (choose one of {', '.join(ATTENTION_BACKENDS)})"
    if attn_implementation != "flash_attention_2":
        return None
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attention_2 needs the `flash_attn` package, which is not installed (pip install flash-attn)"
    device = torch.device(resolve_device(device) if not isinstance(device, torch.device) else device)
    if device.type != "cuda":
        return f"flash_attention_2 needs a CUDA device; this model is on {device.type}"
    if isinstance(dtype, str):
        dtype = DTYPES[resolve_dtype(dtype, str(device))]
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash_attention_2 needs float16 or bfloat16 weights; this model is {dtype_name(dtype)}"
    return None


@functools.lru_cache(maxsize=1)
def cpu_identity() -> tuple[str, frozenset]:
    """This CPU's model name and its instruction-set flags (from /proc/cpuinfo where there is one)."""
    model, flags = "", frozenset()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    return model or platform.processor() or platform.machine(), flags


HUGE_PAGE_BYTES = 2 << 20
TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages() -> Optional[str]:
    """This kernel's transparent huge page mode ("always", "madvise", "never"), or None where it has none."""
    try:
        text = TRANSPARENT_HUGE_PAGES.read_text()
    except OSError:
        return None
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def place_on_huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Copy `tensors` into one anonymous memory mapping advised for transparent huge pages (MADV_HUGEPAGE) and point
    them there (`tensor.data`); returns the bytes moved: 0 where the kernel gives no huge pages ("never", not
    Linux). Only CPU tensors that are contiguous and the sole user of their storage move; the others stay.

    Why: the native decode step streams every weight from memory once per token. On 4 KiB pages the int4 decoder
    layers ran 10-20% slower (measured on a 2-core AMD EPYC, THP "madvise": the hardware prefetchers stop at each
    page boundary and every page costs a TLB walk); PyTorch's own allocator asks for huge pages only when
    THP_MEM_ALLOC_ENABLE is set before it starts."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or transparent_huge_pages() not in ("always", "madvise"):
        return 0
    movable, seen = [], set()
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if (tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.storage_offset() == 0
                and storage.nbytes() == tensor.nbytes and tensor.nbytes and storage.data_ptr() not in seen):
            seen.add(storage.data_ptr())
            movable.append(tensor)
    if not movable:
        return 0
    aligned = [-(-tensor.nbytes // 64) * 64 for tensor in movable]  # each tensor on a cache line of its own
    # private (shared anonymous memory is shmem, which has huge pages of its own setting), with room to start on a
    # 2 MiB boundary
    region = mmap.mmap(-1, sum(aligned) + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(advice)
    except OSError:  # a kernel built without huge pages for anonymous memory: nothing to gain from moving
        region.close()
        return 0
    memory = torch.frombuffer(region, dtype=torch.uint8)  # the tensors keep the mapping alive
    offset = -memory.data_ptr() % HUGE_PAGE_BYTES
    for tensor, size in zip(movable, aligned):
        placed = memory[offset:offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
        placed.copy_(tensor)
        tensor.data = placed
        offset += size
    return sum(tensor.nbytes for tensor in movable)
