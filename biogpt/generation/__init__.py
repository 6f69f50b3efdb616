"""Text generation: greedy, sampling and beam search over a preallocated `KVCache`, plus token streaming.

Reading order: `config` (`GenerationConfig`: the knobs, with transformers' names and defaults), `processors`
(`plan_lengths` turns the knobs and the prompt into concrete lengths; the logits processors), `decoding` (one loop
for greedy and sampling, one token per step; beam search; `generate`), then `streaming` (`stream_generate` and the
text rules of streaming).

Semantics follow `transformers.generation` (v5) so that outputs are token-identical on the same weights, with three
deliberate differences: an empty prompt starts from `</s>` (BioGPT's document separator, what the tokenizer
prefixes) rather than `<s>`; prompt + generated length never exceeds `max_position_embeddings` (new tokens are
clamped; a prompt with no room left raises `GenerationParameterError` or, with `truncate_prompt=True`, is cut);
and left padding is never seen by the repetition penalty or the n-gram ban, so a padded batch decodes like its rows
one by one.

Everything here works on any BioGPT model object (it calls `model(...)` and reads `model.config`); the model
classes get `generate` and `stream` from `GenerationMixin`.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

from .config import GENERATION_CONFIG_NAME, GenerationConfig, GenerationResult
from .decoding import generate
from .processors import greedy_tokens
from .streaming import DeltaStreamer, StreamDelta, StreamRequest, continuation_text, prepare_stream, stream_generate


class GenerationMixin:
    """`generate` and `stream` for a causal LM class."""

    def generate(self, input_ids: Optional[torch.LongTensor] = None, **kwargs: Any) -> torch.LongTensor:
        """Greedy, beam or sampled continuation of `input_ids` (see `biogpt.generation.generate`)."""
        return generate(self, input_ids=input_ids, **kwargs)

    def stream(self, input_ids: Optional[torch.LongTensor] = None, **kwargs: Any) -> Iterator[StreamDelta]:
        """Yield text deltas as tokens are produced (see `biogpt.generation.stream_generate`)."""
        return stream_generate(self, input_ids=input_ids, **kwargs)


__all__ = ["GENERATION_CONFIG_NAME", "DeltaStreamer", "GenerationConfig", "GenerationMixin", "GenerationResult",
           "StreamDelta", "StreamRequest", "continuation_text", "generate", "prepare_stream", "stream_generate"]
