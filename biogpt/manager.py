"""Loading, sharing and unloading models for a multi-user app (no UI code here).

`ModelManager.get(spec)` returns the loaded model for a `ModelSpec`, loading it once however many threads ask at
the same time. It keeps at most `max_models` models and/or a CPU and a GPU memory budget, unloading the least
recently used first, except models held by `use(spec)` (a running generation). A failed load raises and leaves
the registry as it was, so the models already loaded keep serving and a later `get` tries again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch

from . import catalog
from .errors import BioGptError, CheckpointError, ConfigError, DeviceError
from .hub import ProgressCallback, is_local

logger = logging.getLogger(__name__)

TASKS = ("causal-lm", "token-classification", "sequence-classification")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("eager", "sdpa", "flash_attention_2")
QUANTIZATION = (None, "4bit", "8bit")


class ModelInUseError(BioGptError, RuntimeError):
    """`unload` was asked to drop a model that a running generation holds (see `ModelManager.use`)."""


# ----------------------------------------------------------------------------------------------------------------
# What to load
# ----------------------------------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """'auto' → 'cuda:0' if CUDA is available, else 'mps' if available, else 'cpu'; others are validated."""
    from .loading import parse_device

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    parsed = parse_device(device)  # DeviceError when it does not exist here
    return str(parsed)


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' → bfloat16 on a GPU that supports it, else float16 on a GPU/MPS, float32 on the CPU.

    float16 on the CPU becomes float32 with a warning, the rule `loading.cpu_safe_dtype` applies.
    """
    kind = device.split(":")[0]
    if dtype == "auto":
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float16" if kind == "mps" else "float32"
    if dtype == "float16" and kind == "cpu":
        warnings.warn("float16 is slow or unsupported on the CPU: using float32 instead "
                      "(choose bfloat16 to halve the memory on the CPU).", stacklevel=4)
        return "float32"
    return dtype


