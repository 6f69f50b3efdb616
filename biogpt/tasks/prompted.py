"""Running a converted BioGPT prompt model (see `biogpt.fairseq`) the way fairseq ran it for the paper's tasks.

The sequence the model sees is `[</s>] + source + [learned1 .. learnedN]` (no separator), where a source longer than
`max_source_positions` tokens keeps its first `max_source_positions - 1` and ends in `...` (B
`language_model_prompt_dataset.py`). The prompt ids are appended as ids, never tokenized from text. Decoding is
fairseq's with beam 1: greedy, pad never chosen, and at most `max_len = min(1024, max_target_positions - 1)` tokens
after the leading `</s>`, the source and prompt included (B `inference.py`, fairseq `SequenceGenerator`). Only the
new tokens are decoded; the post-processing every task's `postprocess.py` starts with is `answer_text`.

Also here: `sequence_log_probs`, the log-probability of given continuations, for answer probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..errors import ConfigError
from ..fairseq import PROMPT_CONFIG_KEY
from ..generation import generate
from .inputs import pad_token_id, right_pad

MAX_LEN_B = 1024  # inference.py's --decoding_length, fairseq's max_len_b (max_len_a is 0)
_LEARNED_RUN = re.compile(r"(learned[0-9]+ )+")


@dataclass(frozen=True)
class PromptSettings:
    """A converted checkpoint's prompt settings (config.json `biogpt_prompt`)."""

    prompt_ids: tuple[int, ...]
    max_source_positions: int
    max_positions: int  # max_target_positions: the position table's size
    task: Optional[str]

    @classmethod
    def from_config(cls, config: Any) -> "PromptSettings":
        prompt = getattr(config, PROMPT_CONFIG_KEY, None)
        if not isinstance(prompt, dict):
            raise ConfigError(
                "This model has no prompt settings (config.json lacks 'biogpt_prompt'): the paper's task models are "
                "fairseq checkpoints; convert one with `python -m biogpt convert-fairseq SRC_DIR OUT_DIR`.")
        max_source = prompt.get("max_source_positions")
        if not isinstance(max_source, int) or max_source < 1:
            raise ConfigError(f"biogpt_prompt.max_source_positions is {max_source!r}; a task model needs a positive "
                              "source length (the fairseq task's max_source_positions).")
        return cls(tuple(int(i) for i in prompt.get("prompt_token_ids") or ()), max_source,
                   int(config.max_position_embeddings), prompt.get("task"))

    @property
    def max_len(self) -> int:
        """fairseq's max_len: tokens after the leading `</s>`, source and prompt included."""
        return min(MAX_LEN_B, self.max_positions - 1)


