"""Text classification: a fine-tuned sequence-classification head, or zero-shot prompting of the causal LM.

`classify` reads a `BioGptForSequenceClassification`'s scores as probabilities (softmax, or one sigmoid per
label for multi-label heads). `zero_shot` needs no fine-tuning: each candidate label is appended to a prompt
and scored by its log-likelihood under `BioGptForCausalLM`; the scores' softmax is returned.
"""

from __future__ import annotations

import string
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from ..errors import ConfigError, InputError
from .inputs import pad_token_id, right_pad

# PubMedQA as BioGPT was prompted for it; the label (yes/no/maybe) follows the template.
PUBMEDQA_TEMPLATE = "question: {question} context: {context} the answer to the question given the context is"
PUBMEDQA_LABELS = ("yes", "no", "maybe")

# Hallmarks of Cancer: the ten label names exactly as /shared/data/hoc/*.tsv spells them (already readable).
HOC_TEMPLATE = "{text} the type of this document is"
HOC_LABELS = (
    "activating invasion and metastasis",
    "avoiding immune destruction",
    "cellular energetics",
    "enabling replicative immortality",
    "evading growth suppressors",
    "genomic instability and mutation",
    "inducing angiogenesis",
    "resisting cell death",
    "sustaining proliferative signaling",
    "tumor promoting inflammation",
)


def _sorted(scores: Mapping[str, float], top_k: Optional[int]) -> dict[str, float]:
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    return dict(ranked if top_k is None else ranked[:top_k])


FUNCTIONS = ("softmax", "sigmoid", "none")


