"""Why the model wrote a word: its alternatives at each step, where each token sits in the text, what influenced it.

Three questions a reader of a generated text asks, answered from a finished generation (prompt ids + generated ids,
as `generate`/`stream` produced them) and the loaded `BioGptForCausalLM` and `BioGptTokenizer`:

- `token_alternatives`: at every generated position, the model's most probable next tokens and the chosen token's
  probability and rank, from one teacher-forced forward over prompt + generated text. Each alternative carries
  the text it would have appended at that point, so a word piece reads as the piece ("embolism" after "thrombo").
- `token_spans`: each generated token's character span in the continuation text (the text streaming shows); the
  spans tile that text exactly, so a user interface can make every token a click target over what the user reads.
- `attribution`: for one generated token, the share of influence of every earlier token (gradient × input, or
  attention rollout), summed into words with character spans over the prompt as the user typed it (a heat map).

`branch_prompt_ids` gives the ids to continue from when the user picks an alternative. Nothing here changes the
model: no parameter gradient is stored, `requires_grad` and the train/eval mode are as they were afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch

from .errors import ConfigError, InputError
from .generation import GenerationConfig, continuation_text
from .generation.config import resolve_config
from .generation.processors import apply_processors, build_processors, plan_lengths
from .tokenization import BioGptTokenizer

DISTRIBUTIONS = ("raw", "processed")
METHODS = ("grad_x_input", "rollout")
# Arguments of a streamed run that pick one draw from the distribution or cut the text, but do not shape it:
# accepted so that a caller can pass a run's parameters unchanged.
_RUN_ONLY_ARGUMENTS = ("seed", "generator", "truncate", "stop_strings")
_WORD_END = "</w>"  # BPE's end-of-word marker on the last piece of a word


# ----------------------------------------------------------------------------------------------------------------
# What a user interface reads
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSpan:
    """Where one generated token sits in the continuation text: `text == continuation[start:end]`.

    `word` numbers the words of the continuation from 0; the BPE pieces of one word ("thrombo" + "embolism") share
    it, so an interface can outline a whole word while keeping one click target per piece.
    """

    start: int
    end: int
    text: str
    word: int


@dataclass(frozen=True)
class Alternative:
    """A token the model could have written at one step."""

    token_id: int
    token: str  # the BPE piece as in the vocabulary ("embol", "ism</w>", "</s>")
    text: str  # what it would have appended to the continuation there ("" for a special token such as "</s>")
    probability: float
    special: bool  # "</s>" (the model ends the text), "<pad>", "<unk>"...: no text of its own


@dataclass(frozen=True)
class StepAlternatives:
    """One generated position: the chosen token, where it sits in the text, and the model's top alternatives."""

    position: int  # index in generated_ids
    token_id: int  # the token that was generated here
    token: str
    text: str  # what the chosen token appended at this step (same rule as `Alternative.text`)
    probability: float  # of the chosen token, under `distribution`
    rank: int  # 1 = the most probable token; ties share a rank
    start: int  # the chosen token's span in the continuation text (see `TokenSpan`)
    end: int
    word: int
    alternatives: list[Alternative]  # the k most probable tokens, most probable first (may include the chosen one)
    distribution: str  # "raw" or "processed" (see `token_alternatives`)


@dataclass(frozen=True)
class WordScore:
    """One word of the prompt and its share of the influence: `text == prompt_text[start:end]`."""

    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class Attribution:
    """How much each earlier token influenced the generated token at `position` (see `attribution`).

    `prompt_scores` (one per prompt id, the leading `</s>` included) and `generated_scores` (one per generated token
    before `position`) together sum to 1. `words` sums the prompt's pieces into its words, with spans over
    `prompt_text`; the leading `</s>`'s share and the generated tokens' shares are not in any word, so the words'
    scores sum to at most 1.
    """

    position: int
    token_id: int
    token: str
    probability: float  # the raw probability the model gave the generated token
    method: str
    prompt_scores: list[float]
    generated_scores: list[float]
    words: list[WordScore]
    prompt_text: str  # the text `words` index: the prompt as typed, or the decoded prompt ids


