"""Checkpoint I/O: `PreTrainedMixin` gives every BioGPT class `from_pretrained` and `save_pretrained`.

Loading never materialises random weights first: the model is built on the meta device, then each tensor is read
from the (memory-mapped) checkpoint, cast, moved to its device and assigned in place. Quantization plugs into that
loop (see `quantization.py`) so a layer is quantized as soon as its weight arrives; CPU kernel choices
(`kernels.py`) are swapped in once the weights are in place. Nothing here knows the model classes: they are passed
in as `cls`, so `modeling.py` can inherit the mixin without an import cycle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from .configuration import BioGptConfig
from .devices import cpu_safe_dtype, dtype_name, parse_device, parse_dtype
from .errors import CheckpointError, DeviceError
from .fairseq import convert_into_cache, is_fairseq_checkpoint_dir
from .generation.config import GENERATION_CONFIG_NAME, GenerationConfig
from .hub import ProgressCallback, list_files, resolve_file
from .kernels import apply_cpu_kernels
from .quantization import make_quantizer
from .settings import parse_bytes

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PT_WEIGHTS = "pytorch_model.bin"
PT_INDEX = "pytorch_model.bin.index.json"
_HEAD_PREFIXES = ("output_projection.", "classifier.", "score.")


# ----------------------------------------------------------------------------------------------------------------
# Where each parameter goes
# ----------------------------------------------------------------------------------------------------------------
def _device_plan(model: nn.Module, device_map: Any, dtype: torch.dtype) -> dict[str, torch.device]:
    """Module-name prefix -> device. '' covers everything not named more precisely."""
    if device_map is None:
        return {"": torch.device("cpu")}
    if isinstance(device_map, dict):
        return {prefix: parse_device("cpu" if dev == "disk" else dev) for prefix, dev in device_map.items()}
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        if not torch.cuda.is_available():
            return {"": torch.device("cpu")}
        from accelerate import infer_auto_device_map

        plan = infer_auto_device_map(model, no_split_module_classes=["BioGptDecoderLayer"], dtype=dtype)
        if any(dev == "disk" for dev in plan.values()):
            warnings.warn("device_map='auto' wanted to offload some layers to disk; they stay on the CPU instead.")
        return {prefix: parse_device("cpu" if dev == "disk" else dev) for prefix, dev in plan.items()}
    return {"": parse_device(device_map)}


def _device_for(name: str, plan: dict[str, torch.device]) -> torch.device:
    best = None
    for prefix in plan:
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    if best is None:
        raise DeviceError(f"device_map does not place {name!r}; add an entry for it (or '' for the rest).")
    return plan[best]


# ----------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ----------------------------------------------------------------------------------------------------------------
class _CheckpointFiles:
    """The weight files of a checkpoint and a way to read its tensors one at a time."""

    def __init__(self, paths: list[Path], safetensors: bool):
        self.paths = paths
        self.safetensors = safetensors

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for path in self.paths:
            if self.safetensors:
                yield from _read_safetensors(path)
            else:
                yield from _read_pickle(path).items()


def _read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = list(handle.keys())
            for name in names:
                yield name, handle.get_tensor(name)
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: {exc}). "
                              "Delete it and download the checkpoint again.") from None
    except OSError as exc:
        raise CheckpointError(f"Could not read {path}: {exc}.") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap keeps big checkpoints out of RAM; only the zip format (torch >= 1.6) supports it.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        needs = f"it imports {found.group(1)}" if found else str(exc).splitlines()[0]
        raise CheckpointError(
            f"Refusing to load {path.name}: it is a pickle that needs more than tensors to load ({needs}). "
            "Unpickling it could run arbitrary code, so only weights-only pickles and safetensors are loaded. "
            "Convert the checkpoint to safetensors with a tool you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {exc}).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return state


def find_weights(source: Union[str, os.PathLike], safetensors: Optional[bool] = None, **hub: Any) -> _CheckpointFiles:
    """Locate the weights: single or sharded safetensors first, then weights-only pickles.

    `safetensors=True` accepts only safetensors, `False` only pickles (transformers' `use_safetensors`)."""
    text = os.path.expanduser(str(source))
    if Path(text).is_file():
        if text.endswith(".safetensors"):
            return _CheckpointFiles([Path(text)], safetensors=True)
        if text.endswith((".bin", ".pt", ".pth")):
            return _CheckpointFiles([Path(text)], safetensors=False)
        raise CheckpointError(f"{text} is neither a .safetensors nor a .bin weights file.")
    local = list_files(source, **{k: hub[k] for k in ("revision", "local_files_only", "cache_dir", "token") if k in hub})
    for name, index, safe in ((SAFE_WEIGHTS, SAFE_INDEX, True), (PT_WEIGHTS, PT_INDEX, False)):
        if safetensors is not None and safe != safetensors:
            continue
        if local is None or name in local:
            path = resolve_file(source, name, required=False, **hub)
            if path is not None:
                return _CheckpointFiles([path], safetensors=safe)
        if local is None or index in local:
            path = resolve_file(source, index, required=False, **hub)
            if path is not None:
                return _CheckpointFiles(_shards(source, path, hub), safetensors=safe)
    expected = {None: f"{SAFE_WEIGHTS}, {SAFE_INDEX}, {PT_WEIGHTS} or {PT_INDEX}",
                True: f"{SAFE_WEIGHTS} or {SAFE_INDEX} (use_safetensors=True)",
                False: f"{PT_WEIGHTS} or {PT_INDEX} (use_safetensors=False)"}[safetensors]
    raise CheckpointError(f"No weights found in {str(source)!r}: expected {expected}.")


def _shards(source, index_path: Path, hub: dict) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is not a valid shard index ({exc!r}).") from None
    names = sorted(set(weight_map.values()))
    for name in names:
        if "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"{index_path} names a shard outside the checkpoint: {name!r}.")
    return [resolve_file(source, name, **hub) for name in names]


# ----------------------------------------------------------------------------------------------------------------
# from_pretrained
# ----------------------------------------------------------------------------------------------------------------
def load_model(cls, source: Union[str, os.PathLike], *model_args: Any, config: Optional[BioGptConfig] = None,
               revision: Optional[str] = None, cache_dir: Optional[Union[str, os.PathLike]] = None,
               local_files_only: bool = False, token: Optional[str] = None,
               torch_dtype: Union[str, torch.dtype, None] = None, dtype: Union[str, torch.dtype, None] = None,
               device_map: Any = None, device: Union[str, int, torch.device, None] = None,
               attn_implementation: Optional[str] = None, quantization_config: Any = None,
               ignore_mismatched_sizes: bool = False, trust_remote_code: bool = False,
               progress: Optional[ProgressCallback] = None, low_cpu_mem_usage: bool = True,
               use_safetensors: Optional[bool] = None, cpu_kernels: Union[bool, str, None] = None,
               random_heads: bool = True, **config_overrides: Any):
    """Build `cls` from a checkpoint: Hub repo id, local directory, single weights file, or a directory of one of
    Microsoft's fine-tuned fairseq checkpoints (converted once into BIOGPT_FAIRSEQ_CACHE_DIR, see `fairseq.py`).

    torch_dtype: None → float32; 'auto' → the config's torch_dtype, else the checkpoint's; a dtype → that dtype.
    float16 on the CPU becomes float32 with a warning. device_map: None (CPU), 'auto' (accelerate places layers on
    the GPUs and spills to the CPU; on a machine without CUDA everything goes to the CPU), a device string/index,
    or a {module prefix: device} dict. `device=` is accepted as a shorthand for a single device.
    cpu_kernels: the CPU kernels of the linear layers (`kernels.py`): None = BIOGPT_CPU_KERNELS, True = "auto" (the
    cached per-machine probe), False = "aten" (plain PyTorch), or a name of `kernels.CHOICES`.
    random_heads: a task head the checkpoint lacks starts from random values with a warning, as in transformers (the
    start of fine-tuning); False refuses such a checkpoint with a `CheckpointError` (what an app serving outputs
    wants: a random head's entities or labels are noise).
    """
    if model_args:
        raise TypeError(f"{cls.__name__}.from_pretrained takes the checkpoint as its only positional argument.")
    if trust_remote_code:
        raise CheckpointError("trust_remote_code=True is not supported: the biogpt library never runs code from a "
                              "checkpoint. BioGPT needs none.")
    hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    if is_fairseq_checkpoint_dir(source):
        source = convert_into_cache(source)
    if config is None:
        config_source = Path(os.path.expanduser(str(source)))
        config_source = config_source.parent if config_source.is_file() else source
        config = BioGptConfig.from_pretrained(config_source, **hub, **config_overrides)
    elif config_overrides:
        config = BioGptConfig.from_dict({**config.to_dict(), **config_overrides})
    if attn_implementation is not None:
        config.attn_implementation = attn_implementation

    files = find_weights(source, safetensors=use_safetensors, **hub, progress=progress)

    if device is not None and device_map is not None:
        raise ValueError("Pass either device= or device_map=, not both.")
    requested = parse_dtype(torch_dtype if torch_dtype is not None else dtype)
    with torch.device("meta"):
        model = cls(config)
    target_dtype = _resolve_dtype(requested, config, files)
    plan = _device_plan(model, device if device is not None else device_map, target_dtype)
    target_dtype = cpu_safe_dtype(target_dtype, plan[""] if "" in plan else next(iter(plan.values())))

    quantizer = None
    if quantization_config is not None:
        quantizer = make_quantizer(quantization_config, target_dtype)
        quantizer.prepare(model)

    _fill(model, files, plan, target_dtype, quantizer, ignore_mismatched_sizes, random_heads, str(source))
    model.tie_weights()
    if quantizer is not None:
        quantizer.finalize(model)
    config.torch_dtype = dtype_name(target_dtype)
    model.name_or_path = str(source)
    model.hf_device_map = {prefix: str(device) for prefix, device in plan.items()}  # as transformers names it
    model.eval()
    model._check_backend()
    on_cpu = all(device.type == "cpu" for device in plan.values())
    if on_cpu:
        apply_cpu_kernels(model, cpu_kernels)
    if hasattr(model, "generate"):  # causal LMs honour the checkpoint's generation_config.json
        generation_file = resolve_file(source, GENERATION_CONFIG_NAME, **hub, required=False)
        model.generation_config = (GenerationConfig.from_pretrained(generation_file) if generation_file
                                   else GenerationConfig.from_model_config(config))
    return model


def _resolve_dtype(requested, config: BioGptConfig, files: _CheckpointFiles) -> torch.dtype:
    if requested is None:
        return torch.float32
    if requested != "auto":
        return requested
    if config.torch_dtype:
        return parse_dtype(config.torch_dtype)
    for _, tensor in files.tensors():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _expected_names(model: nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in model.named_parameters(remove_duplicate=False)}


def _map_key(name: str, model: nn.Module) -> str:
    """Checkpoint key -> this model's parameter name (base checkpoints lack 'biogpt.', heads have it)."""
    prefix = getattr(model, "base_model_prefix", "biogpt") + "."
    has_base = hasattr(model, "biogpt")
    if has_base and not name.startswith(prefix) and not name.startswith(_HEAD_PREFIXES):
        return prefix + name
    if not has_base and name.startswith(prefix):
        return name[len(prefix):]
    return name


# What a missing head means, per class: (the head, what its outputs would be, what to use instead).
_MISSING_HEADS = {
    "BioGptForTokenClassification": (
        "token-classification (NER)", "entities",
        "a checkpoint fine-tuned for NER, one you fine-tune (`python -m biogpt finetune ner --model {source} ...`), "
        "or, for chemical-disease or drug relations, one of the paper's relation-extraction models (the app's "
        "Relations mode)"),
    "BioGptForSequenceClassification": (
        "sequence-classification", "labels",
        "a checkpoint fine-tuned for classification, one you fine-tune (`python -m biogpt finetune classify --model "
        "{source} ...`), one of the paper's HoC / PubMedQA models, or zero-shot classification with the language "
        "model"),
}


def _refuse_random_head(model: nn.Module, missing: list[str], source: str) -> CheckpointError:
    head, outputs, instead = _MISSING_HEADS.get(type(model).__name__, ("output", "outputs", "a complete checkpoint"))
    return CheckpointError(f"{source} has no trained {head} head ({', '.join(missing)} would start from random "
                           f"values, so its {outputs} would be noise). Use {instead.format(source=source)}.")


def _fill(model: nn.Module, files: _CheckpointFiles, plan: dict, dtype: torch.dtype, quantizer,
          ignore_mismatched_sizes: bool, random_heads: bool, source: str) -> None:
    expected = _expected_names(model)
    tied = set(getattr(model, "tied_weights", {}))
    loaded: set[str] = set()
    unexpected: list[str] = []
    for key, tensor in files.tensors():
        name = _map_key(key, model)
        if name not in expected or name in tied:
            if name not in tied:
                unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected[name]):
            if ignore_mismatched_sizes and name.startswith(_HEAD_PREFIXES):
                warnings.warn(f"{key}: checkpoint shape {tuple(tensor.shape)} differs from the model's "
                              f"{tuple(expected[name])}; it is newly initialised (ignore_mismatched_sizes=True).")
                continue
            raise CheckpointError(f"Shape mismatch for {key}: the checkpoint has {tuple(tensor.shape)} but the "
                                  f"config makes {tuple(expected[name])}. Is config.json from the same model?")
        _place(model, name, tensor.to(dtype) if tensor.is_floating_point() else tensor, plan, quantizer)
        loaded.add(name)
    missing = [n for n in expected if n not in loaded and n not in tied]
    missing_base = [n for n in missing if not n.startswith(_HEAD_PREFIXES)]
    if missing_base:
        raise CheckpointError(f"The checkpoint lacks {len(missing_base)} decoder weight(s), e.g. "
                              f"{', '.join(missing_base[:3])}: it is incomplete or not a BioGPT checkpoint.")
    if missing and not random_heads:
        raise _refuse_random_head(model, missing, source)
    if missing:
        warnings.warn(f"{', '.join(missing)} newly initialised (not in the checkpoint): fine-tune this "
                      f"{type(model).__name__} before relying on its outputs.")
        _init_missing(model, {name: expected[name] for name in missing}, plan, dtype, quantizer)
    if unexpected:
        logger.info("Ignored checkpoint tensors not used by %s: %s", type(model).__name__, ", ".join(unexpected))


