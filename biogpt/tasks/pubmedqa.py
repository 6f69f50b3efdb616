"""PubMedQA (reasoning-required) with BioGPT's fine-tuned prompt models, as the paper ran it (B
`examples/QA-PubMedQA`).

Input: `question: {question} context: {contexts joined by spaces, whitespace collapsed} ` (case kept, no long
answer). The model writes `the answer to the question given the context is {yes|no|maybe}.`; `parse_pubmedqa` is
the original postprocess.py (`failed` when the sentence is missing) and the metric is accuracy.

`answer_question` also gives the probability of each of the three answers: the model's probability of the complete
target sentence for that answer (its tokens and the closing `</s>`) after the prompt, normalised over the three.
The shared sentence start cancels out, so this is the probability of the answer word(s) given that start.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence, Union

from ..errors import InputError
from .classify import PUBMEDQA_LABELS
from .prompted import PromptSettings, answer_text, build_input_ids, generate_answers, sequence_log_probs

_ANSWER = re.compile(r"the answer to the question given the context is(.*)")


def pubmedqa_source(question: str, context: Union[str, Sequence[str]]) -> str:
    """The model's input text (B rebuild_data.py): contexts stripped and joined, whitespace runs collapsed."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("PubMedQA needs a question.")
    parts = [context] if isinstance(context, str) else list(context)
    joined = re.sub(r"\s+", " ", re.sub(r"\n", " ", " ".join(part.strip() for part in parts)))
    return f"question: {question.strip()} context: {joined.strip()} "


def pubmedqa_target(label: str) -> str:
    """The training target for a gold decision."""
    return f"the answer to the question given the context is {label}."


def parse_pubmedqa(generated: str) -> str:
    """The answer of a generated sentence (whatever follows the template, stripped), or "failed"."""
    match = _ANSWER.search(answer_text(generated))
    return match.group(1).strip() if match is not None else "failed"


def accuracy(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Share of exact string matches (sklearn's accuracy_score on the answers)."""
    if len(predicted) != len(gold) or not gold:
        raise InputError(f"accuracy needs as many predictions as gold answers (>0); got {len(predicted)} and "
                         f"{len(gold)}.")
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def answer_probabilities(model: Any, tokenizer: Any, input_ids: Sequence[int]) -> dict[str, float]:
    """{yes, no, maybe}: each full target sentence's probability after `input_ids`, normalised over the three."""
    targets = [list(tokenizer(pubmedqa_target(label), add_special_tokens=False)["input_ids"])
               + [tokenizer.eos_token_id] for label in PUBMEDQA_LABELS]
    scores = sequence_log_probs(model, tokenizer, input_ids, targets)
    top = max(scores)
    weights = [math.exp(score - top) for score in scores]
    return {label: weight / sum(weights) for label, weight in zip(PUBMEDQA_LABELS, weights)}


def answer_questions(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]], batch_size: int = 8,
                     probabilities: bool = True) -> list[dict[str, Any]]:
    """For each `{question, context}`: the parsed answer, the generated text and (optionally) the probabilities."""
    settings = PromptSettings.from_config(model.config)
    inputs = [build_input_ids(tokenizer, pubmedqa_source(item["question"], item["context"]), settings)
              for item in items]
    outputs = generate_answers(model, tokenizer, inputs, settings, batch_size=batch_size)
    results = []
    for ids, output in zip(inputs, outputs):
        result: dict[str, Any] = {"answer": parse_pubmedqa(output.text), "generated": output.text}
        if probabilities:
            result["probabilities"] = answer_probabilities(model, tokenizer, ids)
        results.append(result)
    return results


def answer_question(model: Any, tokenizer: Any, question: str, context: Union[str, Sequence[str]],
                    probabilities: bool = True) -> dict[str, Any]:
    """`{answer, generated, probabilities}` for one question (see the module docstring)."""
    return answer_questions(model, tokenizer, [{"question": question, "context": context}],
                            probabilities=probabilities)[0]
