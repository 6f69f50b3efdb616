"""Text generation: greedy, sampling and beam search over a preallocated `KVCache`, plus token streaming.

Reading order: `GenerationConfig` (the knobs, with transformers' names and defaults), `_plan` (turns the knobs and
the prompt into concrete lengths), the logits processors, `_greedy_or_sample_steps` (one loop, one token per step),
`_beam_search`, then `generate` and `stream_generate`.

Semantics follow `transformers.generation` (v5) so that outputs are token-identical on the same weights, with three
deliberate differences: an empty prompt starts from `</s>` (BioGPT's document separator, what the tokenizer
prefixes) rather than `<s>`; prompt + generated length never exceeds `max_position_embeddings` (new tokens are
clamped; a prompt with no room left raises `GenerationParameterError` or, with `truncate_prompt=True`, is cut);
and left padding is never seen by the repetition penalty or the n-gram ban, so a padded batch decodes like its rows
one by one.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
import torch.nn.functional as F

from .errors import GenerationParameterError
from .modeling import KVCache, StaticKVCache, static_decode_step

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"
DEFAULT_NEW_TOKENS = 20  # transformers 5: with no max_length anywhere, generate 20 new tokens
# Accepted for drop-in compatibility; they change nothing here (the cache is always used, the result is a tensor).
_ALWAYS_HARMLESS = {"use_cache", "synced_gpus"}
_HARMLESS_WHEN_EMPTY = {"streamer", "logits_processor", "stopping_criteria"}
_UNSUPPORTED_WHEN_TRUE = {"output_scores", "output_logits", "output_attentions", "output_hidden_states"}
Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GenerationConfig:
    """Decoding parameters with transformers' names and defaults (`generation_config.json` on the Hub).

    `max_length=None` means "20 new tokens" as in transformers 5. Unknown fields read from a file are kept in
    `extra` and written back, so a round-trip loses nothing.
    """

    max_length: Optional[int] = None
    max_new_tokens: Optional[int] = None
    min_length: int = 0
    min_new_tokens: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    num_return_sequences: int = 1
    bad_words_ids: Optional[list[list[int]]] = None
    bos_token_id: Optional[int] = 0
    eos_token_id: Union[int, list[int], None] = 2
    pad_token_id: Optional[int] = 1
    return_dict_in_generate: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)} - {"extra"}

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        """Token ids from the model's config (BioGPT: bos 0, pad 1, eos 2)."""
        return cls(bos_token_id=getattr(config, "bos_token_id", 0), eos_token_id=getattr(config, "eos_token_id", 2),
                   pad_token_id=getattr(config, "pad_token_id", 1))

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "GenerationConfig":
        data = {**data, **overrides}
        known = {k: v for k, v in data.items() if k in cls.field_names()}
        extra = {k: v for k, v in data.items() if k not in cls.field_names() and k != "extra"}
        config = cls(**known, extra=extra)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        return {**copy.deepcopy(self.extra), **data}

    @classmethod
    def from_pretrained(cls, source: Union[str, os.PathLike], config_file_name: str = GENERATION_CONFIG_NAME,
                        **hub: Any) -> "GenerationConfig":
        """Read `generation_config.json` from a directory, a file path or a Hub repo id."""
        from .hub import resolve_file

        path = Path(source) if Path(source).is_file() else resolve_file(source, config_file_name, **hub)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> None:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        with open(Path(save_directory) / GENERATION_CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the known fields; return the kwargs that are not fields."""
        unused = {}
        for key, value in kwargs.items():
            if key in self.field_names():
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def validate(self) -> None:
        """Raise `GenerationParameterError` naming the first out-of-range parameter.

        Floats must be finite (NaN or infinity in temperature, top_p, repetition_penalty or length_penalty would
        turn every probability into NaN), token ids must be ints (2.0 is refused, not silently used as an index)
        and `num_beams` is capped at 64: each beam is a full row of the key/value cache, and no published decoding
        recipe uses more (an API that serves untrusted requests should cap it far lower, see
        `biogpt.validation.Limits`).
        """
        import math

        max_beams = 64

        def bad(name: str, allowed: str) -> GenerationParameterError:
            got = repr(getattr(self, name))
            got = got if len(got) <= 40 else got[:39] + "…"  # a message echoes what was sent, never megabytes of it
            return GenerationParameterError(f"{name} must be {allowed}; got {got}.")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if is_number(value) and not math.isfinite(value):
                raise bad(name, "a finite number")
        for name in ("max_length", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise bad(name, "a positive integer or None")
        if self.min_new_tokens is not None and (not is_int(self.min_new_tokens) or self.min_new_tokens < 0):
            raise bad("min_new_tokens", "an integer >= 0 or None")
        if not is_int(self.min_length) or self.min_length < 0:
            raise bad("min_length", "an integer >= 0")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise bad("num_beams", "an integer >= 1")
        if self.num_beams > max_beams:
            raise bad("num_beams", f"at most {max_beams} (each beam holds a full key/value cache)")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise bad("num_return_sequences", "an integer >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"<= num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise bad("num_return_sequences", "1 for greedy decoding (use do_sample=True or num_beams > 1)")
        if not is_number(self.temperature) or self.temperature <= 0:
            raise bad("temperature", "a number > 0 (use do_sample=False for greedy decoding)")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            raise bad("top_k", "an integer >= 0 (0 or None disables it)")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a number > 0 (1.0 disables it)")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "an integer >= 0 (0 disables it)")
        if not is_number(self.length_penalty):
            raise bad("length_penalty", "a number")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise bad("early_stopping", "True, False or 'never'")
        if self.bad_words_ids is not None and not (
                isinstance(self.bad_words_ids, (list, tuple)) and all(
                    isinstance(seq, (list, tuple)) and seq and all(is_int(t) and t >= 0 for t in seq)
                    for seq in self.bad_words_ids)):
            raise bad("bad_words_ids", "a list of non-empty lists of token ids")
        for name in ("eos_token_id", "pad_token_id"):
            ids = getattr(self, name)
            ids = ids if isinstance(ids, (list, tuple)) and name == "eos_token_id" else [ids]
            if not all(i is None or (is_int(i) and i >= 0) for i in ids):
                raise bad(name, "a token id (an integer >= 0)" + (", a list of them" if name == "eos_token_id" else "")
                          + " or None")



@dataclass
class GenerationResult:
    """What `generate(..., return_dict_in_generate=True)` returns."""

    sequences: torch.LongTensor
    prompt_length: int
    prompt_truncated: bool = False


def _resolve_config(model: Any, generation_config: Optional[GenerationConfig],
                    kwargs: dict[str, Any]) -> GenerationConfig:
    base = generation_config or getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig.from_model_config(model.config)
    if not isinstance(config, GenerationConfig):  # e.g. a transformers GenerationConfig or a dict
        data = config if isinstance(config, dict) else config.to_dict()
        config = GenerationConfig.from_dict({k: v for k, v in data.items() if v is not None})
    unused = config.update(**kwargs)
    for name in list(unused):
        value = unused[name]
        harmless = (name in _ALWAYS_HARMLESS or (name in _HARMLESS_WHEN_EMPTY and not value)
                    or (name in _UNSUPPORTED_WHEN_TRUE and not value))
        if harmless:
            del unused[name]
    if unused:
        names = ", ".join(sorted(unused))
        raise GenerationParameterError(
            f"Unknown or unsupported generation argument(s): {names}. Supported: "
            f"{', '.join(sorted(GenerationConfig.field_names()))}, generator, seed.")
    if config.top_k is None:
        config.top_k = 0
    config.validate()
    return config


# ----------------------------------------------------------------------------------------------------------------
# Lengths: what the prompt is and how many tokens may follow it
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    input_ids: torch.LongTensor  # (batch, prompt_length), left-padded
    attention_mask: Optional[torch.Tensor]  # None when no row is padded (the model's fast path)
    max_new_tokens: int
    min_length: int  # total length (prompt included) before which eos is banned, as transformers counts it
    prompt_truncated: bool

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]


def _plan(model: Any, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
          config: GenerationConfig, truncate_prompt: bool) -> _Plan:
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
    return _Plan(input_ids, attention_mask, min(requested, room), min_length, truncated)


# ----------------------------------------------------------------------------------------------------------------
# Logits processors: (ids so far, scores) -> scores, in transformers' order
# ----------------------------------------------------------------------------------------------------------------
def _processors(config: GenerationConfig, plan: _Plan, prompt_mask: Optional[torch.Tensor],
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
        def min_length(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if ids.shape[1] < plan.min_length:
                scores = scores.clone()
                scores[:, eos] = -float("inf")
            return scores
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


def _apply(processors: list[Processor], ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for process in processors:
        scores = process(ids, scores)
    return scores


def _make_generator(seed: Optional[int], generator: Optional[torch.Generator],
                    device: torch.device) -> Optional[torch.Generator]:
    if seed is not None and generator is not None:
        raise GenerationParameterError("Pass either seed or generator, not both.")
    if seed is None:
        return generator
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise GenerationParameterError(f"seed must be an integer; got {seed!r}.")
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------
# Decoding loops
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Step:
    sequences: torch.Tensor  # (rows, prompt + max_new_tokens) buffer; valid up to `length`
    length: int
    tokens: torch.Tensor  # (rows,) the tokens just chosen (pad for rows already finished)
    scores: torch.Tensor  # (rows, vocab) processed scores the tokens were chosen from
    unfinished: torch.Tensor  # (rows,) bool, after this step


@torch.no_grad()
def _greedy_or_sample_steps(model: Any, plan: _Plan, config: GenerationConfig,
                            generator: Optional[torch.Generator], static_cache: bool = False,
                            compile: bool = False) -> Iterator[_Step]:
    """Prefill once, then one forward per new token; yields after every token. Closing it frees the cache.

    `static_cache=True` runs the decode steps through `static_decode_step` (fixed shapes: the whole preallocated
    cache, a key mask, the write slot as a tensor), which CUDA graphs can capture; `compile=True` also wraps that
    step in `torch.compile(mode="reduce-overhead")` (compiled once per model and reused).
    """
    input_ids, mask = plan.input_ids, plan.attention_mask
    if config.num_return_sequences > 1:  # sampling several continuations per prompt: repeat the rows
        input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
        mask = mask.repeat_interleave(config.num_return_sequences, dim=0) if mask is not None else None
    rows, prompt_length = input_ids.shape
    total = prompt_length + plan.max_new_tokens
    device = input_ids.device
    pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_ids or [0])[0]
    eos = torch.tensor(config.eos_token_ids, dtype=torch.long, device=device)
    processors = _processors(config, plan, mask, model.config.vocab_size, beam=False)

    sequences = torch.full((rows, total), pad, dtype=torch.long, device=device)
    sequences[:, :prompt_length] = input_ids
    full_mask = None
    if mask is not None:  # generated positions are always attended; the buffer avoids a cat per step
        full_mask = torch.ones(rows, total, dtype=torch.long, device=device)
        full_mask[:, :prompt_length] = mask
    cache = (StaticKVCache if static_cache else KVCache).for_model(model, rows, total)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    try:
        logits = model(input_ids, attention_mask=full_mask[:, :prompt_length] if full_mask is not None else None,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        if static_cache:
            step = _compiled_step(model) if compile else static_decode_step
            key_mask = torch.zeros(rows, total, dtype=torch.bool, device=device)
            key_mask[:, :prompt_length] = mask.bool() if mask is not None else True
            # the next token's position: the number of real tokens before it (left padding does not count)
            positions = (mask.sum(dim=1, keepdim=True) if mask is not None
                         else torch.full((rows, 1), prompt_length, dtype=torch.long, device=device))
            cache.index = torch.full((1,), prompt_length, dtype=torch.long, device=device)
        for length in range(prompt_length, total):
            scores = _apply(processors, sequences[:, :length], logits.float())
            if config.do_sample:
                tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
            else:
                tokens = scores.argmax(dim=-1)
            if eos.numel():
                tokens = torch.where(unfinished, tokens, pad)
                unfinished = unfinished & ~torch.isin(tokens, eos)
            sequences[:, length] = tokens
            yield _Step(sequences, length + 1, tokens, scores, unfinished)
            # The one host sync per token: stop as soon as every row has produced eos.
            if length + 1 == total or (eos.numel() and not bool(unfinished.any())):
                return
            if static_cache:
                key_mask[:, length] = True
                logits = step(model, tokens[:, None], positions, key_mask, cache)
                positions += 1
                cache.index += 1
                cache.length += 1
                continue
            logits = model(tokens[:, None], attention_mask=full_mask[:, :length + 1] if full_mask is not None
                           else None, past_key_values=cache, use_cache=True).logits[:, -1]
    finally:
        del cache  # release the buffers now, even when the consumer stops early


_COMPILED_STEPS: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def _compiled_step(model: Any) -> Callable:
    """`static_decode_step` under torch.compile(mode="reduce-overhead"), built once per model object."""
    compiled = _COMPILED_STEPS.get(model)
    if compiled is None:
        compiled = _COMPILED_STEPS[model] = torch.compile(static_decode_step, mode="reduce-overhead", dynamic=False)
    return compiled


@torch.no_grad()
def _beam_search(model: Any, plan: _Plan, config: GenerationConfig,
                 generator: Optional[torch.Generator]) -> torch.Tensor:
    """transformers' vectorised beam search: per prompt keep `num_beams` running and `num_beams` finished beams.

    Each step scores every (beam, token) continuation, takes the best 2*num_beams (so that num_beams remain even if
    some end), moves those that end (eos or max length) to the finished set with score / length**length_penalty,
    and continues with the best num_beams that did not end.
    """
    batch, prompt_length = plan.input_ids.shape
    beams = config.num_beams
    total = prompt_length + plan.max_new_tokens
    device = plan.input_ids.device
    vocab = model.config.vocab_size
    pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_ids or [0])[0]
    eos = torch.tensor(config.eos_token_ids, dtype=torch.long, device=device)
    candidates = max(2, 1 + eos.numel()) * beams
    first_beams = torch.arange(candidates, device=device) < beams
    rows = torch.arange(batch, device=device).repeat_interleave(beams)  # beam row -> prompt
    mask = plan.attention_mask[rows] if plan.attention_mask is not None else None
    processors = _processors(config, plan, mask, vocab, beam=True)

    running = torch.full((batch, beams, total), pad, dtype=torch.long, device=device)
    running[:, :, :prompt_length] = plan.input_ids[:, None]
    running_scores = torch.full((batch, beams), -1e9, device=device)
    running_scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step one
    finished = running.clone()
    finished_scores = torch.full((batch, beams), -1e9, device=device)
    finished_lengths = torch.full((batch, beams), prompt_length, dtype=torch.long, device=device)
    is_finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)

    full_mask = None
    if mask is not None:
        full_mask = torch.ones(batch * beams, total, dtype=torch.long, device=device)
        full_mask[:, :prompt_length] = mask
    # Prefill each prompt once, then copy its cache rows to its beams.
    cache = KVCache.for_model(model, batch, total)
    logits = model(plan.input_ids, attention_mask=plan.attention_mask, past_key_values=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1][rows]
    cache.reorder(rows)
    try:
        for length in range(prompt_length, total):
            log_probs = F.log_softmax(logits.float(), dim=-1)
            log_probs = _apply(processors, running[:, :, :length].reshape(batch * beams, length), log_probs)
            totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, beams * vocab)
            if config.do_sample:
                picked = torch.multinomial(totals.softmax(dim=-1), candidates, generator=generator)
                picked_scores, order = totals.gather(1, picked).sort(dim=-1, descending=True)
                picked = picked.gather(1, order)
            else:
                picked_scores, picked = torch.topk(totals, candidates)
            parent, tokens = picked // vocab, picked % vocab
            extended = running.gather(1, parent[:, :, None].expand(-1, -1, total)).clone()
            extended[:, :, length] = tokens
            ends = torch.isin(tokens, eos) | (length + 1 >= total)

            # Continue with the best candidates that did not end.
            alive_scores = picked_scores + ends.float() * -1e9
            keep = torch.topk(alive_scores, beams)[1]
            running = extended.gather(1, keep[:, :, None].expand(-1, -1, total))
            running_scores = alive_scores.gather(1, keep)
            beam_parents = parent.gather(1, keep)

            # Candidates among the top num_beams that ended compete with the finished beams.
            newly_finished = ends & first_beams
            normalised = picked_scores / ((length + 1 - prompt_length) ** config.length_penalty)
            if config.early_stopping is True:
                normalised = normalised + is_finished.all(dim=1, keepdim=True).float() * -1e9
            normalised = normalised + (~improvable).float() * -1e9 + (~newly_finished).float() * -1e9
            merged_scores = torch.cat([finished_scores, normalised], dim=1)
            best = torch.topk(merged_scores, beams)[1]
            finished = torch.cat([finished, extended], dim=1).gather(1, best[:, :, None].expand(-1, -1, total))
            finished_scores = merged_scores.gather(1, best)
            lengths = torch.cat([finished_lengths, torch.full_like(ends, length + 1, dtype=torch.long)], dim=1)
            finished_lengths = lengths.gather(1, best)
            is_finished = torch.cat([is_finished, newly_finished], dim=1).gather(1, best)

            # Can a running beam still beat the worst finished one? (transformers' heuristic, incl. "never")
            if config.early_stopping == "never" and config.length_penalty > 0:
                best_length = total - prompt_length
            else:
                best_length = length + 1 - prompt_length
            best_possible = running_scores[:, :1] / (best_length ** config.length_penalty)
            worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0], -1e9)
            improvable = improvable & (best_possible > worst_finished).any(dim=1, keepdim=True)
            done = (not bool(improvable.any()) or (config.early_stopping is True and bool(is_finished.all()))
                    or bool(ends.all()))
            if done:
                break
            offsets = torch.arange(batch, device=device)[:, None] * beams
            cache.reorder((beam_parents + offsets).view(-1))
            step_tokens = running[:, :, length].reshape(-1, 1)
            logits = model(step_tokens, attention_mask=full_mask[:, :length + 1] if full_mask is not None else None,
                           past_key_values=cache, use_cache=True).logits[:, -1]
    finally:
        del cache

    returned = config.num_return_sequences
    lengths = finished_lengths[:, :returned].reshape(-1)
    sequences = finished[:, :returned].reshape(batch * returned, total)
    return sequences[:, :int(lengths.max())]


# ----------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------
def generate(model: Any, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
             generation_config: Optional[GenerationConfig] = None, *, seed: Optional[int] = None,
             generator: Optional[torch.Generator] = None, truncate_prompt: bool = False,
             static_cache: bool = False, compile: bool = False,
             **kwargs: Any) -> Union[torch.LongTensor, GenerationResult]:
    """Continue `input_ids` (batch, length), left-padded where `attention_mask` is 0; returns prompt + new tokens.

    Rows that finish early are padded with `pad_token_id`. `return_dict_in_generate=True` returns a
    `GenerationResult` (with `.sequences` and `.prompt_truncated`).

    `static_cache=True` (greedy/sampling; opt-in, meant for GPUs) decodes with fixed-shape steps over the whole
    preallocated cache, the same tokens as the default path; `compile=True` (implies it) also captures the step
    with `torch.compile(mode="reduce-overhead")` (CUDA graphs on a GPU; the first call pays the compilation).
    """
    config = _resolve_config(model, generation_config, kwargs)
    plan = _plan(model, input_ids, attention_mask, config, truncate_prompt)
    rng = _make_generator(seed, generator, plan.input_ids.device)
    # inference_mode skips autograd's version counting and view tracking on every op of every step; the result is
    # cloned out of it so that callers get an ordinary tensor (writable in place outside inference mode).
    with torch.inference_mode():
        if config.num_beams > 1:
            sequences = _beam_search(model, plan, config, rng)
        else:
            last = None
            for last in _greedy_or_sample_steps(model, plan, config, rng, static_cache=static_cache or compile,
                                                compile=compile):
                pass
            sequences = last.sequences[:, :last.length]
    sequences = sequences.clone()
    if config.return_dict_in_generate:
        return GenerationResult(sequences, plan.prompt_length, plan.prompt_truncated)
    return sequences


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class StreamDelta:
    """One piece of a streamed continuation.

    `text` is new, final text: the concatenation of every delta's `text` is exactly `continuation_text(...)` of
    the finished sequence, and no later token changes text already yielded. `token_ids`/`probs` are the tokens
    produced since the previous delta and the probability each had under the processed distribution it was drawn
    from (temperature, top-k/p, penalties applied).
    """

    text: str
    token_ids: list[int]
    probs: list[float]
    finished: bool = False
    finish_reason: Optional[str] = None  # "length", "eos", "stop_string" or "cancelled" once finished
    prompt_truncated: bool = False


def continuation_text(tokenizer: Any, prompt_ids: list[int], generated_ids: list[int],
                      decoded_prompt: Optional[str] = None) -> str:
    """The continuation as it reads in context: decode(prompt + generated) minus the decoded prompt.

    Decoding the whole sequence matters because Moses detokenization is context-dependent ("for" + "." is
    "for.", "for" + "the" is "for the"). Should the prompt's own text ever render differently in context, only the
    part it shares with the decoded prompt is removed. Streaming passes `decoded_prompt` (the prompt alone, decoded
    once per request) so that each token costs one decode, not two.
    """
    full = tokenizer.decode(list(prompt_ids) + list(generated_ids), skip_special_tokens=True)
    prompt = decoded_prompt if decoded_prompt is not None else tokenizer.decode(list(prompt_ids),
                                                                                 skip_special_tokens=True)
    shared = 0
    for a, b in zip(full, prompt):
        if a != b:
            break
        shared += 1
    return full[shared:]


def _stable_prefix_end(tokenizer: Any, generated_ids: list[int]) -> int:
    """How many generated tokens form text that no later token can change.

    A BPE piece ending in `</w>` ends a word. The last incomplete word can still grow, and the last complete word's
    rendering (spacing, quotes, contractions) may still depend on what follows, so both are held back. Moses also
    glues the words on both sides of an aggressive-hyphen joiner such as `@-@` ("anti @-@ cancer" -> "anti-cancer"),
    so a word next to a held-back joiner is held back too.
    """
    pieces = tokenizer.convert_ids_to_tokens(generated_ids)
    word_ends, words, current = [], [], ""
    for i, piece in enumerate(pieces):
        current += piece
        if piece.endswith("</w>"):
            word_ends.append(i + 1)
            words.append(current[:-len("</w>")])
            current = ""
    stable_words = len(words) - 1
    while stable_words > 0 and (_is_joiner(words[stable_words - 1]) or _is_joiner(words[stable_words])):
        stable_words -= 1
    return word_ends[stable_words - 1] if stable_words > 0 else 0


def _is_joiner(word: str) -> bool:
    return len(word) >= 3 and word.startswith("@") and word.endswith("@") and not any(c.isspace() for c in word)


class DeltaStreamer:
    """Turns one request's chosen tokens, one at a time, into `StreamDelta`s: the text rules of streaming.

    `push(token_id, prob)` returns the delta of that token: the newly stable text (a word is held back until no
    later token can change it, see `_stable_prefix_end`), or, when the token ends the request (eos, the
    `max_new_tokens`-th token, or a stop string now in the text), the finished delta with all the text left.
    `finish(reason)` ends the request from outside (e.g. "cancelled") with the text not yet emitted. Both
    `stream_generate` and `biogpt.batching.BatchingEngine` stream through this class, so their deltas are identical.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], *, eos_token_ids: Any = (),
                 max_new_tokens: Optional[int] = None, stop_strings: Any = (), prompt_truncated: bool = False):
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.decoded_prompt = tokenizer.decode(self.prompt_ids, skip_special_tokens=True)
        self.eos_token_ids = set(eos_token_ids or ())
        self.max_new_tokens = max_new_tokens
        self.stop_strings = list(stop_strings or ())
        self.prompt_truncated = prompt_truncated
        self.generated: list[int] = []
        self.emitted = ""  # text yielded so far, always a prefix of the final continuation
        self.finished = False

    def text(self, generated: Optional[list[int]] = None) -> str:
        """The continuation of `generated` (all tokens so far by default) as it reads after the prompt."""
        return continuation_text(self.tokenizer, self.prompt_ids, self.generated if generated is None else generated,
                                 self.decoded_prompt)

    def push(self, token_id: int, prob: float) -> StreamDelta:
        if self.finished:
            raise RuntimeError("This stream has finished; no more tokens can be pushed.")
        token_id, prob = int(token_id), float(prob)
        self.generated.append(token_id)
        reason = None
        if token_id in self.eos_token_ids:
            reason = "eos"
        elif self.max_new_tokens is not None and len(self.generated) >= self.max_new_tokens:
            reason = "length"
        if self.stop_strings:
            text = self.text()
            hits = [text.find(s) + len(s) for s in self.stop_strings if s in text]
            if hits:
                end = max(min(hits), len(self.emitted))
                return self._end(text[len(self.emitted):end], [token_id], [prob], "stop_string")
        if reason is not None:
            return self._end(self.text()[len(self.emitted):], [token_id], [prob], reason)
        stable = self.text(self.generated[:_stable_prefix_end(self.tokenizer, self.generated)])
        new_text = stable[len(self.emitted):] if stable.startswith(self.emitted) else ""
        self.emitted += new_text
        return StreamDelta(new_text, [token_id], [prob], False, None, self.prompt_truncated)

    def finish(self, reason: str) -> StreamDelta:
        """The last delta when the request ends without a token of its own (`reason`: e.g. "cancelled")."""
        if self.finished:
            raise RuntimeError("This stream has already finished.")
        text = self.text() if self.generated else ""
        return self._end(text[len(self.emitted):], [], [], reason)

    def _end(self, text: str, token_ids: list[int], probs: list[float], reason: str) -> StreamDelta:
        self.finished = True
        self.emitted += text
        return StreamDelta(text, token_ids, probs, True, reason, self.prompt_truncated)