@torch.inference_mode()
def classify(model: Any, tokenizer: Any, text_or_texts: Union[str, Sequence[str]], top_k: Optional[int] = None,
             batch_size: int = 8, function_to_apply: Optional[str] = None
             ) -> Union[dict[str, float], list[dict[str, float]]]:
    """Label probabilities `{label: p}`, most probable first, for one text (a dict) or a list (a list of dicts).

    `function_to_apply` as in transformers' pipeline: None picks an independent sigmoid per label for multi-label
    heads (`problem_type == "multi_label_classification"`) and single-output heads, a softmax over the labels for
    the others; "softmax", "sigmoid" or "none" (the raw scores) force one. Texts longer than
    `max_position_embeddings` tokens are truncated. `top_k` keeps the k best labels.
    """
    config = model.config
    if config.problem_type == "regression":
        raise ConfigError("classify() needs a classification head; this model's problem_type is 'regression' "
                          "(read its raw logits instead).")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}.")
    if function_to_apply is not None and function_to_apply not in FUNCTIONS:
        raise ConfigError(f"function_to_apply must be one of {', '.join(FUNCTIONS)} or None; got "
                          f"{function_to_apply!r}.")
    single = isinstance(text_or_texts, str)
    texts = [text_or_texts] if single else list(text_or_texts)
    if function_to_apply is None:
        multi = config.problem_type == "multi_label_classification" or config.num_labels == 1
        function_to_apply = "sigmoid" if multi else "softmax"
    results: list[dict[str, float]] = []
    for first in range(0, len(texts), batch_size):
        rows = [tokenizer(text)["input_ids"][:config.max_position_embeddings]
                for text in texts[first:first + batch_size]]
        ids, mask = right_pad(rows, pad_token_id(model, tokenizer), model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        probabilities = {"sigmoid": torch.sigmoid, "softmax": lambda x: torch.softmax(x, dim=-1),
                         "none": lambda x: x}[function_to_apply](logits)
        for row in probabilities.tolist():
            results.append(_sorted({config.id2label[i]: p for i, p in enumerate(row)}, top_k))
    return results[0] if single else results


def continuation_ids(tokenizer: Any, prompt: str, label: str) -> tuple[list[int], int]:
    """Ids of `prompt + " " + label` (with BioGPT's leading `</s>`) and where the label's tokens begin.

    The label is tokenized as a continuation: the full string is tokenized and compared with the prompt's own
    tokenization, so the scored tokens are exactly those the model would read. Where Moses/BPE tokenize the
    prompt's last word differently once text follows it (e.g. a final period), the scored part starts at the
    first differing token.
    """
    prefix = tokenizer(prompt)["input_ids"]
    full = tokenizer(f"{prompt} {label}")["input_ids"]
    common = 0
    while common < min(len(prefix), len(full)) and prefix[common] == full[common]:
        common += 1
    if common == len(full):
        raise ValueError(f"label {label!r} adds no tokens to the prompt.")
    return list(full), max(common, 1)  # the first token (`</s>`) is never scored: nothing precedes it


def _fit(ids: list[int], start: int, limit: int) -> tuple[list[int], int]:
    """Cut a too-long prompt from the left (keeping `</s>`), so the label and the prompt's end stay in view."""
    excess = len(ids) - limit
    if excess <= 0:
        return ids, start
    if excess > start - 1:
        raise ValueError(f"the label alone ({len(ids) - start} tokens) does not fit the model's {limit} positions.")
    return ids[:1] + ids[1 + excess:], start - excess


@torch.inference_mode()
def label_log_likelihoods(model: Any, tokenizer: Any, prompt: str, labels: Sequence[str], normalize: bool = True,
                          batch_size: int = 8) -> dict[str, float]:
    """Log-likelihood of each label's tokens following `prompt` under a causal LM (per token if `normalize`)."""
    encoded = [_fit(*continuation_ids(tokenizer, prompt, label), model.config.max_position_embeddings)
               for label in labels]
    scores: dict[str, float] = {}
    for first in range(0, len(labels), batch_size):
        chunk = encoded[first:first + batch_size]
        ids, mask = right_pad([row for row, _ in chunk], pad_token_id(model, tokenizer), model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        # Token t is predicted by the logits at t - 1.
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0].cpu()
        for label, (row, start), row_log_probs in zip(labels[first:first + batch_size], chunk, log_probs):
            picked = row_log_probs[start - 1:len(row) - 1]
            total = float(picked.sum())
            scores[label] = total / len(picked) if normalize else total
    return scores


def zero_shot(model: Any, tokenizer: Any, text: Union[str, Mapping[str, str]], labels: Sequence[str],
              template: str, normalize: bool = True, batch_size: int = 8) -> dict[str, float]:
    """Zero-shot classification with a causal LM: label -> probability, most probable first.

    The prompt is `template` filled with `text` (a string for `{text}`, or a mapping such as
    `{"question": ..., "context": ...}` for `PUBMEDQA_TEMPLATE`); each label is appended after a space and
    scored by the log-likelihood of its tokens given the prompt (divided by its token count when
    `normalize`, so long label names are not penalised). The probabilities are the scores' softmax.
    """
    if not labels:
        raise ValueError("zero_shot needs at least one candidate label.")
    if len(set(labels)) != len(labels):
        raise ValueError(f"candidate labels must be distinct, got {list(labels)}.")
    fields = dict(text) if isinstance(text, Mapping) else {"text": text}
    try:
        prompt = template.format(**fields)
    except KeyError as exc:
        raise ValueError(f"template needs the field {exc.args[0]!r}; given: {sorted(fields)}.") from None
    scores = label_log_likelihoods(model, tokenizer, prompt.strip(), labels, normalize, batch_size)
    probabilities = torch.softmax(torch.tensor(list(scores.values()), dtype=torch.float64), dim=0).tolist()
    return _sorted(dict(zip(scores, probabilities)), None)


def template_fields(template: str, text: str) -> dict[str, str]:
    """The values of a zero-shot template's fields for one input: `{text}` is the text; `{question}` and
    `{context}` are split from a text written 'Question: … Context: …'. Raises `InputError` saying what is wrong."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - {"text", "question", "context"}
    if unknown or not names:
        raise InputError("The prompt template must use {text}, or {question} and {context}"
                         + (f"; it has {{{sorted(unknown)[0]}}}." if unknown else "."))
    if names <= {"text"}:
        return {"text": text.strip()}
    lowered = text.lower()
    if "context:" not in lowered:
        raise InputError("This template needs a question and a context: write 'Question: … Context: …'.")
    cut = lowered.index("context:")
    question = text[:cut].strip()
    if question.lower().startswith("question:"):
        question = question[len("question:"):].strip()
    return {"question": question, "context": text[cut + len("context:"):].strip(), "text": text.strip()}
