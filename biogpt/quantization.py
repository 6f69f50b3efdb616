"""bitsandbytes 4-bit / 8-bit quantization, applied while a checkpoint streams in.

`loading.load_model` drives a `BnbQuantizer` through four calls:

1. `prepare(model)` on the meta-device model: the decoder's linear layers (q/k/v/out_proj, fc1, fc2) become
   `bnb.nn.Linear4bit` / `bnb.nn.Linear8bitLt`, still on meta, so nothing is allocated yet;
2. `handles(name)` / `load(model, name, tensor, device)` for each checkpoint tensor: the weight of a quantized layer
   is quantized the moment it arrives, so the full-precision copy of only one matrix is alive at a time (biases
   and everything else are assigned normally, in the compute dtype);
3. `finalize(model)` records the config on the model (`model.is_quantized` then becomes True).

Both 4-bit and 8-bit run on the CPU with bitsandbytes >= 0.48 (its CPU backend; 8-bit matmuls cast their inputs
to float16, which bitsandbytes warns about), as well as on CUDA. A quantized model cannot be saved.

What stays unquantized, as transformers does: embeddings, LayerNorms and the task heads (LM head tied to the
embeddings, token classifier, sequence score). transformers skips the tied/output embeddings and the module of the
last parameter; restricting quantization to the decoder layers gives the same set for every BioGPT class (and also
keeps the token-classification head in full precision, which transformers happens to quantize because its last
parameter is a bias).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .devices import DTYPES, dtype_name, resolve_device
from .errors import ConfigError, DeviceError

_QUANT_TYPES = ("nf4", "fp4")
_STORAGE_DTYPES = ("uint8", "int8", "float16", "bfloat16", "float32")
_COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
# Linear layers inside the decoder blocks; everything else keeps the compute dtype.
_QUANTIZABLE = re.compile(r"^(?:biogpt\.)?layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|fc1|fc2)$")
_INSTALL_HINT = "pip install 'bitsandbytes>=0.45' (or pip install 'biogpt[quantization]')"


def _as_dtype(value: Union[str, torch.dtype, None], field_name: str) -> Optional[torch.dtype]:
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).replace("torch.", "")
    if name not in _COMPUTE_DTYPES:
        raise ConfigError(f"{field_name} must be one of {', '.join(_COMPUTE_DTYPES)} or a torch dtype; got {value!r}.")
    return DTYPES[name]


@dataclass
class BitsAndBytesConfig:
    """Same fields and defaults as `transformers.BitsAndBytesConfig` (the ones that matter for inference).

    Example: `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
    bnb_4bit_use_double_quant=True)`. `bnb_4bit_compute_dtype=None` computes in the model's dtype.
    """

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: Optional[list[str]] = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: Union[str, torch.dtype, None] = None
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: Union[str, torch.dtype, None] = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("BitsAndBytesConfig: load_in_4bit and load_in_8bit are mutually exclusive; pick one.")
        if not (self.load_in_4bit or self.load_in_8bit):
            raise ConfigError("BitsAndBytesConfig: set load_in_4bit=True or load_in_8bit=True.")
        for name in ("load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant", "llm_int8_has_fp16_weight",
                     "llm_int8_enable_fp32_cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"BitsAndBytesConfig.{name} must be a bool; got {getattr(self, name)!r}.")
        if self.bnb_4bit_quant_type not in _QUANT_TYPES:
            raise ConfigError(f"BitsAndBytesConfig.bnb_4bit_quant_type must be 'nf4' or 'fp4'; "
                              f"got {self.bnb_4bit_quant_type!r}.")
        if not isinstance(self.llm_int8_threshold, (int, float)) or self.llm_int8_threshold < 0:
            raise ConfigError(f"BitsAndBytesConfig.llm_int8_threshold must be a number >= 0; "
                              f"got {self.llm_int8_threshold!r}.")
        skip = self.llm_int8_skip_modules
        if skip is not None and (isinstance(skip, str) or not all(isinstance(s, str) for s in skip)):
            raise ConfigError(f"BitsAndBytesConfig.llm_int8_skip_modules must be a list of module names; got {skip!r}.")
        self.bnb_4bit_compute_dtype = _as_dtype(self.bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype")
        storage = self.bnb_4bit_quant_storage or torch.uint8
        if isinstance(storage, str):
            if storage.replace("torch.", "") not in _STORAGE_DTYPES:
                raise ConfigError(f"BitsAndBytesConfig.bnb_4bit_quant_storage must be one of "
                                  f"{', '.join(_STORAGE_DTYPES)}; got {storage!r}.")
            storage = getattr(torch, storage.replace("torch.", ""))
        self.bnb_4bit_quant_storage = storage

    @property
    def bits(self) -> int:
        return 4 if self.load_in_4bit else 8

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BitsAndBytesConfig":
        """Accepts transformers' `to_dict()` output too: unknown keys (quant_method, ...) are kept in `extra`."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in transformers' layout (dtypes as names, plus quant_method)."""
        def name(dtype: Optional[torch.dtype]) -> Optional[str]:
            return None if dtype is None else dtype_name(dtype)

        return {
            "quant_method": "bitsandbytes",
            "load_in_4bit": self.load_in_4bit,
            "load_in_8bit": self.load_in_8bit,
            "llm_int8_threshold": self.llm_int8_threshold,
            "llm_int8_skip_modules": self.llm_int8_skip_modules,
            "llm_int8_enable_fp32_cpu_offload": self.llm_int8_enable_fp32_cpu_offload,
            "llm_int8_has_fp16_weight": self.llm_int8_has_fp16_weight,
            "bnb_4bit_compute_dtype": name(self.bnb_4bit_compute_dtype),
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
            "bnb_4bit_quant_storage": name(self.bnb_4bit_quant_storage),
        }


def _import_bnb():
    """bitsandbytes, or a `DeviceError` saying why it cannot be used."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as exc:  # also what `sys.modules["bitsandbytes"] = None` raises
        raise DeviceError(f"4-bit/8-bit quantization needs the bitsandbytes package, which is not installed or "
                          f"cannot be imported ({exc}). Install it with {_INSTALL_HINT}, or load without "
                          "quantization.") from None
    except (RuntimeError, OSError) as exc:  # a broken native library (e.g. a CUDA mismatch) fails like this
        raise DeviceError(f"bitsandbytes is installed but failed to load its native library ({exc}). "
                          "Reinstall it for this machine, or load without quantization.") from None