@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes two loaded models different; hashable, so it keys the manager's registry.

    Normalised on creation so that equal requests compare equal: `device="auto"` becomes the concrete device
    (CUDA, else MPS, else CPU; "cuda" becomes "cuda:0"), `dtype="auto"` becomes bfloat16 (float16 where bf16 is
    unsupported) on a GPU, float16 on MPS and float32 on the CPU; float16 on the CPU becomes float32 with a
    warning. `source` is a catalog name (`demo`, `microsoft/biogpt`, ...), any Hub repo id or a local path.
    """

    source: str
    task: str = "causal-lm"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    quantization: Optional[str] = None
    device: str = "auto"

    def __post_init__(self) -> None:
        source = str(self.source).strip() if self.source is not None else ""
        if not source:
            raise ConfigError("ModelSpec.source is empty: give a catalog name, a Hub repo id or a local path.")
        quantization = None if self.quantization in (None, "", "none", "None") else self.quantization
        for name, value, allowed in (("task", self.task, TASKS), ("dtype", self.dtype, DTYPES),
                                     ("attn_implementation", self.attn_implementation, ATTENTION),
                                     ("quantization", quantization, QUANTIZATION)):
            if value not in allowed:
                raise ConfigError(f"ModelSpec.{name} must be one of {', '.join(map(str, allowed))}; got {value!r}.")
        device = resolve_device(str(self.device))
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "quantization", quantization)
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, device))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    tokenizer: Any
    bytes: int
    load_seconds: float
    last_used: float  # time.time() of the latest get/use
    source_path: str  # what was actually loaded (the demo directory for `demo`, the resolved local path)
    in_use: int = 0
    # Objects that live as long as the model is loaded (e.g. the app's batching engine), see `attach`.
    attachments: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def device(self) -> str:
        return self.spec.device

    def attach(self, name: str, factory: Callable[[], Any]) -> Any:
        """The object attached under `name`, made by `factory()` on first use (once, whatever the number of threads).

        When the manager unloads or evicts the model it calls the `close()` of every attachment (outside its lock).
        """
        with _ATTACH_LOCK:
            if name not in self.attachments:
                self.attachments[name] = factory()
            return self.attachments[name]


_ATTACH_LOCK = threading.Lock()


Loader = Callable[[ModelSpec, str, Optional[ProgressCallback]], tuple[Any, Any]]
"""(spec, resolved source, progress) -> (model, tokenizer)."""


# ----------------------------------------------------------------------------------------------------------------
# Settings from the environment
# ----------------------------------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: Union[str, int, None], name: str = "size") -> Optional[int]:
    """'8GB' → 8e9, '512MiB' → 512·2^20, '1000' → 1000; empty/None → None (no limit)."""
    if text is None or isinstance(text, int):
        return text
    value = text.strip().upper().replace(" ", "")
    if not value:
        return None
    number = value.rstrip("KMGTIB")
    unit = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount < 0:
        raise ConfigError(f"{name}={text!r} is not a size: write e.g. 8GB, 512MiB or a number of bytes.")
    return int(amount * _UNITS[unit])


def _parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={text!r}: use 1/0, true/false, yes/no or on/off.")


@dataclass(frozen=True)
class ManagerSettings:
    """The deployment's choices, usually from `from_env()` (see its docstring for the variables)."""

    default_model: Optional[str] = None
    cache_dir: Optional[str] = None
    max_models: int = 2
    memory_budget_bytes: Optional[int] = None
    gpu_memory_budget_bytes: Optional[int] = None
    preload: bool = True
    allow_local_paths: bool = True
    local_roots: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "ManagerSettings":
        """BIOGPT_MODEL (default model; `demo` forces the bundled demos), BIOGPT_CACHE_DIR, BIOGPT_MAX_MODELS (2),
        BIOGPT_MEMORY_BUDGET / BIOGPT_GPU_MEMORY_BUDGET ('8GB'; none by default), BIOGPT_PRELOAD (1),
        BIOGPT_ALLOW_LOCAL_PATHS (1, but 0 on Hugging Face Spaces, i.e. when SPACE_ID is set) and
        BIOGPT_LOCAL_ROOTS (os.pathsep-separated directories local paths must lie in; none = anywhere)."""
        env = os.environ if env is None else env
        max_text = env.get("BIOGPT_MAX_MODELS", "2").strip()
        if not max_text.isdigit() or int(max_text) < 1:
            raise ConfigError(f"BIOGPT_MAX_MODELS={max_text!r} must be a whole number >= 1.")
        allow = env.get("BIOGPT_ALLOW_LOCAL_PATHS")
        roots = [r for r in env.get("BIOGPT_LOCAL_ROOTS", "").split(os.pathsep) if r.strip()]
        return cls(
            default_model=env.get("BIOGPT_MODEL") or None,
            cache_dir=env.get("BIOGPT_CACHE_DIR") or None,
            max_models=int(max_text),
            memory_budget_bytes=parse_bytes(env.get("BIOGPT_MEMORY_BUDGET"), "BIOGPT_MEMORY_BUDGET"),
            gpu_memory_budget_bytes=parse_bytes(env.get("BIOGPT_GPU_MEMORY_BUDGET"), "BIOGPT_GPU_MEMORY_BUDGET"),
            preload=_parse_bool(env.get("BIOGPT_PRELOAD", "1"), "BIOGPT_PRELOAD"),
            # On a public Space, visitors must not read the server's files.
            allow_local_paths=(_parse_bool(allow, "BIOGPT_ALLOW_LOCAL_PATHS") if allow is not None
                               else not env.get("SPACE_ID")),
            local_roots=tuple(Path(os.path.expanduser(r.strip())).resolve() for r in roots),
        )

    def default_source(self) -> tuple[str, str]:
        """(source, reason shown to the user): see `catalog.default_source`."""
        return catalog.default_source(self.default_model, self.cache_dir)


