"""Our own CPU kernels (`native.c`): the products of a decode step, compiled on this machine at first use.

A decode step reads every weight once, so its speed is how fast the weights stream from memory. PyTorch 2.13's
one-row kernels for bfloat16 weights and for int8 weight-only layers stream them well below what the memory gives
(bench/RESULTS.md); `native.c` reads each weight once per call for up to a few rows of input, widens it to float32 in
registers and accumulates in float32 (AVX-512 or AVX2 + FMA where the CPU has them, the compiler's code elsewhere).

It is built with the system C compiler (`cc`, else `gcc`) for this CPU (`-march=native`) and OpenMP, once: the
shared object is cached beside the kernel probe's choices (the folder of `BIOGPT_KERNEL_CACHE`), named by a hash of
the source, the compiler, the flags and the CPU, written atomically. After loading, a self-test compares it with
PyTorch on a small product. Where no compiler works, or the self-test fails, `unavailable_reason()` says why and
`biogpt.kernels` simply has no `native` candidate: nothing else changes. Loaded after torch, the library shares
torch's OpenMP runtime, so it runs on the threads `torch.set_num_threads` sets.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .devices import cpu_identity
from .settings import Settings

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
COMPILERS = ("cc", "gcc")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120


@functools.lru_cache(maxsize=1)
def _library() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """(the loaded library, None) or (None, why not), decided once per process; the reason is logged."""
    library, reason = _build_and_load()
    if reason:
        logger.info("No native CPU kernels (PyTorch's are used): %s", reason)
    return library, reason


def _build_and_load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    compiler = next((path for path in map(shutil.which, COMPILERS) if path), None)
    if compiler is None:
        return None, f"no C compiler ({' or '.join(COMPILERS)}) on this machine"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        source = SOURCE.read_bytes()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run {compiler}: {exc}"
    model, flags = cpu_identity()
    digest = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS).encode(), model.encode(),
                                        " ".join(sorted(flags)).encode()])).hexdigest()[:16]
    name = f"biogpt-native-{digest}.so"
    # The kernel cache's folder, else (a read-only home) a per-user folder in the temporary folder.
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    for folder in (Settings.from_env().kernel_cache.parent, Path(tempfile.gettempdir()) / f"biogpt{user}"):
        target = folder / name
        if not target.is_file():
            try:
                reason = _compile(compiler, target)
            except OSError:
                continue  # this folder cannot be written: try the next one
            if reason:
                return None, reason
        try:
            library = ctypes.CDLL(str(target))
        except OSError as exc:
            return None, f"cannot load {target}: {exc}"
        _declare(library)
        problem = _self_test(library)
        return (None, problem) if problem else (library, None)
    return None, "no writable folder for the compiled kernels"


def _compile(compiler: str, target: Path, flags: tuple[str, ...] = FLAGS) -> Optional[str]:
    """Build `target` through a temporary file in its folder, renamed into place; None, or why the compiler failed.
    Raises OSError when the folder cannot be written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            return f"{Path(compiler).name} {' '.join(flags)} failed: {first}"
        os.replace(tmp, target)
        logger.info("Compiled the native CPU kernels into %s", target)
        return None
    except subprocess.TimeoutExpired:
        return f"{Path(compiler).name} took more than {COMPILE_TIMEOUT_S} s"
    except OSError as exc:
        return f"cannot run {compiler}: {exc}"
    finally:
        tmp.unlink(missing_ok=True)


def _declare(library: ctypes.CDLL) -> None:
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.biogpt_int8_linear.argtypes = [pointer] * 5 + [ctypes.c_int, size, size, size]
    library.biogpt_int8_linear.restype = ctypes.c_int
    library.biogpt_bf16_linear.argtypes = [pointer] * 4 + [size, size, size]
    library.biogpt_bf16_linear.restype = ctypes.c_int
    library.biogpt_int4_linear.argtypes = [pointer] * 5 + [ctypes.c_int, size, size, size, size, size]
    library.biogpt_int4_linear.restype = ctypes.c_int