def source_ids(tokenizer: Any, text: str, settings: PromptSettings) -> list[int]:
    """The source's BPE ids, truncated as fairseq's prompt dataset truncates them (ending in `...`)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) > settings.max_source_positions:
        # fairseq's Dictionary.index('...'), unk when absent; vocab.json spells the word `...</w>`.
        ids = ids[:settings.max_source_positions - 1] + [tokenizer.convert_tokens_to_ids("...</w>")]
    return ids


def build_input_ids(tokenizer: Any, text: str, settings: PromptSettings) -> list[int]:
    """`[</s>] + source + prompt ids`: the prefix fairseq feeds the model before it generates."""
    return [tokenizer.eos_token_id] + source_ids(tokenizer, text, settings) + list(settings.prompt_ids)


@dataclass
class PromptedOutput:
    """One generation: the prefix ids, the new ids (up to, without, `</s>`) and their text."""

    input_ids: list[int]
    new_ids: list[int]
    text: str


def decode_new_tokens(tokenizer: Any, ids: Sequence[int]) -> str:
    """fairseq's `Dictionary.string` + `sed 's/@@ //g'` + Moses detokenization of generated ids.

    As fairseq writes them: `<s>` is left out and `<unk>` stays in the text as a word of its own.
    """
    tokens = ["<unk></w>" if token == tokenizer.unk_token else token
              for token in tokenizer.convert_ids_to_tokens([i for i in ids if i != tokenizer.bos_token_id])]
    return tokenizer.convert_tokens_to_string(tokens)


def _new_ids(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos)] if eos in row else row


@torch.inference_mode()
def generate_answers(model: Any, tokenizer: Any, inputs: Sequence[Sequence[int]], settings: PromptSettings,
                     batch_size: int = 8) -> list[PromptedOutput]:
    """Greedy continuations of each prefix in `inputs`, as fairseq decodes them, in order.

    Prefixes of similar length are batched (left-padded). A row's budget is `max_len` minus its own prefix; a batch
    generates up to its shortest row's budget where the position table allows, and a row the batch's limit cut short
    (no `</s>` yet, budget left) is finished on its own, so every result equals decoding that prefix alone.
    """
    eos, pad = tokenizer.eos_token_id, pad_token_id(model, tokenizer)
    budgets = [settings.max_len - (len(ids) - 1) for ids in inputs]
    for ids, budget in zip(inputs, budgets):
        if budget < 1:
            raise ConfigError(f"A {len(ids)}-token prefix leaves no room to generate within max_len="
                              f"{settings.max_len}: the checkpoint's max_source_positions "
                              f"({settings.max_source_positions}) + prompt exceed its positions.")
    results: list[Optional[list[int]]] = [None] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        width = max(len(inputs[i]) for i in rows)
        limit = min(max(budgets[i] for i in rows), settings.max_positions - width)
        for i, new in zip(rows, _greedy(model, [list(inputs[i]) for i in rows], limit, eos, pad)):
            cut_short = eos not in new and len(new) < budgets[i]
            results[i] = _greedy(model, [list(inputs[i])], budgets[i], eos, pad)[0] if cut_short else new
    outputs = []
    for ids, new, budget in zip(inputs, results, budgets):
        kept = _new_ids(new, eos)[:budget]  # fairseq forces </s> once the budget is spent
        outputs.append(PromptedOutput(list(ids), kept, decode_new_tokens(tokenizer, kept)))
    return outputs


def _greedy(model: Any, rows: list[list[int]], max_new_tokens: int, eos: int, pad: int) -> list[list[int]]:
    """New ids per row (eos included when produced), left padding, pad banned as fairseq bans it."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    out = generate(model, ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new_tokens,
                   do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad, bad_words_ids=[[pad]])
    return [row[width:] for row in out.tolist()]


def answer_text(generated: str) -> str:
    """The text every task's postprocess.py parses: stripped, final `.` dropped, after the last `learnedK ` run.

    The original line holds the source and the prompt tokens too, so the `learnedK` run always matches there and
    the other prefixes postprocess.py lists ('we can conclude that', ...) are never tried; neither are they here.
    """
    text = generated.strip().removesuffix(".")
    if _LEARNED_RUN.search(text):
        text = _LEARNED_RUN.split(text)[-1].strip()
    return text


@torch.inference_mode()
def sequence_log_probs(model: Any, tokenizer: Any, prefix: Sequence[int], continuations: Sequence[Sequence[int]],
                       batch_size: int = 16) -> list[float]:
    """log p(continuation | prefix) under the model, one float per continuation (teacher-forced, summed)."""
    pad = pad_token_id(model, tokenizer)
    scores: list[float] = []
    for first in range(0, len(continuations), batch_size):
        chunk = [list(c) for c in continuations[first:first + batch_size]]
        ids, mask = right_pad([list(prefix) + c for c in chunk], pad, model.device)
        log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, continuation in enumerate(chunk):
            # the token at index t is predicted by the logits at index t - 1
            positions = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(continuation), device=log_probs.device)
            targets = torch.tensor(continuation, device=log_probs.device)
            scores.append(float(log_probs[row, positions, targets].sum()))
    return scores
