"""CPU kernels for the linear layers: weight-only int8/int4 formats, and which kernel each product runs on, chosen
by measuring on this machine at first load (cached), swapped into a loaded model (the model code stays plain).

A decode step on a CPU is bound by memory bandwidth: every weight is read once per token, and the products have
one row. Which kernel streams weights fastest depends on the CPU and the torch build: on one 2-core AMD EPYC
oneDNN's inner product was 2x MKL's at one row; on a 2-core Intel Xeon the same oneDNN call is slower than ATen's
fp32 `F.linear`, and a bf16 matrix-vector product (`torch.mv`) beats bf16 `F.linear`. So nothing is hard-coded:

- *Formats* (`weight_format`): float32 and bfloat16 `nn.Linear`, and the weight-only `Int8Linear` (int8 per output
  channel, symmetric) and `Int4Linear` (4-bit per group of input channels, with a scale and a zero per group),
  which hold PyTorch's own packed layouts for `torch.ops.aten._weight_int8pack_mm` and
  `_weight_int4pack_mm_for_cpu`.
- *Regimes* (`regime`): one row (decoding), up to 127 rows (batched decoding, beams, short prompts), 128 rows and
  more (long prompts); and `batch_decode`, which decides how the decode steps of a batch run (`NativeDecoder`'s one
  call, or the module code with the batch regime's kernel), timed at 8 rows.
- *Candidates* (`CANDIDATES`): for each format and regime, the ways to compute it: always `aten` (exactly what
  transformers runs: `F.linear`, or the ATen weight-only kernel), plus where they apply `gemv` (`torch.mv` on the
  one row), `onednn` (oneDNN's inner product; bf16 weights reordered once into its blocked layout), `native` (our
  own products of float32, bf16, int8 and int4 weights with a few rows, `biogpt/native.c`, compiled here at first
  use: see `native.py`), `dequant` (int8/int4 weights expanded to the compute dtype, then one dense product: pays
  off only over many rows) and `tiles` (many rows, bf16 compute, AVX-512 BF16: our own blocked product that expands
  int8/int4 weights a panel at a time in the cache, so they are read from memory once in their own format).
- *The probe* (`probe`): times every candidate on the model's own weight matrices (so the working set is the real
  one, not cache-resident toys), alternating them, best of a few rounds, and picks the fastest; `aten` keeps the
  job unless another candidate beats it by `MARGIN`, so a choice is never slower than the plain path by more than
  the noise. It takes a fraction of a second, once per machine: the result goes into a small JSON file
  (`BIOGPT_KERNEL_CACHE`) keyed by CPU model, CPU flags, torch version, threads, format and matrix shapes. A
  choice measured while the machine was busy (load average per core above BUSY_LOAD) is measured again at the
  first load on a quiet machine. Formats with less than PROBE_MIN_BYTES of weights keep ATen unmeasured.
- `BIOGPT_CPU_KERNELS` overrides it (see `resolve_choice`): `auto` (default: cached probe), `probe` (measure again),
  `aten` (plain PyTorch everywhere), or one candidate name used wherever it applies.

`apply_cpu_kernels(model)` swaps the class of the decoder's and output head's float `nn.Linear` layers to
`CpuLinear` (same parameters, same state_dict) and gives every CPU linear its kernel per regime; where decoding is
`native` it also gives the decoder a `NativeDecoder`, which runs all the layers of a decode step (one new token per
row) in one native call (the probe therefore gives decoding, of one row or of a batch, to `native` unless another
kernel is faster by more than NATIVE_DECODE_ALLOWANCE); `remove_cpu_kernels(model)` undoes it. Gradients, other
devices, other dtypes and torch.compile tracing always take `F.linear`.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .devices import cpu_identity, parse_dtype, place_on_huge_pages
from .errors import ConfigError
from .settings import CPU_KERNEL_CHOICES, Settings

logger = logging.getLogger(__name__)

# A product's regime follows its rows (`regime`): one ("decode"), 2 to 31 (a short prompt, or a decode step of a
# batch: "batch"), 32 to 127 (a mid-length prompt, or the prompts the batching engine admits together: "medium"),
# 128 and more ("prefill"). "batch_decode" is the choice for the decode steps of a batch alone: `NativeDecoder` runs
# them in one call where it is `native`, else the module code runs them with the kernel of their rows' regime.
# "medium" has its own probe because the kernels cross over within 2-127 rows: on a 2-core AVX-512 EPYC the native
# products won at 16 rows (bf16: 3.8 ms vs oneDNN's 4.7 on eight fc matrices) and lost from ~48 (112 rows: 28.4 vs
# 19.3 ms; int8 33.0 vs tiles' 23.5).
REGIMES = ("decode", "batch_decode", "batch", "medium", "prefill")
# Rows each regime is timed at by the probe: batch_decode at the batching engine's default 8 rows.
PROBE_ROWS = {"decode": 1, "batch_decode": 8, "batch": 16, "medium": 64, "prefill": 256}
MEDIUM_ROWS, PREFILL_ROWS = 32, 128
# A candidate replaces `aten` only when it is at least this much faster (the noise of a short measurement).
MARGIN = 0.05
# How much slower than the best its products may measure for `native` to keep decoding (one row, or a batch):
# a decode step through `NativeDecoder` (one native call for all layers) took 17-38% less time than the same
# products called layer by layer from the module code, and an 8-row step 15-35% less than oneDNN's or ATen's
# products with PyTorch's attention (bench/RESULTS.md, 2026-12-02 and 12-03), so a product-only disadvantage below
# that still wins.
NATIVE_DECODE_ALLOWANCE = 0.25
DECODE_REGIMES = ("decode", "batch_decode")
# Formats with fewer bytes of weights than this are not probed (ATen): everything sits in the caches and per-call
# overhead dominates, so the candidates cannot be told apart (the tiny models of a test suite load in milliseconds).
PROBE_MIN_BYTES = 4 * 2**20
# Load average per core above which a probe's measurement counts as disturbed, and below which the machine is quiet.
BUSY_LOAD, QUIET_LOAD = 0.9, 0.5
CHOICES = CPU_KERNEL_CHOICES
# 2: the `native` candidate exists; 3: for float32 too, and preferred for decoding (NativeDecoder); 4: batch_decode;
# 5: the `tiles` candidate; 6: the medium regime
CACHE_VERSION = 6
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "sve", "bf16")


def regime(rows: int) -> str:
    """The regime of a product with `rows` rows."""
    if rows == 1:
        return "decode"
    return "batch" if rows < MEDIUM_ROWS else ("medium" if rows < PREFILL_ROWS else "prefill")


def decode_regime(rows: int) -> Optional[str]:
    """The regime whose kernel decides how a decode step of `rows` rows runs (None: too many rows for one call)."""
    return "decode" if rows == 1 else ("batch_decode" if rows < PREFILL_ROWS else None)


# ----------------------------------------------------------------------------------------------------------------
# Weight-only int8 / int4
# ----------------------------------------------------------------------------------------------------------------
INT4_GROUP_SIZES = (32, 64, 128, 256)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, scale per output row): symmetric, `weight ~= q * scale[:, None]`, |q| <= 127.

    The scale is max|row| / 127, so the rounding error of an element is at most scale / 2.
    """
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q in 0..15 as int32, scale, zero) per group of `group_size` input columns: `w ~= (q - 8) * scale + zero`.

    Asymmetric min/max quantization as torchao's int4 weight-only (and gpt-fast): scale = (max - min) / 15,
    zero = min + 8 * scale; the rounding error of an element is at most scale / 2. Scales and zeros are
    (rows, groups) float32; rows x columns must be a multiple of the group size.
    """
    w = weight.detach().float()
    rows, cols = w.shape
    groups = w.reshape(rows, cols // group_size, group_size)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scales = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((groups - low[..., None]) / scales[..., None]).clamp_(0, 15).to(torch.int32)
    return q.reshape(rows, cols), scales, low + 8 * scales


def int4_shape_error(out_features: int, in_features: int, group_size: int) -> Optional[str]:
    """Why a (out, in) weight cannot use the int4 CPU kernel with `group_size`, or None."""
    if group_size not in INT4_GROUP_SIZES:
        return f"group_size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, not {group_size}"
    if in_features % group_size:
        return f"its {in_features} input features are not a multiple of group_size {group_size}"
    if out_features % 16:
        return f"the int4 CPU kernel needs output features in multiples of 16 (this layer has {out_features})"
    return None


class _QuantizedLinear(nn.Module):
    """What `Int8Linear` and `Int4Linear` share: bias, sizes, the kernel per regime, the forward."""

    in_features: int
    out_features: int

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.kernels: dict[str, str] = dict.fromkeys(REGIMES, "aten")

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.scale_tensor().dtype

    def scale_tensor(self) -> torch.Tensor:
        raise NotImplementedError

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """The ATen weight-only kernel on (rows, in) input in the compute dtype."""
        raise NotImplementedError

    def dequantized(self) -> torch.Tensor:
        """The (out, in) weight in the compute dtype (what the products compute with)."""
        raise NotImplementedError

    def native_product(self, rows: torch.Tensor) -> torch.Tensor:
        """The `native` kernel (`native.py`), bias included, on (rows, in) input in the compute dtype."""
        raise NotImplementedError

    def dense_product(self, rows: torch.Tensor) -> torch.Tensor:
        """The `dequant` kernel: the whole weight expanded to the compute dtype, then one dense product with bias
        (pays off over many rows, where the weight-only kernels are compute-bound)."""
        return F.linear(rows, self.dequantized(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The decode path runs 145 times per token on microsoft/biogpt: it does no more than it must.
        compute_dtype = self.scale_tensor().dtype
        rows = x.reshape(-1, self.in_features)
        if x.dtype != compute_dtype:
            rows = rows.to(compute_dtype)
        if not rows.is_contiguous():  # e.g. the last position of a batch; the int4 kernel needs contiguous rows
            rows = rows.contiguous()
        kernel = "aten" if torch.compiler.is_compiling() else self.kernels[regime(rows.shape[0])]
        if kernel == "native":
            out = self.native_product(rows)  # bias added in the kernel
        elif rows.shape[0] > 1 and kernel == "tiles":
            out = native.tiles_linear(rows, _native_spec(self))  # bias added in the kernel
            if out is None:  # not for this layer (an int4 tail block, odd K): the expanded weight
                out = self.dense_product(rows)
        elif rows.shape[0] > 1 and kernel == "dequant":
            out = self.dense_product(rows)
        else:
            out = self.product(rows)
            if self.bias is not None:
                out.add_(self.bias)  # a fresh tensor: no copy needed
        out = out.view(*x.shape[:-1], self.out_features)
        return out if x.dtype == compute_dtype else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantizedLinear):
    """y = x W^T + b with W stored as int8 (out, in) and one scale per output row, in the compute dtype.

    `weight` is the int8 matrix (a parameter without gradient, so that loading, devices and memory accounting
    treat it like `nn.Linear`'s), `scales` the row scales.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.bfloat16):
        super().__init__(in_features, out_features, bias, dtype)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> "Int8Linear":
        with torch.device(weight.device):
            layer = cls(weight.shape[1], weight.shape[0], bias is not None, dtype)
        layer.set_weight(weight)
        if bias is not None:
            layer.bias.data = bias.detach().to(dtype)
        return layer

    def set_weight(self, weight: torch.Tensor) -> None:
        q, scales = quantize_int8(weight)
        self.weight = nn.Parameter(q.to(weight.device), requires_grad=False)
        self.scales = scales.to(device=weight.device, dtype=self.scales.dtype)

    def scale_tensor(self) -> torch.Tensor:
        return self.scales

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)

    def native_product(self, rows: torch.Tensor) -> torch.Tensor:
        return native.int8_linear(rows, self.weight, self.scales, self.bias)

    def dequantized(self) -> torch.Tensor:
        if (native.available() and self.weight.device.type == "cpu" and self.weight.is_contiguous()
                and self.scales.is_contiguous()):  # 12x faster than the tensor product below
            return native.int8_dequantized(self.weight, self.scales)
        return self.weight * self.scales[:, None]  # int8 x float promotes to the float dtype in one pass