# ----------------------------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------------------------
class ModelManager:
    def __init__(self, max_models: Optional[int] = 2, memory_budget_bytes: Optional[int] = None,
                 gpu_memory_budget_bytes: Optional[int] = None, cache_dir: Union[str, os.PathLike, None] = None,
                 loader: Optional[Loader] = None, allow_local_paths: bool = True,
                 local_roots: tuple[Union[str, os.PathLike], ...] = ()):
        if max_models is not None and max_models < 1:
            raise ConfigError(f"max_models must be >= 1 or None; got {max_models}.")
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self.gpu_memory_budget_bytes = gpu_memory_budget_bytes
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.allow_local_paths = allow_local_paths
        self.local_roots = tuple(Path(os.path.expanduser(str(r))).resolve() for r in local_roots)
        self._loader = loader or self._default_loader
        self._lock = threading.RLock()
        self._models: "OrderedDict[ModelSpec, LoadedModel]" = OrderedDict()  # least recently used first
        self._loading: dict[ModelSpec, Future] = {}
        self._unloaded: list[LoadedModel] = []  # dropped under the lock, their attachments closed after it
        # Called with each LoadedModel the manager unloads or evicts (after its attachments are closed).
        self.on_unload: list[Callable[[LoadedModel], None]] = []

    @classmethod
    def from_settings(cls, settings: ManagerSettings, loader: Optional[Loader] = None) -> "ModelManager":
        return cls(max_models=settings.max_models, memory_budget_bytes=settings.memory_budget_bytes,
                   gpu_memory_budget_bytes=settings.gpu_memory_budget_bytes, cache_dir=settings.cache_dir,
                   loader=loader, allow_local_paths=settings.allow_local_paths, local_roots=settings.local_roots)

    # -- public API ------------------------------------------------------------------------------------------
    def get(self, spec: ModelSpec, progress: Optional[ProgressCallback] = None) -> LoadedModel:
        """The loaded model for `spec`, loading it (once, whatever the number of concurrent callers) if needed.

        `progress(fraction, bytes)` is called while Hub files download. Errors (`CheckpointError`, `DeviceError`,
        `ConfigError`) leave the already loaded models untouched.
        """
        return self._get(spec, progress, acquire=False)

    @contextlib.contextmanager
    def use(self, spec: ModelSpec, progress: Optional[ProgressCallback] = None) -> Iterator[LoadedModel]:
        """`get`, and hold the model for the duration of the block: eviction and `unload` leave it alone."""
        loaded = self._get(spec, progress, acquire=True)
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.in_use -= 1
                loaded.last_used = time.time()
                # Models kept over the limits because they were in use can go now.
                dropped = self._enforce_limits(keep=None)
            self._close_unloaded()
            if dropped:
                self._release_memory(None)

    def unload(self, spec: ModelSpec) -> bool:
        """Drop `spec`'s model; False if it was not loaded. Raises `ModelInUseError` while a generation holds it."""
        with self._lock:
            loaded = self._models.get(spec)
            if loaded is None:
                return False
            if loaded.in_use:
                raise ModelInUseError(f"{spec.source} is in use by {loaded.in_use} running generation(s); "
                                      "unload it when they finish.")
            self._drop(spec)
        self._close_unloaded()
        self._release_memory(spec.device)
        return True

    def clear(self) -> list[ModelSpec]:
        """Unload every model not in use; returns the specs still loaded (in use)."""
        with self._lock:
            for spec in [s for s, m in self._models.items() if not m.in_use]:
                self._drop(spec)
            left = list(self._models)
        self._close_unloaded()
        self._release_memory(None)
        return left

    def loaded(self, spec: ModelSpec) -> bool:
        with self._lock:
            return spec in self._models

    def status(self) -> list[dict[str, Any]]:
        """One dict per loaded model, most recently used first."""
        with self._lock:
            return [{"source": m.spec.source, "task": m.spec.task, "dtype": m.spec.dtype,
                     "attn_implementation": m.spec.attn_implementation, "quantization": m.spec.quantization,
                     "device": m.spec.device, "bytes": m.bytes, "load_seconds": round(m.load_seconds, 3),
                     "last_used": m.last_used, "in_use": m.in_use, "source_path": m.source_path}
                    for m in reversed(self._models.values())]

    def resolve_source(self, spec: ModelSpec) -> str:
        """What to load for `spec.source`: the demo directory for `demo`, a checked local path, or the Hub id.

        Local paths must be allowed (`allow_local_paths`) and, when `local_roots` is set, lie inside one of them
        after resolving `..` and symlinks.
        """
        if spec.source == catalog.DEMO:
            return str(catalog.demo_path(spec.task))
        if not is_local(spec.source):
            return spec.source
        if not self.allow_local_paths:
            raise CheckpointError(f"Local paths are disabled on this server ({spec.source!r}); choose a catalog "
                                  "model or a Hugging Face Hub repo id (BIOGPT_ALLOW_LOCAL_PATHS=1 enables them).")
        path = Path(os.path.expanduser(spec.source)).resolve()  # follows symlinks and folds '..'
        if self.local_roots and not any(path.is_relative_to(root) for root in self.local_roots):
            roots = ", ".join(str(r) for r in self.local_roots)
            raise CheckpointError(f"{spec.source!r} is outside the directories models may be loaded from ({roots}); "
                                  "set BIOGPT_LOCAL_ROOTS to allow another directory.")
        return str(path)

    # -- internals -------------------------------------------------------------------------------------------
    def _get(self, spec: ModelSpec, progress: Optional[ProgressCallback], acquire: bool) -> LoadedModel:
        if not isinstance(spec, ModelSpec):
            raise ConfigError(f"ModelManager.get takes a ModelSpec, not {type(spec).__name__}.")
        while True:
            with self._lock:
                loaded = self._models.get(spec)
                if loaded is not None:
                    self._models.move_to_end(spec)
                    loaded.last_used = time.time()
                    loaded.in_use += int(acquire)
                    return loaded
                future = self._loading.get(spec)
                owner = future is None
                if owner:
                    future = self._loading[spec] = Future()
            if not owner:
                future.result()  # re-raises the loader's error; on success loop to register our use under the lock
                continue
            return self._load_and_register(spec, progress, acquire, future)

    def _load_and_register(self, spec: ModelSpec, progress: Optional[ProgressCallback], acquire: bool,
                           future: Future) -> LoadedModel:
        try:
            # Nothing is evicted before the load succeeds, so a failed load leaves every model serving (the price:
            # switching models briefly holds the old and the new one).
            loaded = self._load(spec, progress)
        except BaseException as exc:
            with self._lock:
                del self._loading[spec]
            future.set_exception(exc)
            raise
        with self._lock:
            loaded.in_use = int(acquire)
            self._models[spec] = loaded
            del self._loading[spec]
            dropped = self._enforce_limits(keep=spec)
        future.set_result(loaded)
        self._close_unloaded()
        if dropped:
            self._release_memory(None)
        return loaded

    def _load(self, spec: ModelSpec, progress: Optional[ProgressCallback]) -> LoadedModel:
        source = self.resolve_source(spec)
        started = time.perf_counter()
        try:
            model, tokenizer = self._loader(spec, source, progress)
        except torch.cuda.OutOfMemoryError:
            self._release_memory(spec.device)
            raise DeviceError(f"Out of GPU memory while loading {spec.source} on {spec.device}: unload other models, "
                              "choose 4-bit quantization or a smaller dtype, or load it on the CPU.") from None
        except MemoryError:
            self._release_memory(spec.device)
            raise DeviceError(f"Out of memory while loading {spec.source}: unload other models, choose bfloat16 or "
                              "4-bit quantization, or a smaller model.") from None
        seconds = time.perf_counter() - started
        return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, bytes=_footprint(model),
                           load_seconds=seconds, last_used=time.time(), source_path=source)

    def _enforce_limits(self, keep: Optional[ModelSpec]) -> int:
        """Unload least-recently-used idle models until the count and both budgets hold; returns how many (lock held).

        Models in use and `keep` (the one just loaded) are never unloaded, so a limit can be exceeded while they
        run; it is enforced again when they are released.
        """
        checks = (
            (lambda: self.max_models is not None and len(self._models) > self.max_models, lambda s: True),
            (lambda: self._over_budget(gpu=True), _on_gpu),
            (lambda: self._over_budget(gpu=False), lambda s: not _on_gpu(s)),
        )
        dropped = 0
        for violated, eligible in checks:
            while violated():
                victims = [s for s, m in self._models.items() if not m.in_use and s != keep and eligible(s)]
                if not victims:
                    logger.warning("Model limits exceeded but the other models are in use; unloading them later.")
                    break
                logger.info("Unloading %s (least recently used) to stay within the limits.", victims[0].source)
                self._drop(victims[0])
                dropped += 1
        return dropped

    def _over_budget(self, gpu: bool) -> bool:
        budget = self.gpu_memory_budget_bytes if gpu else self.memory_budget_bytes
        if budget is None:
            return False
        return sum(m.bytes for s, m in self._models.items() if _on_gpu(s) == gpu) > budget

    def _drop(self, spec: ModelSpec) -> None:
        # Only the registry's reference goes: a caller still holding the LoadedModel keeps a working model, and
        # the memory is freed (by _release_memory, outside the lock) once nobody refers to it. Its attachments are
        # closed by _close_unloaded, also outside the lock.
        self._unloaded.append(self._models.pop(spec))

    def _close_unloaded(self) -> None:
        """Close the attachments of the models just dropped and tell the `on_unload` hooks (lock not held)."""
        with self._lock:
            dropped, self._unloaded = self._unloaded, []
        for loaded in dropped:
            with _ATTACH_LOCK:
                attachments = list(loaded.attachments.values())
                loaded.attachments.clear()
            for obj in attachments:
                try:
                    close = getattr(obj, "close", None)
                    if callable(close):
                        close()
                except Exception:
                    logger.exception("Closing an attachment of %s failed.", loaded.spec.source)
            for hook in list(self.on_unload):
                try:
                    hook(loaded)
                except Exception:
                    logger.exception("An on_unload hook failed for %s.", loaded.spec.source)

    @staticmethod
    def _release_memory(device: Optional[str]) -> None:
        gc.collect()
        if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
            torch.cuda.empty_cache()

    def _default_loader(self, spec: ModelSpec, source: str,
                        progress: Optional[ProgressCallback]) -> tuple[Any, Any]:
        from . import modeling
        from .quantization import BitsAndBytesConfig, quantization_unavailable_reason
        from .tokenization import BioGptTokenizer

        classes = {"causal-lm": modeling.BioGptForCausalLM,
                   "token-classification": modeling.BioGptForTokenClassification,
                   "sequence-classification": modeling.BioGptForSequenceClassification}
        quantization_config = None
        if spec.quantization is not None:
            bits = 4 if spec.quantization == "4bit" else 8
            reason = quantization_unavailable_reason(spec.device, bits)
            if reason:
                raise DeviceError(f"{spec.quantization} quantization is unavailable: {reason}")
            quantization_config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=spec.torch_dtype,
                                                      bnb_4bit_use_double_quant=True)
                                   if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
        # The model first: its download is the one worth a progress bar, and its errors are the informative ones.
        model = classes[spec.task].from_pretrained(
            source, torch_dtype=spec.torch_dtype, device=spec.device, attn_implementation=spec.attn_implementation,
            quantization_config=quantization_config, cache_dir=self.cache_dir, progress=progress)
        tokenizer = BioGptTokenizer.from_pretrained(source, cache_dir=self.cache_dir)
        return model, tokenizer


