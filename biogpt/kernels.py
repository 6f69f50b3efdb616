"""CPU kernel choices, applied to a loaded model as a module swap (the model code itself stays plain PyTorch).

For few rows (decoding), ATen's addmm goes to MKL, which runs a (1, k) x (k, n) product on one core; oneDNN's
inner-product primitive uses every thread, which is ~2x faster per token on some memory-bound CPUs (same fp32
arithmetic, accumulation order aside). bf16 additionally wants its weights reordered once into oneDNN's blocked
layout; that copy lives on the module as a plain attribute (no parameter or buffer, so state_dict(),
save_pretrained and deepcopy are untouched) and is rebuilt whenever the weight changes.

`apply_cpu_kernels(model)` swaps the class of the decoder's `nn.Linear` layers to `OneDnnLinear` (same
parameters, same state_dict); `remove_cpu_kernels(model)` swaps them back. Loading applies it to CPU models when
`BIOGPT_ONEDNN` is on (see `biogpt.settings`).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch build runs oneDNN's linear on the CPU (probed once on a tiny product)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.no_grad():
            probe = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 4), torch.ones(2, 4), None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):  # the op is absent from this torch build
        return False
    return bool(probe.eq(4).all())


class OneDnnLinear(nn.Linear):
    """An `nn.Linear` whose inference forward on the CPU goes through oneDNN (see the module docstring).

    Anything else (a gradient needed, another device or dtype, torch.compile tracing) takes `F.linear`.
    """

    _packed: Optional[tuple[tuple[int, int], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != x.dtype
                or not weight.is_contiguous() or (bias is not None and bias.dtype != x.dtype)
                or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad
                                                 or (bias is not None and bias.requires_grad)))
                or torch.compiler.is_compiling()):  # (under torch.compile, inductor chooses its own CPU kernels)
            return F.linear(x, weight, bias)
        if x.dtype == torch.bfloat16:
            weight = self._packed_weight()
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1])

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


def _decoder_linears(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.base_model.layers.modules() if isinstance(module, nn.Linear)]


def apply_cpu_kernels(model: nn.Module) -> int:
    """Route the decoder's plain `nn.Linear` layers through oneDNN where this torch has it; returns how many."""
    if not onednn_available():
        return 0
    swapped = 0
    for module in _decoder_linears(model):
        if type(module) is nn.Linear:
            module.__class__ = OneDnnLinear
            swapped += 1
    return swapped


def remove_cpu_kernels(model: nn.Module) -> None:
    """Undo `apply_cpu_kernels` (plain `nn.Linear` everywhere)."""
    for module in _decoder_linears(model):
        if type(module) is OneDnnLinear:
            module.__class__ = nn.Linear
            module.__dict__.pop("_packed", None)
