"""Quantization applied while a checkpoint streams in: bitsandbytes 4-bit / 8-bit (`BitsAndBytesConfig`, CUDA and
CPU), and weight-only int8 / int4 on the CPU with PyTorch's own kernels (`TorchAoConfig`, transformers' name).

`loading.load_model` drives a quantizer through four calls:

1. `prepare(model)` on the meta-device model: the decoder's linear layers (q/k/v/out_proj, fc1, fc2) become
   `bnb.nn.Linear4bit` / `bnb.nn.Linear8bitLt`, or `kernels.Int8Linear` / `kernels.Int4Linear`, still on meta,
   so nothing is allocated yet;
2. `handles(name)` / `load(model, name, tensor, device)` for each checkpoint tensor: the weight of a quantized layer
   is quantized the moment it arrives, so the full-precision copy of only one matrix is alive at a time (biases
   and everything else are assigned normally, in the compute dtype);
3. `finalize(model)` records the config on the model (`model.is_quantized` then becomes True); for
   `TorchAoConfig(..., include_input_output_embeddings=True)` it also quantizes the output head.

Both bitsandbytes modes run on the CPU with bitsandbytes >= 0.48 (its CPU backend; 8-bit matmuls cast their
inputs to float16, which bitsandbytes warns about), as well as on CUDA. `TorchAoConfig` needs no extra package:
`torch.ops.aten._weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` ship with PyTorch (torchao's int4 CPU
layout is built on the same int4 kernel; torchao is not a dependency); it runs on the CPU only (on a GPU use
`BitsAndBytesConfig`). A quantized model cannot be saved.

What stays unquantized, as transformers does: embeddings, LayerNorms and the task heads (LM head tied to the
embeddings, token classifier, sequence score). transformers skips the tied/output embeddings and the module of the
last parameter; restricting quantization to the decoder layers gives the same set for every BioGPT class (and also
keeps the token-classification head in full precision, which transformers happens to quantize because its last
parameter is a bias).
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from .devices import DTYPES, dtype_name, resolve_device
from .errors import ConfigError, DeviceError
from .kernels import INT4_GROUP_SIZES, Int4Linear, Int8Linear, int4_shape_error

_QUANT_TYPES = ("nf4", "fp4")
_STORAGE_DTYPES = ("uint8", "int8", "float16", "bfloat16", "float32")
_COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
# Linear layers inside the decoder blocks; everything else keeps the compute dtype.
_QUANTIZABLE = re.compile(r"^(?:biogpt\.)?layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|fc1|fc2)$")
_INSTALL_HINT = "pip install 'bitsandbytes>=0.45' (or pip install 'biogpt[quantization]')"
logger = logging.getLogger(__name__)


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


def _as_config(value: Any) -> Union[BitsAndBytesConfig, "TorchAoConfig"]:
    if isinstance(value, (BitsAndBytesConfig, TorchAoConfig)):
        return value
    if not isinstance(value, dict) and hasattr(value, "to_dict"):  # e.g. transformers' configs: same field names
        value = value.to_dict()
    if isinstance(value, dict):
        if value.get("quant_method") == "torchao":
            return TorchAoConfig.from_dict(value)
        return BitsAndBytesConfig.from_dict(value)
    raise ConfigError(f"quantization_config must be a biogpt.BitsAndBytesConfig, a biogpt.TorchAoConfig or a dict "
                      f"of their fields; got {type(value).__name__}.")


def make_quantizer(quantization_config: Any, compute_dtype: torch.dtype) -> Union["BnbQuantizer", "TorchAoQuantizer"]:
    """The quantizer `loading.load_model` drives; raises `DeviceError` when bitsandbytes cannot be used."""
    config = _as_config(quantization_config)
    if isinstance(config, TorchAoConfig):
        return TorchAoQuantizer(config, compute_dtype)
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


# ----------------------------------------------------------------------------------------------------------------
# Weight-only int8 / int4 on the CPU (transformers' TorchAoConfig names, PyTorch's own kernels)
# ----------------------------------------------------------------------------------------------------------------
TORCHAO_TYPES = ("int8_weight_only", "int4_weight_only")
# torchao's config classes (transformers >= 5 takes those objects instead of strings), read by name and fields
# so that torchao itself is never imported.
_TORCHAO_CLASSES = {"Int8WeightOnlyConfig": "int8_weight_only", "Int4WeightOnlyConfig": "int4_weight_only"}


@dataclass(init=False)
class TorchAoConfig:
    """Weight-only int8 or int4 on the CPU, with `transformers.TorchAoConfig`'s names.

    `TorchAoConfig("int8_weight_only")`: int8 weights, one scale per output channel (symmetric).
    `TorchAoConfig("int4_weight_only", group_size=128)`: 4-bit weights, a scale and a zero per group of
    `group_size` input channels (32, 64, 128 or 256; torchao's default 128).
    torchao's config objects are accepted too (`TorchAoConfig(Int4WeightOnlyConfig(group_size=32))`, the
    transformers >= 5 spelling), read by class name without importing torchao.

    `modules_to_not_convert`: module names (or their last components, e.g. "fc2") kept in full precision.
    `include_input_output_embeddings=True` also quantizes the output head (the LM head, tied to the token
    embeddings: it is read in full at every step, 12% of the weights of microsoft/biogpt); the input embedding
    stays in the compute dtype here (a lookup reads one row per token, so quantizing it saves memory, not time).
    `untie_embedding_weights` is accepted for compatibility (the head is always quantized as its own copy).
    Compute in bfloat16 (`torch_dtype=torch.bfloat16`): the kernels are several times faster there than in float32.
    """

    quant_type: str
    modules_to_not_convert: Optional[list[str]]
    include_input_output_embeddings: bool
    untie_embedding_weights: bool
    quant_type_kwargs: dict[str, Any]

    def __init__(self, quant_type: Any, modules_to_not_convert: Optional[list[str]] = None,
                 include_input_output_embeddings: bool = False, untie_embedding_weights: bool = False,
                 **kwargs: Any):
        if type(quant_type).__name__ in _TORCHAO_CLASSES:
            kwargs = {**({"group_size": quant_type.group_size} if hasattr(quant_type, "group_size") else {}),
                      **kwargs}
            quant_type = _TORCHAO_CLASSES[type(quant_type).__name__]
        if quant_type not in TORCHAO_TYPES:
            raise ConfigError(f"TorchAoConfig: quant_type must be one of {', '.join(TORCHAO_TYPES)} (or torchao's "
                              f"Int8WeightOnlyConfig / Int4WeightOnlyConfig); got {quant_type!r}.")
        self.quant_type = quant_type
        self.modules_to_not_convert = modules_to_not_convert
        self.include_input_output_embeddings = include_input_output_embeddings
        self.untie_embedding_weights = untie_embedding_weights
        self.quant_type_kwargs = dict(kwargs.pop("quant_type_kwargs", None) or {}, **kwargs)
        if quant_type == "int4_weight_only":
            self.quant_type_kwargs.setdefault("group_size", 128)
            if self.quant_type_kwargs["group_size"] not in INT4_GROUP_SIZES:
                raise ConfigError(f"TorchAoConfig: group_size must be one of {', '.join(map(str, INT4_GROUP_SIZES))};"
                                  f" got {self.quant_type_kwargs['group_size']!r}.")
        elif self.quant_type_kwargs.get("group_size") is not None:
            raise ConfigError("TorchAoConfig('int8_weight_only') quantizes per output channel: it takes no group_size.")
        self.quant_type_kwargs = {k: v for k, v in self.quant_type_kwargs.items() if v is not None}
        unknown = set(self.quant_type_kwargs) - {"group_size"}
        if unknown:
            raise ConfigError(f"TorchAoConfig: unsupported option(s) {', '.join(sorted(unknown))} for {quant_type}.")
        skip = modules_to_not_convert
        if skip is not None and (isinstance(skip, str) or not all(isinstance(s, str) for s in skip)):
            raise ConfigError(f"TorchAoConfig.modules_to_not_convert must be a list of module names; got {skip!r}.")
        for name in ("include_input_output_embeddings", "untie_embedding_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TorchAoConfig.{name} must be a bool; got {getattr(self, name)!r}.")

    @property
    def bits(self) -> int:
        return 4 if self.quant_type == "int4_weight_only" else 8

    @property
    def group_size(self) -> Optional[int]:
        return self.quant_type_kwargs.get("group_size")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TorchAoConfig":
        """transformers 4.x's layout (quant_type a name, options in quant_type_kwargs) or 5.x's
        (quant_type = {"default": {"_type": "Int4WeightOnlyConfig", "_data": {"group_size": ...}}})."""
        values = dict(values)
        values.pop("quant_method", None)
        quant_type = values.pop("quant_type", None)
        if isinstance(quant_type, dict):
            inner = quant_type.get("default", {})
            name = inner.get("_type") if isinstance(inner, dict) else None
            if name not in _TORCHAO_CLASSES:
                raise ConfigError(f"TorchAoConfig: unsupported torchao config {name!r} (supported: "
                                  f"{', '.join(_TORCHAO_CLASSES)}).")
            data = inner.get("_data") or {}
            quant_type = _TORCHAO_CLASSES[name]
            if quant_type == "int4_weight_only" and data.get("group_size") is not None:
                values.setdefault("quant_type_kwargs", {})["group_size"] = data["group_size"]
        known = {"modules_to_not_convert", "include_input_output_embeddings", "untie_embedding_weights",
                 "quant_type_kwargs"}
        return cls(quant_type, **{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in transformers 4.x's layout."""
        return {"quant_method": "torchao", "quant_type": self.quant_type,
                "quant_type_kwargs": dict(self.quant_type_kwargs),
                "modules_to_not_convert": self.modules_to_not_convert,
                "include_input_output_embeddings": self.include_input_output_embeddings,
                "untie_embedding_weights": self.untie_embedding_weights}