# ----------------------------------------------------------------------------------------------------------------
# Alternatives and spans
# ----------------------------------------------------------------------------------------------------------------
def token_spans(tokenizer: BioGptTokenizer, prompt_ids: Sequence[int],
                generated_ids: Sequence[int]) -> list[TokenSpan]:
    """Each generated token's span in `continuation_text(tokenizer, prompt_ids, generated_ids)`.

    That continuation is the text streaming shows (the concatenated `StreamDelta.text`s of a run not cut by a stop
    string, `DeltaStreamer.text()`). The spans tile it exactly: the first starts at 0, each starts where the previous
    ends, the last ends at its end. A token's span is the text that appeared when it was added, read against the
    final text: the space before a word belongs to the word's first piece (" treated"), each piece of a word gets
    its own span ("thrombo", "embolism"), and a token with no text of its own (the final `</s>`) gets an empty
    span. Where a later token re-renders earlier text (Moses joins "&quot;" into '"'), the text that changed goes
    to the token that made it final, so spans never overlap or go back.
    """
    prompt_ids, generated_ids = _as_ids(prompt_ids, "prompt_ids"), _as_ids(generated_ids, "generated_ids")
    decoded_prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    return _spans(tokenizer, generated_ids, _prefix_texts(tokenizer, prompt_ids, generated_ids, decoded_prompt))


def token_alternatives(model: Any, tokenizer: BioGptTokenizer, prompt_ids: Sequence[int],
                       generated_ids: Sequence[int], k: int = 5, *, distribution: str = "raw",
                       positions: Optional[Sequence[int]] = None,
                       generation_config: Optional[GenerationConfig] = None,
                       **decoding: Any) -> list[StepAlternatives]:
    """The model's top-`k` next tokens at every generated position, and the chosen token's probability and rank.

    `prompt_ids` are the ids the run continued (with the leading `</s>`; after any truncation, e.g.
    `prepare_stream(...).prompt_ids`) and `generated_ids` the tokens it produced. One forward over
    prompt + generated (teacher forcing) gives every step's distribution at once. `positions` restricts the result
    to those generated positions (the forward is the same; the texts of alternatives, one decode each, are only
    made for them).

    `distribution="raw"` (the default) is the model's own belief: the softmax of its logits, exactly
    `model(ids).logits.softmax(-1)`, whatever the decoding settings. `distribution="processed"` is the
    distribution the decoder chose from after the run's settings (`generation_config` and/or GenerationConfig
    fields as keyword arguments: repetition penalty, n-gram ban, minimum length and, when sampling, temperature,
    top-k and top-p), the one `StreamDelta.probs` reports; tokens the settings ruled out get probability 0. Beam
    search has no single per-token distribution, so "processed" refuses it. `seed`, `generator`, `truncate` and
    `stop_strings` are accepted and ignored (they pick a draw or cut the text, the distribution is the same).

    Probabilities are those of single tokens: a word of several pieces is several decisions, each with its own
    alternatives. `k=0` gives only the chosen tokens' probabilities, ranks and spans.
    """
    prompt_ids, generated_ids = _as_ids(prompt_ids, "prompt_ids"), _as_ids(generated_ids, "generated_ids")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}.")
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ConfigError(f"k (how many alternatives) must be an integer >= 0; got {k!r}.")
    _check_sequence(model, prompt_ids, generated_ids)
    for name in _RUN_ONLY_ARGUMENTS:
        decoding.pop(name, None)
    config = resolve_config(model, generation_config, decoding)  # validated even for "raw", so typos surface
    if distribution == "processed" and config.num_beams > 1:
        raise ConfigError("distribution='processed' is the distribution greedy or sampled decoding draws each token "
                          f"from; beam search (num_beams={config.num_beams}) keeps several hypotheses and has no "
                          "single one: use distribution='raw'.")
    wanted = _positions(positions, len(generated_ids))
    if not generated_ids:
        return []

    with _eval_mode(model), torch.no_grad():
        ids = torch.tensor([prompt_ids + generated_ids[:-1]], device=model.device)
        # Row i holds the logits that chose generated_ids[i].
        scores = model(ids, use_cache=False, logits_to_keep=len(generated_ids)).logits[0].float()
    if distribution == "processed":
        scores = _processed(model, config, prompt_ids, generated_ids, scores)
    probs = scores.softmax(dim=-1)
    chosen = probs.gather(1, torch.tensor(generated_ids, device=probs.device)[:, None])
    ranks = ((probs > chosen).sum(dim=1) + 1).tolist()
    top_probs, top_ids = (t.tolist() for t in probs.topk(min(k, probs.shape[-1]), dim=-1))
    chosen_probs = chosen[:, 0].tolist()

    decoded_prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    texts = _prefix_texts(tokenizer, prompt_ids, generated_ids, decoded_prompt)
    spans = _spans(tokenizer, generated_ids, texts)
    special_ids = set(tokenizer.all_special_ids)
    steps = []
    for i in wanted:
        alternatives = []
        for token_id, prob in zip(top_ids[i], top_probs[i]):
            if token_id == generated_ids[i]:
                after = texts[i + 1]
            else:
                after = continuation_text(tokenizer, prompt_ids, generated_ids[:i] + [token_id], decoded_prompt)
            alternatives.append(Alternative(token_id, tokenizer.convert_ids_to_tokens(token_id),
                                            _appended(texts[i], after), prob, token_id in special_ids))
        span = spans[i]
        steps.append(StepAlternatives(
            position=i, token_id=generated_ids[i], token=tokenizer.convert_ids_to_tokens(generated_ids[i]),
            text=_appended(texts[i], texts[i + 1]), probability=chosen_probs[i], rank=ranks[i],
            start=span.start, end=span.end, word=span.word, alternatives=alternatives, distribution=distribution))
    return steps


