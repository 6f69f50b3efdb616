"""Serving one loaded model to many concurrent callers: the policy behind the app's endpoints.

`ModelServer(model, tokenizer, settings)` decides how each request runs, so that a front end (the Gradio app, or
any other) only validates its inputs, calls one method and formats the result:

- `stream(prompt, params)`: greedy and sampled requests join the model's `BatchingEngine` (concurrent requests
  share one batched forward per decoding step); beam searches run on the engine's own beam worker, so they never
  stall the streaming rows. Parameters are checked first (`biogpt.validation.check_generation_params`), beam
  searches included against the key/value-memory guard (`BIOGPT_MAX_BEAM_TOKENS`).
  Closing the returned iterator cancels the request before its next step.
- `entities`, `classify`, `zero_shot`: the task functions of `biogpt.tasks` on this model.

On a ZeroGPU Space (where the `spaces` package is installed) each GPU call runs in a worker of its own, where a
long-lived engine thread holding the model cannot live: generation then runs solo through `stream_generate`.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Mapping, Optional

from .batching import BatchingEngine
from .generation import StreamDelta, stream_generate
from .settings import Settings, zero_gpu
from .tasks.classify import classify, zero_shot
from .tasks.entities import extract_entities
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

    def stream(self, prompt: str, params: Mapping[str, Any],
               stop_event: Optional[threading.Event] = None) -> Iterator[StreamDelta]:
        """`StreamDelta`s of the continuation of `prompt` with `stream_generate` keyword arguments `params`.

        `params` are checked against `biogpt.validation`'s table and this deployment's caps first, whoever sends
        them; a beam search over BIOGPT_MAX_BEAM_TOKENS is refused before anything is decoded.
        """
        beams = params.get("num_beams", 1) if isinstance(params, Mapping) else 1
        prompt_tokens = len(self.tokenizer(prompt)["input_ids"]) if isinstance(beams, int) and beams > 1 else None
        params = check_generation_params(params, self.settings, prompt_tokens=prompt_tokens,
                                         max_positions=self.model.config.max_position_embeddings)
        if not self.batching:
            return stream_generate(self.model, self.tokenizer, prompt=prompt, stop_event=stop_event, **params)
        return self.engine.stream(prompt, stop_event=stop_event, **params)

    def entities(self, text: str, aggregation: str = "simple", threshold: float = 0.0) -> list[dict]:
        return extract_entities(self.model, self.tokenizer, text, aggregation_strategy=aggregation,
                                threshold=threshold)

    def classify(self, text: str) -> dict[str, float]:
        return classify(self.model, self.tokenizer, text)

    def zero_shot(self, fields: Mapping[str, str], labels: list[str], template: str) -> dict[str, float]:
        return zero_shot(self.model, self.tokenizer, fields, labels, template)

    def close(self) -> None:
        """Stop the engine (running and queued requests end 'cancelled'); called when the model is unloaded."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
