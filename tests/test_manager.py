"""ModelManager: caching, LRU and memory-budget eviction, in-use protection, concurrency, failure isolation,
settings from the environment, local-path restrictions, the catalog and the default model choice."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

import biogpt
from biogpt import CheckpointError, ConfigError, DeviceError, catalog
from biogpt.manager import LoadedModel, ModelInUseError, ModelManager, ModelSpec
from biogpt.settings import Settings


class FakeModel:
    def __init__(self, spec: ModelSpec, size: int):
        self.spec, self.size = spec, size

    def get_memory_footprint(self) -> int:
        return self.size


class CountingLoader:
    """Records every load; sizes by source; `fail` maps a source to the exception its load raises."""

    def __init__(self, sizes: dict[str, int] | None = None, delay: float = 0.0, fail: dict | None = None):
        self.sizes, self.delay, self.fail = sizes or {}, delay, fail or {}
        self.calls: list[ModelSpec] = []
        self.progress = []
        self._lock = threading.Lock()

    def __call__(self, spec, source, progress):
        with self._lock:
            self.calls.append(spec)
            self.progress.append(progress)
        time.sleep(self.delay)
        if spec.source in self.fail:
            raise self.fail[spec.source]
        return FakeModel(spec, self.sizes.get(spec.source, 100)), f"tokenizer of {source}"


def spec(name: str, **kw) -> ModelSpec:
    return ModelSpec(f"org/{name}", **kw)


def loaded_sources(manager: ModelManager) -> list[str]:
    return [row["source"] for row in manager.status()]


# ----------------------------------------------------------------------------------------------------------------
# ModelSpec
# ----------------------------------------------------------------------------------------------------------------
def test_spec_is_normalised_and_hashable():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU resolution of 'auto'")
    auto = ModelSpec("microsoft/biogpt")
    assert (auto.device, auto.dtype, auto.attn_implementation, auto.quantization) == ("cpu", "float32", "sdpa", None)
    assert auto == ModelSpec(" microsoft/biogpt ", dtype="float32", device="cpu", quantization="none")
    assert len({auto, ModelSpec("microsoft/biogpt", device="cpu")}) == 1
    with pytest.warns(UserWarning, match="float16 is slow or unsupported on the CPU"):
        assert ModelSpec("x/y", dtype="float16").dtype == "float32"
    assert ModelSpec("x/y", dtype="bfloat16", quantization="4bit").torch_dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="ModelSpec.task must be one of"):
        ModelSpec("x/y", task="summarization")
    with pytest.raises(ConfigError, match="ModelSpec.quantization"):
        ModelSpec("x/y", quantization="2bit")
    with pytest.raises(ConfigError, match="source is empty"):
        ModelSpec("  ")
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        ModelSpec("x/y", device="cuda")


# ----------------------------------------------------------------------------------------------------------------
# Caching and eviction
# ----------------------------------------------------------------------------------------------------------------
def test_cache_hit_and_miss():
    loader = CountingLoader()
    manager = ModelManager(loader=loader)
    first = manager.get(spec("a"))
    assert isinstance(first, LoadedModel) and first.tokenizer == "tokenizer of org/a"
    assert manager.get(ModelSpec("org/a")) is first and len(loader.calls) == 1
    manager.get(spec("a", task="token-classification"))  # another task is another model
    assert len(loader.calls) == 2


def test_least_recently_used_is_unloaded_first():
    loader = CountingLoader()
    manager = ModelManager(max_models=2, loader=loader)
    a = manager.get(spec("a"))
    manager.get(spec("b"))
    manager.get(spec("a"))  # a is now the most recent
    manager.get(spec("c"))
    assert loaded_sources(manager) == ["org/c", "org/a"]
    assert a.model is not None  # a caller holding a LoadedModel keeps a working model
    manager.get(spec("b"))
    assert loaded_sources(manager) == ["org/b", "org/c"] and len(loader.calls) == 4


def test_memory_budget_eviction():
    loader = CountingLoader(sizes={"org/a": 100, "org/b": 120, "org/c": 90})
    manager = ModelManager(max_models=None, memory_budget_bytes=250, loader=loader)
    manager.get(spec("a"))
    manager.get(spec("b"))
    assert loaded_sources(manager) == ["org/b", "org/a"]
    manager.get(spec("c"))  # 310 > 250: a (least recent) goes
    assert loaded_sources(manager) == ["org/c", "org/b"]
    loader.sizes["org/huge"] = 400
    manager.get(spec("huge"))  # alone over budget: kept (it was asked for), everything else goes
    assert loaded_sources(manager) == ["org/huge"]


def test_gpu_and_cpu_budgets_are_separate(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    loader = CountingLoader(sizes={"org/cpu": 500, "org/g1": 100, "org/g2": 100})
    manager = ModelManager(max_models=None, memory_budget_bytes=1000, gpu_memory_budget_bytes=150, loader=loader)
    manager.get(spec("cpu", device="cpu"))
    manager.get(spec("g1", device="cuda", dtype="float16"))
    manager.get(spec("g2", device="cuda:0", dtype="float16"))
    assert loaded_sources(manager) == ["org/g2", "org/cpu"]  # the GPU budget evicted g1, not the CPU model
    assert [row["device"] for row in manager.status()] == ["cuda:0", "cpu"]


def test_models_in_use_are_never_evicted_or_unloaded():
    loader = CountingLoader()
    manager = ModelManager(max_models=1, loader=loader)
    with manager.use(spec("a")) as a:
        assert manager.status()[0]["in_use"] == 1
        manager.get(spec("b"))  # over the limit, but a is generating
        assert set(loaded_sources(manager)) == {"org/a", "org/b"}
        with pytest.raises(ModelInUseError, match="in use by 1 running generation"):
            manager.unload(spec("a"))
        assert manager.clear() == [spec("a")]
        assert a.model is not None
    # Released: the limit is enforced again; a, the least recently used, has been unloaded only now.
    manager.get(spec("c"))
    assert loaded_sources(manager) == ["org/c"]
    assert manager.unload(spec("c")) and not manager.unload(spec("c"))


# ----------------------------------------------------------------------------------------------------------------
# Concurrency
# ----------------------------------------------------------------------------------------------------------------
def test_sixteen_threads_asking_for_one_spec_cause_one_load():
    loader = CountingLoader(delay=0.3)
    manager = ModelManager(loader=loader)
    barrier = threading.Barrier(16)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(manager.get(spec("same")))
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 16
    assert len(loader.calls) == 1 and all(r is results[0] for r in results)


def test_different_specs_load_concurrently_without_mixing_up():
    loader = CountingLoader(delay=0.05)
    manager = ModelManager(max_models=4, loader=loader)
    names = ["a", "b", "c", "d"]
    results: dict[str, list] = {n: [] for n in names}
    barrier = threading.Barrier(16)

    def worker(name):
        barrier.wait()
        with manager.use(spec(name)) as loaded:
            results[name].append(loaded)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loader.calls) == 4
    for name in names:
        assert len(results[name]) == 4 and all(r.model.spec == spec(name) for r in results[name])
    assert all(row["in_use"] == 0 for row in manager.status())


# ----------------------------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------------------------
def test_failed_load_leaves_the_others_serving_and_is_retried():
    loader = CountingLoader(fail={"org/bad": CheckpointError("org/bad has no file config.json.")})
    manager = ModelManager(max_models=1, loader=loader)
    good = manager.get(spec("good"))
    for attempt in (1, 2):  # not registered: a second get tries again
        with pytest.raises(CheckpointError, match="no file config.json"):
            manager.get(spec("bad"))
        assert len([c for c in loader.calls if c.source == "org/bad"]) == attempt
    assert manager.get(spec("good")) is good and loaded_sources(manager) == ["org/good"]


@pytest.mark.parametrize("error, message", [
    (MemoryError(), "Out of memory while loading org/oom"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), "Out of GPU memory while loading org/oom"),
])
def test_out_of_memory_becomes_a_clear_device_error(error, message):
    manager = ModelManager(loader=CountingLoader(fail={"org/oom": error}))
    manager.get(spec("ok"))
    with pytest.raises(DeviceError, match=message):
        manager.get(spec("oom"))
    assert loaded_sources(manager) == ["org/ok"]


def test_concurrent_waiters_share_the_failure():
    loader = CountingLoader(delay=0.2, fail={"org/bad": CheckpointError("corrupt")})
    manager = ModelManager(loader=loader)
    errors = []

    def worker():
        try:
            manager.get(spec("bad"))
        except CheckpointError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and len(loader.calls) == 1 and manager.status() == []


def test_offline_and_unreachable_hub_errors_through_the_manager(monkeypatch, tmp_path):
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub import errors as hub_errors

    manager = ModelManager(cache_dir=tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        manager.get(ModelSpec("someone/not-cached-biogpt"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(**kwargs):
        raise hub_errors.LocalEntryNotFoundError("Connection error, and the file is not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(CheckpointError, match="the Hugging Face Hub is unreachable .* not in the local cache"):
        manager.get(ModelSpec("someone/not-cached-biogpt"))
    assert manager.status() == []


def test_an_unreachable_hub_fails_at_once_with_one_message(monkeypatch, tmp_path):
    """No retries against a dead network: one bounded probe of the endpoint, then a CheckpointError."""
    import socket

    import huggingface_hub
    import huggingface_hub.constants

    with socket.socket() as sock:  # a loopback port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("biogpt.hub._probe", {})
    downloads = []
    real_download = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda **kw: downloads.append(kw) or real_download(**kw))
    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(CheckpointError) as excinfo:
            ModelManager(cache_dir=tmp_path).get(ModelSpec("someone/not-cached-biogpt"))
    assert time.monotonic() - started < 3
    assert str(excinfo.value) == (
        f"Could not download someone/not-cached-biogpt/config.json: the Hugging Face Hub is unreachable at "
        f"http://127.0.0.1:{port} (ConnectError) and the file is not in the local cache. Check the network, or use "
        "a local directory.")
    assert all(call["local_files_only"] for call in downloads), "only the cache may be asked"


# ----------------------------------------------------------------------------------------------------------------
# A real load through a fake Hub: progress, footprint, 4-bit
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BioGptConfig(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=128, max_position_embeddings=32)
    path = tmp_path_factory.mktemp("hub") / "tiny"
    transformers.BioGptForCausalLM(config).save_pretrained(path)
    words = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}</w>" for i in range(36)]
    (path / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return path


def fake_hub(monkeypatch, files: Path, chunks: int = 4) -> list[str]:
    """hf_hub_download served from `files`, driving huggingface_hub's tqdm_class like a real download."""
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub import errors as hub_errors

    downloaded = []

    def hf_hub_download(repo_id, filename, local_files_only=False, tqdm_class=None, **kwargs):
        if local_files_only:
            raise hub_errors.LocalEntryNotFoundError(f"{filename} not cached")
        source = files / filename
        if not source.is_file():
            raise hub_errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        if tqdm_class is not None:
            size = source.stat().st_size
            # as huggingface_hub calls a tqdm class that is not its own (see utils/tqdm._create_progress_bar)
            bar = tqdm_class(total=size, initial=0, unit="B", unit_scale=True, desc=filename)
            for _ in range(chunks):
                bar.update(size // chunks)
            bar.update(size - chunks * (size // chunks))
            bar.close()
        downloaded.append(filename)
        return str(source)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    # This fake Hub is "online" even where the suite runs with HF_HUB_OFFLINE=1 (CI does), and reachable.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("biogpt.hub.hub_unreachable_reason", lambda timeout=None: None)
    return downloaded


def test_real_load_reports_download_progress_and_footprint(monkeypatch, tiny_checkpoint):
    downloaded = fake_hub(monkeypatch, tiny_checkpoint)
    reports = []
    manager = ModelManager()
    loaded = manager.get(ModelSpec("someone/tiny-biogpt", dtype="bfloat16", attn_implementation="eager"),
                         progress=lambda fraction, nbytes: reports.append((fraction, nbytes)))
    assert "model.safetensors" in downloaded and "vocab.json" in downloaded
    weights = (tiny_checkpoint / "model.safetensors").stat().st_size
    assert reports and reports[-1] == (1.0, weights)
    assert [f for f, _ in reports] == sorted(f for f, _ in reports) and 0 < reports[0][0] < 1
    model = loaded.model
    assert isinstance(model, biogpt.BioGptForCausalLM) and model.dtype == torch.bfloat16
    assert model.config.attn_implementation == "eager"
    assert loaded.bytes == model.get_memory_footprint() > 0 and loaded.load_seconds > 0
    row = manager.status()[0]
    assert set(row) >= {"source", "task", "dtype", "attn_implementation", "quantization", "device", "bytes",
                        "load_seconds", "last_used", "in_use"}
    assert (row["source"], row["task"], row["dtype"], row["device"], row["bytes"]) == (
        "someone/tiny-biogpt", "causal-lm", "bfloat16", "cpu", loaded.bytes)
    assert loaded.tokenizer is not None


def test_4bit_through_the_manager(tiny_checkpoint):
    pytest.importorskip("bitsandbytes")
    manager = ModelManager()
    full = manager.get(ModelSpec(str(tiny_checkpoint)))
    quantized = manager.get(ModelSpec(str(tiny_checkpoint), quantization="4bit"))
    assert quantized.model.is_quantized and not full.model.is_quantized
    assert quantized.bytes < full.bytes
    assert manager.status()[0]["quantization"] == "4bit"


def test_4bit_unavailable_is_refused_before_loading(monkeypatch, tiny_checkpoint):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(DeviceError, match="4bit quantization is unavailable: .*bitsandbytes"):
        ModelManager().get(ModelSpec(str(tiny_checkpoint), quantization="4bit"))


# ----------------------------------------------------------------------------------------------------------------
# Settings, local paths, catalog
# ----------------------------------------------------------------------------------------------------------------
def test_manager_from_settings(tmp_path):
    settings = Settings.from_env({"BIOGPT_CACHE_DIR": str(tmp_path), "BIOGPT_MAX_MODELS": "3",
                                  "BIOGPT_MEMORY_BUDGET": "8GB", "BIOGPT_GPU_MEMORY_BUDGET": "512MiB",
                                  "BIOGPT_LOCAL_ROOTS": str(tmp_path / "a"), "SPACE_ID": "me/app"})
    manager = ModelManager.from_settings(settings)
    assert manager.max_models == 3 and manager.memory_budget_bytes == 8 * 10**9
    assert manager.gpu_memory_budget_bytes == 512 * 2**20 and manager.cache_dir == str(tmp_path)
    assert manager.local_roots == ((tmp_path / "a").resolve(),) and manager.allow_local_paths is False
    assert manager.settings is settings


def test_local_paths_must_stay_inside_the_allowed_roots(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "private"
    (root / "mine").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    (root / "escape").symlink_to(outside / "secret", target_is_directory=True)
    loader = CountingLoader()
    manager = ModelManager(loader=loader, local_roots=(root,))

    assert manager.get(ModelSpec(str(root / "mine"))).source_path == str((root / "mine").resolve())
    for sneaky in (str(root / ".." / "private" / "secret"), str(root / "escape"), str(outside / "secret")):
        with pytest.raises(CheckpointError, match="outside the directories models may be loaded from"):
            manager.get(ModelSpec(sneaky))
    assert len(loader.calls) == 1

    closed = ModelManager(loader=loader, allow_local_paths=False)
    with pytest.raises(CheckpointError, match="Local paths are disabled on this server"):
        closed.get(ModelSpec(str(root / "mine")))
    assert closed.get(ModelSpec("org/hub-ids-still-work")).source_path == "org/hub-ids-still-work"


def test_demo_resolves_per_task_and_explains_a_missing_build(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOGPT_DEMO_DIR", str(tmp_path))
    (tmp_path / "demo-ner").mkdir()
    (tmp_path / "demo-ner" / "config.json").write_text("{}")
    loader = CountingLoader()
    manager = ModelManager(loader=loader, allow_local_paths=False,  # the bundled demos are always allowed
                           settings=Settings.from_env())
    assert manager.get(ModelSpec("demo", task="token-classification")).source_path == str(tmp_path / "demo-ner")
    with pytest.raises(CheckpointError, match="demo model for causal-lm is not built .* run `make demo`"):
        manager.get(ModelSpec("demo"))
    assert catalog.demo_available("token-classification") and not catalog.demo_available("causal-lm")
    assert {"microsoft/biogpt", "microsoft/BioGPT-Large", "microsoft/BioGPT-Large-PubMedQA", "demo"} <= set(
        catalog.CATALOG)
    assert catalog.CATALOG["microsoft/biogpt"].size.startswith("347M")


def test_default_source_choice(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub import errors as hub_errors

    monkeypatch.setattr(catalog, "is_cached", lambda repo, cache_dir=None: True)
    assert catalog.default_source() == ("microsoft/biogpt", "microsoft/biogpt (cached)")
    assert catalog.default_source("demo")[0] == "demo"
    assert catalog.default_source("someone/else") == ("someone/else", "someone/else (BIOGPT_MODEL)")

    monkeypatch.setattr(catalog, "is_cached", lambda repo, cache_dir=None: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert catalog.default_source() == (
        "demo", "bundled demo models: HF_HUB_OFFLINE is set and microsoft/biogpt is not cached")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    timeouts = []

    def unreachable(repo_id, timeout=None, **kwargs):
        timeouts.append(timeout)
        raise hub_errors.HTTPError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    source, reason = catalog.default_source()
    assert source == "demo" and reason.startswith("bundled demo models: the Hugging Face Hub is unreachable")
    assert timeouts == [2.0]
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout=None, **kw: object())
    assert catalog.default_source()[0] == "microsoft/biogpt"


def test_is_cached_reads_the_hf_cache_layout(tmp_path):
    assert not catalog.is_cached("microsoft/biogpt", cache_dir=tmp_path)
    snapshot = tmp_path / "models--microsoft--biogpt" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--microsoft--biogpt" / "refs").mkdir()
    (tmp_path / "models--microsoft--biogpt" / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    assert not catalog.is_cached("microsoft/biogpt", cache_dir=tmp_path)  # no weights yet
    (snapshot / "pytorch_model.bin").write_bytes(b"")
    assert catalog.is_cached("microsoft/biogpt", cache_dir=tmp_path)
