"""The functions the tabs call: validate at the boundary, ask the model manager, format for the components.

No tensor code lives here: models come from `biogpt.manager`, and every request runs through the model's
`biogpt.serving.ModelServer`. Library errors (`BioGptError`) reach the user as `gr.Error`s with their specific
message (`ui.errors`), so a bad request never takes the worker down. Every input an API client can send is checked
here (type, length, range), since such a client bypasses the browser's limits; the handlers that run a model are
`@limited`: they count against their client's allowance of running and waiting jobs (`ui.fairness`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import gradio as gr

from biogpt import catalog
from biogpt.access import check_upload
from biogpt.annotate.readers import detect_format
from biogpt.devices import (
    ATTENTION_BACKENDS,
    COMPUTE_DTYPES,
    attention_unavailable_reason,
)
from biogpt.errors import InputError
from biogpt.hub import format_bytes
from biogpt.manager import LoadedModel, ModelManager, ModelSpec
from biogpt.settings import Settings
from biogpt.tasks.classify import template_fields
from biogpt.tasks.entities import STRATEGIES, SpacyEntityBackend, spacy_pipelines
from biogpt.validation import check_choice, check_value, clean_text, generation_params

from . import gpu
from .downloads import annotated_files, entity_files, relation_files
from .errors import handler, shown_to_user
from .fairness import limited
from .formatting import confidence_html, count, loaded_status, stats_line

logger = logging.getLogger(__name__)
AGGREGATIONS = ("simple",) + tuple(s for s in STRATEGIES if s != "simple")
SPACY_PREFIX = "spacy:"
WEIGHTS = ("none", "4bit", "int8", "int4")  # the model panel's weight storage choices (ModelSpec.quantization)
MAX_NAME_CHARS = 1_000  # a model id, a path, a device or a backend name


def _optional_text(value: Any, what: str, max_chars: int = MAX_NAME_CHARS) -> Optional[str]:
    """A free-text choice that may be left empty (model, backend, device, labels): None when empty, else the
    cleaned text (`clean_text`: type, length, encoding)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return clean_text(value, what, max_chars).strip()


@gpu
def _entities(loaded: LoadedModel, text: str, aggregation: str, threshold: float) -> list[dict]:
    return loaded.server.entities(text, aggregation, threshold)


@gpu
def _relations(loaded: LoadedModel, text: str) -> dict:
    return loaded.server.relations(text)


@gpu
def _hallmarks(loaded: LoadedModel, text: str) -> dict:
    return loaded.server.hallmarks(text)


@gpu
def _answer(loaded: LoadedModel, question: str, context: str) -> dict:
    return loaded.server.answer(question, context)


@gpu
def _classify(loaded: LoadedModel, text: str) -> dict[str, float]:
    return loaded.server.classify(text)


@gpu
def _annotate_file(loaded: LoadedModel, path: str, task: str, params: dict[str, Any], settings: Settings,
                   hook: Any) -> Any:
    return loaded.server.annotate_file(path, task, params, {"id": loaded.spec.source}, settings.max_upload_rows,
                                       settings.max_input_chars, hook)


@gpu
def _zero_shot(loaded: LoadedModel, fields: dict[str, str], labels: list[str], template: str) -> dict[str, float]:
    return loaded.server.zero_shot(fields, labels, template)


