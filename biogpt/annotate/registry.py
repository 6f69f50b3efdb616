"""The annotation tasks: for each, the model class it needs, its parameters, and how a list of texts is annotated.

A task's `run` takes the texts of one shard and returns one result per text, in order, batching across texts:
- `ner`: every text is cut into model windows exactly as `extract_entities` (the Entities tab) cuts it; the
  windows of all texts are sorted by token length and run in padded batches of `batch_size`, and each window's
  entities are put back in its text, so every text gets what `extract_entities` gives it.
- `classify`: texts sorted by length, batched through `biogpt.tasks.classify.classify`.
- `generate`: greedy continuation of each text as a prompt, texts sorted by length, left-padded batches.
- `relations`: a fine-tuned relation extraction model (BC5CDR, DDI, KD-DTI) reads each text as the paper's
  inference did and writes its relations; entity names are mapped back to their character spans in the text.

Sorting is stable, so a shard's batches (and so its bytes) depend only on the shard: a resumed run and the Ray
engine reproduce an uninterrupted local run exactly.

Adding a task takes a runner function with the signature of `_ner` that returns one JSON-able dict per text, and
one `AnnotationTask(...)` entry in `TASKS` (name, model class, parameters with their defaults, a `check` of them,
the runner, and an optional second output format such as `("pubtator", writer)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..configuration import BioGptConfig
from ..errors import ConfigError
from ..generation import continuation_text
from ..modeling import BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification
from ..tasks.classify import classify
from ..tasks.entities import STRATEGIES, aggregate, encode_windows, whole_words, window_tokens
from ..tasks.inputs import pad_token_id, right_pad
from ..tasks.prompted import PromptSettings, build_input_ids, generate_answers
from ..tasks.relations import family_for, relations_result, source_text
from .readers import Document
from .writers import entities_pubtator, labels_csv, relations_pubtator

BatchHook = Callable[[int, int], None]
"""Called after each model batch with (windows done, windows in the shard); it may raise to stop the run."""
Runner = Callable[[Any, Any, Sequence[str], Mapping[str, Any], int, BatchHook], tuple[list[dict[str, Any]], int]]
"""(model, tokenizer, texts, parameters, batch_size, hook) -> (one result per text, number of model windows)."""
ExtraWriter = Callable[[Sequence[Document], Sequence[Mapping[str, Any]], BioGptConfig], bytes]


def _length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length (stable): batches of similar lengths waste little padding."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


# ----------------------------------------------------------------------------------------------------------------
# ner
# ----------------------------------------------------------------------------------------------------------------
def _check_ner(params: Mapping[str, Any], config: BioGptConfig) -> None:
    if params["aggregation_strategy"] not in STRATEGIES:
        raise ConfigError(f"aggregation_strategy must be one of {', '.join(STRATEGIES)}; "
                          f"got {params['aggregation_strategy']!r}.")
    threshold = params["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be a number between 0 and 1; got {threshold!r}.")
    if not isinstance(params["whole_words"], bool):
        raise ConfigError(f"whole_words must be True or False; got {params['whole_words']!r}.")


@torch.inference_mode()
def _ner(model: Any, tokenizer: Any, texts: Sequence[str], params: Mapping[str, Any], batch_size: int,
         hook: BatchHook) -> tuple[list[dict[str, Any]], int]:
    config = model.config
    windows = [(doc, window) for doc, text in enumerate(texts) if text.strip()
               for window in encode_windows(tokenizer, text, config.max_position_embeddings, params["sentencizer"])]
    order = _length_order([len(window.input_ids) for _, window in windows])
    pad_id = pad_token_id(model, tokenizer)
    found: list[list[dict[str, Any]]] = [[] for _ in windows]
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        ids, mask = right_pad([windows[i][1].input_ids for i in batch], pad_id, model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        probabilities = torch.softmax(logits.float(), dim=-1).cpu()
        for i, row in zip(batch, probabilities):
            doc, window = windows[i]
            found[i] = aggregate(window_tokens(tokenizer, window, row), config.id2label, texts[doc],
                                 params["aggregation_strategy"], params["threshold"])
        hook(first + len(batch), len(order))
    entities: list[list[dict[str, Any]]] = [[] for _ in texts]
    for (doc, _), window_entities in zip(windows, found):  # a text's windows are in text order
        entities[doc].extend(window_entities)
    if params["whole_words"]:
        entities = [whole_words(found_in_text, text) for found_in_text, text in zip(entities, texts)]
    return [{"entities": document_entities} for document_entities in entities], len(windows)


# ----------------------------------------------------------------------------------------------------------------
# classify
# ----------------------------------------------------------------------------------------------------------------
def _check_classify(params: Mapping[str, Any], config: BioGptConfig) -> None:
    top_k = params["top_k"]
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be a whole number >= 1 (or unset for every label); got {top_k!r}.")
    if config.problem_type == "regression":
        raise ConfigError("task classify needs a classification head; this model's problem_type is 'regression'.")


def _classify(model: Any, tokenizer: Any, texts: Sequence[str], params: Mapping[str, Any], batch_size: int,
              hook: BatchHook) -> tuple[list[dict[str, Any]], int]:
    order = _length_order([len(text) for text in texts])  # characters: a cheap stand-in for tokens
    results: list[dict[str, Any]] = [{} for _ in texts]
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        scores = classify(model, tokenizer, [texts[i] for i in batch], top_k=params["top_k"], batch_size=len(batch))
        for i, labels in zip(batch, scores):
            results[i] = {"labels": labels}
        hook(first + len(batch), len(order))
    return results, len(texts)


def _classification_csv(documents: Sequence[Document], results: Sequence[Mapping[str, Any]],
                        config: BioGptConfig) -> bytes:
    return labels_csv(documents, results, [config.id2label[i] for i in sorted(config.id2label)])


# ----------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------
def _check_generate(params: Mapping[str, Any], config: BioGptConfig) -> None:
    limit = config.max_position_embeddings // 2
    new = params["max_new_tokens"]
    if isinstance(new, bool) or not isinstance(new, int) or not 1 <= new <= limit:
        # At most half the window: every prompt is cut to leave exactly this room, whatever it is batched with.
        raise ConfigError(f"max_new_tokens must be a whole number between 1 and {limit} (half of this model's "
                          f"{config.max_position_embeddings} positions); got {new!r}.")


@torch.inference_mode()
def _generate(model: Any, tokenizer: Any, texts: Sequence[str], params: Mapping[str, Any], batch_size: int,
              hook: BatchHook) -> tuple[list[dict[str, Any]], int]:
    new_tokens = params["max_new_tokens"]
    room = model.config.max_position_embeddings - new_tokens
    pad_id = pad_token_id(model, tokenizer)
    prompts = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        # Keep `</s>` and the end of a too-long prompt (what generate's truncate_prompt keeps), per text, so that
        # a prompt's continuation never depends on the longer prompts of its batch.
        prompts.append((ids[:1] + ids[len(ids) - room + 1:], True) if len(ids) > room else (ids, False))
    order = _length_order([len(ids) for ids, _ in prompts])
    results: list[dict[str, Any]] = [{} for _ in texts]
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        width = max(len(prompts[i][0]) for i in batch)
        ids = torch.tensor([[pad_id] * (width - len(prompts[i][0])) + prompts[i][0] for i in batch])
        mask = torch.tensor([[0] * (width - len(prompts[i][0])) + [1] * len(prompts[i][0]) for i in batch])
        sequences = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                   max_new_tokens=new_tokens, do_sample=False, num_beams=1).cpu()
        for i, row in zip(batch, sequences.tolist()):
            prompt, truncated = prompts[i]
            results[i] = {"continuation": continuation_text(tokenizer, prompt, row[width:]),
                          "prompt_truncated": truncated}
        hook(first + len(batch), len(order))
    return results, len(texts)


# ----------------------------------------------------------------------------------------------------------------
# relations
# ----------------------------------------------------------------------------------------------------------------
def _check_relations(params: Mapping[str, Any], config: BioGptConfig) -> None:
    family_for(params["family"] or PromptSettings.from_config(config).task)  # raises ConfigError naming the problem


def _relations(model: Any, tokenizer: Any, texts: Sequence[str], params: Mapping[str, Any], batch_size: int,
               hook: BatchHook) -> tuple[list[dict[str, Any]], int]:
    settings = PromptSettings.from_config(model.config)
    family = family_for(params["family"] or settings.task).name
    wanted = [i for i, text in enumerate(texts) if text.strip()]
    inputs = {i: build_input_ids(tokenizer, source_text(family, text=texts[i]).lower(), settings) for i in wanted}
    order = sorted(wanted, key=lambda i: len(inputs[i]))
    results: list[dict[str, Any]] = [{"relations": [], "entities": [], "generated": "", "failed": True}
                                     for _ in texts]
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        outputs = generate_answers(model, tokenizer, [inputs[i] for i in batch], settings, batch_size=len(batch))
        for i, output in zip(batch, outputs):
            # Spans index the document's own text (DDI's model reads it stripped, with newlines as spaces).
            found = relations_result(family, texts[i], output.text)
            results[i] = {key: found[key] for key in ("relations", "entities", "generated", "failed")}
        hook(first + len(batch), len(order))
    return results, len(wanted)


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnnotationTask:
    """What `annotate --task NAME` runs."""

    name: str
    model_class: type
    defaults: Mapping[str, Any]  # every parameter the task takes, with its default
    check: Callable[[Mapping[str, Any], BioGptConfig], None]  # raises ConfigError naming a bad parameter
    run: Runner
    extra: Optional[tuple[str, ExtraWriter]] = None  # a second output format: (file suffix, writer)

    def parameters(self, given: Mapping[str, Any], config: BioGptConfig) -> dict[str, Any]:
        """The task's parameters: `given` over the defaults, checked against the model's config."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ConfigError(f"task {self.name} takes the parameters {', '.join(self.defaults) or '(none)'}; "
                              f"{', '.join(unknown)} {'does' if len(unknown) == 1 else 'do'} not apply to it.")
        params = {**self.defaults, **given}
        self.check(params, config)
        return params


# The CLI's --task choices, both engines and annotate_texts take the tasks from here.
TASKS: dict[str, AnnotationTask] = {task.name: task for task in (
    AnnotationTask("ner", BioGptForTokenClassification,
                   {"aggregation_strategy": "simple", "threshold": 0.0, "whole_words": False, "sentencizer": None},
                   _check_ner, _ner,
                   extra=("pubtator", lambda documents, results, config: entities_pubtator(documents, results))),
    AnnotationTask("classify", BioGptForSequenceClassification, {"top_k": None}, _check_classify, _classify,
                   extra=("csv", _classification_csv)),
    AnnotationTask("generate", BioGptForCausalLM, {"max_new_tokens": 32}, _check_generate, _generate),
    AnnotationTask("relations", BioGptForCausalLM, {"family": None}, _check_relations, _relations,
                   extra=("pubtator", lambda documents, results, config: relations_pubtator(documents, results))),
)}


def get_task(name: str) -> AnnotationTask:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"Unknown annotation task {name!r}; choose one of {', '.join(TASKS)}.") from None