class TorchAoQuantizer:
    """Swaps the decoder's linears for `Int8Linear` / `Int4Linear` and quantizes each weight as it arrives."""

    def __init__(self, config: TorchAoConfig, model_dtype: torch.dtype):
        self.config = config
        self.model_dtype = model_dtype
        self.quantized: set[str] = set()

    def _skipped(self, module_name: str) -> bool:
        for pattern in self.config.modules_to_not_convert or ():
            if module_name == pattern or module_name.startswith(pattern + ".") or module_name.endswith("." + pattern):
                return True
        return False

    def _new_layer(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        if self.config.bits == 8:
            return Int8Linear(in_features, out_features, bias, self.model_dtype)
        return Int4Linear(in_features, out_features, bias, self.model_dtype, self.config.group_size)

    def prepare(self, model: nn.Module) -> None:
        """Swap the decoder's nn.Linear modules for empty (meta) int8/int4 layers."""
        targets = [name for name, module in model.named_modules()
                   if type(module) is nn.Linear and _QUANTIZABLE.match(name) and not self._skipped(name)]
        for name in targets:
            old = model.get_submodule(name)
            if self.config.bits == 4:
                reason = int4_shape_error(old.out_features, old.in_features, self.config.group_size)
                if reason:
                    raise ConfigError(f"TorchAoConfig('int4_weight_only', group_size={self.config.group_size}) "
                                      f"cannot quantize {name}: {reason}. Choose another group_size, or list the "
                                      "layer in modules_to_not_convert.")
            with torch.device("meta"):
                new = self._new_layer(old.in_features, old.out_features, old.bias is not None)
            model.set_submodule(name, new)
            self.quantized.add(name)

    def handles(self, name: str) -> bool:
        owner, _, attr = name.rpartition(".")
        return attr == "weight" and owner in self.quantized

    def load(self, model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device) -> None:
        """Quantize one weight on the CPU (the only device these kernels run on)."""
        if torch.device(device).type != "cpu":
            raise DeviceError(f"TorchAoConfig ({self.config.quant_type}) runs on the CPU only, but {name} is placed "
                              f"on {device}. Load on the CPU, or use BitsAndBytesConfig on a GPU.")
        model.get_submodule(name.rpartition(".")[0]).set_weight(tensor)

    def finalize(self, model: nn.Module) -> None:
        head = getattr(model, "output_projection", None)
        if self.config.include_input_output_embeddings and type(head) is nn.Linear and not self._skipped(
                "output_projection"):
            reason = (int4_shape_error(head.out_features, head.in_features, self.config.group_size)
                      if self.config.bits == 4 else None)
            if reason:
                logger.warning("The output head stays in %s: it cannot be quantized to int4 (%s).",
                               dtype_name(self.model_dtype), reason)
            else:
                if self.config.bits == 8:
                    new = Int8Linear.from_float(head.weight, head.bias, self.model_dtype)
                else:
                    new = Int4Linear.from_float(head.weight, head.bias, self.model_dtype, self.config.group_size)
                model.output_projection = new
                model.tied_weights = {}  # the head is its own (quantized) copy now: tie_weights must not undo it
        model.quantization_config = self.config
        model.config.quantization_config = self.config.to_dict()


# The app's CPU precision choices (`manager.ModelSpec.quantization`) and the configs they load with.
CPU_QUANTIZATION = ("int8", "int4")


def cpu_quantization_config(name: str) -> TorchAoConfig:
    """The `TorchAoConfig` behind ModelSpec's "int8" / "int4": the output head quantized too (a decode step reads it
    in full), int4 in groups of 64 (the size measured in bench/RESULTS.md to keep perplexity near bf16)."""
    if name == "int8":
        return TorchAoConfig("int8_weight_only", include_input_output_embeddings=True)
    if name == "int4":
        return TorchAoConfig("int4_weight_only", group_size=64, include_input_output_embeddings=True)
    raise ConfigError(f"CPU quantization must be one of {', '.join(CPU_QUANTIZATION)}; got {name!r}.")