@dataclass
class Progress:
    """What a running generation has produced so far (see `Workbench.decode`)."""

    prompt: str
    prompt_ids: list[int]
    loaded: LoadedModel
    token_ids: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    text: str = ""
    pieces: list[tuple[str, float]] = field(default_factory=list)  # the streamed text pieces, each with confidence
    reason: str = ""  # why it ended, once finished
    truncated: bool = False
    started: float = field(default_factory=time.perf_counter)
    ended: Optional[float] = None

    def add(self, delta: Any) -> None:
        self.token_ids += list(delta.token_ids)
        self.probs += [float(p) for p in delta.probs or []]
        self.truncated = self.truncated or bool(delta.prompt_truncated)
        if delta.text:
            probs = list(delta.probs or [])
            self.pieces.append((delta.text, min(probs) if probs else 1.0))
            self.text += delta.text
        if delta.finished:
            self.reason = delta.finish_reason or ""
            self.ended = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    def stats(self) -> str:
        return stats_line(len(self.token_ids), self.seconds, self.reason or None, self.truncated)


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
                progress(fraction, desc=f"Downloading {spec.source} ({format_bytes(done)})")

        if progress is not None:
            progress(0.0, desc=f"Loading {spec.source} on {spec.device}")
        with shown_to_user(f"Could not load {spec.source}: ", typed=(spec.source,)):
            return self.manager.get(spec, progress=report)

    def preload(self) -> None:
        """Load the default causal LM (called in the background at start-up)."""
        self.manager.get(self.spec(self.default_state()))

    # -- model panel ------------------------------------------------------------------------------------------
    def _load(self, source: str, attn_implementation: str, dtype: str, weights: str, device: str,
              progress: Optional[gr.Progress]) -> tuple[dict, LoadedModel]:
        """The session state for these options and the loaded model; raises what the user should read."""
        if source is None or (isinstance(source, str) and not source.strip()):
            raise InputError("The model is empty: pick one from the list or type a Hub id or a local path.")
        source = clean_text(source, "model", 1_000).strip()
        check_choice("Attention backend", attn_implementation, ATTENTION_BACKENDS)
        check_choice("Precision", dtype, COMPUTE_DTYPES)
        check_choice("Weights", weights, WEIGHTS)
        new_state = {"source": source, "attn_implementation": attn_implementation, "dtype": dtype,
                     "quantization": None if weights == "none" else weights,
                     "device": _optional_text(device, "device") or "auto"}
        spec = self.spec(new_state)
        # Refuse before loading gigabytes that could not run.
        reason = attention_unavailable_reason(spec.attn_implementation, spec.device, spec.dtype)
        if reason:
            raise InputError(f"flash_attention_2 is unavailable: {reason}. Choose sdpa or eager.")
        return new_state, self._get(spec, progress)

    @limited
    @handler
    def load_model(self, source: str, attn_implementation: str, dtype: str, weights: str, device: str,
                   state: Optional[dict] = None, progress: gr.Progress = gr.Progress()) -> tuple[dict, str, Any]:
        """Load (or reuse) the causal LM for `source` with these options; on failure the session keeps its model."""
        new_state, loaded = self._load(source, attn_implementation, dtype, weights, device, progress)
        return new_state, loaded_status(loaded), gr.update(visible=is_demo(new_state["source"]))

    @limited
    def load_model_in_panel(self, source: str, attn_implementation: str, dtype: str, weights: str, device: str,
                            state: Optional[dict] = None, progress: gr.Progress = gr.Progress()
                            ) -> tuple[dict, Any, Any, str, Any]:
        """`load_model` for the page: (state, model box, description, status, demo notice). A failure is a warning,
        the model box goes back to the session's model and the status says what is really loaded and why the new one
        is not: no error badge is left on the panel."""
        state = state or self.default_state()
        try:
            with shown_to_user(typed=[source] if isinstance(source, str) else []):
                new_state, loaded = self._load(source, attn_implementation, dtype, weights, device, progress)
        except gr.Error as exc:
            logger.info("Load refused: %s", exc.message)
            gr.Warning(exc.message)
            return (state, gr.update(value=state["source"]), gr.update(), f"{self.status(state)}  \n⚠ {exc.message}",
                    gr.update())
        return (new_state, gr.update(), gr.update(), loaded_status(loaded),
                gr.update(visible=is_demo(new_state["source"])))

    def status_report(self, state: Optional[dict] = None) -> dict[str, Any]:
        """The session's model as data (the /status endpoint): what it is, whether it is loaded, how it runs."""
        state = state or self.default_state()
        spec = self.spec(state)
        report = {"source": spec.source, "loaded": self.manager.loaded(spec), "device": spec.device,
                  "dtype": spec.dtype, "attn_implementation": spec.attn_implementation,
                  "quantization": spec.quantization, "demo": is_demo(spec.source)}
        if report["loaded"]:
            loaded = self.manager.get(spec)
            report.update(bytes=loaded.bytes, load_seconds=round(loaded.load_seconds, 3))
        return report

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
    def decode(self, spec: ModelSpec, prompt: str, params: dict, request: Optional[gr.Request],
               prompt_ids: Optional[list[int]] = None) -> Iterator["Progress"]:
        """Run one generation on the session's model and yield its `Progress` after every delta; the last one is
        finished (`reason` set: "stopped" when the session's Stop was pressed). Continues `prompt_ids` when given
        (a version branched from a token the user picked), else the text `prompt`."""
        stop_event = self._new_stop_event(request)
        try:
            with self.manager.use(spec) as loaded:
                progress = Progress(prompt, prompt_ids or loaded.server.prompt_ids(prompt, params), loaded)
                stream = loaded.server.stream(None if prompt_ids else prompt, params, stop_event, prompt_ids)
                try:
                    for delta in stream:
                        progress.add(delta)
                        yield progress
                finally:  # a client that went away closes us: cancel the request now, not when collected
                    stream.close()
        finally:
            self._drop_stop_event(request, stop_event)
        if stop_event.is_set():
            progress.reason = "stopped"
        yield progress

    @limited
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
        for progress in self.decode(self.spec(state), prompt, params, request):
            yield prompt + progress.text, confidence_html(prompt, progress.pieces), progress.stats()

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

    @limited
    @handler
    def entities(self, text: str, backend: str, threshold: float, aggregation: str,
                 state: Optional[dict] = None) -> tuple[dict, list[list], list[str], str]:
        """Entities of `text`: highlighted spans, a table, JSON + CSV files, and a one-line summary."""
        text = clean_text(text, "text", self.settings.max_input_chars)
        threshold = check_value("Score threshold", threshold, 0.0, 1.0)
        check_choice("Aggregation", aggregation, AGGREGATIONS)
        backend = _optional_text(backend, "backend") or self.entity_backends(state)[0][1]
        if backend.startswith(SPACY_PREFIX):
            name, installed = backend[len(SPACY_PREFIX):], spacy_pipelines()
            if name not in installed:  # spacy.load would also open any directory or import any package by name
                raise InputError(f"spaCy pipeline {name!r} is not installed here"
                                 + (f"; choose one of {', '.join(installed)}." if installed else "."))
            found = [e for e in SpacyEntityBackend(name)(text) if e["score"] >= threshold]
        else:
            with shown_to_user(typed=(backend,)), \
                    self.manager.use(self.spec(state, "token-classification", backend)) as loaded:
                found = _entities(loaded, text, aggregation, threshold)
        rows = [[e["text"], e["label"], round(float(e["score"]), 4), e["start"], e["end"]] for e in found]
        highlighted = {"text": text,
                       "entities": [{"entity": e["label"], "start": e["start"], "end": e["end"]} for e in found]}
        labels = sorted({e["label"] for e in found})
        summary = count(len(found), "entity", "entities") + (f" · {', '.join(labels)}" if labels else "")
        return highlighted, rows, entity_files(found), summary

    def relation_models(self) -> list[tuple[str, str]]:
        """(label, value) choices of relation-extraction models: the paper's, from the catalog."""
        return [(f"{entry.name} ({entry.paper_task})", entry.name) for entry in catalog.paper_models(
            *catalog.RELATION_TASKS)]

    @limited
    @handler
    def relations(self, text: str, model: str, state: Optional[dict] = None
                  ) -> tuple[dict, list[list], list[list], list[str], str, str]:
        """What a relation-extraction model (one of the paper's) finds in `text`: its entities highlighted by type,
        a (head, relation, tail) table, an entity table, JSON + CSV files, a summary, and the sentence it generated
        (shown as plain text: the model's own words, for transparency)."""
        text = clean_text(text, "text", self.settings.max_input_chars)
        source = _optional_text(model, "relation model") or self.relation_models()[0][1]
        with shown_to_user(typed=(source,)), self.manager.use(self.spec(state, source=source)) as loaded:
            result = _relations(loaded, text)
        relations = [[r["head"], r["relation"], r["tail"]] for r in result["relations"]]
        entities = [[e["text"], e["type"], e["start"], e["end"]] for e in result["entities"]]
        highlighted = {"text": text, "entities": [{"entity": e["type"], "start": e["start"], "end": e["end"]}
                                                   for e in result["entities"]]}
        summary = ("The model's answer could not be read as relations (it did not follow its template)."
                   if result["failed"] else f"{count(len(relations), 'relation')} · {count(len(entities), 'entity mention')}")
        return highlighted, relations, entities, relation_files(result["relations"]), summary, result["generated"]

    # -- many texts at once (a file) ------------------------------------------------------------------------------
    def _annotate_upload(self, file: Any, spec: ModelSpec, task: str, params: dict[str, Any],
                         progress: Optional[gr.Progress]) -> tuple[list[str], str]:
        """Every text of the uploaded `file` through `task` on the model of `spec`: the annotated files, a summary."""
        if not isinstance(file, str) or not file:
            raise InputError("Choose a file first: TXT (one text per line), CSV or TSV (a 'text' column), JSONL "
                             "(a 'text', or 'title' and 'abstract') or PubTator.")
        path = check_upload(file, self.settings)
        if detect_format(path) is None:
            raise InputError(f"{path.name} is not a file the app reads: use TXT (one text per line), CSV, TSV, JSONL "
                             "or PubTator (.gz too).")

        def hook(done: int, total: int) -> None:
            if progress is not None:
                progress(done / max(total, 1), desc=f"Annotating: {done:,} of {total:,} model windows")

        with shown_to_user(typed=(spec.source,)), self.manager.use(spec) as loaded:
            output = _annotate_file(loaded, str(path), task, params, self.settings, hook)
        name = path.name.split(".")[0] or "texts"
        summary = f"{count(output.documents, 'text')} annotated"
        if output.rejects:
            summary += f" · {count(output.rejects, 'row')} skipped (the reasons are in {name}.rejects.jsonl)"
        return annotated_files(name, output.files), summary

    @limited
    @handler
    def entities_file(self, file: Any, backend: str, threshold: float, aggregation: str, state: Optional[dict] = None,
                      progress: gr.Progress = gr.Progress()) -> tuple[list[str], str]:
        """Entities of every text of an uploaded file: records (JSONL), PubTator, and the skipped rows."""
        threshold = check_value("Score threshold", threshold, 0.0, 1.0)
        check_choice("Aggregation", aggregation, AGGREGATIONS)
        backend = _optional_text(backend, "backend") or self.entity_backends(state)[0][1]
        if backend.startswith(SPACY_PREFIX):
            raise InputError("Files are annotated by an NER model, not by spaCy: choose the model as the NER model.")
        params = {"aggregation_strategy": aggregation, "threshold": threshold, "whole_words": True}
        return self._annotate_upload(file, self.spec(state, "token-classification", backend), "ner", params,
                                     progress)

    @limited
    @handler
    def relations_file(self, file: Any, model: str, state: Optional[dict] = None,
                       progress: gr.Progress = gr.Progress()) -> tuple[list[str], str]:
        """Relations in every text of an uploaded file: records (JSONL), PubTator, and the skipped rows."""
        source = _optional_text(model, "relation model") or self.relation_models()[0][1]
        return self._annotate_upload(file, self.spec(state, source=source), "relations", {}, progress)

    @limited
    @handler
    def classify_file(self, file: Any, classifier: str, state: Optional[dict] = None,
                      progress: gr.Progress = gr.Progress()) -> tuple[list[str], str]:
        """Label probabilities of every text of an uploaded file: records (JSONL), CSV, and the skipped rows."""
        source = _optional_text(classifier, "classifier") or self.classifiers(state)[0][1]
        return self._annotate_upload(file, self.spec(state, "sequence-classification", source), "classify", {},
                                     progress)

    # -- classify ---------------------------------------------------------------------------------------------
    def classifiers(self, state: Optional[dict] = None) -> list[tuple[str, str]]:
        source = (state or self.default_state())["source"]
        return [("demo-classify (bundled demo)", catalog.DEMO) if is_demo(source) else (source, source)]

    @limited
    @handler
    def classify(self, text: str, mode: str, classifier: str, labels: str, template: str,
                 state: Optional[dict] = None) -> dict[str, float]:
        """Label probabilities: a fine-tuned classifier's own labels, or zero-shot labels over the causal LM."""
        text = clean_text(text, "text", self.settings.max_input_chars)
        check_choice("Mode", mode, ("classifier", "zero-shot"))
        if mode == "classifier":
            source = _optional_text(classifier, "classifier") or self.classifiers(state)[0][1]
            with shown_to_user(typed=(source,)), \
                    self.manager.use(self.spec(state, "sequence-classification", source)) as loaded:
                return _classify(loaded, text)
        labels = _optional_text(labels, "label list", self.settings.max_prompt_chars) or ""
        names = [label.strip() for label in labels.split(",") if label.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise InputError("Zero-shot needs at least two different labels, separated by commas.")
        if len(names) > self.settings.max_labels:
            raise InputError(f"Zero-shot takes at most {self.settings.max_labels} labels; got {len(names)}.")
        template = _optional_text(template, "prompt template", self.settings.max_prompt_chars) or ""
        fields = template_fields(template, text)
        with self.manager.use(self.spec(state)) as loaded:
            return _zero_shot(loaded, fields, names, template)

    def _classifier_config(self, classifier: str, state: Optional[dict]) -> Any:
        source = _optional_text(classifier, "classifier") or self.classifiers(state)[0][1]
        with shown_to_user(typed=(source,)):
            return self.manager.config(self.spec(state, "sequence-classification", source))

    def classifier_is_multi_label(self, classifier: str, state: Optional[dict] = None) -> bool:
        """Whether the classifier's labels are each true or not (sigmoid per label) rather than one per text."""
        config = self._classifier_config(classifier, state)
        return config.problem_type == "multi_label_classification" or config.num_labels == 1

    @limited
    def classifier_labels(self, classifier: str, state: Optional[dict] = None) -> str:
        """What a classifier can answer, shown before it runs: its labels, and whether they exclude each other."""
        try:
            config = self._classifier_config(classifier, state)
        except gr.Error as exc:
            return f"Its labels cannot be read yet: {exc.message}"
        multi = config.problem_type == "multi_label_classification" or config.num_labels == 1
        kind = ("several labels per text, each with its own probability" if multi
                else "one label per text: the probabilities add up to 100%")
        return f"**Labels** ({kind}): " + " · ".join(config.id2label.values())

    def paper_models(self, task: str) -> list[tuple[str, str]]:
        """(label, value) choices of the paper's fine-tuned models for `task` (pubmedqa, hoc)."""
        return [(entry.name, entry.name) for entry in catalog.paper_models(task)]

    @limited
    @handler
    def hallmarks(self, text: str, model: str, state: Optional[dict] = None) -> dict[str, Any]:
        """The Hallmarks of Cancer a HoC model (the paper's) gives `text`: labels, per-label probabilities, answer."""
        text = clean_text(text, "text", self.settings.max_input_chars)
        source = _optional_text(model, "HoC model") or self.paper_models("hoc")[0][1]
        with shown_to_user(typed=(source,)), self.manager.use(self.spec(state, source=source)) as loaded:
            return _hallmarks(loaded, text)

    @limited
    @handler
    def answer_question(self, question: str, context: str, model: str, state: Optional[dict] = None
                        ) -> dict[str, Any]:
        """A PubMedQA model's (the paper's) answer to `question` given `context`, with its three probabilities."""
        question = clean_text(question, "question", self.settings.max_prompt_chars)
        context = clean_text(context, "context", self.settings.max_input_chars)
        source = _optional_text(model, "PubMedQA model") or self.paper_models("pubmedqa")[0][1]
        with shown_to_user(typed=(source,)), self.manager.use(self.spec(state, source=source)) as loaded:
            return _answer(loaded, question, context)