def _self_test(library: ctypes.CDLL) -> Optional[str]:
    """None when the compiled products agree with PyTorch's on a small case (odd sizes: tails included)."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 37, generator=generator)
    weight = torch.randint(-127, 128, (9, 37), generator=generator, dtype=torch.int8)
    scales, bias = torch.rand(9, generator=generator), torch.randn(9, generator=generator)
    expected = rows @ (weight.float() * scales[:, None]).t() + bias
    got = _int8(library, rows, weight, scales, bias)
    expected_bf16 = rows.bfloat16().float() @ weight.float().bfloat16().float().t() + bias.bfloat16().float()
    got_bf16 = _bf16(library, rows.bfloat16(), weight.float().bfloat16(), bias.bfloat16()).float()
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-3) or not torch.allclose(got_bf16, expected_bf16,
                                                                                     rtol=1e-2, atol=0.5):
        return "the compiled kernels disagree with PyTorch on a test product"
    return None


def unavailable_reason() -> Optional[str]:
    """Why the native kernels cannot run here (compiled on first call), or None when they can."""
    return _library()[1]


def available() -> bool:
    return _library()[0] is not None


def _pointer(tensor: Optional[torch.Tensor]) -> Optional[int]:
    return None if tensor is None else tensor.data_ptr()


def _checked(status: int, kernel: str, out: torch.Tensor) -> torch.Tensor:
    """`out`, once the kernel returned 0 (its only failure: no memory for its float32 copy of the input)."""
    if status:
        raise MemoryError(f"the native {kernel} kernel could not allocate its input buffer")
    return out


def _int8(library: ctypes.CDLL, rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
          bias: Optional[torch.Tensor]) -> torch.Tensor:
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=rows.dtype)
    status = library.biogpt_int8_linear(rows.data_ptr(), weight.data_ptr(), scales.data_ptr(), _pointer(bias),
                                        out.data_ptr(), int(rows.dtype == torch.bfloat16), rows.shape[0],
                                        weight.shape[0], weight.shape[1])
    return _checked(status, "int8", out)


def _bf16(library: ctypes.CDLL, rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
          ) -> torch.Tensor:
    out = torch.empty(rows.shape[0], weight.shape[0], dtype=torch.bfloat16)
    status = library.biogpt_bf16_linear(rows.data_ptr(), weight.data_ptr(), _pointer(bias), out.data_ptr(),
                                        rows.shape[0], weight.shape[0], weight.shape[1])
    return _checked(status, "bf16", out)


def _int4(library: ctypes.CDLL, rows: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
          bias: Optional[torch.Tensor], group_size: int, block_rows: int) -> torch.Tensor:
    if block_rows not in (32, 64):
        raise ValueError(f"block_rows={block_rows}: the native int4 kernel reads blocks of 32 or 64 rows")
    out = torch.empty(rows.shape[0], scales_and_zeros.shape[1], dtype=rows.dtype)
    status = library.biogpt_int4_linear(rows.data_ptr(), packed.data_ptr(), scales_and_zeros.data_ptr(),
                                        _pointer(bias), out.data_ptr(), int(rows.dtype == torch.bfloat16),
                                        rows.shape[0], scales_and_zeros.shape[1], rows.shape[1], group_size,
                                        block_rows)
    return _checked(status, "int4", out)


def int8_linear(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """(M, N) = rows (M, K) @ (weight (N, K) int8 * scales (N,))^T + bias (N,): rows, scales, bias and the result
    all float32 or all bfloat16, every tensor contiguous on the CPU (the caller, `kernels`, guarantees it)."""
    return _int8(_library()[0], rows, weight, scales, bias)


def bf16_linear(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """(M, N) = rows (M, K) @ weight (N, K)^T + bias (N,), all bfloat16 and contiguous on the CPU."""
    return _bf16(_library()[0], rows, weight, bias)


def int4_linear(rows: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                bias: Optional[torch.Tensor], group_size: int, block_rows: int) -> torch.Tensor:
    """(M, N) = rows (M, K) @ W^T + bias for 4-bit W packed by PyTorch's `_convert_weight_to_int4pack_for_cpu` in
    one of its "split" layouts with `block_rows` (64 or 32) rows per block (`kernels.INT4_LAYOUTS`: the caller
    checks which one this torch uses), W = (q - 8) * scale + zero per group of `group_size` input columns,
    `scales_and_zeros` (K / group_size, N, 2); rows, scales_and_zeros, bias and the result all float32 or all
    bfloat16, contiguous on the CPU."""
    return _int4(_library()[0], rows, packed, scales_and_zeros, bias, group_size, block_rows)