class Int4Linear(_QuantizedLinear):
    """y = x W^T + b with W stored as 4-bit integers per group of `group_size` input columns, each group with a
    scale and a zero in the compute dtype: `W ~= (q - 8) * scale + zero`.

    `weight` is PyTorch's packed layout for `_weight_int4pack_mm_for_cpu` (uint8, two values per byte; until
    `set_weight` an (out, in) placeholder, the shape loading checks the checkpoint against), `scales_and_zeros` is
    (in / group_size, out, 2).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.bfloat16,
                 group_size: int = 128):
        super().__init__(in_features, out_features, bias, dtype)
        reason = int4_shape_error(out_features, in_features, group_size)
        if reason:
            raise ConfigError(f"Int4Linear({in_features}, {out_features}): {reason}.")
        self.group_size = group_size
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.uint8), requires_grad=False)
        self.register_buffer("scales_and_zeros", torch.zeros(in_features // group_size, out_features, 2, dtype=dtype))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype,
                   group_size: int) -> "Int4Linear":
        with torch.device(weight.device):
            layer = cls(weight.shape[1], weight.shape[0], bias is not None, dtype, group_size)
        layer.set_weight(weight)
        if bias is not None:
            layer.bias.data = bias.detach().to(dtype)
        return layer

    def set_weight(self, weight: torch.Tensor) -> None:
        q, scales, zeros = quantize_int4(weight, self.group_size)
        self.weight = nn.Parameter(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1), requires_grad=False)
        self.scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=2).to(
            device=weight.device, dtype=self.scales_and_zeros.dtype).contiguous()

    def scale_tensor(self) -> torch.Tensor:
        return self.scales_and_zeros

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.weight, self.group_size, self.scales_and_zeros)

    def native_product(self, rows: torch.Tensor) -> torch.Tensor:
        return native.int4_linear(rows, self.weight, self.scales_and_zeros, self.bias, self.group_size,
                                  int4_layout()[0])

    def dequantized_t(self) -> torch.Tensor:
        """The transposed (in, out) weight in the compute dtype. Transposed because that is the order the packed
        bytes already have (input channel outermost), and the groups' scales and zeros then broadcast in place.
        The native kernels' unpacking where they read this layout (~4.5x faster than these tensor operations)."""
        if native_int4_available():
            return native.int4_dequantized_t(self.weight, self.scales_and_zeros, self.in_features, self.group_size,
                                             int4_layout()[0])
        q = unpack_int4_t(self.weight, self.out_features, self.in_features)
        groups = q.view(-1, self.group_size, self.out_features).to(self.compute_dtype)
        scales = self.scales_and_zeros[..., 0].unsqueeze(1)
        zeros = (self.scales_and_zeros[..., 1] - 8 * self.scales_and_zeros[..., 0]).unsqueeze(1)
        return torch.addcmul(zeros, groups, scales).view(self.in_features, self.out_features)

    def dequantized(self) -> torch.Tensor:
        return self.dequantized_t().t()

    def dense_product(self, rows: torch.Tensor) -> torch.Tensor:
        weight_t = self.dequantized_t()
        return torch.mm(rows, weight_t) if self.bias is None else torch.addmm(self.bias, rows, weight_t)


