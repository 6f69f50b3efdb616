"""The local engine: annotate a corpus on this machine, shard by shard, resumably; and `annotate_texts`.

`run_local` reads the input into shards, skips those a previous run committed, annotates each of the others with
one loaded model (`Annotator`: a task's runner batches the shard's windows by length) and commits it, with a
progress bar (documents/s, ETA) and a final summary. Ctrl-C lets the current model batch finish, drops the
unfinished shard, and returns; the same command continues later. The Ray engine (`ray_engine`) reuses
`prepare_run` and `Annotator`, so both write the same bytes.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

from tqdm.auto import tqdm

from ..configuration import BioGptConfig
from ..errors import ConfigError, InputError
from .models import CPU_KERNELS, checkpoint_source, load_for_task, model_info, read_config
from .readers import (InputFile, ReaderOptions, Shard, discover_inputs, estimate_records, iter_shards, read_items,
                      shard_key)
from .registry import AnnotationTask, BatchHook, get_task
from .shards import REJECTS, ShardOutput, ShardStore
from .writers import records_jsonl, rejects_jsonl

DEFAULT_BATCH_SIZE = 16
DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class RunConfig:
    """Everything `annotate` needs to know about a run; the same values give the same output bytes."""

    input: str
    task: str
    model: str
    output: Path
    params: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH_SIZE  # model windows per forward pass
    shard_size: int = DEFAULT_SHARD_SIZE  # records per committed shard
    reader: ReaderOptions = ReaderOptions()
    device: str = "cpu"
    dtype: str = "float32"  # of the model's weights and arithmetic

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1; got {value!r}.")


@dataclass
class PreparedRun:
    """What the driver settles before any model is loaded: task, parameters, model identity, input files."""

    config: RunConfig
    task: AnnotationTask
    params: dict[str, Any]
    model: dict[str, str]
    files: list[InputFile]

    @property
    def manifest_run(self) -> dict[str, Any]:
        """The settings a resumed run must share with the first one (everything that changes the output bytes)."""
        config = self.config
        return {"task": self.task.name, "model": self.model, "parameters": self.params,
                "inputs": [{"name": f.name, "format": f.format, "bytes": f.path.stat().st_size} for f in self.files],
                "dtype": config.dtype, "cpu_kernels": CPU_KERNELS, "batch_size": config.batch_size,
                "shard_size": config.shard_size,
                "max_chars": config.reader.max_chars, "id_field": config.reader.id_field,
                "text_field": config.reader.text_field}


def prepare_run(config: RunConfig) -> PreparedRun:
    """Check the task, its parameters against the checkpoint's config, and find the input files."""
    task = get_task(config.task)
    model_config: BioGptConfig = read_config(config.model, task)
    params = task.parameters(config.params, model_config)
    return PreparedRun(config, task, params, model_info(checkpoint_source(config.model, task)),
                       discover_inputs(config.input, config.reader))


@dataclass
class Summary:
    """What a run did; `documents`, `windows` and `rejects` count this invocation's work only."""

    output: Path
    documents: int = 0
    windows: int = 0
    rejects: int = 0
    shards: int = 0
    shards_resumed: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    def add(self, output: ShardOutput) -> None:
        """Count a committed shard."""
        self.documents += output.documents
        self.rejects += output.rejects
        self.windows += output.windows
        self.shards += 1

    @property
    def documents_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [f"{self.documents:,} documents annotated ({self.windows:,} model windows) in {self.seconds:.1f} s: "
                 f"{self.documents_per_second:.1f} documents/s.",
                 f"{self.rejects:,} records rejected" + (f" (reasons in {self.output / REJECTS})."
                                                         if self.rejects and not self.interrupted else ".")]
        if self.shards_resumed:
            lines.append(f"{self.shards_resumed:,} shards were already done by an earlier run.")
        if self.interrupted:
            lines.append(f"Interrupted: {self.shards:,} shards committed this time. Run the same command to "
                         "continue where it stopped.")
        else:
            lines.append(f"Output: {self.output}")
        return "\n".join(lines)


def _no_hook(done: int, total: int) -> None:
    return None


class Annotator:
    """One loaded model that annotates shards (each engine worker holds one)."""

    def __init__(self, task: AnnotationTask, model: Any, tokenizer: Any, params: Mapping[str, Any],
                 batch_size: int, info: Mapping[str, str]):
        if not isinstance(model, task.model_class):
            raise ConfigError(f"Task {task.name} needs a {task.model_class.__name__}; got {type(model).__name__}.")
        self.task, self.model, self.tokenizer = task, model, tokenizer
        self.params, self.batch_size, self.info = dict(params), batch_size, dict(info)

    @classmethod
    def load(cls, task: str, source: str, params: Mapping[str, Any], batch_size: int, info: Mapping[str, str],
             device: str = "cpu", dtype: str = "float32") -> "Annotator":
        """Load the checkpoint `source` for `task` (parameters already checked by `prepare_run`)."""
        spec = get_task(task)
        model, tokenizer = load_for_task(spec, source, device, dtype)
        return cls(spec, model, tokenizer, params, batch_size, info)

    @classmethod
    def for_run(cls, prepared: PreparedRun) -> "Annotator":
        config = prepared.config
        return cls.load(config.task, config.model, prepared.params, config.batch_size, prepared.model, config.device,
                        config.dtype)

    def results(self, texts: list[str], hook: BatchHook = _no_hook) -> tuple[list[dict[str, Any]], int]:
        """One result per text, in order, and the number of model windows they took."""
        return self.task.run(self.model, self.tokenizer, texts, self.params, self.batch_size, hook)

    def annotate(self, shard: Shard, hook: BatchHook = _no_hook) -> ShardOutput:
        """The shard's output files (records, the task's extra format, rejects) and counts."""
        documents, rejects = shard.documents, shard.rejects
        results, windows = self.results([d.text for d in documents], hook)
        files = {"jsonl": records_jsonl(self.task.name, documents, results, self.info, self.params)}
        if self.task.extra is not None:
            suffix, writer = self.task.extra
            files[suffix] = writer(documents, results, self.model.config)
        if rejects:
            files[REJECTS] = rejects_jsonl(rejects)
        return ShardOutput(shard.key, files, len(documents), len(rejects), windows)