def _on_gpu(spec: ModelSpec) -> bool:
    return spec.device.startswith("cuda") or spec.device == "mps"


def _footprint(model: Any) -> int:
    footprint = getattr(model, "get_memory_footprint", None)
    return int(footprint()) if callable(footprint) else 0


# ----------------------------------------------------------------------------------------------------------------
# What this machine offers: the questions a UI asks (so that the UI itself needs no tensor code)
# ----------------------------------------------------------------------------------------------------------------
def available_devices() -> list[str]:
    """The device choices to offer: "auto", "cpu", then "cuda:0", "cuda:1", ... and "mps" where present."""
    devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def attention_unavailable_reason(attn_implementation: str, device: str = "auto",
                                 dtype: str = "auto") -> Optional[str]:
    """Why `attn_implementation` cannot run on `device` in `dtype` ("auto" resolved as `ModelSpec` does), or None
    when it can; eager and sdpa run everywhere, flash_attention_2 needs flash_attn, a CUDA GPU and fp16/bf16."""
    if attn_implementation != "flash_attention_2":
        return None
    from .modeling import flash_attention_unavailable_reason

    device = resolve_device(device)
    return flash_attention_unavailable_reason(torch.device(device), getattr(torch, resolve_dtype(dtype, device)))


def quantization_unavailable_reason(device: str = "auto", bits: int = 4) -> Optional[str]:
    """Why `bits`-bit quantization cannot run on `device` ("auto": the best one here), or None when it can."""
    from .quantization import quantization_unavailable_reason as reason

    return reason(resolve_device(device), bits)


def default_concurrency() -> int:
    """How many requests an app should run at once by default: 4 with a CUDA GPU, 2 on the CPU."""
    return 4 if torch.cuda.is_available() else 2


__all__ = ["ModelSpec", "ModelManager", "LoadedModel", "ManagerSettings", "ModelInUseError",
           "attention_unavailable_reason", "available_devices", "default_concurrency", "parse_bytes",
           "quantization_unavailable_reason", "resolve_device", "resolve_dtype"]
