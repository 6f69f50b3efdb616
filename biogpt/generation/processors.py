"""Planning a generation and processing its logits.

`plan_lengths` turns the knobs and the prompt into concrete lengths (how many tokens may follow the prompt, where
eos becomes allowed, whether the prompt had to be cut); `build_processors` makes the logits processors of a request
(repetition penalty, n-gram ban, bad words, min length, temperature, top-k, top-p) in transformers' order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import GenerationParameterError
from .config import DEFAULT_NEW_TOKENS, GenerationConfig

logger = logging.getLogger(__name__)

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Lengths: what the prompt is and how many tokens may follow it
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    input_ids: torch.LongTensor  # (batch, prompt_length), left-padded
    attention_mask: Optional[torch.Tensor]  # None when no row is padded (the model's fast path)
    max_new_tokens: int
    min_length: int  # total length (prompt included) before which eos is banned, as transformers counts it
    prompt_truncated: bool

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]


def plan_lengths(model: Any, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
          config: GenerationConfig, truncate_prompt: bool) -> Plan:
    device = model.device
    start = model.config.eos_token_id if model.config.eos_token_id is not None else 2  # `</s>`, BioGPT's BOS
    if input_ids is None or input_ids.numel() == 0:
        rows = 1 if input_ids is None or input_ids.dim() < 2 else max(input_ids.shape[0], 1)
        input_ids, attention_mask = torch.full((rows, 1), start, dtype=torch.long), None
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    input_ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None and config.pad_token_id is not None and config.pad_token_id not in config.eos_token_ids:
        # As transformers: without a mask, pad tokens in the prompt are padding.
        padding = input_ids == config.pad_token_id
        attention_mask = (~padding).long() if bool(padding.any()) else None
    if attention_mask is not None:
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
        if attention_mask.shape != input_ids.shape:
            raise GenerationParameterError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must match "
                                           f"input_ids {tuple(input_ids.shape)}.")
        if bool(attention_mask.all()):
            attention_mask = None

    window = model.config.max_position_embeddings
    if config.max_new_tokens is not None:
        requested = config.max_new_tokens
    elif config.max_length is not None:
        # transformers still generates one token when the prompt already fills max_length
        requested = max(1, config.max_length - input_ids.shape[1])
    else:
        requested = DEFAULT_NEW_TOKENS

    truncated = False
    if input_ids.shape[1] >= window:
        if not truncate_prompt:
            raise GenerationParameterError(
                f"The prompt is {input_ids.shape[1]} tokens long but the model has {window} positions "
                f"(max_position_embeddings), which leaves no room to generate: shorten the prompt or pass "
                f"truncate_prompt=True (streaming: truncate=True) to keep its last tokens.")
        # Keep the leading `</s>` and the last tokens, leaving room for the request (at most half the window).
        keep = window - min(requested, window // 2)
        leading = input_ids[:, :1]
        input_ids = torch.cat([leading, input_ids[:, input_ids.shape[1] - keep + 1:]], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask[:, :1], attention_mask[:, -(keep - 1):]], dim=1)
        truncated = True
    room = window - input_ids.shape[1]
    if requested > room:
        logger.warning("Asked for %d new tokens but only %d fit in max_position_embeddings=%d after the %d-token "
                       "prompt: generating at most %d.", requested, room, window, input_ids.shape[1], room)
    min_length = (input_ids.shape[1] + config.min_new_tokens) if config.min_new_tokens is not None \
        else config.min_length
    return Plan(input_ids, attention_mask, min(requested, room), min_length, truncated)




# ----------------------------------------------------------------------------------------------------------------
# Logits processors: (ids so far, scores) -> scores, in transformers' order
# ----------------------------------------------------------------------------------------------------------------
def build_processors(config: GenerationConfig, plan: Plan, prompt_mask: Optional[torch.Tensor],
                vocab_size: int, beam: bool) -> list[Processor]:
    """`prompt_mask` (rows, prompt_length) marks real prompt tokens; left padding never counts as context."""
    processors: list[Processor] = []
    eos = config.eos_token_ids
    prompt_length = plan.prompt_length

    def real_tokens(ids: torch.Tensor) -> torch.Tensor:
        if prompt_mask is None:
            return torch.ones_like(ids, dtype=torch.bool)
        generated = torch.ones(ids.shape[0], ids.shape[1] - prompt_length, dtype=torch.bool, device=ids.device)
        return torch.cat([prompt_mask.bool(), generated], dim=1)

    if config.repetition_penalty != 1.0:
        penalty = config.repetition_penalty

        def repetition(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            # Pads point at an extra column that is dropped afterwards.
            ids = ids.masked_fill(~real_tokens(ids), scores.shape[-1])
            extended = F.pad(scores, (0, 1))
            seen = extended.gather(1, ids)
            extended = extended.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))
            return extended[:, :-1]
        processors.append(repetition)

    if config.no_repeat_ngram_size > 0:
        n = config.no_repeat_ngram_size

        def no_repeat_ngram(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            rows = [row[keep].tolist() for row, keep in zip(ids, real_tokens(ids))]
            scores = scores.clone()
            for i, tokens in enumerate(rows):
                if len(tokens) + 1 < n:
                    continue
                tail = tuple(tokens[len(tokens) - n + 1:])
                banned = [tokens[j + n - 1] for j in range(len(tokens) - n + 1) if tuple(tokens[j:j + n - 1]) == tail]
                scores[i, banned] = -float("inf")
            return scores
        processors.append(no_repeat_ngram)

    if config.bad_words_ids:
        sequences = [list(s) for s in config.bad_words_ids if not (len(s) == 1 and s[0] in eos)]
        too_large = [t for s in sequences for t in s if t >= vocab_size]
        if too_large:
            raise GenerationParameterError(f"bad_words_ids contains ids {too_large} outside the vocabulary "
                                           f"(0..{vocab_size - 1}).")
        always = [s[0] for s in sequences if len(s) == 1]
        conditional = [s for s in sequences if len(s) > 1]

        def bad_words(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            banned = torch.zeros_like(scores, dtype=torch.bool)
            banned[:, always] = True
            for seq in conditional:
                prefix = seq[:-1]
                if len(prefix) <= ids.shape[1]:
                    matches = (ids[:, -len(prefix):] == torch.tensor(prefix, device=ids.device)).all(dim=1)
                    banned[:, seq[-1]] |= matches
            return scores.masked_fill(banned, -float("inf"))
        processors.append(bad_words)

    if eos and plan.min_length > 0:
        eos_index = torch.tensor(eos, dtype=torch.long, device=plan.input_ids.device)

        def min_length(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return scores.index_fill(1, eos_index, -float("inf")) if ids.shape[1] < plan.min_length else scores
        processors.append(min_length)

    if config.do_sample:
        # Beam sampling must keep a non-eos candidate alive, as transformers does.
        keep_at_least = len(eos) + 1 if beam else 1
        if config.temperature != 1.0:
            processors.append(lambda ids, scores: scores / config.temperature)
        if config.top_k:
            top_k = max(config.top_k, keep_at_least)

            def top_k_filter(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                kth_best = torch.topk(scores, min(top_k, scores.shape[-1]))[0][..., -1:]
                return scores.masked_fill(scores < kth_best, -float("inf"))
            processors.append(top_k_filter)
        if config.top_p < 1.0:
            def top_p_filter(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                ascending, order = torch.sort(scores, descending=False)
                cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
                drop = cumulative <= (1 - config.top_p)  # the least likely tokens holding 1 - top_p of the mass
                drop[..., -keep_at_least:] = False
                return scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
            processors.append(top_p_filter)
    return processors


def apply_processors(processors: list[Processor], ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for process in processors:
        scores = process(ids, scores)
    return scores


def greedy_tokens(scores: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(dim=-1)` of (rows, vocab) scores: each row's first maximum (a NaN counts as one), as torch picks
    it. float32 scores on the CPU go through NumPy, whose vectorised argmax over BioGPT's 42k-token vocabulary takes
    4 us where torch's takes 40-65 (the largest cost of picking a token after the forward)."""
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        return torch.from_numpy(scores.numpy().argmax(axis=-1))
    return scores.argmax(dim=-1)


def make_generator(seed: Optional[int], generator: Optional[torch.Generator],
                    device: torch.device) -> Optional[torch.Generator]:
    if seed is not None and generator is not None:
        raise GenerationParameterError("Pass either seed or generator, not both.")
    if seed is None:
        return generator
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise GenerationParameterError(f"seed must be an integer; got {seed!r}.")
    return torch.Generator(device=device).manual_seed(seed)