def quantization_unavailable_reason(device: Union[str, torch.device] = "cpu", bits: int = 4) -> Optional[str]:
    """Why `bits`-bit quantization cannot run on `device` (a sentence for a UI tooltip), or None when it can."""
    try:
        bnb = _import_bnb()
    except DeviceError as exc:
        return str(exc)
    device = resolve_device(device) if str(device) == "auto" else device
    kind = torch.device(device).type
    supported = getattr(bnb, "supported_torch_devices", {"cuda"})
    if kind not in supported:
        return (f"bitsandbytes {getattr(bnb, '__version__', '')} does not support the {kind} device "
                f"(it supports: {', '.join(sorted(supported))}).")
    if bits not in (4, 8):
        return f"bitsandbytes quantizes to 4 or 8 bits, not {bits}."
    return None


def _as_config(value: Any) -> BitsAndBytesConfig:
    if isinstance(value, BitsAndBytesConfig):
        return value
    if isinstance(value, dict):
        return BitsAndBytesConfig.from_dict(value)
    if hasattr(value, "to_dict"):  # e.g. a transformers.BitsAndBytesConfig: same field names
        return BitsAndBytesConfig.from_dict(value.to_dict())
    raise ConfigError(f"quantization_config must be a biogpt.BitsAndBytesConfig or a dict of its fields; "
                      f"got {type(value).__name__}.")


def make_quantizer(quantization_config: Any, compute_dtype: torch.dtype) -> "BnbQuantizer":
    """The quantizer `loading.load_model` drives; raises `DeviceError` when bitsandbytes cannot be used."""
    config = _as_config(quantization_config)
    return BnbQuantizer(config, _import_bnb(), compute_dtype)


class BnbQuantizer:
    def __init__(self, config: BitsAndBytesConfig, bnb: Any, model_dtype: torch.dtype):
        self.config = config
        self.bnb = bnb
        self.model_dtype = model_dtype
        self.quantized: set[str] = set()  # module names replaced by bnb layers

    def _skipped(self, module_name: str) -> bool:
        """llm_int8_skip_modules entries match a module name, a dotted prefix of it or its last components."""
        for pattern in self.config.llm_int8_skip_modules or ():
            if module_name == pattern or module_name.startswith(pattern + ".") or module_name.endswith("." + pattern):
                return True
        return False

    def prepare(self, model: nn.Module) -> None:
        """Swap the decoder's nn.Linear modules for empty (meta) bitsandbytes layers."""
        targets = [name for name, module in model.named_modules()
                   if type(module) is nn.Linear and _QUANTIZABLE.match(name) and not self._skipped(name)]
        for name in targets:
            old = model.get_submodule(name)
            with torch.device("meta"):
                new = self._new_layer(old.in_features, old.out_features, old.bias is not None)
            new.requires_grad_(False)
            model.set_submodule(name, new)
            self.quantized.add(name)

    def _new_layer(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        cfg = self.config
        if cfg.load_in_4bit:
            return self.bnb.nn.Linear4bit(in_features, out_features, bias,
                                          compute_dtype=cfg.bnb_4bit_compute_dtype or self.model_dtype,
                                          compress_statistics=cfg.bnb_4bit_use_double_quant,
                                          quant_type=cfg.bnb_4bit_quant_type, quant_storage=cfg.bnb_4bit_quant_storage)
        return self.bnb.nn.Linear8bitLt(in_features, out_features, bias, has_fp16_weights=cfg.llm_int8_has_fp16_weight,
                                        threshold=cfg.llm_int8_threshold)

    def handles(self, name: str) -> bool:
        """Only the weight matrices are quantized; biases are assigned in the compute dtype like any tensor."""
        owner, _, attr = name.rpartition(".")
        return attr == "weight" and owner in self.quantized

    def load(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> None:
        """Quantize one weight on its target device, freeing the full-precision copy right after."""
        module = model.get_submodule(name.rpartition(".")[0])
        bnb = self.bnb
        reason = quantization_unavailable_reason(device, self.config.bits)
        if reason:
            raise DeviceError(f"Cannot quantize {name} on {device}: {reason}")
        if self.config.load_in_4bit:
            old = module.weight
            param = bnb.nn.Params4bit(tensor, requires_grad=False, blocksize=old.blocksize,
                                      compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                                      quant_storage=old.quant_storage, module=module)
            module.weight = param.to(device)  # Params4bit quantizes on its first move to a real device
        else:
            param = bnb.nn.Int8Params(tensor.to("cpu"), requires_grad=False,
                                      has_fp16_weights=self.config.llm_int8_has_fp16_weight)
            module.weight = param.to(device)  # Int8Params quantizes when it leaves the CPU copy

    def finalize(self, model: nn.Module) -> None:
        model.quantization_config = self.config
        model.config.quantization_config = self.config.to_dict()
