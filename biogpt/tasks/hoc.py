"""Hallmarks of Cancer (multi-label document classification) with BioGPT's fine-tuned prompt model, as the paper
ran it (B `examples/DC-HoC`).

Input: the (already Moses-tokenized) sentence, with a `.` added when it does not end in one. The model writes
`the type of this document is {labels}.` with the labels `|`-joined (`empty` for none); `parse_hoc` is the original
postprocess.py and `hoc_micro_f1` the original metric (each answer split on `|` and stripped, binarised over the 10
hallmarks + `empty` with unknown labels ignored, micro-averaged F1).

`label_probabilities` gives every label a probability of its own, for thresholds. At each label position of the
model's greedy answer (right after `the type of this document is`, and after every `|` it wrote), the probability
that the model writes that label there next, as a whole label (its tokens followed by `|` or by `.`), is computed
by teacher forcing; a label's probability is its highest over those positions. The labels of the greedy answer thus
get the probability the model gave them where it wrote them, and every other label the highest probability it had
of being written instead at some label position. They do not sum to one: several labels can be likely at once.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from ..errors import InputError
from .classify import HOC_LABELS
from .prompted import PromptSettings, answer_text, build_input_ids, generate_answers, sequence_log_probs

EMPTY = "empty"
HOC_CLASSES = tuple(HOC_LABELS) + (EMPTY,)  # the 11 classes of B's hard_match_evaluation.py
TEMPLATE = "the type of this document is"
_ANSWER = re.compile(r"the type of this document is(.*)")


def hoc_source(sentence: str) -> str:
    """The model's input text: the sentence (newlines removed, stripped), ending in a `.`."""
    text = sentence.replace("\n", "").strip()
    if not text:
        raise InputError("Hallmarks of Cancer classification needs a non-empty sentence.")
    return text if text.endswith(".") else text + "."


def hoc_target(labels: str) -> str:
    """The training target for the TSV's label column (e.g. `empty`, `a|b`)."""
    return f"the type of this document is {labels}."


def parse_hoc(generated: str) -> str:
    """The label text after the template (stripped), or "failed"."""
    match = _ANSWER.search(answer_text(generated))
    return match.group(1).strip() if match is not None else "failed"


def hoc_labels(answer: str) -> list[str]:
    """The labels of an answer or TSV label column: split on `|`, stripped."""
    return [label.strip() for label in answer.strip().split("|")]


def hoc_micro_f1(predicted: Sequence[str], gold: Sequence[str]) -> dict[str, Any]:
    """Micro-F1 over the 11 classes (sklearn's MultiLabelBinarizer + f1_score(average='micro') of the original).

    `predicted` and `gold` hold one answer / label column per sentence. Labels outside the 11 classes ("failed",
    misspellings) are ignored; F1 is 0.0 when there is nothing to count.
    """
    if len(predicted) != len(gold) or not gold:
        raise InputError(f"hoc_micro_f1 needs as many predictions as gold rows (>0); got {len(predicted)} and "
                         f"{len(gold)}.")
    tp = fp = fn = 0
    for p, g in zip(predicted, gold):
        p_set = set(hoc_labels(p)) & set(HOC_CLASSES)
        g_set = set(hoc_labels(g)) & set(HOC_CLASSES)
        tp, fp, fn = tp + len(p_set & g_set), fp + len(p_set - g_set), fn + len(g_set - p_set)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"micro_f1": f1, "tp": tp, "fp": fp, "fn": fn}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_probabilities(model: Any, tokenizer: Any, input_ids: Sequence[int], new_ids: Sequence[int]
                        ) -> dict[str, float]:
    """Each class's probability as the next whole label at the label positions of the answer `new_ids`."""
    template, separator, end = _ids(tokenizer, TEMPLATE), _ids(tokenizer, "|"), _ids(tokenizer, ".")
    slots = [list(input_ids) + template]
    if list(new_ids[:len(template)]) == template:
        answer = list(new_ids[len(template):])
        slots += [slots[0] + answer[:k + len(separator)] for k in range(len(answer))
                  if answer[k:k + len(separator)] == separator]
    labels = {label: _ids(tokenizer, label) for label in HOC_CLASSES}
    best = dict.fromkeys(HOC_CLASSES, 0.0)
    for slot in slots:
        continuations = [labels[label] + closing for closing in (separator, end) for label in HOC_CLASSES]
        scores = sequence_log_probs(model, tokenizer, slot, continuations)
        for k, label in enumerate(HOC_CLASSES):
            probability = math.exp(scores[k]) + math.exp(scores[k + len(HOC_CLASSES)])
            best[label] = max(best[label], probability)
    return best


def classify_hallmarks_many(model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 8,
                            probabilities: bool = True) -> list[dict[str, Any]]:
    """For each sentence: `labels` (the greedy answer's known classes), `answer` (the parsed text, "failed" when
    the template is missing), `generated`, and `probabilities` (see the module docstring)."""
    settings = PromptSettings.from_config(model.config)
    inputs = [build_input_ids(tokenizer, hoc_source(sentence), settings) for sentence in sentences]
    outputs = generate_answers(model, tokenizer, inputs, settings, batch_size=batch_size)
    results = []
    for ids, output in zip(inputs, outputs):
        answer = parse_hoc(output.text)
        known = [label for label in hoc_labels(answer) if label in HOC_CLASSES]
        result: dict[str, Any] = {"labels": list(dict.fromkeys(known)),
                                  "answer": answer, "generated": output.text}
        if probabilities:
            result["probabilities"] = label_probabilities(model, tokenizer, ids, output.new_ids)
        results.append(result)
    return results


def classify_hallmarks(model: Any, tokenizer: Any, text: str, probabilities: bool = True) -> dict[str, Any]:
    """`classify_hallmarks_many` for one sentence."""
    return classify_hallmarks_many(model, tokenizer, [text], probabilities=probabilities)[0]