def branch_prompt_ids(prompt_ids: Sequence[int], generated_ids: Sequence[int], position: int,
                      token_id: int) -> list[int]:
    """The ids to continue from when the user picks `token_id` instead of the generated token at `position`.

    That is prompt + the tokens generated before `position` + the picked token; generating from it continues the
    text as if the model had written that token there (its prompt length is `len(prompt_ids)`, not the length of
    the returned list, when the branch's continuation text is wanted).
    """
    prompt_ids, generated_ids = _as_ids(prompt_ids, "prompt_ids"), _as_ids(generated_ids, "generated_ids")
    _check_position(position, len(generated_ids))
    return prompt_ids + generated_ids[:position] + _as_ids([token_id], "token_id")


# ----------------------------------------------------------------------------------------------------------------
# Attribution
# ----------------------------------------------------------------------------------------------------------------
def attribution(model: Any, tokenizer: BioGptTokenizer, prompt_ids: Sequence[int], generated_ids: Sequence[int],
                position: int, method: str = "grad_x_input", *, prompt_text: Optional[str] = None) -> Attribution:
    """How much each earlier token (prompt, then generated tokens before it) influenced the token at `position`.

    What the scores are. `method="grad_x_input"` (the default): the model's log-probability of the token it wrote
    is differentiated with respect to the input embeddings (each token's vector as the model receives it, before
    positions are added); a token's raw score is the length (L2 norm over the vector's dimensions) of
    gradient × embedding, and the scores are divided by their sum. It measures how strongly this one prediction
    responds to each input token, as a share of the total. `method="rollout"` (attention rollout, Abnar & Zuidema
    2020; needs a model loaded with `attn_implementation="eager"`) follows the attention maps down the layers,
    averaging heads and counting the residual connection as half of each layer, and reads how much of the last
    position's attention flows back to each input token. It needs no gradients, so it also works on 4-bit/8-bit
    quantized models.

    What they do not mean. A high score is not a reason, a source or a fact: the model has no knowledge base and
    cites nothing; a word can score high because the sentence's grammar depends on it. Scores have no sign: a word
    that made the token less likely scores as high as one that made it more likely. Gradients are local (they
    describe tiny changes and can miss a word whose effect is saturated); attention is not explanation (rollout
    shows where information can flow, ignores what the feed-forward layers do, and gives the first tokens, the
    leading `</s>` above all, a large share). Scores are relative within one prediction and cannot be compared
    across predictions or models. On a bfloat16 model the gradients are computed in bfloat16 and the scores are
    approximate (within a few percentage points of float32's).

    `prompt_text` is the prompt as the user typed it, so `words` have spans over it; it must tokenize to
    `prompt_ids` (or, for a prompt that generation truncated, to ids ending with `prompt_ids[1:]`). Without it, the
    spans index the decoded prompt ids. The model's parameters, their `.grad`, `requires_grad` and the train/eval
    mode are unchanged afterwards; a model in training mode is explained in eval mode (no dropout).
    """
    prompt_ids, generated_ids = _as_ids(prompt_ids, "prompt_ids"), _as_ids(generated_ids, "generated_ids")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    _check_sequence(model, prompt_ids, generated_ids)
    _check_position(position, len(generated_ids))
    if method == "grad_x_input" and _has_integer_weights(model):
        raise ConfigError("method='grad_x_input' needs gradients through the model's layers, which the layers of a "
                          "4-bit/8-bit quantized model do not give: use method='rollout' (on a model loaded with "
                          "attn_implementation='eager') or load the model without quantization.")
    backend = getattr(model.config, "attn_implementation", None)
    if method == "rollout" and backend != "eager":
        raise ConfigError(f"method='rollout' reads the attention maps, which only attn_implementation='eager' "
                          f"returns (this model uses {backend!r}): reload it with attn_implementation='eager' "
                          "or use method='grad_x_input'.")
    text, offsets = _prompt_offsets(tokenizer, prompt_ids, prompt_text)

    ids = prompt_ids + generated_ids[:position]
    target = generated_ids[position]
    with _eval_mode(model):
        if method == "grad_x_input":
            scores, log_prob = _grad_x_input(model, ids, target)
        else:
            scores, log_prob = _rollout(model, ids, target)
    total = scores.sum()
    if total > 0:  # all zero only when the probability does not respond at all (saturated): nothing to share
        scores = scores / total
    scores_list = scores.tolist()
    prompt_scores = scores_list[:len(prompt_ids)]
    return Attribution(
        position=position, token_id=target, token=tokenizer.convert_ids_to_tokens(target),
        probability=float(torch.exp(log_prob)), method=method, prompt_scores=prompt_scores,
        generated_scores=scores_list[len(prompt_ids):],
        words=_words(tokenizer, prompt_ids, offsets, prompt_scores, text), prompt_text=text)