@dataclass
class StreamRequest:
    """A validated streaming request: what `prepare_stream` returns, for `stream_generate` and the batching engine.

    `plan` (prompt ids (1, n) after truncation, its mask, `max_new_tokens`...) and `config` are resolved as
    `generate` resolves them; `rng` is the request's own generator (from `seed`/`generator`) or None.
    """

    tokenizer: Any
    config: GenerationConfig
    plan: Any  # generation's length plan: .input_ids, .attention_mask, .max_new_tokens, .prompt_length ...
    rng: Optional[torch.Generator]
    stop_strings: list[str]

    @property
    def prompt_ids(self) -> list[int]:
        return self.plan.input_ids[0].tolist()

    @property
    def prompt_length(self) -> int:
        return self.plan.prompt_length

    @property
    def max_new_tokens(self) -> int:
        return self.plan.max_new_tokens

    @property
    def prompt_truncated(self) -> bool:
        return self.plan.prompt_truncated

    @property
    def beam(self) -> bool:
        """Beam search: no per-token stream, one delta at the end (`run` handles it)."""
        return self.config.num_beams > 1

    def streamer(self) -> DeltaStreamer:
        return DeltaStreamer(self.tokenizer, self.prompt_ids, eos_token_ids=self.config.eos_token_ids,
                             max_new_tokens=self.plan.max_new_tokens, stop_strings=self.stop_strings,
                             prompt_truncated=self.plan.prompt_truncated)

    def logits_processors(self, vocab_size: int) -> list[Processor]:
        """The per-token processors (penalties, n-gram ban, min length, temperature, top-k/p) of this request."""
        return _processors(self.config, self.plan, self.plan.attention_mask, vocab_size, beam=False)

    @staticmethod
    def process(processors: list[Processor], ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (rows, vocab) after `processors`, given the ids so far (rows, length)."""
        return _apply(processors, ids, logits)

    def run(self, model: Any, stop_event: Optional[threading.Event] = None) -> Iterator[StreamDelta]:
        """Decode this request alone (what `stream_generate` returns)."""
        return _stream(model, self, stop_event)


def prepare_stream(model: Any, tokenizer: Any = None, prompt: Optional[str] = None,
                   input_ids: Union[torch.Tensor, list[int], None] = None,
                   attention_mask: Optional[torch.Tensor] = None, stop_strings: Optional[list[str]] = None,
                   truncate: bool = False, generation_config: Optional[GenerationConfig] = None, *,
                   seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   **kwargs: Any) -> StreamRequest:
    """Validate one streaming request eagerly (the parameters of `stream_generate`) and resolve it."""
    if tokenizer is None:
        raise GenerationParameterError("stream_generate needs the tokenizer (tokenizer=...) to produce text.")
    if prompt is not None and input_ids is not None:
        raise GenerationParameterError("Pass either prompt (text) or input_ids, not both.")
    if prompt is not None:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if isinstance(input_ids, (list, tuple)):
        input_ids = torch.tensor([list(input_ids)], dtype=torch.long)
    if input_ids is not None and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        raise GenerationParameterError(f"stream_generate streams one prompt; input_ids has {input_ids.shape[0]} rows.")
    if input_ids is not None and attention_mask is not None:
        # `model.stream(**tokenizer(text, return_tensors="pt"), ...)` passes the mask: keep the real tokens only.
        input_ids = input_ids.reshape(1, -1)[:, attention_mask.reshape(-1).bool()]
    if stop_strings is not None and (not isinstance(stop_strings, (list, tuple))
                                     or not all(isinstance(s, str) and s for s in stop_strings)):
        raise GenerationParameterError(f"stop_strings must be a list of non-empty strings; got {stop_strings!r}.")
    config = _resolve_config(model, generation_config, kwargs)
    if config.num_return_sequences != 1:
        raise GenerationParameterError("num_return_sequences must be 1 when streaming; got "
                                       f"{config.num_return_sequences}.")
    plan = _plan(model, input_ids, None, config, truncate)
    rng = _make_generator(seed, generator, plan.input_ids.device)
    return StreamRequest(tokenizer, config, plan, rng, list(stop_strings or []))


def stream_generate(model: Any, tokenizer: Any = None, prompt: Optional[str] = None,
                    input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                    stop_event: Optional[threading.Event] = None,
                    stop_strings: Optional[list[str]] = None, truncate: bool = False,
                    generation_config: Optional[GenerationConfig] = None, *, seed: Optional[int] = None,
                    generator: Optional[torch.Generator] = None, **kwargs: Any) -> Iterator[StreamDelta]:
    """Continue one prompt (text, or ids with the leading `</s>`) and yield `StreamDelta`s as tokens are produced.

    Greedy and sampling yield one delta per token (its text may be empty while a word is incomplete); beam search
    yields a single delta at the end. Setting `stop_event`, or closing the iterator, stops within one decoding step
    and frees the cache. Generation stops at the first occurrence of any of `stop_strings`; as in transformers the
    text keeps the stop string (and ends right after it).
    """
    request = prepare_stream(model, tokenizer, prompt, input_ids, attention_mask, stop_strings, truncate,
                             generation_config, seed=seed, generator=generator, **kwargs)
    # Validation happened above, eagerly; the generator below only runs when iterated.
    return _stream(model, request, stop_event)


def _stream(model: Any, request: StreamRequest, stop_event: Optional[threading.Event]) -> Iterator[StreamDelta]:
    if request.beam:
        yield _beam_delta(model, request.tokenizer, request.plan, request.config, request.rng, request.prompt_ids,
                          request.stop_strings)
        return
    streamer = request.streamer()
    steps = _greedy_or_sample_steps(model, request.plan, request.config, request.rng)
    try:
        while True:
            if stop_event is not None and stop_event.is_set():
                yield streamer.finish("cancelled")
                return
            step = next(steps)
            token = int(step.tokens[0])
            delta = streamer.push(token, float(step.scores[0].softmax(dim=-1)[token]))
            yield delta
            if delta.finished:
                return
    finally:
        steps.close()  # stops the decoding loop and frees its cache, also when our consumer closes us


@torch.no_grad()
def _beam_delta(model: Any, tokenizer: Any, plan: _Plan, config: GenerationConfig, rng: Optional[torch.Generator],
                prompt_ids: list[int], stop_strings: list[str]) -> StreamDelta:
    """Beam search has no final text until it ends: one delta with the winner and the model's token probabilities."""
    # One prompt, one returned beam: the output is cropped to that beam's own length, eos included.
    generated = _beam_search(model, plan, config, rng)[0, plan.prompt_length:]
    ids = list(prompt_ids) + generated.tolist()
    logits = model(torch.tensor([ids], device=plan.input_ids.device)).logits[0, len(prompt_ids) - 1:-1].float()
    probs = logits.softmax(dim=-1).gather(1, generated.view(-1, 1)).view(-1).tolist()
    text = continuation_text(tokenizer, prompt_ids, generated.tolist())
    reason = "eos" if len(generated) and int(generated[-1]) in config.eos_token_ids else "length"
    stop_ends = [text.find(stop) + len(stop) for stop in stop_strings if stop in text]
    if stop_ends:
        text, reason = text[:min(stop_ends)], "stop_string"
    return StreamDelta(text, generated.tolist(), probs, True, reason, plan.prompt_truncated)