def _place(model: nn.Module, name: str, tensor: torch.Tensor, plan: dict, quantizer) -> None:
    """Put one tensor where the device plan says, quantized on the way when the quantizer takes it."""
    device = _device_for(name, plan)
    if quantizer is not None and quantizer.handles(name):
        quantizer.load(model, name, tensor, device)
    else:
        _assign(model, name, tensor.to(device))


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, nn.Parameter(tensor.contiguous(), requires_grad=tensor.is_floating_point()))


def _init_missing(model: nn.Module, shapes: dict[str, torch.Size], plan: dict, dtype: torch.dtype,
                  quantizer) -> None:
    std = model.config.initializer_range
    for name, shape in shapes.items():
        owner = model.get_submodule(name.rpartition(".")[0])
        tensor = torch.zeros(shape, dtype=dtype)
        if name.endswith("weight") and not isinstance(owner, nn.LayerNorm):
            tensor.normal_(0.0, std)
        elif isinstance(owner, nn.LayerNorm):
            tensor.fill_(1.0 if name.endswith("weight") else 0.0)
        _place(model, name, tensor, plan, quantizer)


# ----------------------------------------------------------------------------------------------------------------
# save_pretrained
# ----------------------------------------------------------------------------------------------------------------
def save_model(model: nn.Module, save_directory: Union[str, os.PathLike], *, safe_serialization: bool = True,
               max_shard_size: Union[int, str, None] = None, **unused: Any) -> None:
    """Write config.json and the weights (tied head omitted) as transformers' save_pretrained does."""
    if getattr(model, "is_quantized", False):
        raise CheckpointError("Saving a 4-bit/8-bit quantized model is not supported: save the original weights "
                              "instead (load without quantization_config, then call save_pretrained).")
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.architectures = [type(model).__name__]
    config.torch_dtype = dtype_name(model.dtype)
    config.save_pretrained(out)
    tied = set(getattr(model, "tied_weights", {}))
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()
             if name not in tied}
    limit = max_shard_size if max_shard_size is None or isinstance(max_shard_size, int) else \
        parse_bytes(max_shard_size, "max_shard_size")
    shards = _split_shards(state, limit)
    single = SAFE_WEIGHTS if safe_serialization else PT_WEIGHTS
    if len(shards) == 1:
        _write_weights(shards[0], out / single, safe_serialization)
        return
    stem, ext = single.rsplit(".", 1)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
        _write_weights(shard, out / name, safe_serialization)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / (SAFE_INDEX if safe_serialization else PT_INDEX)).write_text(json.dumps(index, indent=2) + "\n")


def _write_weights(state: dict[str, torch.Tensor], path: Path, safe: bool) -> None:
    if safe:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, str(path))


def _split_shards(state: dict[str, torch.Tensor], limit: Optional[int]) -> list[dict[str, torch.Tensor]]:
    if limit is None:
        return [state]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


class PreTrainedMixin:
    """`from_pretrained` and `save_pretrained` with transformers' arguments, for a BioGPT `nn.Module` class."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *model_args: Any,
                        **kwargs: Any) -> Any:
        """Load a checkpoint: a Hub repo id, a local directory or a single weights file (see `load_model`)."""
        return load_model(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs: Any) -> None:
        """Write config.json + model.safetensors as transformers does (tied head omitted)."""
        save_model(self, save_directory, **kwargs)