def _grad_x_input(model: Any, ids: list[int], target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one raw score per input token, log p(target)) by gradient × input on the input embeddings."""
    base = model.base_model
    # A caller inside inference_mode (as generation runs) would otherwise get tensors autograd cannot record.
    with torch.inference_mode(False), torch.enable_grad():
        input_ids = torch.tensor([ids], device=model.device)
        # The embeddings are our own leaf tensor: autograd.grad asks for its gradient only, so no parameter's
        # .grad is written and no parameter's requires_grad is touched.
        embeds = (base.embed_tokens(input_ids) * base.embed_scale).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[0, -1]
        log_prob = torch.log_softmax(logits.float(), dim=-1)[target]
        (grad,) = torch.autograd.grad(log_prob, embeds)
    scores = (grad.float() * embeds.detach().float()).norm(dim=-1)[0]
    return scores.cpu(), log_prob.detach().cpu()


def _rollout(model: Any, ids: list[int], target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one score per input token, log p(target)) by attention rollout over the eager attention maps."""
    with torch.no_grad():
        out = model(torch.tensor([ids], device=model.device), use_cache=False, output_attentions=True,
                    logits_to_keep=1)
    length = len(ids)
    identity = torch.eye(length)
    flow = identity
    for attention in out.attentions:  # first layer first; each (1, heads, length, length)
        mixed = 0.5 * attention[0].float().cpu().mean(dim=0) + 0.5 * identity  # the residual carries half
        flow = (mixed / mixed.sum(dim=-1, keepdim=True)) @ flow
    log_prob = torch.log_softmax(out.logits[0, -1].float(), dim=-1)[target]
    return flow[-1], log_prob.cpu()