# How `_convert_weight_to_int4pack_for_cpu` lays out a matrix depends on the CPU kernel torch dispatches to (as
# measured on torch 2.13's x86 build): output rows in blocks of 64 (AVX-512) or 32 (AVX2, and the portable code),
# input column k of a block being block/2 bytes; in the "split" layouts byte j holds row j (low nibble) and row
# j + block/2 (high), in the "pairs" one rows 2j and 2j + 1. The last `out % block` rows always form one block of
# pairs. (rows per block, split) for each, in the order they are tried:
INT4_LAYOUTS = ((64, True), (32, True), (32, False))
NATIVE_INT4_LAYOUTS = INT4_LAYOUTS[:2]  # the ones `native.int4_linear` reads


def unpack_int4_t(packed: torch.Tensor, out_features: int, in_features: int,
                  layout: Optional[tuple[int, bool]] = None) -> torch.Tensor:
    """The (in, out) uint8 values 0..15 of `_convert_weight_to_int4pack_for_cpu`'s layout (`int4_layout()` unless
    `layout` is given), transposed."""
    block, split = layout or int4_layout()
    flat = packed.reshape(-1)
    whole = out_features - out_features % block
    parts = []
    if whole:
        blocks = flat[: whole * in_features // 2].view(whole // block, in_features, block // 2)
        # split: (blocks, in, 2, block/2), row = half * block/2 + j; pairs: (blocks, in, block/2, 2), row = 2j + half
        nibbles = torch.stack((blocks & 15, blocks >> 4), dim=2 if split else 3)
        parts.append(nibbles.permute(1, 0, 2, 3).reshape(in_features, whole))
    if out_features > whole:
        tail = flat[whole * in_features // 2:].view(in_features, (out_features - whole) // 2)
        parts.append(torch.stack((tail & 15, tail >> 4), dim=2).reshape(in_features, out_features - whole))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def native_int4_available() -> bool:
    """True when the native kernels run here and read this torch build's int4 packing."""
    return native.available() and int4_layout() in NATIVE_INT4_LAYOUTS


@functools.lru_cache(maxsize=1)
def int4_layout() -> Optional[tuple[int, bool]]:
    """The entry of INT4_LAYOUTS this torch build packs int4 weights in on this CPU (checked on a probe), or None."""
    q = torch.randint(0, 16, (112, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    for layout in INT4_LAYOUTS:
        if torch.equal(unpack_int4_t(packed, 112, 64, layout).int(), q.t()):
            return layout
    return None


def int4_layout_known() -> bool:
    """True when `unpack_int4_t` can read this torch build's int4 CPU packing."""
    return int4_layout() is not None


# ----------------------------------------------------------------------------------------------------------------
# Float linears: the swapped-in class and its kernels
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """True when this torch build runs oneDNN's linear in `dtype` on this CPU (probed once per dtype on a tiny
    product: bf16 needs a CPU with bf16 instructions, AVX-512 BF16 or AMX; an AVX2-only CPU has none)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            probe = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 4, dtype=dtype), torch.ones(2, 4, dtype=dtype),
                                                       None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):  # the op is absent, or no primitive for this CPU
        return False
    return bool(probe.eq(4).all())


class CpuLinear(nn.Linear):
    """An `nn.Linear` whose inference forward on the CPU runs the kernel chosen for its regime (`kernels`).

    Same parameters and state_dict as `nn.Linear`. Anything else (a gradient needed, another device or dtype,
    torch.compile tracing) takes `F.linear`. A oneDNN-reordered bf16 weight is kept as a plain attribute (no
    parameter or buffer, so state_dict(), save_pretrained and deepcopy are untouched), rebuilt when the weight
    changes.
    """

    kernels: Mapping[str, str] = dict.fromkeys(REGIMES, "aten")
    _packed: Optional[tuple[tuple[int, int], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        # Ordered cheapest first: this runs for every linear of every decode step.
        if (x.dtype != weight.dtype or x.device.type != "cpu" or (bias is not None and bias.dtype != x.dtype)
                or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad
                                                 or (bias is not None and bias.requires_grad)))
                or torch.compiler.is_compiling() or not weight.is_contiguous()):
            return F.linear(x, weight, bias)  # (under torch.compile, inductor chooses its own CPU kernels)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        kernel = self.kernels[regime(rows)]
        if kernel == "gemv" and rows == 1:
            vector = x.reshape(-1)
            out = torch.mv(weight, vector) if bias is None else torch.addmv(bias, weight, vector)
            return out.view(*x.shape[:-1], out.shape[-1])
        if kernel == "native":
            out = native.dense_linear(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias)
            return out.view(*x.shape[:-1], out.shape[-1])
        if kernel == "onednn":
            if x.dtype == torch.bfloat16:
                weight = self._packed_weight()
            flat = x.reshape(-1, x.shape[-1])
            out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
            return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, weight, bias)

    def __getstate__(self) -> dict:
        """deepcopy and pickle leave the packed copy behind (oneDNN's opaque tensors have no storage to copy)."""
        state = super().__getstate__()
        state.pop("_packed", None)
        return state

    def _packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, rebuilt when the weight is replaced or changed in place."""
        weight = self.weight
        try:
            key = (weight.data_ptr(), weight._version)
        except RuntimeError:  # an inference-mode tensor has no version counter: do not cache what could go stale
            return weight
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        except (RuntimeError, AttributeError, NotImplementedError):  # no reorder for this shape/build: plain layout
            return weight
        self._packed = (key, packed)
        return packed


@dataclass(frozen=True)
class Candidate:
    """One way to compute a format's products in a regime."""

    name: str
    formats: frozenset  # of weight_format() values
    regimes: frozenset
    available: Callable[[str], bool]  # given the format: can this machine run it?


_FLOAT = frozenset({"float32", "bfloat16"})
_QUANTIZED = frozenset({"int8-float32", "int8-bfloat16", "int4-float32", "int4-bfloat16"})
_NATIVE_REGIMES = frozenset({"decode", "batch_decode", "batch", "medium"})
_PROMPT_REGIMES = frozenset({"batch", "medium", "prefill"})
CANDIDATES = (
    Candidate("aten", _FLOAT | _QUANTIZED, frozenset(REGIMES), lambda fmt: True),
    Candidate("gemv", _FLOAT, frozenset({"decode"}), lambda fmt: True),
    Candidate("onednn", _FLOAT, frozenset(REGIMES), lambda fmt: onednn_available(parse_dtype(fmt))),
    Candidate("native", _FLOAT | {"int8-float32", "int8-bfloat16"}, _NATIVE_REGIMES,
              lambda fmt: native.available()),
    Candidate("native", frozenset({"int4-float32", "int4-bfloat16"}), _NATIVE_REGIMES,
              lambda fmt: native_int4_available()),
    Candidate("dequant", frozenset({"int8-float32", "int8-bfloat16"}), _PROMPT_REGIMES,
              lambda fmt: True),
    Candidate("dequant", frozenset({"int4-float32", "int4-bfloat16"}), _PROMPT_REGIMES,
              lambda fmt: int4_layout_known()),
    Candidate("tiles", frozenset({"int8-bfloat16"}), _PROMPT_REGIMES,
              lambda fmt: native.tiles_available()),
    Candidate("tiles", frozenset({"int4-bfloat16"}), _PROMPT_REGIMES,
              lambda fmt: native.tiles_available() and native_int4_available()),
)


def candidates(fmt: str, regime_name: str) -> list[str]:
    """Names of the candidates that can compute `fmt` in `regime_name` on this machine (`aten` first)."""
    names = [c.name for c in CANDIDATES if fmt in c.formats and regime_name in c.regimes and c.available(fmt)]
    return list(dict.fromkeys(names))


def weight_format(module: nn.Module) -> Optional[str]:
    """'float32', 'bfloat16', 'int8-<compute dtype>', 'int4-<compute dtype>', or None for a layer we leave alone."""
    if isinstance(module, Int8Linear):
        return f"int8-{str(module.compute_dtype).replace('torch.', '')}"
    if isinstance(module, Int4Linear):
        return f"int4-{str(module.compute_dtype).replace('torch.', '')}"
    if type(module) in (nn.Linear, CpuLinear) and module.weight.dtype in (torch.float32, torch.bfloat16):
        return str(module.weight.dtype).replace("torch.", "")
    return None


def cpu_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder's linear layers and the output head (where the model has them) that kernels apply to."""
    found = [(name, module) for name, module in model.named_modules()
             if weight_format(module) is not None and (".layers." in f".{name}" or name == "output_projection")]
    return [(name, module) for name, module in found if module.weight.device.type == "cpu"]


# ----------------------------------------------------------------------------------------------------------------
# The probe
# ----------------------------------------------------------------------------------------------------------------
Measure = Callable[[str, list[nn.Module], str, list[str]], dict[str, float]]
"""(format, sample layers, regime, candidate names) -> seconds per pass for each candidate."""

# The decode regime streams up to this many bytes of weights per pass (more than the caches, as the real step).
_DECODE_PROBE_BYTES = 96 * 2**20
# Alternated rounds per regime: at least _MIN_ROUNDS, more while the regime's time budget lasts (small models).
_MIN_ROUNDS, _MAX_ROUNDS, _ROUND_BUDGET_S = 5, 40, 0.12


def probe_sample(layers: list[nn.Module], regime_name: str) -> list[nn.Module]:
    """Layers to time: for decoding, the model's own matrices in model order up to _DECODE_PROBE_BYTES
    (bandwidth-bound, so the working set must be real); for more rows (compute-bound) the two largest matrices of
    the shapes that repeat (the decoder's, not the one-off output head, which sees one row in a prefill)."""
    if regime_name == "decode":
        chosen, total = [], 0
        for layer in layers:
            if total >= _DECODE_PROBE_BYTES:
                break
            chosen.append(layer)
            total += layer.weight.numel() * layer.weight.element_size()
        return chosen
    shapes = Counter((layer.out_features, layer.in_features) for layer in layers)
    repeated = [layer for layer in layers if shapes[(layer.out_features, layer.in_features)] > 1] or layers
    return sorted(repeated, key=lambda m: m.in_features * m.out_features, reverse=True)[:2]


def measure_candidates(fmt: str, layers: list[nn.Module], regime_name: str, names: list[str],
                       rounds: Optional[int] = None) -> dict[str, float]:
    """Seconds per pass over `layers` at the regime's row count, the best of several alternated rounds (`rounds`
    exactly, else as many as the time budget allows between _MIN_ROUNDS and _MAX_ROUNDS).

    Each candidate runs on the real modules with its kernel set for that regime (on a copy of the class for float
    layers, so the model is untouched); the minimum is the least disturbed by other processes on a shared host.
    """
    rows = PROBE_ROWS[regime_name]
    dtype = torch.bfloat16 if fmt.endswith("bfloat16") else torch.float32
    generator = torch.Generator().manual_seed(0)
    inputs = {layer.in_features: torch.randn(rows, layer.in_features, generator=generator).to(dtype)
              for layer in layers}
    runners = {}
    for name in names:
        probes = [_probe_module(layer, regime_name, name) for layer in layers]
        runners[name] = lambda probes=probes: [p(inputs[p.in_features]) for p in probes]
    best = {name: float("inf") for name in names}
    with torch.inference_mode():
        for fn in runners.values():  # warm-up: first-call allocations, oneDNN primitive creation, reorders
            fn()
        start = time.perf_counter()
        for r in range(rounds or _MAX_ROUNDS):
            if rounds is None and r >= _MIN_ROUNDS and time.perf_counter() - start > _ROUND_BUDGET_S:
                break
            for name in (names if r % 2 == 0 else names[::-1]):
                begin = time.perf_counter()
                runners[name]()
                best[name] = min(best[name], time.perf_counter() - begin)
    return best


def _probe_module(layer: nn.Module, regime_name: str, name: str) -> nn.Module:
    """A stand-in of `layer` sharing its tensors, computing `regime_name` with candidate `name`."""
    if isinstance(layer, _QuantizedLinear):
        stand_in = object.__new__(type(layer))
        stand_in.__dict__.update(layer.__dict__)
    else:
        stand_in = object.__new__(CpuLinear)
        stand_in.__dict__.update({k: v for k, v in layer.__dict__.items() if k != "_packed"})
    stand_in.kernels = dict.fromkeys(REGIMES, name)  # it only runs at the regime's rows
    return stand_in


def machine_key() -> dict[str, object]:
    """What a measurement depends on besides the model: CPU model and flags, torch version and build, threads."""
    cpu, flags = cpu_identity()
    return {"cpu": cpu, "flags": sorted(flags & set(_CPU_FLAGS)), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def _cache_key(fmt: str, layers: list[nn.Module]) -> str:
    shapes = sorted({(layer.out_features, layer.in_features) for layer in layers})
    return json.dumps({**machine_key(), "format": fmt, "shapes": shapes}, sort_keys=True)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:  # unreadable or corrupt: measure again and rewrite it
        logger.warning("Ignoring the CPU kernel cache %s (%s); measuring again.", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, entries: dict) -> None:
    """Atomic replace, so concurrent loads never read half a file; a read-only home only costs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("Could not write the CPU kernel cache %s (%s); the probe will run again next time.", path, exc)


def load_per_core() -> Optional[float]:
    """The 1-minute load average per CPU (None where the OS has none): how busy the machine was during a probe."""
    try:
        return round(os.getloadavg()[0] / (os.cpu_count() or 1), 2)
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _measured_busy(entry: Mapping) -> bool:
    """A cached choice measured while other work held the cores (kernels that use every thread lose most then) is
    measured again once the machine is quiet; a quiet-time measurement is kept however busy the machine is now."""
    then, now = entry.get("load_per_core"), load_per_core()
    return then is not None and now is not None and then > BUSY_LOAD and now < QUIET_LOAD


def pick(timings: Mapping[str, float], regime_name: str) -> str:
    """The fastest candidate; `aten` unless another is faster by more than MARGIN. In the DECODE_REGIMES `native`
    wins unless another is faster by more than NATIVE_DECODE_ALLOWANCE: it also runs a decode step's whole decoder
    layers in one call (`NativeDecoder`), which saves more than the products it is timed on."""
    best = min(timings, key=timings.get)
    if (regime_name in DECODE_REGIMES and "native" in timings
            and timings["native"] <= (1 + NATIVE_DECODE_ALLOWANCE) * timings[best]):
        return "native"
    if "aten" in timings and timings[best] > (1 - MARGIN) * timings["aten"]:
        return "aten"
    return best


def probe(fmt: str, layers: list[nn.Module], measure: Measure = measure_candidates) -> dict[str, object]:
    """Measure the candidates of `fmt` in every regime on `layers`; returns {"kernels": {regime: name},
    "timings": {regime: {name: seconds}}}."""
    kernels, timings = {}, {}
    for regime_name in REGIMES:
        names = candidates(fmt, regime_name)
        if len(names) == 1:
            kernels[regime_name] = names[0]
            continue
        timings[regime_name] = measure(fmt, probe_sample(layers, regime_name), regime_name, names)
        kernels[regime_name] = pick(timings[regime_name], regime_name)
    # A choice other than ATen is measured again, after the other regimes, and decided on the best time of both
    # windows: a few rounds slowed by another process (it happened: ATen's 512-row products measured 28% slow
    # once) must not give this machine a slower kernel for good, since the choice is cached.
    for regime_name, name in kernels.items():
        if name != "aten" and "aten" in timings.get(regime_name, {}):
            again = measure(fmt, probe_sample(layers, regime_name), regime_name, ["aten", name])
            timings[regime_name] = {n: min(t, again.get(n, t)) for n, t in timings[regime_name].items()}
            kernels[regime_name] = pick(timings[regime_name], regime_name)
    return {"kernels": kernels, "timings": timings}


def resolve_choice(choice: Union[str, bool, None]) -> str:
    """`cpu_kernels=` / BIOGPT_CPU_KERNELS to one of CHOICES: None reads the setting, True = auto, False = aten."""
    if choice is None:
        return Settings.from_env().cpu_kernels
    if isinstance(choice, bool):
        return "auto" if choice else "aten"
    value = str(choice).strip().lower()
    if value not in CHOICES:
        raise ConfigError(f"cpu_kernels={choice!r}: use one of {', '.join(CHOICES)}.")
    return value


def plan_kernels(layers: list[nn.Module], choice: str, cache_file: Optional[Path] = None,
                 measure: Measure = measure_candidates) -> dict[str, dict[str, str]]:
    """{format: {regime: kernel}} for `layers` under `choice` (see `resolve_choice`), probing where needed."""
    by_format: dict[str, list[nn.Module]] = {}
    for layer in layers:
        by_format.setdefault(weight_format(layer), []).append(layer)
    plans = {}
    if choice not in ("auto", "probe"):
        for fmt in by_format:
            plans[fmt] = {r: (choice if choice != "aten" and choice in candidates(fmt, r) else "aten")
                          for r in REGIMES}
        return plans
    path = cache_file or Settings.from_env().kernel_cache
    entries = _read_cache(path)
    changed = False
    for fmt, group in by_format.items():
        if sum(layer.weight.numel() * layer.weight.element_size() for layer in group) < PROBE_MIN_BYTES:
            plans[fmt] = dict.fromkeys(REGIMES, "aten")
            continue
        key = _cache_key(fmt, group)
        entry = entries.get(key) if choice == "auto" else None
        if entry is None or set(entry.get("kernels", {})) != set(REGIMES) or _measured_busy(entry):
            start = time.perf_counter()
            entry = probe(fmt, group, measure)
            entry["probe_seconds"] = round(time.perf_counter() - start, 3)
            entry["measured"] = datetime.datetime.now().isoformat(timespec="seconds")
            entry["load_per_core"] = load_per_core()
            logger.info("CPU kernels for %s: %s (probe %.2f s)", fmt, entry["kernels"], entry["probe_seconds"])
            entries[key] = entry
            changed = True
        plans[fmt] = dict(entry["kernels"])
    if changed:
        _write_cache(path, entries)
    return plans


# ----------------------------------------------------------------------------------------------------------------
# Whole decoder layers in one native call
# ----------------------------------------------------------------------------------------------------------------
# The profiler event of a native decode step's layers (bench.profile_step groups the step's time by event).
NATIVE_DECODER_EVENT = "biogpt::native_decoder_layers"


class NativeDecoder:
    """A decode step's decoder layers, final LayerNorm and output projection in one call of `native.decode_layers`
    (the model's own tensors; see native.c): what `BioGptModel.run_layers` calls instead of its loop when set as the
    model's `native_decoder` (`apply_cpu_kernels` does it where the decode products are `native`).

    Called with (layers, hidden (rows, 1, H), mask (rows, 1, 1, keys) booleans or None, cache, final LayerNorm,
    output projection or None), it returns (the final LayerNorm's output, the projection's (rows, 1, vocab) or None
    where the projection's kernel is not `native`), or None for a step it does not compute, which then takes the
    module code: anything but one new token per row after a `KVCache` with room for it, several rows where the
    batch_decode regime is not `native`, autograd recording, torch.compile tracing, a layer whose decode kernel is
    not `native`, an activation other than GELU, forward hooks on a module it stands in for (or global ones: the
    module code runs them). What the layer array was built from (`_BuiltLayers`: the modules, their hooks,
    their kernels, their tensors' addresses) is read back at the first step of every sequence, so a model moved,
    converted or re-quantized after loading is never computed from stale pointers. The steps that follow, one token
    at a time on the same cache, skip that check (0.4-0.5 ms of a 20 ms step): the array holds every tensor's
    storage, so weights replaced in the middle of a sequence, whose cache the old ones computed, stay valid and
    finish it.
    """

    def __init__(self) -> None:
        self._built: dict[str, _BuiltLayers] = {}  # regime -> the native layer array (or None) and its sources

    def __getstate__(self) -> dict:
        return {"_built": {}}  # pointers into this process's tensors mean nothing in a copy

    def __call__(self, layers: nn.ModuleList, hidden: torch.Tensor, mask: Optional[torch.Tensor],
                 cache: Optional[object], final_norm: nn.LayerNorm, head: Optional[nn.Module] = None
                 ) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        rows = hidden.shape[0]
        if (cache is None or hidden.shape[1] != 1 or torch.is_grad_enabled() or hidden.device.type != "cpu"
                or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                or torch.compiler.is_compiling() or getattr(cache, "index", None) is not None
                or not hasattr(cache, "keys") or cache.batch_size != rows or cache.length >= cache.capacity):
            return None
        if mask is not None and (mask.dtype != torch.bool or mask.shape != (rows, 1, 1, cache.length + 1)):
            return None
        keys, values = cache.keys, cache.values
        if any(t.dtype != hidden.dtype or t.device.type != "cpu" or not t.is_contiguous() for t in keys + values):
            return None
        built = self._current(layers, final_norm, head, hidden.dtype, decode_regime(rows), cache)
        if built is None or built.array is None:
            return None
        attention = layers[0].self_attn
        may_attend = mask.reshape(rows, -1).contiguous() if mask is not None else None
        # named for torch.profiler (bench.profile_step) only while one records: the event costs ~0.2 ms per step
        event = torch.profiler.record_function(NATIVE_DECODER_EVENT) if torch.autograd._profiler_enabled() else None
        with event or contextlib.nullcontext():
            out, logits = native.decode_layers(built.array, keys, values, hidden.reshape(rows, -1).contiguous(),
                                               may_attend, attention.num_heads, cache.length, final_norm.eps,
                                               attention.scaling, final_norm.weight, final_norm.bias, built.head_spec)
        return out.view_as(hidden), logits.view(rows, 1, -1) if logits is not None else None

    def _current(self, layers: nn.ModuleList, final_norm: nn.LayerNorm, head: Optional[nn.Module],
                 dtype: torch.dtype, regime_name: Optional[str], cache: object) -> Optional["_BuiltLayers"]:
        """What this step runs on (rebuilt, and checked in full, when what it was built from changed), or None in a
        regime without native layers."""
        if regime_name is None:
            return None
        built = self._built.get(regime_name)
        if (built is None or built.layers is not layers or built.final_norm is not final_norm or built.head is not head
                or built.dtype != dtype or not (built.continues(cache) or built.current())):
            built = self._built[regime_name] = _BuiltLayers(layers, final_norm, head, dtype, regime_name)
        built.sequence = (weakref.ref(cache), cache.length + 1)
        return built


class _BuiltLayers:
    """A native layer array (None where the layers cannot run natively), the output projection's `Linear` (None where
    it cannot) and what they were built from, read back at a sequence's first step: the modules in the layers' own
    dicts, each linear's kernel for the regime, the address of every parameter and buffer (the final LayerNorm's and
    the projection's too). It reads the dicts the modules keep (not a flat copy), so a module or parameter replaced,
    a `.data` swapped, a conversion in place or a kernel changed is seen whatever did it; the values it compares are
    held, so no id is reused meanwhile. One pass over flat lists of those dicts costs ~0.4 ms on two cores after a
    step has evicted them from the caches (walking the modules' attributes cost ~0.8 ms)."""

    def __init__(self, layers: nn.ModuleList, final_norm: nn.LayerNorm, head: Optional[nn.Module], dtype: torch.dtype,
                 regime_name: str) -> None:
        self.layers, self.final_norm, self.head = layers, final_norm, head
        self.dtype, self.regime_name = dtype, regime_name
        self.sequence: Optional[tuple] = None  # (the cache of the last step, its length at the next step of it)
        self.module_dicts = [layers._modules]
        modules = [final_norm, *([head] if head is not None else [])]
        for layer in layers:
            attention = layer.self_attn
            self.module_dicts += [layer._modules, attention._modules]
            modules += [layer.self_attn_layer_norm, attention.q_proj, attention.k_proj, attention.v_proj,
                        attention.out_proj, layer.final_layer_norm, layer.fc1, layer.fc2]
        self.attribute_dicts = [module.__dict__ for module in modules]
        # the forward hooks of every module the call stands in for: a hooked one takes the module code, which runs them
        stood_in = [layers, *layers, *(layer.self_attn for layer in layers), *modules]
        self.hook_dicts = [d for module in stood_in for d in (module._forward_pre_hooks, module._forward_hooks)]
        # the dicts of the tensors the array reads (a buffer dict empty now holds none of them)
        self.tensor_dicts = [d for module in modules for d in (module._parameters, module._buffers) if d]
        self.state = self._state()
        # every tensor's memory, alive while the array points into it (whatever replaces the tensors meanwhile)
        self.storages = [t.untyped_storage() for d in self.tensor_dicts for t in d.values() if t is not None]
        self.array = None if any(self.hook_dicts) else _native_layers(layers, final_norm, dtype, regime_name)
        self.head_spec = _native_head(head, dtype, regime_name) if head is not None and self.array is not None \
            else None

    def _state(self) -> tuple[list, list, list, list]:
        return ([module for d in self.module_dicts for module in d.values()],
                [d.get("kernels", CpuLinear.kernels).get(self.regime_name) for d in self.attribute_dicts],
                [t.data_ptr() if t is not None else 0 for d in self.tensor_dicts for t in d.values()],
                [len(d) for d in self.hook_dicts])

    def current(self) -> bool:
        """Whether the layers are still what the array was built from."""
        return self._state() == self.state

    def continues(self, cache: object) -> bool:
        """Whether this step is the next one of the sequence the last step ran: the same cache, one token longer
        (a new prompt, a cache reset or compacted, or another cache, is not)."""
        return self.sequence is not None and self.sequence[0]() is cache and self.sequence[1] == cache.length


def _native_layers(layers: nn.ModuleList, final_norm: nn.LayerNorm, dtype: torch.dtype, regime_name: str
                   ) -> Optional[object]:
    """An array of native.c's `Layer`, one per decoder layer, or None unless every linear runs `native` in the regime
    with `dtype` as its compute dtype, every tensor (the final LayerNorm's too) is `dtype`, contiguous on the CPU,
    every LayerNorm has the final one's eps and the activation is GELU."""
    norms, linears = [], []  # per layer: (attention LayerNorm, final LayerNorm); (q, k, v, out, fc1, fc2)
    for layer in layers:
        if (layer.activation is not F.gelu or layer.self_attn_layer_norm.eps != final_norm.eps
                or layer.final_layer_norm.eps != final_norm.eps):
            return None
        attention = layer.self_attn
        norms.append((layer.self_attn_layer_norm, layer.final_layer_norm))
        linears.append((attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj, layer.fc1,
                        layer.fc2))
    tensors = [t for pair in norms + [(final_norm,)] for norm in pair for t in (norm.weight, norm.bias)]
    if any(t is None or t.dtype != dtype for t in tensors):
        return None
    for module in (module for group in linears for module in group):
        read = _native_tensors(module, dtype, regime_name)
        if read is None:
            return None
        tensors += read
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    return native.layer_array([
        native.layer_spec(first.weight, first.bias, [_native_spec(m) for m in group[:4]], second.weight, second.bias,
                          [_native_spec(m) for m in group[4:]]) for (first, second), group in zip(norms, linears)])


def _native_tensors(module: nn.Module, dtype: torch.dtype, regime_name: str) -> Optional[list[torch.Tensor]]:
    """The tensors native.c reads for a linear layer, or None unless it runs `native` in the regime with `dtype` as
    its compute dtype."""
    quantized = isinstance(module, _QuantizedLinear)
    if (getattr(module, "kernels", {}).get(regime_name) != "native"
            or (module.compute_dtype if quantized else module.weight.dtype) != dtype):
        return None
    return [t for t in (module.weight, module.bias, module.scale_tensor() if quantized else None) if t is not None]


def _native_head(head: nn.Module, dtype: torch.dtype, regime_name: str) -> Optional[object]:
    """native.c's `Linear` for the output projection, or None where it does not run `native` in the regime (its
    logits are then the module's)."""
    tensors = _native_tensors(head, dtype, regime_name)
    if tensors is None or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    return _native_spec(head)


def _native_spec(module: nn.Module) -> object:
    """native.c's `Linear` for a linear layer whose decode kernel is `native`."""
    if isinstance(module, Int8Linear):
        return native.int8_spec(module.weight, module.scales, module.bias)
    if isinstance(module, Int4Linear):
        return native.int4_spec(module.weight, module.scales_and_zeros, module.bias, module.in_features,
                                module.group_size, int4_layout()[0])
    return native.dense_spec(module.weight, module.bias)


def apply_cpu_kernels(model: nn.Module, choice: Union[str, bool, None] = None, cache_file: Optional[Path] = None,
                      measure: Measure = measure_candidates) -> dict[str, dict[str, str]]:
    """Give the model's CPU linears (decoder + output head) the kernels of `choice`; returns the plan used.

    Float `nn.Linear` layers become `CpuLinear` unless every regime of their format is `aten`.
    """
    choice = resolve_choice(choice)
    layers = cpu_linears(model)
    plans = plan_kernels([module for _, module in layers], choice, cache_file, measure)
    for _, module in layers:
        kernels = plans[weight_format(module)]
        if isinstance(module, _QuantizedLinear):
            module.kernels = dict(kernels)
        elif all(k == "aten" for k in kernels.values()):
            _to_plain(module)
        else:
            module.__class__ = CpuLinear
            module.kernels = dict(kernels)
    model.cpu_kernel_plan = plans
    base = getattr(model, "base_model", model)
    if hasattr(base, "native_decoder"):  # a BioGPT decoder: whole layers in one native call where they can be
        decode_native = any(plan.get(r) == "native" for plan in plans.values() for r in DECODE_REGIMES)
        base.native_decoder = NativeDecoder() if decode_native else None
    # Decode steps of bf16, int8 and int4 weights ran 6-18% faster from huge pages; float32 ones gained nothing
    # measurable, and copying 1.4 GB (out of a memory-mapped checkpoint) cost 1.7 s of loading and its peak memory.
    formats = {module: weight_format(module) for _, module in layers}
    streamed = [module for module, fmt in formats.items() if plans[fmt].get("decode") == "native" and fmt != "float32"]
    place_on_huge_pages(tensor for module in streamed for tensor in _streamed_tensors(module))
    return plans


def _streamed_tensors(module: nn.Module) -> list[torch.Tensor]:
    """What a decode product reads from memory for this layer: weight, scales, bias."""
    scales = [module.scale_tensor()] if isinstance(module, _QuantizedLinear) else []
    return [module.weight, *scales, *([module.bias] if module.bias is not None else [])]


def _to_plain(module: nn.Module) -> None:
    if type(module) is CpuLinear:
        module.__class__ = nn.Linear
    module.__dict__.pop("_packed", None)
    module.__dict__.pop("kernels", None)


def remove_cpu_kernels(model: nn.Module) -> None:
    """Undo `apply_cpu_kernels`: plain `nn.Linear` everywhere, the ATen kernels for quantized layers."""
    for _, module in cpu_linears(model):
        if isinstance(module, _QuantizedLinear):
            module.kernels = dict.fromkeys(REGIMES, "aten")
        else:
            _to_plain(module)
    model.__dict__.pop("cpu_kernel_plan", None)
    getattr(model, "base_model", model).__dict__.pop("native_decoder", None)
