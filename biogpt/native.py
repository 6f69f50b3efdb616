"""Our own CPU kernels (`native.c`): a decode step's products and whole decoder layers, compiled here at first use.

A decode step reads every weight once, so its speed is how fast the weights stream from memory. PyTorch 2.13's
one-row kernels for bfloat16 weights and for int8 weight-only layers stream them well below what the memory gives
(bench/RESULTS.md); `native.c` reads each weight once per call for up to a few rows of input, widens it to float32 in
registers and accumulates in float32 (AVX-512 or AVX2 + FMA where the CPU has them, the compiler's code elsewhere).
`decode_layers` runs all the decoder layers of a decode step in one call (LayerNorms, products, attention over the
key/value cache, GELU, residuals), which saves the 5-10 ms per token that PyTorch's ~400 operator calls per step
cost on two cores; `kernels.NativeDecoder` builds its arguments from a model.

It is built with the system C compiler (`cc`, else `gcc`) for this CPU (`-march=native`) and OpenMP, once: the
shared object is cached beside the kernel probe's choices (the folder of `BIOGPT_KERNEL_CACHE`), named by a hash of
the source, the compiler, the flags and the CPU, written atomically. After loading, a self-test compares it with
PyTorch on a small product. Where no compiler works, or the self-test fails, `unavailable_reason()` says why and
`biogpt.kernels` simply has no `native` candidate: nothing else changes. Loaded after torch, the library shares
torch's OpenMP runtime, so it runs on the threads torch uses, as many as `torch.get_num_threads()` says (with
barriers of its own: native.c says why).
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
LIBRARIES = ("-lm",)
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
    digest = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS + LIBRARIES).encode(), model.encode(),
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
        done = subprocess.run([compiler, *flags, str(SOURCE), *LIBRARIES, "-o", str(tmp)], capture_output=True,
                              text=True, timeout=COMPILE_TIMEOUT_S)
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


class _Linear(ctypes.Structure):
    """native.c's `Linear`: one linear layer's weights, as pointers into the module's own tensors."""

    _fields_ = [("kind", ctypes.c_int64), ("weight", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("N", ctypes.c_int64), ("K", ctypes.c_int64), ("group", ctypes.c_int64),
                ("block", ctypes.c_int64)]


class _Layer(ctypes.Structure):
    """native.c's `Layer`: a decoder layer's LayerNorms and linears."""

    _fields_ = [("ln1_weight", ctypes.c_void_p), ("ln1_bias", ctypes.c_void_p), ("q", _Linear), ("k", _Linear),
                ("v", _Linear), ("out", _Linear), ("ln2_weight", ctypes.c_void_p), ("ln2_bias", ctypes.c_void_p),
                ("fc1", _Linear), ("fc2", _Linear)]


KIND_F32, KIND_BF16, KIND_I8, KIND_I4 = range(4)
ACT_GELU = 1


def _declare(library: ctypes.CDLL) -> None:
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.biogpt_linear.argtypes = [ctypes.POINTER(_Linear), pointer, pointer, ctypes.c_int, size, ctypes.c_int]
    library.biogpt_linear.restype = ctypes.c_int
    library.biogpt_decode_layers.argtypes = [ctypes.POINTER(_Layer), size, pointer, pointer, pointer, pointer,
                                             pointer, ctypes.c_int, size, size, size, size, size, ctypes.c_float,
                                             ctypes.c_float, ctypes.c_int, pointer, pointer, ctypes.POINTER(_Linear),
                                             pointer, ctypes.c_int]
    library.biogpt_decode_layers.restype = ctypes.c_int
    library.biogpt_int4_dequantize_t.argtypes = [ctypes.POINTER(_Linear), pointer, ctypes.c_int, ctypes.c_int]
    library.biogpt_int4_dequantize_t.restype = ctypes.c_int
    library.biogpt_int8_dequantize.argtypes = [ctypes.POINTER(_Linear), pointer, ctypes.c_int, ctypes.c_int]
    library.biogpt_int8_dequantize.restype = ctypes.c_int
    library.biogpt_tiles_linear.argtypes = [ctypes.POINTER(_Linear), pointer, pointer, size, ctypes.c_int]
    library.biogpt_tiles_linear.restype = ctypes.c_int
    library.biogpt_tiles_available.argtypes = []
    library.biogpt_tiles_available.restype = ctypes.c_int


def _self_test(library: ctypes.CDLL) -> Optional[str]:
    """None when the compiled products agree with PyTorch's on a small case (odd sizes: tails included)."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 37, generator=generator)
    weight = torch.randint(-127, 128, (9, 37), generator=generator, dtype=torch.int8)
    scales, bias = torch.rand(9, generator=generator), torch.randn(9, generator=generator)
    expected = rows @ (weight.float() * scales[:, None]).t() + bias
    got = _int8(library, rows, weight, scales, bias)
    expected_bf16 = rows.bfloat16().float() @ weight.float().bfloat16().float().t() + bias.bfloat16().float()
    got_bf16 = _dense(library, rows.bfloat16(), weight.float().bfloat16(), bias.bfloat16()).float()
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


def _spec(kind: int, weight: torch.Tensor, scales: Optional[torch.Tensor], bias: Optional[torch.Tensor],
          out_features: int, in_features: int, group_size: int = 0, block_rows: int = 0) -> _Linear:
    """A `Linear` for native.c pointing into these tensors (which the caller keeps alive while it is used)."""
    return _Linear(kind, weight.data_ptr(), _pointer(scales), _pointer(bias), out_features, in_features, group_size,
                   block_rows)


def int8_spec(weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor]) -> _Linear:
    """int8 weight (N, K) with one scale per row (N,)."""
    return _spec(KIND_I8, weight, scales, bias, *weight.shape)


def dense_spec(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> _Linear:
    """float32 or bfloat16 weight (N, K)."""
    return _spec(KIND_BF16 if weight.dtype == torch.bfloat16 else KIND_F32, weight, None, bias, *weight.shape)


def int4_spec(packed: torch.Tensor, scales_and_zeros: torch.Tensor, bias: Optional[torch.Tensor], in_features: int,
              group_size: int, block_rows: int) -> _Linear:
    """int4 weight in `int4_linear`'s layout with `block_rows` (64 or 32) rows per block."""
    if block_rows not in (32, 64):
        raise ValueError(f"block_rows={block_rows}: the native int4 kernel reads blocks of 32 or 64 rows")
    return _spec(KIND_I4, packed, scales_and_zeros, bias, scales_and_zeros.shape[1], in_features, group_size,
                 block_rows)


def _check(status: int, what: str) -> None:
    """Raise for a non-zero status of a native.c function (the callers pass only what it can read)."""
    if status == 1:
        raise MemoryError(f"the native {what} could not allocate its buffers")
    if status:
        raise ValueError(f"the native {what} cannot read its arguments (status {status})")


def _run(library: ctypes.CDLL, spec: _Linear, rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty(rows.shape[0], spec.N, dtype=rows.dtype)
    _check(library.biogpt_linear(ctypes.byref(spec), rows.data_ptr(), out.data_ptr(),
                                 int(rows.dtype == torch.bfloat16), rows.shape[0], torch.get_num_threads()),
           "linear kernel")
    return out


def _int8(library: ctypes.CDLL, rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
          bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _run(library, int8_spec(weight, scales, bias), rows)


def _dense(library: ctypes.CDLL, rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
           ) -> torch.Tensor:
    return _run(library, dense_spec(weight, bias), rows)


def _int4(library: ctypes.CDLL, rows: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
          bias: Optional[torch.Tensor], group_size: int, block_rows: int) -> torch.Tensor:
    return _run(library, int4_spec(packed, scales_and_zeros, bias, rows.shape[1], group_size, block_rows), rows)


def int8_linear(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """(M, N) = rows (M, K) @ (weight (N, K) int8 * scales (N,))^T + bias (N,): rows, scales, bias and the result
    all float32 or all bfloat16, every tensor contiguous on the CPU (the caller, `kernels`, guarantees it)."""
    return _int8(_library()[0], rows, weight, scales, bias)


def dense_linear(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """(M, N) = rows (M, K) @ weight (N, K)^T + bias (N,), all float32 or all bfloat16, contiguous on the CPU."""
    return _dense(_library()[0], rows, weight, bias)


def int4_linear(rows: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                bias: Optional[torch.Tensor], group_size: int, block_rows: int) -> torch.Tensor:
    """(M, N) = rows (M, K) @ W^T + bias for 4-bit W packed by PyTorch's `_convert_weight_to_int4pack_for_cpu` in
    one of its "split" layouts with `block_rows` (64 or 32) rows per block (`kernels.INT4_LAYOUTS`: the caller
    checks which one this torch uses), W = (q - 8) * scale + zero per group of `group_size` input columns,
    `scales_and_zeros` (K / group_size, N, 2); rows, scales_and_zeros, bias and the result all float32 or all
    bfloat16, contiguous on the CPU."""
    return _int4(_library()[0], rows, packed, scales_and_zeros, bias, group_size, block_rows)


def _int4_dequantized_t(library: ctypes.CDLL, packed: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int,
                        group_size: int, block_rows: int) -> torch.Tensor:
    spec = int4_spec(packed, scales_and_zeros, None, in_features, group_size, block_rows)
    out = torch.empty(in_features, spec.N, dtype=scales_and_zeros.dtype)
    _check(library.biogpt_int4_dequantize_t(ctypes.byref(spec), out.data_ptr(),
                                            int(out.dtype == torch.bfloat16), torch.get_num_threads()),
           "int4 dequantization")
    return out


def int4_dequantized_t(packed: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int, group_size: int,
                       block_rows: int) -> torch.Tensor:
    """The transposed weight W^T (in_features, N) of `int4_linear`'s arguments in the dtype of `scales_and_zeros`:
    (q - 8) * scale + zero, computed in float32 and rounded once."""
    return _int4_dequantized_t(_library()[0], packed, scales_and_zeros, in_features, group_size, block_rows)


def _int8_dequantized(library: ctypes.CDLL, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out = torch.empty(weight.shape, dtype=scales.dtype)
    _check(library.biogpt_int8_dequantize(ctypes.byref(int8_spec(weight, scales, None)), out.data_ptr(),
                                          int(out.dtype == torch.bfloat16), torch.get_num_threads()),
           "int8 dequantization")
    return out


def int8_dequantized(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """weight (N, K) int8 * scales (N,) in the dtype of `scales` (float32 or bfloat16), each value one product
    rounded once; both contiguous on the CPU."""
    return _int8_dequantized(_library()[0], weight, scales)


def tiles_available() -> bool:
    """Whether `tiles_linear` runs here: the native kernels, on a CPU with AVX-512 BF16."""
    return available() and bool(_library()[0].biogpt_tiles_available())


def _tiles(library: ctypes.CDLL, rows: torch.Tensor, spec: _Linear) -> Optional[torch.Tensor]:
    out = torch.empty(rows.shape[0], spec.N, dtype=torch.bfloat16)
    if not rows.shape[0]:
        return out
    status = library.biogpt_tiles_linear(ctypes.byref(spec), rows.data_ptr(), out.data_ptr(), rows.shape[0],
                                         torch.get_num_threads())
    if status == 3:
        return None
    _check(status, "tiled product")
    return out


def tiles_linear(rows: torch.Tensor, spec: _Linear) -> Optional[torch.Tensor]:
    """(M, N) = rows (M, K) @ W^T + bias for the int8 or int4 Linear `spec` (`int8_spec`, `int4_spec`), bfloat16
    rows, scales and bias, contiguous on the CPU: a blocked product that expands the weight a panel at a time in the
    cache (native.c). None where it does not apply (`tiles_available()` false, an int4 tail block, odd K)."""
    return _tiles(_library()[0], rows, spec)


def layer_spec(ln1_weight: torch.Tensor, ln1_bias: torch.Tensor, attention: list[_Linear], ln2_weight: torch.Tensor,
               ln2_bias: torch.Tensor, feed_forward: list[_Linear]) -> _Layer:
    """A `Layer` for native.c: its LayerNorms, [q, k, v, out] projections and [fc1, fc2] (`*_spec`)."""
    return _Layer(ln1_weight.data_ptr(), ln1_bias.data_ptr(), *attention, ln2_weight.data_ptr(), ln2_bias.data_ptr(),
                  *feed_forward)


def layer_array(layers: list[_Layer]) -> ctypes.Array:
    return (_Layer * len(layers))(*layers)


def decode_layers(layers: ctypes.Array, keys: list[torch.Tensor], values: list[torch.Tensor], hidden: torch.Tensor,
                  may_attend: Optional[torch.Tensor], heads: int, position: int, eps: float, scaling: float,
                  norm_weight: torch.Tensor, norm_bias: torch.Tensor, projection: Optional[_Linear] = None
                  ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A decode step in one call: every decoder layer, the final LayerNorm (`norm_weight`, `norm_bias`) and, when
    given, the output projection (a `*_spec`). `hidden` (rows, H) in; (the final LayerNorm's output, the
    projection's (rows, projection.N) or None) out. `layers` is an array of `_Layer` (built by
    `kernels.NativeDecoder`), keys[l] / values[l] layer l's cache (rows, heads, capacity, head_dim), written at
    `position`; `may_attend` None (every key) or (rows, position + 1) booleans. All in one dtype (float32 or
    bfloat16), contiguous, on the CPU."""
    out = torch.empty_like(hidden)
    logits = torch.empty(hidden.shape[0], projection.N, dtype=hidden.dtype) if projection is not None else None
    count = len(keys)
    key_pointers = (ctypes.c_void_p * count)(*(t.data_ptr() for t in keys))
    value_pointers = (ctypes.c_void_p * count)(*(t.data_ptr() for t in values))
    status = _library()[0].biogpt_decode_layers(
        layers, count, key_pointers, value_pointers, hidden.data_ptr(), out.data_ptr(), _pointer(may_attend),
        int(hidden.dtype == torch.bfloat16), hidden.shape[0], heads, hidden.shape[-1] // heads, keys[0].shape[-2],
        position, eps, scaling, ACT_GELU, norm_weight.data_ptr(), norm_bias.data_ptr(),
        ctypes.byref(projection) if projection is not None else None, _pointer(logits), torch.get_num_threads())
    _check(status, "decode step")
    return out, logits
