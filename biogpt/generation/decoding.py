"""The decoding loops: greedy/sampling one token per step (optionally with fixed shapes for CUDA graphs), and
transformers' vectorised beam search; `generate` picks one."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import torch
import torch.nn.functional as F

from ..cache import KVCache, StaticKVCache
from .config import GenerationConfig, GenerationResult, resolve_config
from .processors import Plan, apply_processors, build_processors, greedy_tokens, make_generator, plan_lengths


def static_decode_step(model: Any, tokens: torch.Tensor, position_ids: torch.Tensor, key_mask: torch.Tensor,
                       cache: StaticKVCache) -> torch.Tensor:
    """Logits (rows, vocab) for `tokens` (rows, 1) at `position_ids` (rows, 1), written at `cache.index`.

    `key_mask` (rows, capacity) bool marks the slots each row may attend to (its real prompt tokens, the generated
    ones and the current one). It runs the model's own embedding and layers, but every tensor has the same shape at
    every step and no Python number changes, so CUDA graphs can capture it or torch.compile compile it once.
    """
    base = model.base_model
    hidden = base.run_layers(base.embed(position_ids, tokens), key_mask[:, None, None, :], cache)[0]
    return model.output_projection(hidden)[:, -1]


@dataclass
class Step:
    sequences: torch.Tensor  # (rows, prompt + max_new_tokens) buffer; valid up to `length`
    length: int
    tokens: torch.Tensor  # (rows,) the tokens just chosen (pad for rows already finished)
    scores: torch.Tensor  # (rows, vocab) processed scores the tokens were chosen from
    unfinished: torch.Tensor  # (rows,) bool, after this step


@torch.no_grad()
def greedy_or_sample_steps(model: Any, plan: Plan, config: GenerationConfig,
                            generator: Optional[torch.Generator], static_cache: bool = False,
                            compile: bool = False) -> Iterator[Step]:
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
    processors = build_processors(config, plan, mask, model.config.vocab_size, beam=False)

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
            scores = apply_processors(processors, sequences[:, :length], logits.float())
            if config.do_sample:
                tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
            else:
                tokens = greedy_tokens(scores)
            if eos.numel():
                tokens = torch.where(unfinished, tokens, pad)
                unfinished = unfinished & ~torch.isin(tokens, eos)
            sequences[:, length] = tokens
            yield Step(sequences, length + 1, tokens, scores, unfinished)
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
def beam_search(model: Any, plan: Plan, config: GenerationConfig,
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
    processors = build_processors(config, plan, mask, vocab, beam=True)

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
            log_probs = apply_processors(processors, running[:, :, :length].reshape(batch * beams, length), log_probs)
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
    config = resolve_config(model, generation_config, kwargs)
    plan = plan_lengths(model, input_ids, attention_mask, config, truncate_prompt)
    rng = make_generator(seed, generator, plan.input_ids.device)
    # inference_mode skips autograd's version counting and view tracking on every op of every step; the result is
    # cloned out of it so that callers get an ordinary tensor (writable in place outside inference mode).
    with torch.inference_mode():
        if config.num_beams > 1:
            sequences = beam_search(model, plan, config, rng)
        else:
            last = None
            for last in greedy_or_sample_steps(model, plan, config, rng, static_cache=static_cache or compile,
                                                compile=compile):
                pass
            sequences = last.sequences[:, :last.length]
    sequences = sequences.clone()
    if config.return_dict_in_generate:
        return GenerationResult(sequences, plan.prompt_length, plan.prompt_truncated)
    return sequences


