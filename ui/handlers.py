"""The functions the tabs call: validate at the boundary, ask the model manager, format for the components.

No tensor code lives here: models come from `biogpt.manager`, and every request runs through the model's
`biogpt.serving.ModelServer`. Library errors (`BioGptError`) reach the user as `gr.Error`s with their specific
message (`ui.errors`), so a bad request never takes the worker down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import gradio as gr

from biogpt import catalog
from biogpt.devices import ATTENTION_BACKENDS, COMPUTE_DTYPES, attention_unavailable_reason
from biogpt.manager import LoadedModel, ModelManager, ModelSpec
from biogpt.settings import Settings
from biogpt.tasks.classify import template_fields
from biogpt.tasks.entities import STRATEGIES, SpacyEntityBackend, spacy_pipelines
from biogpt.validation import check_choice, check_value, clean_text, generation_params

from . import gpu
from .downloads import entity_files
from .errors import handler, shown_to_user
from .formatting import confidence_html, fmt_bytes, loaded_status, stats_line

AGGREGATIONS = ("simple",) + tuple(s for s in STRATEGIES if s != "simple")
SPACY_PREFIX = "spacy:"


@gpu
def _entities(loaded: LoadedModel, text: str, aggregation: str, threshold: float) -> list[dict]:
    return loaded.server.entities(text, aggregation, threshold)


@gpu
def _classify(loaded: LoadedModel, text: str) -> dict[str, float]:
    return loaded.server.classify(text)


@gpu
def _zero_shot(loaded: LoadedModel, fields: dict[str, str], labels: list[str], template: str) -> dict[str, float]:
    return loaded.server.zero_shot(fields, labels, template)


def is_demo(source: str) -> bool:
    return source == catalog.DEMO


@dataclass
class Workbench:
    """State shared by all sessions (the manager, the stop events) and the handlers the UI wires up.

    What each session has chosen (model and runtime options) lives in a `gr.State` dict so that one visitor's
    choice never changes another's; the manager shares the loaded weights between sessions that chose alike.
    """

    manager: ModelManager
    settings: Settings = field(default_factory=Settings)
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
        with shown_to_user():
            return ModelSpec(source or state["source"], task=task, dtype=state["dtype"],
                             attn_implementation=state["attn_implementation"], quantization=state["quantization"],
                             device=state["device"])

    def _get(self, spec: ModelSpec, progress: Optional[gr.Progress] = None) -> LoadedModel:
        def report(fraction: float, done: int) -> None:
            if progress is not None:
                progress(fraction, desc=f"Downloading {spec.source} ({fmt_bytes(done)})")

        if progress is not None:
            progress(0.0, desc=f"Loading {spec.source} on {spec.device}")
        with shown_to_user(f"Could not load {spec.source}: "):
            return self.manager.get(spec, progress=report)

    def preload(self) -> None:
        """Load the default causal LM (called in the background at start-up)."""
        self.manager.get(self.spec(self.default_state()))

    # -- model panel ------------------------------------------------------------------------------------------
    @handler
    def load_model(self, source: str, attn_implementation: str, dtype: str, four_bit: bool, device: str,
                   state: Optional[dict] = None, progress: gr.Progress = gr.Progress()) -> tuple[dict, str, Any]:
        """Load (or reuse) the causal LM for `source` with these options; on failure the session keeps its model."""
        if source is None or (isinstance(source, str) and not source.strip()):
            raise gr.Error("The model is empty: pick one from the list or type a Hub id or a local path.")
        source = clean_text(source, "model", 1_000).strip()
        check_choice("Attention backend", attn_implementation, ATTENTION_BACKENDS)
        check_choice("Precision", dtype, COMPUTE_DTYPES)
        new_state = {"source": source, "attn_implementation": attn_implementation, "dtype": dtype,
                     "quantization": "4bit" if four_bit else None, "device": (device or "auto").strip() or "auto"}
        spec = self.spec(new_state)
        # Refuse before loading gigabytes that could not run.
        reason = attention_unavailable_reason(spec.attn_implementation, spec.device, spec.dtype)
        if reason:
            raise gr.Error(f"flash_attention_2 is unavailable: {reason}. Choose sdpa or eager.")
        loaded = self._get(spec, progress)
        return new_state, loaded_status(loaded), gr.update(visible=is_demo(source))

    def status(self, state: Optional[dict] = None) -> str:
        """One line about the session's model: what, where, how big, how long it took to load."""
        state = state or self.default_state()
        spec = self.spec(state)
        if self.manager.loaded(spec):
            return loaded_status(self.manager.get(spec))
        shows_more = state["source"] == self.initial_source and not self.initial_reason.startswith(state["source"])
        note = f" — {self.initial_reason}" if shows_more else ""
        return f"**{state['source']}** · not loaded yet, loads on first use{note}"

    # -- generate ---------------------------------------------------------------------------------------------
    @handler
    def generate(self, prompt: str, mode: str, max_new_tokens: float, temperature: float, top_p: float,
                 top_k: float, repetition_penalty: float, no_repeat_ngram_size: float, num_beams: float,
                 seed: float, state: Optional[dict] = None,
                 request: Optional[gr.Request] = None) -> Iterator[tuple[str, str, str]]:
        """Stream (text so far, confidence HTML, stats) while the model writes; Stop ends the loop early."""
        prompt = clean_text(prompt, "prompt", self.settings.max_prompt_chars)
        params = generation_params(mode, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size, num_beams=num_beams,
            seed=seed), self.settings)
        spec = self.spec(state)
        stop_event = self._new_stop_event(request)
        pieces: list[tuple[str, float]] = []
        text, count, reason, truncated = "", 0, "", False
        started = time.perf_counter()
        try:
            with self.manager.use(spec) as loaded:
                stream = loaded.server.stream(prompt, params, stop_event)
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
                        yield (prompt + text, confidence_html(prompt, pieces),
                               stats_line(count, time.perf_counter() - started, None, False))
                finally:  # a client that went away closes us: cancel the request now, not when collected
                    stream.close()
        finally:
            self._drop_stop_event(request, stop_event)
        if stop_event.is_set():
            reason = "stopped"
        yield (prompt + text, confidence_html(prompt, pieces),
               stats_line(count, time.perf_counter() - started, reason, truncated))

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

    @handler
    def entities(self, text: str, backend: str, threshold: float, aggregation: str,
                 state: Optional[dict] = None) -> tuple[dict, list[list], list[str], str]:
        """Entities of `text`: highlighted spans, a table, JSON + CSV files, and a one-line summary."""
        text = clean_text(text, "text", self.settings.max_input_chars)
        threshold = check_value("Score threshold", threshold, 0.0, 1.0)
        check_choice("Aggregation", aggregation, AGGREGATIONS)
        backend = (backend or "").strip() or self.entity_backends(state)[0][1]
        if backend.startswith(SPACY_PREFIX):
            found = [e for e in SpacyEntityBackend(backend[len(SPACY_PREFIX):])(text) if e["score"] >= threshold]
        else:
            with self.manager.use(self.spec(state, "token-classification", backend)) as loaded:
                found = _entities(loaded, text, aggregation, threshold)
        rows = [[e["text"], e["label"], round(float(e["score"]), 4), e["start"], e["end"]] for e in found]
        highlighted = {"text": text,
                       "entities": [{"entity": e["label"], "start": e["start"], "end": e["end"]} for e in found]}
        labels = sorted({e["label"] for e in found})
        summary = f"{len(found)} entities" + (f" · {', '.join(labels)}" if labels else "")
        return highlighted, rows, entity_files(found), summary

    # -- classify ---------------------------------------------------------------------------------------------
    def classifiers(self, state: Optional[dict] = None) -> list[tuple[str, str]]:
        source = (state or self.default_state())["source"]
        return [("demo-classify (bundled demo)", catalog.DEMO) if is_demo(source) else (source, source)]

    @handler
    def classify(self, text: str, mode: str, classifier: str, labels: str, template: str,
                 state: Optional[dict] = None) -> dict[str, float]:
        """Label probabilities: a fine-tuned classifier's own labels, or zero-shot labels over the causal LM."""
        text = clean_text(text, "text", self.settings.max_input_chars)
        check_choice("Mode", mode, ("classifier", "zero-shot"))
        if mode == "classifier":
            source = (classifier or "").strip() or self.classifiers(state)[0][1]
            with self.manager.use(self.spec(state, "sequence-classification", source)) as loaded:
                return _classify(loaded, text)
        names = [label.strip() for label in (labels or "").split(",") if label.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise gr.Error("Zero-shot needs at least two different labels, separated by commas.")
        fields = template_fields(template or "", text)
        with self.manager.use(self.spec(state)) as loaded:
            return _zero_shot(loaded, fields, names, template)
