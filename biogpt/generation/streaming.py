"""Streaming: text deltas as tokens are produced, with the text rules that keep every delta final.

`stream_generate` continues one prompt and yields `StreamDelta`s; `DeltaStreamer` holds the text rules (a word is
held back until no later token can change it) and is shared with the batching engine, so both stream alike.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import torch

from ..errors import GenerationParameterError
from .config import GenerationConfig, resolve_config
from .decoding import beam_search, greedy_or_sample_steps
from .processors import Plan, Processor, apply_processors, build_processors, make_generator, plan_lengths


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
    words = _Words()
    for piece in tokenizer.convert_ids_to_tokens(generated_ids):
        words.add(piece)
    return words.stable_end()


class _Words:
    """The generated pieces' words, one piece at a time: `_stable_prefix_end` without re-reading every piece of the
    sequence at each token (streaming a 400-token continuation spent 0.3 ms a token on that)."""

    def __init__(self) -> None:
        self.ends: list[int] = []  # tokens up to the end of each complete word
        self.joiners: list[bool] = []  # whether each complete word is a joiner
        self.current = ""  # the incomplete word's pieces so far
        self.tokens = 0

    def add(self, piece: str) -> None:
        self.tokens += 1
        self.current += piece
        if piece.endswith("</w>"):
            self.ends.append(self.tokens)
            self.joiners.append(_is_joiner(self.current[:-len("</w>")]))
            self.current = ""

    def stable_end(self) -> int:
        stable_words = len(self.ends) - 1
        while stable_words > 0 and (self.joiners[stable_words - 1] or self.joiners[stable_words]):
            stable_words -= 1
        return self.ends[stable_words - 1] if stable_words > 0 else 0


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
        self.words = _Words()  # the generated tokens' words (_stable_prefix_end, kept up to date)
        self.stable_end = 0  # generated tokens whose text the last push decoded (_stable_prefix_end)
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
        self.words.add(self.tokenizer.convert_ids_to_tokens([token_id])[0])
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
        end = self.words.stable_end()
        new_text = ""
        if end != self.stable_end:  # else the same tokens, the same text, emitted already: no decode
            self.stable_end = end
            stable = self.text(self.generated[:end])
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
        return build_processors(self.config, self.plan, self.plan.attention_mask, vocab_size, beam=False)

    @staticmethod
    def process(processors: list[Processor], ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (rows, vocab) after `processors`, given the ids so far (rows, length)."""
        return apply_processors(processors, ids, logits)

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
    config = resolve_config(model, generation_config, kwargs)
    if config.num_return_sequences != 1:
        raise GenerationParameterError("num_return_sequences must be 1 when streaming; got "
                                       f"{config.num_return_sequences}.")
    plan = plan_lengths(model, input_ids, None, config, truncate)
    rng = make_generator(seed, generator, plan.input_ids.device)
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
    steps = greedy_or_sample_steps(model, request.plan, request.config, request.rng)
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
def _beam_delta(model: Any, tokenizer: Any, plan: Plan, config: GenerationConfig, rng: Optional[torch.Generator],
                prompt_ids: list[int], stop_strings: list[str]) -> StreamDelta:
    """Beam search has no final text until it ends: one delta with the winner and the model's token probabilities."""
    # One prompt, one returned beam: the output is cropped to that beam's own length, eos included.
    generated = beam_search(model, plan, config, rng)[0, plan.prompt_length:]
    ids = list(prompt_ids) + generated.tolist()
    logits = model(torch.tensor([ids], device=plan.input_ids.device)).logits[0, len(prompt_ids) - 1:-1].float()
    probs = logits.softmax(dim=-1).gather(1, generated.view(-1, 1)).view(-1).tolist()
    text = continuation_text(tokenizer, prompt_ids, generated.tolist())
    reason = "eos" if len(generated) and int(generated[-1]) in config.eos_token_ids else "length"
    stop_ends = [text.find(stop) + len(stop) for stop in stop_strings if stop in text]
    if stop_ends:
        text, reason = text[:min(stop_ends)], "stop_string"
    return StreamDelta(text, generated.tolist(), probs, True, reason, plan.prompt_truncated)

