"""The Ray engine (`--engine ray`): the same shards and bytes as the local engine, annotated by a pool of Ray actors.

The pipeline is Ray Data's: `read_binary_files` reads the input files, `flat_map` cuts each into the same shards
the local engine makes (shards already committed by an earlier run are dropped there), and `map_batches` hands
every shard to a stateful actor (`ShardAnnotator`) that loads the model once and annotates shards with the same
`Annotator` as the local engine; `--workers` actors, each with `num_cpus` CPUs and `num_gpus` GPUs. The driver
commits the shards it gets back into the output directory (`shards.ShardStore`), so a Ray run is resumable too,
and its output, sorted by id, is byte for byte the local engine's.

Ray is an optional extra: `pip install "biogpt[ray]"`.
"""

from __future__ import annotations

import io
import os
import pickle
import time
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from ..errors import ConfigError
from .engine import Annotator, PreparedRun, RunConfig, StopOnInterrupt, Summary, prepare_run, progress_bar
from .readers import InputFile, ReaderOptions, file_shards
from .shards import ShardOutput, ShardStore

# Reading and cutting files is light work; reserving any CPU for it would leave it unschedulable once the actors
# hold every core (`--workers` = number of CPUs), and the pipeline would wait forever.
_READ_CPUS = 0


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a `ConfigError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs pyarrow, which `ray` alone does not bring)
    except ModuleNotFoundError as exc:
        if exc.name not in ("ray", "ray.data", "pyarrow"):
            raise
        raise ConfigError("--engine ray needs Ray Data, which is not installed here: pip install 'biogpt[ray]' "
                          "(or pip install 'ray[data]'), or use --engine local.") from None
    return ray


def _split_file(row: dict[str, Any], files: Mapping[str, InputFile], options: ReaderOptions, shard_size: int,
                single_file: bool, done: frozenset[str]) -> Iterator[dict[str, Any]]:
    """One file's bytes -> its shards not committed yet, each pickled into a row (`key`, `shard`)."""
    input_file = files[os.path.normpath(row["path"])]
    for shard in file_shards(io.BytesIO(row["bytes"]), input_file, options, shard_size, single_file):
        if shard.key not in done:
            yield {"key": shard.key, "shard": pickle.dumps(shard)}


class ShardAnnotator:
    """A Ray actor: loads the model once, then annotates each shard of a batch into a pickled `ShardOutput`."""

    def __init__(self, task: str, source: str, params: Mapping[str, Any], batch_size: int, info: Mapping[str, str],
                 device: str, dtype: str):
        self.annotator = Annotator.load(task, source, params, batch_size, info, device, dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = [pickle.dumps(self.annotator.annotate(pickle.loads(blob))) for blob in batch["shard"]]
        return {"key": batch["key"], "output": np.array(outputs, dtype=object)}


def _pipeline(ray: Any, prepared: PreparedRun, done: frozenset[str], workers: int, num_cpus: float,
              num_gpus: float) -> Any:
    """read_binary_files -> flat_map (file -> shards not done yet) -> map_batches (ShardAnnotator actors)."""
    config = prepared.config
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.target_max_block_size
    # A dataset keeps the settings current when it is made. The actor pool hands out whole blocks, so each shard
    # must be a block of its own (the smallest target size) for shards to spread over the actors; Ray's bars are
    # replaced by ours (documents/s, ETA).
    context.enable_progress_bars, context.target_max_block_size = False, 1
    try:
        files = {os.path.normpath(str(f.path)): f for f in prepared.files}
        dataset = ray.data.read_binary_files([str(f.path) for f in prepared.files], include_paths=True,
                                             num_cpus=_READ_CPUS)
        dataset = dataset.flat_map(_split_file, num_cpus=_READ_CPUS, fn_kwargs=dict(
            files=files, options=config.reader, shard_size=config.shard_size, single_file=len(files) == 1,
            done=done))
        return dataset.map_batches(
            ShardAnnotator, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=num_cpus, num_gpus=num_gpus, fn_constructor_kwargs=dict(
                task=config.task, source=config.model, params=prepared.params, batch_size=config.batch_size,
                info=prepared.model, device="cuda" if num_gpus > 0 else config.device, dtype=config.dtype))
    finally:
        context.enable_progress_bars, context.target_max_block_size = saved


def run_ray(config: RunConfig, address: Optional[str] = None, workers: int = 1, num_cpus: float = 1.0,
            num_gpus: float = 0.0, progress: bool = True) -> Summary:
    """Annotate `config.input` into `config.output` with `workers` Ray actors (resuming an earlier run).

    Uses the Ray runtime already initialised in this process, else `ray.init(address=address)` (None: a new local
    Ray; "auto": the running cluster). Actors get `num_cpus` CPUs and `num_gpus` GPUs each (a GPU actor runs its
    model on CUDA). The output directory must be reachable by this driver, which writes it.
    """
    ray = require_ray()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a whole number >= 1; got {workers!r}.")
    if num_cpus < 0 or num_gpus < 0 or num_cpus + num_gpus == 0:
        raise ConfigError(f"Each Ray worker needs CPUs or GPUs; got num_cpus={num_cpus}, num_gpus={num_gpus}.")
    prepared = prepare_run(config)
    summary = Summary(config.output)
    started = time.perf_counter()
    started_ray = not ray.is_initialized()
    with ShardStore(config.output, prepared.manifest_run) as store, StopOnInterrupt() as stop, \
            progress_bar(prepared.files, store, progress) as bar:
        summary.shards_resumed = len(store.done)
        if started_ray:
            try:
                ray.init(address=address)
            except ConnectionError as exc:
                raise ConfigError(f"Could not reach a Ray cluster at --ray-address {address} ({exc}). Start one "
                                  "(`ray start --head`) or leave --ray-address out to run a local Ray.") from None
        try:
            dataset = _pipeline(ray, prepared, frozenset(store.done), workers, num_cpus, num_gpus)
            for row in dataset.iter_rows():
                output: ShardOutput = pickle.loads(row["output"])
                store.commit(output)
                summary.add(output)
                bar.update(output.documents + output.rejects)
                bar.set_postfix(windows=summary.windows, rejects=summary.rejects, refresh=False)
                if stop.requested:
                    summary.interrupted = True
                    break
        finally:
            if started_ray:
                ray.shutdown()
        if not summary.interrupted:
            store.finalize()
    summary.seconds = time.perf_counter() - started
    return summary
