"""The functions the tabs call: validate at the boundary, ask the model manager, format for the components.

No tensor code lives here: models, generation and the tasks come from `biogpt`. Every library error
(`BioGptError`) becomes a `gr.Error` carrying its specific message, so a bad request never takes the worker down.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import itertools
import json
import os
import shutil
import string
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr

from biogpt import catalog
from biogpt.errors import BioGptError
from biogpt.manager import ModelManager, ModelSpec, attention_unavailable_reason
from biogpt.tasks.entities import STRATEGIES
from biogpt.validation import check_beam_memory, check_number, clean_text

from . import gpu
from .theme import confidence_color

DEMO_NOTICE = ("**Demo models.** These are tiny demo models trained on generated sentences — not BioGPT; "
               "outputs are illustrative only.")
MODES = ("greedy", "beam", "sampling")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
PRECISIONS = (("auto", "auto"), ("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))  # (label, value)
AGGREGATIONS = ("simple",) + tuple(s for s in STRATEGIES if s != "simple")
SPACY_PREFIX = "spacy:"


def _env_int(env: dict, name: str, default: Optional[int]) -> Optional[int]:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _env_bool(env: dict, name: str, default: bool) -> bool:
    value = env.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class AppSettings:
    """How the app is served and what it accepts; `from_env` reads the BIOGPT_* variables."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    model: Optional[str] = None          # None: microsoft/biogpt if cached or reachable, else the bundled demos
    preload: bool = True                 # load the default model in the background once the server is up
    concurrency: Optional[int] = None    # None: 2 on CPU, 4 on a GPU
    generate_concurrency: int = 8        # generate jobs at once: merged into one batch per model by its engine
    max_queue: int = 64
    max_new_tokens: int = 512
    max_prompt_chars: int = 4_000
    max_text_chars: int = 20_000

    @classmethod
    def from_env(cls, env: Optional[dict] = None) -> "AppSettings":
        env = dict(os.environ if env is None else env)
        return cls(
            # Spaces sets SPACE_ID and must reach the server from outside the container.
            host=env.get("BIOGPT_HOST") or env.get("GRADIO_SERVER_NAME")
            or ("0.0.0.0" if env.get("SPACE_ID") else cls.host),
            port=_env_int(env, "BIOGPT_PORT", cls.port),
            share=_env_bool(env, "BIOGPT_SHARE", False),
            model=env.get("BIOGPT_MODEL") or None,
            preload=_env_bool(env, "BIOGPT_PRELOAD", True),
            concurrency=_env_int(env, "BIOGPT_CONCURRENCY", None),
            generate_concurrency=max(1, _env_int(env, "BIOGPT_GENERATE_CONCURRENCY", cls.generate_concurrency)),
            max_queue=_env_int(env, "BIOGPT_MAX_QUEUE", cls.max_queue),
            max_new_tokens=_env_int(env, "BIOGPT_MAX_NEW_TOKENS", cls.max_new_tokens),
            max_prompt_chars=_env_int(env, "BIOGPT_MAX_PROMPT_CHARS", cls.max_prompt_chars),
            max_text_chars=_env_int(env, "BIOGPT_MAX_TEXT_CHARS", cls.max_text_chars),
        )


# --------------------------------------------------------------------------------------------------------------
# Validation at the boundary: each message names the field and the allowed range.
# --------------------------------------------------------------------------------------------------------------
def check_text(value: Any, what: str, cap: int) -> str:
    """`value` cleaned by `biogpt.validation.clean_text` (control characters removed; wrong type, invalid UTF-8,
    lone surrogates, over `cap` characters or empty refused), any refusal as a `gr.Error` with its message."""
    try:
        return clean_text(value, what, cap)
    except BioGptError as exc:
        raise gr.Error(str(exc)) from None