def _prompt_offsets(tokenizer: BioGptTokenizer, prompt_ids: list[int],
                    prompt_text: Optional[str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text the word spans refer to, and each prompt id's span in it."""
    text = prompt_text if prompt_text is not None else tokenizer.decode(prompt_ids, skip_special_tokens=True)
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]
    if ids == prompt_ids:
        return text, offsets
    # A prompt generation truncated keeps its leading `</s>` and its last tokens.
    kept = len(prompt_ids) - 1
    if 0 < kept < len(ids) and ids[0] == prompt_ids[0] and ids[len(ids) - kept:] == prompt_ids[1:]:
        return text, [offsets[0]] + offsets[len(ids) - kept:]
    source = "prompt_text" if prompt_text is not None else "the decoded prompt_ids"
    raise InputError(f"{source} does not tokenize to prompt_ids ({len(ids)} ids against {len(prompt_ids)}): pass "
                     "the prompt text the ids were made from.")


def _words(tokenizer: BioGptTokenizer, prompt_ids: list[int], offsets: list[tuple[int, int]], scores: list[float],
           text: str) -> list[WordScore]:
    """Sum the prompt pieces' scores into words (pieces up to an end-of-word marker); special tokens are skipped.

    Tokenized text always ends a word before a special token and at its end, so every piece lands in a word.
    """
    special_ids = set(tokenizer.all_special_ids)
    words: list[WordScore] = []
    start: Optional[int] = None
    score = 0.0
    for token_id, (piece_start, piece_end), piece_score in zip(prompt_ids, offsets, scores):
        if token_id in special_ids:
            continue
        start = piece_start if start is None else start
        score += piece_score
        if tokenizer.convert_ids_to_tokens(token_id).endswith(_WORD_END):
            words.append(WordScore(start, piece_end, text[start:piece_end], score))
            start, score = None, 0.0
    return words


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def _processed(model: Any, config: GenerationConfig, prompt_ids: list[int], generated_ids: list[int],
               logits: torch.Tensor) -> torch.Tensor:
    """Each step's logits after the run's processors, as greedy/sampling decoding applies them."""
    # Only the generated tokens are planned, so the plan never warns that a requested length does not fit.
    config.max_new_tokens, config.max_length = len(generated_ids), None
    plan = plan_lengths(model, torch.tensor([prompt_ids]), None, config, truncate_prompt=False)
    processors = build_processors(config, plan, plan.attention_mask, model.config.vocab_size, beam=False)
    sequence = torch.tensor([prompt_ids + generated_ids], device=logits.device)
    rows = [apply_processors(processors, sequence[:, :len(prompt_ids) + i], logits[i:i + 1])
            for i in range(len(generated_ids))]
    return torch.cat(rows, dim=0)


def _prefix_texts(tokenizer: BioGptTokenizer, prompt_ids: list[int], generated_ids: list[int],
                  decoded_prompt: str) -> list[str]:
    """The continuation text after 0, 1, ..., all generated tokens."""
    return [continuation_text(tokenizer, prompt_ids, generated_ids[:i], decoded_prompt)
            for i in range(len(generated_ids) + 1)]


def _spans(tokenizer: BioGptTokenizer, generated_ids: list[int], texts: list[str]) -> list[TokenSpan]:
    final = texts[-1]
    # Boundary i: where the text of the first i tokens ends in the final text; clamped so that boundaries never go
    # back, which makes the spans tile the final text even where a later token re-rendered earlier text.
    bounds = [0]
    for text in texts[1:-1]:
        bounds.append(max(bounds[-1], _common_prefix(text, final)))
    bounds.append(len(final))
    special_ids = set(tokenizer.all_special_ids)
    spans, word = [], 0
    for i, token_id in enumerate(generated_ids):
        spans.append(TokenSpan(bounds[i], bounds[i + 1], final[bounds[i]:bounds[i + 1]], word))
        if token_id in special_ids or tokenizer.convert_ids_to_tokens(token_id).endswith(_WORD_END):
            word += 1
    return spans


def _common_prefix(a: str, b: str) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _appended(before: str, after: str) -> str:
    """The text a token added: `after` minus what it shares with `before` (Moses may re-render the last word)."""
    return after[_common_prefix(before, after):]


def _as_ids(ids: Any, name: str) -> list[int]:
    """A list of ints from a list, tuple or 1-D tensor of token ids."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() > 1:
            raise InputError(f"{name} must be one sequence of token ids; got a tensor of shape {tuple(ids.shape)}.")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InputError(f"{name} must be a list of token ids (integers).")
    return list(ids)


def _check_sequence(model: Any, prompt_ids: list[int], generated_ids: list[int]) -> None:
    if not prompt_ids:
        raise InputError("prompt_ids is empty: pass the ids the run continued, with the leading </s> (an empty "
                         "prompt is [</s>]).")
    vocab = model.config.vocab_size
    outside = sorted({i for i in prompt_ids + generated_ids if not 0 <= i < vocab})
    if outside:
        raise InputError(f"Token ids {outside[:5]} are outside this model's vocabulary (0..{vocab - 1}).")
    window = model.config.max_position_embeddings
    if len(prompt_ids) + len(generated_ids) > window:
        raise InputError(f"prompt + generated ids are {len(prompt_ids) + len(generated_ids)} tokens; this model has "
                         f"{window} positions, so no run of it produced them.")


def _check_position(position: Any, count: int) -> None:
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position < count:
        raise InputError(f"position must be the index of a generated token (0..{count - 1}); got {position!r}.")


def _positions(positions: Optional[Sequence[int]], count: int) -> list[int]:
    if positions is None:
        return list(range(count))
    for position in positions:
        _check_position(position, count)
    return sorted(set(positions))


def _has_integer_weights(model: Any) -> bool:
    """A bitsandbytes 4-bit/8-bit model, or any whose weights are stored as integers (their kernels have no
    gradient with respect to the input)."""
    tensors = [*model.parameters(), *model.buffers()]
    return getattr(model, "is_quantized", False) or any(not t.is_floating_point() for t in tensors)


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Explain the model as it generates (eval: no dropout), and leave its mode as it was."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()
