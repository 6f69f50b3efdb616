"""Serving one loaded model to many concurrent callers: the policy behind the app's endpoints.

`ModelServer(model, tokenizer, settings)` decides how each request runs, so that a front end (the Gradio app, or
any other) only validates its inputs, calls one method and formats the result:

- `stream(prompt, params)`: greedy and sampled requests join the model's `BatchingEngine` (concurrent requests
  share one batched forward per decoding step); beam searches run on the engine's own beam worker, so they never
  stall the streaming rows. Parameters are checked first (`biogpt.validation.check_generation_params`), beam
  searches included against the key/value-memory guard (`BIOGPT_MAX_BEAM_TOKENS`).
  Closing the returned iterator cancels the request before its next step.
- `entities`, `classify`, `zero_shot`, and for the paper's fine-tuned models `relations`, `hallmarks` and
  `answer`: the task functions of `biogpt.tasks` on this model.
- `annotate_file`: every text of an uploaded file through one task, batched across texts (`biogpt.annotate`).

On a ZeroGPU Space (where the `spaces` package is installed) each GPU call runs in a worker of its own, where a
long-lived engine thread holding the model cannot live: generation then runs solo through `stream_generate`.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Mapping, Optional

from .annotate import ReaderOptions, annotate_file
from .annotate.registry import BatchHook
from .annotate.shards import ShardOutput
from .batching import BatchingEngine
from .explain import Attribution, StepAlternatives, attribution, token_alternatives, token_spans
from .generation import StreamDelta, prepare_stream, stream_generate
from .settings import Settings, zero_gpu
from .tasks.classify import classify, zero_shot
from .tasks.entities import extract_entities
from .tasks.hoc import classify_hallmarks
from .tasks.pubmedqa import answer_question
from .tasks.relations import extract_relations
from .validation import check_generation_params


class ModelServer:
    """The serving policy for one loaded model (see the module docstring). Thread-safe."""

    def __init__(self, model: Any, tokenizer: Any, settings: Optional[Settings] = None,
                 batching: Optional[bool] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or Settings.from_env()
        self.batching = not zero_gpu() if batching is None else batching
        self._engine: Optional[BatchingEngine] = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> BatchingEngine:
        """The model's batching engine, made on first use (its worker threads start with the first request)."""
        with self._lock:
            if self._engine is None:
                self._engine = BatchingEngine(self.model, self.tokenizer,
                                              max_batch_size=self.settings.generate_concurrency)
            return self._engine

    def stream(self, prompt: Optional[str], params: Mapping[str, Any],
               stop_event: Optional[threading.Event] = None,
               prompt_ids: Optional[list[int]] = None) -> Iterator[StreamDelta]:
        """`StreamDelta`s of the continuation of `prompt` (or of the token ids `prompt_ids`, with the leading
        `</s>`: e.g. a run continued from a token the user picked) with `stream_generate` keyword arguments `params`.

        `params` are checked against `biogpt.validation`'s table and this deployment's caps first, whoever sends
        them; a beam search over BIOGPT_MAX_BEAM_TOKENS is refused before anything is decoded.
        """
        beams = params.get("num_beams", 1) if isinstance(params, Mapping) else 1
        prompt_tokens = None
        if isinstance(beams, int) and beams > 1:
            prompt_tokens = len(prompt_ids) if prompt_ids is not None else len(self.tokenizer(prompt)["input_ids"])
        params = check_generation_params(params, self.settings, prompt_tokens=prompt_tokens,
                                         max_positions=self.model.config.max_position_embeddings)
        if not self.batching:
            return stream_generate(self.model, self.tokenizer, prompt=prompt, input_ids=prompt_ids,
                                   stop_event=stop_event, **params)
        return self.engine.stream(prompt, input_ids=prompt_ids, stop_event=stop_event, **params)

    def prompt_ids(self, prompt: str, params: Mapping[str, Any]) -> list[int]:
        """The token ids a run of `prompt` continues (with `</s>`, cut as `params` would cut an over-long prompt)."""
        return prepare_stream(self.model, self.tokenizer, prompt, **params).prompt_ids

    def entities(self, text: str, aggregation: str = "simple", threshold: float = 0.0) -> list[dict]:
        return extract_entities(self.model, self.tokenizer, text, aggregation_strategy=aggregation,
                                threshold=threshold, words=True)

    def classify(self, text: str) -> dict[str, float]:
        return classify(self.model, self.tokenizer, text)

    def zero_shot(self, fields: Mapping[str, str], labels: list[str], template: str) -> dict[str, float]:
        return zero_shot(self.model, self.tokenizer, fields, labels, template)

    def token_spans(self, prompt_ids: list[int], generated_ids: list[int]) -> list[tuple[int, int]]:
        """Each generated token's (start, end) in the continuation text (they tile it exactly)."""
        return [(span.start, span.end) for span in token_spans(self.tokenizer, prompt_ids, generated_ids)]

    def alternatives(self, prompt_ids: list[int], generated_ids: list[int], position: int,
                     k: int = 8) -> StepAlternatives:
        """What else the model considered at generated `position`: its top-`k` tokens, raw probabilities."""
        return token_alternatives(self.model, self.tokenizer, prompt_ids, generated_ids, k, positions=[position])[0]

    def attribution(self, prompt_ids: list[int], generated_ids: list[int], position: int,
                    prompt_text: Optional[str] = None) -> Attribution:
        """How much each word before it influenced the generated token at `position` (gradient × input)."""
        return attribution(self.model, self.tokenizer, prompt_ids, generated_ids, position, prompt_text=prompt_text)

    def relations(self, text: str) -> dict[str, Any]:
        """A relation-extraction model's relations in `text`, with every entity's character spans."""
        return extract_relations(self.model, self.tokenizer, text)

    def hallmarks(self, text: str) -> dict[str, Any]:
        """A HoC model's hallmarks of `text`: the labels it writes and each label's own probability."""
        return classify_hallmarks(self.model, self.tokenizer, text)

    def answer(self, question: str, context: str) -> dict[str, Any]:
        """A PubMedQA model's answer (yes / no / maybe) and the probabilities of the three."""
        return answer_question(self.model, self.tokenizer, question, context)

    def annotate_file(self, path: str, task: str, params: Mapping[str, Any], info: Mapping[str, str],
                      max_records: int, max_chars: int, hook: BatchHook) -> ShardOutput:
        """The annotated files (records JSONL, PubTator or CSV, rejects) of an uploaded file's texts: at most
        `max_records` of them, each at most `max_chars` long (a longer one is rejected with the reason)."""
        return annotate_file(self.model, self.tokenizer, path, task, max_records=max_records,
                             reader=ReaderOptions(max_chars=max_chars), info=info, hook=hook, **params)

    def close(self) -> None:
        """Stop the engine (running and queued requests end 'cancelled'); called when the model is unloaded."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