def check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> Any:
    """`value` as an int (`integer`) or a float in [low, high]; a `gr.Error` naming `name` for anything else,
    including strings, booleans, NaN and infinities (API clients can send any JSON value)."""
    if value is None:
        raise gr.Error(f"{name} is missing.")
    try:
        check_number(name, value, integer=integer)  # type, finite, whole: no bounds, so the message below applies
    except BioGptError as exc:
        raise gr.Error(str(exc)) from None
    except OverflowError:
        pass  # an int too large for a float: out of range below (int and float compare exactly)
    if not low <= value <= high:
        shown = f"{value:g}" if not isinstance(value, int) else str(value) if abs(value) < 10**20 else "a huge number"
        raise gr.Error(f"{name} must be between {low:g} and {high:g}, got {shown}.")
    return int(value) if integer else float(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise gr.Error(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


# --------------------------------------------------------------------------------------------------------------
# The one place a generation stream is run: through the model's batching engine, so that concurrent requests
# share one forward per decoding step.
# --------------------------------------------------------------------------------------------------------------
ENGINE_ATTACHMENT = "batching-engine"
# On a ZeroGPU Space each `@spaces.GPU` call runs in a GPU worker of its own: a long-lived engine thread holding
# the model cannot live there, so generation runs solo through `stream_generate`.
_SOLO_ONLY = importlib.util.find_spec("spaces") is not None


def generation_engine(loaded: Any, max_batch_size: int = AppSettings.generate_concurrency) -> Any:
    """The `BatchingEngine` of this loaded causal LM: made on first use, closed by the manager when it unloads the
    model (it is a `LoadedModel` attachment)."""
    from biogpt.batching import BatchingEngine

    return loaded.attach(ENGINE_ATTACHMENT,
                         lambda: BatchingEngine(loaded.model, loaded.tokenizer, max_batch_size=max_batch_size))


@gpu
def run_generation_stream(loaded: Any, prompt: str, stop_event: threading.Event, params: dict,
                          max_batch_size: int = AppSettings.generate_concurrency) -> Iterator[Any]:
    """Yield `StreamDelta`s for `prompt` on the loaded causal LM until done or until `stop_event` is set.

    Greedy and sampling go through the model's batching engine (up to `max_batch_size` requests decode together);
    beam search, which the engine would run alone anyway, goes straight to `stream_generate`. Closing this iterator
    (a client that went away) cancels the request before the next step.
    """
    if params.get("num_beams", 1) > 1 or _SOLO_ONLY:
        from biogpt.generation import stream_generate

        yield from stream_generate(loaded.model, loaded.tokenizer, prompt=prompt, stop_event=stop_event, **params)
        return
    stream = generation_engine(loaded, max_batch_size).stream(prompt, stop_event=stop_event, **params)
    try:
        yield from stream
    finally:
        stream.close()


@gpu
def run_entities(loaded: Any, text: str, aggregation: str, threshold: float) -> list[dict]:
    from biogpt.tasks.entities import extract_entities

    return extract_entities(loaded.model, loaded.tokenizer, text, aggregation_strategy=aggregation,
                            threshold=threshold)


@gpu
def run_classify(loaded: Any, text: str) -> dict[str, float]:
    from biogpt.tasks.classify import classify

    return classify(loaded.model, loaded.tokenizer, text)


@gpu
def run_zero_shot(loaded: Any, fields: dict[str, str], labels: list[str], template: str) -> dict[str, float]:
    from biogpt.tasks.classify import zero_shot

    return zero_shot(loaded.model, loaded.tokenizer, fields, labels, template)


def zero_shot_presets() -> dict[str, tuple[str, str]]:
    """Ready-made zero-shot tasks: name -> (comma-separated labels, prompt template)."""
    from biogpt.tasks.classify import HOC_LABELS, HOC_TEMPLATE, PUBMEDQA_LABELS, PUBMEDQA_TEMPLATE

    return {"PubMedQA (yes / no / maybe)": (", ".join(PUBMEDQA_LABELS), PUBMEDQA_TEMPLATE),
            "Hallmarks of Cancer": (", ".join(HOC_LABELS), HOC_TEMPLATE)}


def spacy_pipelines() -> list[str]:
    """Installed spaCy pipelines, offered as entity backends (an empty list when spaCy is absent)."""
    try:
        import spacy.util
    except ImportError:
        return []
    return sorted(spacy.util.get_installed_models())


# --------------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------------
def confidence_html(prompt: str, pieces: list[tuple[str, float]]) -> str:
    """The prompt then each generated piece tinted by its probability; every string is HTML-escaped."""
    spans = "".join(
        f'<span class="wb-tok" style="background:{confidence_color(p)}" title="p = {p:.3f}">{html.escape(t)}</span>'
        for t, p in pieces
    )
    legend = ('<div class="wb-legend">Confidence: '
              f'<span style="background:{confidence_color(0.05)}">low</span>'
              f'<span style="background:{confidence_color(0.5)}">medium</span>'
              f'<span style="background:{confidence_color(0.95)}">high</span>'
              "(hover a piece for its probability)</div>")
    return f'<div class="wb-conf"><span class="wb-prompt">{html.escape(prompt)}</span>{spans}</div>{legend}'


def _fmt_bytes(count: int) -> str:
    if count < 1024**2:
        return f"{count / 1024:.0f} KiB"
    return f"{count / 1024**2:.1f} MiB" if count < 1024**3 else f"{count / 1024**3:.2f} GiB"


def is_demo(source: str) -> bool:
    return source == catalog.DEMO


def _template_fields(template: str, text: str) -> dict[str, str]:
    """The values for the template's fields: {text}, or {question} + {context} split from 'Question: … Context: …'."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - {"text", "question", "context"}
    if unknown or not names:
        raise gr.Error("The prompt template must use {text}, or {question} and {context}"
                       + (f"; it has {{{sorted(unknown)[0]}}}." if unknown else "."))
    if names <= {"text"}:
        return {"text": text.strip()}
    lowered = text.lower()
    if "context:" not in lowered:
        raise gr.Error("This template needs a question and a context: write 'Question: … Context: …'.")
    cut = lowered.index("context:")
    question = text[:cut].strip()
    if question.lower().startswith("question:"):
        question = question[len("question:"):].strip()
    return {"question": question, "context": text[cut + len("context:"):].strip(), "text": text.strip()}


# --------------------------------------------------------------------------------------------------------------
# Download files of the entities tab: bounded on disk
# --------------------------------------------------------------------------------------------------------------
ENTITY_FOLDERS_KEPT = 32  # per process; Gradio copies every returned file into its own cache before serving it
_entity_lock = threading.Lock()
_entity_count = itertools.count()
_entity_swept = False


def entity_root() -> Path:
    """This process's folder of entity downloads, under the system temp directory."""
    return Path(tempfile.gettempdir()) / f"biogpt-entities-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists and belongs to someone else
        return True
    return True


def entity_folder(keep: int = ENTITY_FOLDERS_KEPT) -> Path:
    """A new, empty folder for one request's files; the oldest beyond the newest `keep` are removed.

    So the disk holds at most `keep` folders of two files each, however many requests come: the returned paths
    only have to live until Gradio has copied them into its cache (it does so when the handler returns), so
    `keep` far above the number of concurrent requests is safe. The first call also removes the folders left by
    processes that no longer run (an app restarted many times does not pile them up either).
    """
    global _entity_swept
    root = entity_root()
    with _entity_lock:
        if not _entity_swept:
            _entity_swept = True
            for other in root.parent.glob("biogpt-entities-*"):
                pid = other.name.rsplit("-", 1)[-1]
                if other != root and pid.isdigit() and other.is_dir() and not _process_alive(int(pid)):
                    shutil.rmtree(other, ignore_errors=True)
        root.mkdir(mode=0o700, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{next(_entity_count):012d}-", dir=root))
        # Names start with a zero-padded counter, so sorting them sorts by age.
        for old in sorted(path for path in root.iterdir() if path.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


@dataclass
class Workbench:
    """State shared by all sessions (the manager, the stop events) and the handlers the UI wires up.

    What each session has chosen (model and runtime options) lives in a `gr.State` dict so that one visitor's
    choice never changes another's; the manager shares the loaded weights between sessions that chose alike.
    """

    manager: ModelManager
    settings: AppSettings = field(default_factory=AppSettings)
    _stops: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Decided once: choosing the default may probe the Hub (bounded by a short timeout).
        self.initial_source, self.initial_reason = catalog.default_source(self.settings.model,
                                                                          self.manager.cache_dir)

    # -- session model state ----------------------------------------------------------------------------------
    def default_state(self) -> dict:
        return {"source": self.initial_source, "attn_implementation": "sdpa", "dtype": "auto", "quantization": None,
                "device": "auto"}

    def spec(self, state: Optional[dict], task: str = "causal-lm", source: Optional[str] = None) -> ModelSpec:
        state = state or self.default_state()
        try:
            return ModelSpec(source or state["source"], task=task, dtype=state["dtype"],
                             attn_implementation=state["attn_implementation"], quantization=state["quantization"],
                             device=state["device"])
        except BioGptError as exc:
            raise gr.Error(str(exc)) from exc

    def _get(self, spec: ModelSpec, progress: Optional[gr.Progress] = None) -> Any:
        def report(fraction: float, done: int) -> None:
            if progress is not None:
                progress(fraction, desc=f"Downloading {spec.source} ({_fmt_bytes(done)})")

        if progress is not None:
            progress(0.0, desc=f"Loading {spec.source} on {spec.device}")
        try:
            return self.manager.get(spec, progress=report)
        except BioGptError as exc:
            raise gr.Error(f"Could not load {spec.source}: {exc}") from exc

    def preload(self) -> None:
        """Load the default causal LM (called in the background at start-up)."""
        self.manager.get(self.spec(self.default_state()))

    # -- model panel ------------------------------------------------------------------------------------------
    def load_model(self, source: str, attn_implementation: str, dtype: str, four_bit: bool, device: str,
                   state: Optional[dict] = None, progress: gr.Progress = gr.Progress()) -> tuple[dict, str, Any]:
        """Load (or reuse) the causal LM for `source` with these options; on failure the session keeps its model."""
        if source is None or (isinstance(source, str) and not source.strip()):
            raise gr.Error("The model is empty: pick one from the list or type a Hub id or a local path.")
        source = check_text(source, "model", 1_000).strip()
        check_choice("Attention backend", attn_implementation, ATTENTION)
        check_choice("Precision", dtype, tuple(value for _, value in PRECISIONS))
        new_state = {"source": source, "attn_implementation": attn_implementation, "dtype": dtype,
                     "quantization": "4bit" if four_bit else None, "device": (device or "auto").strip() or "auto"}
        spec = self.spec(new_state)
        # Refuse before loading gigabytes that could not run.
        reason = attention_unavailable_reason(spec.attn_implementation, spec.device, spec.dtype)
        if reason:
            raise gr.Error(f"flash_attention_2 is unavailable: {reason}. Choose sdpa or eager.")
        loaded = self._get(spec, progress)
        return new_state, self.status_text(new_state, loaded), gr.update(visible=is_demo(source))

    def status(self, state: Optional[dict] = None) -> str:
        """One line about the session's model: what, where, how big, how long it took to load."""
        state = state or self.default_state()
        spec = self.spec(state)
        loaded = self.manager.get(spec) if self.manager.loaded(spec) else None
        return self.status_text(state, loaded)

    def status_text(self, state: dict, loaded: Any) -> str:
        if loaded is None:
            shows_more = state["source"] == self.initial_source and not self.initial_reason.startswith(state["source"])
            note = f" — {self.initial_reason}" if shows_more else ""
            return f"**{state['source']}** · not loaded yet, loads on first use{note}"
        spec = loaded.spec
        parts = [f"**{spec.source}**", f"`{spec.device}`", spec.dtype, spec.attn_implementation,
                 _fmt_bytes(loaded.bytes)]
        if spec.quantization:
            parts.append(spec.quantization)
        parts.append(f"loaded in {loaded.load_seconds:.1f} s")
        return " · ".join(parts)

    # -- generate ---------------------------------------------------------------------------------------------
    def generate(self, prompt: str, mode: str, max_new_tokens: float, temperature: float, top_p: float,
                 top_k: float, repetition_penalty: float, no_repeat_ngram_size: float, num_beams: float,
                 seed: float, state: Optional[dict] = None,
                 request: Optional[gr.Request] = None) -> Iterator[tuple[str, str, str]]:
        """Stream (text so far, confidence HTML, stats) while the model writes; Stop ends the loop early."""
        prompt = check_text(prompt, "prompt", self.settings.max_prompt_chars)
        params = self.generation_params(mode, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                        no_repeat_ngram_size, num_beams, seed)
        spec = self.spec(state)
        stop_event = self._new_stop_event(request)
        pieces: list[tuple[str, float]] = []
        text, count, reason, truncated = "", 0, "", False
        started = time.perf_counter()
        try:
            with self.manager.use(spec) as loaded:
                if params["num_beams"] > 1:  # refuse a key/value cache over BIOGPT_MAX_BEAM_TOKENS before decoding
                    check_beam_memory(params["num_beams"], params["max_new_tokens"],
                                      prompt_tokens=len(loaded.tokenizer(prompt)["input_ids"]),
                                      max_positions=loaded.model.config.max_position_embeddings)
                stream = run_generation_stream(loaded, prompt, stop_event, params,
                                               self.settings.generate_concurrency)
                try:
                    for delta in stream:
                        count += len(delta.token_ids)
                        truncated = truncated or bool(delta.prompt_truncated)
                        if delta.text:
                            probs = list(delta.probs or [])
                            pieces.append((delta.text, min(probs) if probs else 1.0))
                            text += delta.text
                        if delta.finished:
                            reason = delta.finish_reason or ""
                        yield prompt + text, confidence_html(prompt, pieces), self._stats(count, started, None, False)
                finally:  # a client that went away closes us: cancel the request now, not when collected
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()
        except BioGptError as exc:
            raise gr.Error(str(exc)) from exc
        finally:
            self._drop_stop_event(request, stop_event)
        if stop_event.is_set():
            reason = "stopped"
        yield prompt + text, confidence_html(prompt, pieces), self._stats(count, started, reason, truncated)

    def generation_params(self, mode: str, max_new_tokens: float, temperature: float, top_p: float, top_k: float,
                          repetition_penalty: float, no_repeat_ngram_size: float, num_beams: float,
                          seed: float) -> dict:
        """The keyword arguments of `stream_generate` for this decoding mode (only those that apply)."""
        check_choice("Decoding mode", mode, MODES)
        params = {
            "max_new_tokens": check_range("Max new tokens", max_new_tokens, 1, self.settings.max_new_tokens, True),
            "repetition_penalty": check_range("Repetition penalty", repetition_penalty, 1.0, 3.0),
            "no_repeat_ngram_size": check_range("No-repeat n-gram size", no_repeat_ngram_size, 0, 10, True),
            "do_sample": mode == "sampling",
            "num_beams": check_range("Beams", num_beams, 1, 8, True) if mode == "beam" else 1,
            "truncate": True,  # a prompt longer than the context keeps its end; the stats line says so
        }
        if mode == "sampling":
            params.update(
                temperature=check_range("Temperature", temperature, 0.05, 2.0),
                top_p=check_range("Top-p", top_p, 0.05, 1.0),
                top_k=check_range("Top-k", top_k, 0, 500, True),
                seed=check_range("Seed", seed, -1, 2**31 - 1, True),
            )
            if params["seed"] < 0:  # -1 means "a fresh random seed each run"
                params["seed"] = None
        return params

    @staticmethod
    def _stats(count: int, started: float, reason: Optional[str], truncated: bool) -> str:
        seconds = time.perf_counter() - started
        rate = count / seconds if seconds > 0 else 0.0
        line = f"{count} tokens · {rate:.1f} tokens/s · {seconds:.1f} s"
        if reason:
            line += f" · finished: {reason}"
        if truncated:
            line += " · the prompt was cut to fit the model's context"
        return line

    @staticmethod
    def _session(request: Optional[gr.Request]) -> str:
        return getattr(request, "session_hash", None) or "local"

    def _new_stop_event(self, request: Optional[gr.Request]) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._stops[self._session(request)] = event
        return event

    def _drop_stop_event(self, request: Optional[gr.Request], event: threading.Event) -> None:
        with self._lock:
            if self._stops.get(self._session(request)) is event:
                del self._stops[self._session(request)]

    def stop(self, request: Optional[gr.Request] = None) -> None:
        """Tell this session's running generation to stop; the decoding loop checks the event every step."""
        with self._lock:
            event = self._stops.get(self._session(request))
        if event is not None:
            event.set()

    # -- entities ---------------------------------------------------------------------------------------------
    def entity_backends(self, state: Optional[dict] = None) -> list[tuple[str, str]]:
        """(label, value) choices: the token-classification model, then installed spaCy pipelines."""
        source = (state or self.default_state())["source"]
        first = ("demo-ner (bundled demo)", catalog.DEMO) if is_demo(source) else (source, source)
        return [first] + [(SPACY_PREFIX + name, SPACY_PREFIX + name) for name in spacy_pipelines()]

    def entities(self, text: str, backend: str, threshold: float, aggregation: str,
                 state: Optional[dict] = None) -> tuple[dict, list[list], list[str], str]:
        """Entities of `text`: highlighted spans, a table, JSON + CSV files, and a one-line summary."""
        text = check_text(text, "text", self.settings.max_text_chars)
        threshold = check_range("Score threshold", threshold, 0.0, 1.0)
        check_choice("Aggregation", aggregation, AGGREGATIONS)
        backend = (backend or "").strip() or self.entity_backends(state)[0][1]
        try:
            if backend.startswith(SPACY_PREFIX):
                from biogpt.tasks.entities import SpacyEntityBackend

                found = SpacyEntityBackend(backend[len(SPACY_PREFIX):])(text, threshold)
            else:
                with self.manager.use(self.spec(state, "token-classification", backend)) as loaded:
                    found = run_entities(loaded, text, aggregation, threshold)
        except BioGptError as exc:
            raise gr.Error(str(exc)) from exc
        rows = [[e["text"], e["label"], round(float(e["score"]), 4), e["start"], e["end"]] for e in found]
        highlighted = {"text": text,
                       "entities": [{"entity": e["label"], "start": e["start"], "end": e["end"]} for e in found]}
        labels = sorted({e["label"] for e in found})
        summary = f"{len(found)} entities" + (f" · {', '.join(labels)}" if labels else "")
        return highlighted, rows, self._entity_files(found), summary

    @staticmethod
    def _entity_files(found: list[dict]) -> list[str]:
        """entities.json and entities.csv in a fresh folder of `entity_folder()`, which keeps the newest few."""
        folder = entity_folder()
        as_json, as_csv = folder / "entities.json", folder / "entities.csv"
        clean = [{"text": e["text"], "label": e["label"], "score": float(e["score"]), "start": int(e["start"]),
                  "end": int(e["end"])} for e in found]
        as_json.write_text(json.dumps(clean, indent=2, ensure_ascii=False), encoding="utf-8")
        with as_csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label", "score", "start", "end"])
            writer.writeheader()
            writer.writerows(clean)
        return [str(as_json), str(as_csv)]

    # -- classify ---------------------------------------------------------------------------------------------
    def classifiers(self, state: Optional[dict] = None) -> list[tuple[str, str]]:
        source = (state or self.default_state())["source"]
        return [("demo-classify (bundled demo)", catalog.DEMO) if is_demo(source) else (source, source)]

    def classify(self, text: str, mode: str, classifier: str, labels: str, template: str,
                 state: Optional[dict] = None) -> dict[str, float]:
        """Label probabilities: a fine-tuned classifier's own labels, or zero-shot labels over the causal LM."""
        text = check_text(text, "text", self.settings.max_text_chars)
        check_choice("Mode", mode, ("classifier", "zero-shot"))
        if mode == "classifier":
            source = (classifier or "").strip() or self.classifiers(state)[0][1]
            try:
                with self.manager.use(self.spec(state, "sequence-classification", source)) as loaded:
                    return run_classify(loaded, text)
            except BioGptError as exc:
                raise gr.Error(str(exc)) from exc
        names = [label.strip() for label in (labels or "").split(",") if label.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise gr.Error("Zero-shot needs at least two different labels, separated by commas.")
        fields = _template_fields(template or "", text)
        try:
            with self.manager.use(self.spec(state)) as loaded:
                return run_zero_shot(loaded, fields, names, template)
        except BioGptError as exc:
            raise gr.Error(str(exc)) from exc
