"""Loading, sharing and unloading models for a multi-user app (no UI code here).

`ModelManager.get(spec)` returns the loaded model for a `ModelSpec`, loading it once however many threads ask at
the same time. It keeps at most `max_models` models and/or a CPU and a GPU memory budget, unloading the least
recently used first, except models held by `use(spec)` (a running generation). A failed load raises and leaves
the registry as it was, so the models already loaded keep serving and a later `get` tries again.

Each `LoadedModel` carries its `ModelServer` (`biogpt.serving`), through which requests run; unloading a model
closes it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch

from . import access, catalog
from .configuration import BioGptConfig
from .devices import ATTENTION_BACKENDS, COMPUTE_DTYPES, DTYPES, on_gpu, resolve_device, resolve_dtype
from .errors import BioGptError, CheckpointError, ConfigError, DeviceError
from .fairseq import convert_into_cache, is_fairseq_checkpoint_dir
from .hub import DownloadGuard, ProgressCallback, is_local
from .modeling import BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification
from .quantization import (CPU_QUANTIZATION, BitsAndBytesConfig, cpu_quantization_config,
                           quantization_unavailable_reason)
from .serving import ModelServer
from .settings import Settings
from .tokenization import BioGptTokenizer

logger = logging.getLogger(__name__)

MODEL_CLASSES = {"causal-lm": BioGptForCausalLM, "token-classification": BioGptForTokenClassification,
                 "sequence-classification": BioGptForSequenceClassification}
TASKS = tuple(MODEL_CLASSES)
QUANTIZATION = (None, "4bit", "8bit") + CPU_QUANTIZATION


class ModelInUseError(BioGptError, RuntimeError):
    """`unload` was asked to drop a model that a running generation holds (see `ModelManager.use`)."""


# ----------------------------------------------------------------------------------------------------------------
# What to load
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes two loaded models different; hashable, so it keys the manager's registry.

    Normalised on creation so that equal requests compare equal: `device="auto"` becomes the concrete device
    (CUDA, else MPS, else CPU; "cuda" becomes "cuda:0"), `dtype="auto"` becomes bfloat16 (float16 where bf16 is
    unsupported) on a GPU, float16 on MPS and float32 on the CPU; float16 on the CPU becomes float32 with a
    warning. `source` is a catalog name (`demo`, `microsoft/biogpt`, ...), any Hub repo id or a local path.
    `quantization`: None, "4bit" / "8bit" (bitsandbytes), or "int8" / "int4" (weight-only on the CPU,
    `quantization.cpu_quantization_config`: device "auto" then means the CPU, dtype "auto" bfloat16).
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
        for name, value, allowed in (("task", self.task, TASKS), ("dtype", self.dtype, COMPUTE_DTYPES),
                                     ("attn_implementation", self.attn_implementation, ATTENTION_BACKENDS),
                                     ("quantization", quantization, QUANTIZATION)):
            if value not in allowed:
                raise ConfigError(f"ModelSpec.{name} must be one of {', '.join(map(str, allowed))}; got {value!r}.")
        on_cpu_only = quantization in CPU_QUANTIZATION
        if on_cpu_only and str(self.device) not in ("auto", "cpu"):
            raise ConfigError(f"ModelSpec.quantization={quantization!r} runs on the CPU (PyTorch's weight-only "
                              "kernels); choose device='cpu', or 4bit/8bit (bitsandbytes) on a GPU.")
        device = resolve_device("cpu" if on_cpu_only else str(self.device))
        # int8/int4 compute in bfloat16 by default: their CPU kernels are several times slower in float32.
        dtype = "bfloat16" if on_cpu_only and self.dtype == "auto" else self.dtype
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "quantization", quantization)
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "dtype", resolve_dtype(dtype, device))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    tokenizer: Any
    bytes: int
    load_seconds: float
    last_used: float  # time.time() of the latest get/use
    source_path: str  # what was actually loaded (the demo directory for `demo`, the resolved local path)
    server: ModelServer = field(repr=False, compare=False)  # how requests run on it; closed when it is unloaded
    in_use: int = 0

    @property
    def device(self) -> str:
        return self.spec.device


Loader = Callable[[ModelSpec, str, Optional[ProgressCallback]], tuple[Any, Any]]
"""(spec, resolved source, progress) -> (model, tokenizer)."""


# ----------------------------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------------------------
class ModelManager:
    def __init__(self, max_models: Optional[int] = 2, memory_budget_bytes: Optional[int] = None,
                 gpu_memory_budget_bytes: Optional[int] = None, cache_dir: Union[str, os.PathLike, None] = None,
                 loader: Optional[Loader] = None, allow_local_paths: bool = True,
                 local_roots: tuple[Union[str, os.PathLike], ...] = (), settings: Optional[Settings] = None,
                 allowed_models: Optional[tuple[str, ...]] = None, max_model_bytes: Optional[int] = None,
                 disk_budget_bytes: Optional[int] = None, model_bytes_source: str = "BIOGPT_MAX_MODEL_BYTES"):
        """`allowed_models`: Hub ids / fnmatch patterns users may load (None: any; see `biogpt.access`);
        `max_model_bytes` / `disk_budget_bytes`: the bounds of Hub downloads (`biogpt.hub.DownloadGuard`)."""
        if max_models is not None and max_models < 1:
            raise ConfigError(f"max_models must be >= 1 or None; got {max_models}.")
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self.gpu_memory_budget_bytes = gpu_memory_budget_bytes
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.allow_local_paths = allow_local_paths
        self.local_roots = tuple(Path(os.path.expanduser(str(r))).resolve() for r in local_roots)
        self.allowed_models = allowed_models
        self.downloads = DownloadGuard(max_model_bytes, disk_budget_bytes, self.cache_dir, model_bytes_source)
        self.settings = settings or Settings()  # what the model servers use (batch size, request caps)
        self._loader = loader or self._default_loader
        self._lock = threading.RLock()
        self._models: "OrderedDict[ModelSpec, LoadedModel]" = OrderedDict()  # least recently used first
        self._loading: dict[ModelSpec, Future] = {}
        self._unloaded: list[LoadedModel] = []  # dropped under the lock, their servers closed after it
        # Called with each LoadedModel the manager unloads or evicts (after its attachments are closed).
        self.on_unload: list[Callable[[LoadedModel], None]] = []

    @classmethod
    def from_settings(cls, settings: Settings, loader: Optional[Loader] = None) -> "ModelManager":
        """A manager with the deployment's limits, access rules included (they depend on `settings.exposure()`)."""
        max_model_bytes, model_bytes_source = access.download_limit(settings)
        return cls(max_models=settings.max_models, memory_budget_bytes=settings.memory_budget,
                   gpu_memory_budget_bytes=settings.gpu_memory_budget, cache_dir=settings.cache_dir,
                   loader=loader, allow_local_paths=settings.local_paths_allowed, local_roots=settings.local_roots,
                   settings=settings, allowed_models=access.allowed_models(settings),
                   max_model_bytes=max_model_bytes, disk_budget_bytes=settings.disk_budget,
                   model_bytes_source=model_bytes_source)

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

    def config(self, spec: ModelSpec) -> BioGptConfig:
        """The configuration of the checkpoint `spec` names, read without loading its weights (so a UI can show a
        classifier's labels before it runs); the same checks as a load apply to where it comes from."""
        with self._lock:
            loaded = self._models.get(spec)
        if loaded is not None:
            return loaded.model.config
        return BioGptConfig.from_pretrained(self.resolve_source(spec), cache_dir=self.cache_dir)

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

        Hub ids must match `allowed_models`. Local paths must be allowed (`allow_local_paths`), exist and, when
        `local_roots` is set, lie inside one of them after resolving `..` and symlinks; messages name the path as
        given, never its resolved form.
        """
        if spec.source == catalog.DEMO:
            return str(catalog.demo_path(spec.task, self.settings))
        entry = catalog.CATALOG.get(spec.source)
        if entry is not None and entry.release:  # a deployment's own folder: allowed even when local paths are off
            return str(catalog.release_path(spec.source, self.settings))
        if not is_local(spec.source):
            access.check_model(spec.source, self.allowed_models)
            return spec.source
        if not self.allow_local_paths:
            raise CheckpointError(f"Local paths are disabled on this server ({spec.source!r}); choose a catalog "
                                  "model or a Hugging Face Hub repo id (BIOGPT_ALLOW_LOCAL_PATHS=1 enables them).")
        path = Path(os.path.expanduser(spec.source)).resolve()  # follows symlinks and folds '..'
        if self.local_roots and not any(path.is_relative_to(root) for root in self.local_roots):
            roots = ", ".join(str(r) for r in self.local_roots)
            raise CheckpointError(f"{spec.source!r} is outside the directories models may be loaded from ({roots}); "
                                  "set BIOGPT_LOCAL_ROOTS to allow another directory.")
        if not path.exists():
            raise CheckpointError(f"No such file or directory: {spec.source!r}.")
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
        # A Hub id's download is bounded and cleaned up after a failure; local directories need neither.
        downloading = self.downloads.guard(source) if not is_local(source) else contextlib.nullcontext()
        try:
            with downloading:
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
                           load_seconds=seconds, last_used=time.time(), source_path=source,
                           server=ModelServer(model, tokenizer, self.settings))

    def _enforce_limits(self, keep: Optional[ModelSpec]) -> int:
        """Unload least-recently-used idle models until the count and both budgets hold; returns how many (lock held).

        Models in use and `keep` (the one just loaded) are never unloaded, so a limit can be exceeded while they
        run; it is enforced again when they are released.
        """
        checks = (
            (lambda: self.max_models is not None and len(self._models) > self.max_models, lambda s: True),
            (lambda: self._over_budget(gpu=True), lambda s: on_gpu(s.device)),
            (lambda: self._over_budget(gpu=False), lambda s: not on_gpu(s.device)),
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
        return sum(m.bytes for s, m in self._models.items() if on_gpu(s.device) == gpu) > budget

    def _drop(self, spec: ModelSpec) -> None:
        # Only the registry's reference goes: a caller still holding the LoadedModel keeps a working model, and
        # the memory is freed (by _release_memory, outside the lock) once nobody refers to it. Its server is
        # closed by _close_unloaded, also outside the lock.
        self._unloaded.append(self._models.pop(spec))

    def _close_unloaded(self) -> None:
        """Close the servers of the models just dropped and tell the `on_unload` hooks (lock not held)."""
        with self._lock:
            dropped, self._unloaded = self._unloaded, []
        for loaded in dropped:
            loaded.server.close()
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
        quantization_config = None
        if spec.quantization in CPU_QUANTIZATION:
            quantization_config = cpu_quantization_config(spec.quantization)
        elif spec.quantization is not None:
            bits = 4 if spec.quantization == "4bit" else 8
            reason = quantization_unavailable_reason(spec.device, bits)
            if reason:
                raise DeviceError(f"{spec.quantization} quantization is unavailable: {reason}")
            quantization_config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=spec.torch_dtype,
                                                      bnb_4bit_use_double_quant=True)
                                   if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
        if is_fairseq_checkpoint_dir(source):  # one of Microsoft's fine-tuned releases: its converted copy, once
            source = str(convert_into_cache(source))
        # The model first: its download is the one worth a progress bar, and its errors are the informative ones.
        model = MODEL_CLASSES[spec.task].from_pretrained(
            source, torch_dtype=spec.torch_dtype, device=spec.device, attn_implementation=spec.attn_implementation,
            quantization_config=quantization_config, cache_dir=self.cache_dir, progress=progress,
            cpu_kernels=self.settings.cpu_kernels, random_heads=False)  # an app shows outputs: never a random head's
        tokenizer = BioGptTokenizer.from_pretrained(source, cache_dir=self.cache_dir)
        return model, tokenizer


def _footprint(model: Any) -> int:
    footprint = getattr(model, "get_memory_footprint", None)
    return int(footprint()) if callable(footprint) else 0


__all__ = ["LoadedModel", "ModelInUseError", "ModelManager", "ModelSpec"]