def annotate_texts(model: Any, tokenizer: Any, texts: Iterable[str], task: str = "ner",
                   batch_size: int = DEFAULT_BATCH_SIZE, chunk_size: int = 64, **params: Any) -> Iterator[dict]:
    """Annotate texts with a loaded model, yielding one result per text, in order.

    Texts are taken `chunk_size` at a time and batched together as in a corpus run, so a long iterable streams.
    Results are what the JSONL records hold under "result": `{"entities": [...]}` (ner), `{"labels": {label: p}}`
    (classify), `{"continuation": ..., "prompt_truncated": ...}` (generate). Raises `InputError` for an item
    that is not a string.
    """
    spec = get_task(task)
    if chunk_size < 1 or batch_size < 1:
        raise ConfigError(f"batch_size and chunk_size must be >= 1; got {batch_size} and {chunk_size}.")
    annotator = Annotator(spec, model, tokenizer, spec.parameters(params, model.config), batch_size, {})
    chunk: list[str] = []
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"Text {number} is a {type(text).__name__}; annotate_texts takes strings.")
        chunk.append(text)
        if len(chunk) == chunk_size:
            yield from annotator.results(chunk)[0]
            chunk = []
    if chunk:
        yield from annotator.results(chunk)[0]


def annotate_file(model: Any, tokenizer: Any, path: str | Path, task: str = "ner", *, max_records: int,
                  reader: ReaderOptions = ReaderOptions(), batch_size: int = DEFAULT_BATCH_SIZE,
                  info: Optional[Mapping[str, str]] = None, hook: BatchHook = _no_hook, **params: Any) -> ShardOutput:
    """Annotate one file of any format `annotate` reads with a loaded model, in memory: the bytes of its output
    files (`jsonl`, the task's extra format such as `pubtator` or `csv`, `rejects.jsonl`) as a corpus run writes
    them for one shard, with `info` as the records' model. The app's file upload runs this. Raises `InputError`
    for a file of more than `max_records` records, before any is annotated."""
    spec = get_task(task)
    annotator = Annotator(spec, model, tokenizer, spec.parameters(params, model.config), batch_size, info or {})
    [input_file] = discover_inputs(path, reader)
    items = []
    with open(input_file.path, "rb") as stream:
        for item in read_items(stream, input_file, reader):
            if len(items) == max_records:
                raise InputError(f"The file has more than {max_records:,} records; the limit is {max_records:,}.")
            items.append(item)
    return annotator.annotate(Shard(shard_key(0, 0), tuple(items)), hook)


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    """Raised between model batches once Ctrl-C was pressed; the unfinished shard is dropped."""


class StopOnInterrupt:
    """While active, the first SIGINT only sets `requested` (a second one interrupts at once, as usual).

    Only the main thread can own signal handlers; elsewhere (e.g. the app's worker threads) this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print("\nStopping after the current batch (Ctrl-C again to stop at once)...", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def check(self) -> None:
        if self.requested:
            raise Interrupted()


def progress_bar(files: list[InputFile], store: ShardStore, enabled: bool) -> tqdm:
    """A documents bar whose total is a quick count of the input's records not yet done (for the ETA)."""
    done = sum(marker["documents"] + marker["rejects"] for marker in store.done.values())
    total = max(sum(estimate_records(f) for f in files) - done, 0) if enabled else None
    # n is fractional while a shard is under way (its batches advance the bar): shown as a whole number.
    return tqdm(total=total, unit="doc", desc="annotate", disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")


# ----------------------------------------------------------------------------------------------------------------
# The local engine
# ----------------------------------------------------------------------------------------------------------------
def run_local(config: RunConfig, progress: bool = True, model: Any = None, tokenizer: Any = None) -> Summary:
    """Annotate `config.input` into `config.output` on this machine (resuming a previous run of the same command).

    `model` and `tokenizer`, when given, must be `config.model` already loaded by `models.load_for_task` (in
    `config.dtype`); by default the model is loaded here, once there is a shard left to annotate.
    """
    prepared = prepare_run(config)
    annotator = None if model is None else Annotator(prepared.task, model, tokenizer, prepared.params,
                                                     config.batch_size, prepared.model)
    summary = Summary(config.output)
    started = time.perf_counter()
    with ShardStore(config.output, prepared.manifest_run) as store, StopOnInterrupt() as stop, \
            progress_bar(prepared.files, store, progress) as bar:
        summary.shards_resumed = len(store.done)
        for shard in iter_shards(prepared.files, config.reader, config.shard_size):
            if shard.key in store.done:
                continue
            if annotator is None:
                annotator = Annotator.for_run(prepared)
            position = bar.n

            def hook(done: int, total: int) -> None:  # after each model batch of this shard
                bar.update(position + len(shard.items) * done / total - bar.n)
                stop.check()

            try:
                output = annotator.annotate(shard, hook)
            except Interrupted:
                summary.interrupted = True
                break
            store.commit(output)
            summary.add(output)
            bar.update(position + len(shard.items) - bar.n)
            bar.set_postfix(windows=summary.windows, rejects=summary.rejects, refresh=False)
            if stop.requested:
                summary.interrupted = True
                break
        if not summary.interrupted:
            store.finalize()
    summary.seconds = time.perf_counter() - started
    return summary
