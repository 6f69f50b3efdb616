"""Evaluation metrics in pure Python: entity-level exact match, and single-/multi-label classification scores."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence, Union

Span = tuple[int, int, str]  # (start, end, type)
LabelOrLabels = Union[str, Iterable[str]]


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts; 0.0 where a ratio is undefined (nothing predicted / nothing gold)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _span(entity: Union[Span, Mapping[str, Any]]) -> Span:
    if isinstance(entity, Mapping):
        return int(entity["start"]), int(entity["end"]), str(entity["label"])
    start, end, kind = entity
    return int(start), int(end), str(kind)


def entity_scores(gold: Sequence[Iterable[Union[Span, Mapping[str, Any]]]],
                  predicted: Sequence[Iterable[Union[Span, Mapping[str, Any]]]]) -> dict[str, Any]:
    """Entity-level precision/recall/F1: a prediction counts only if its span AND type equal a gold entity's.

    `gold` and `predicted` hold one collection per document, of `(start, end, type)` triples or entity dicts
    (`start`, `end`, `label`). Duplicates are matched as multisets. Returns `{"micro": {...}, "per_type":
    {type: {...}}}`, each `{"precision", "recall", "f1", "support", "tp", "fp", "fn"}` (support = gold count).
    """
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} documents but predicted has {len(predicted)}.")
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for gold_doc, predicted_doc in zip(gold, predicted):
        gold_spans = Counter(_span(e) for e in gold_doc)
        predicted_spans = Counter(_span(e) for e in predicted_doc)
        matched = gold_spans & predicted_spans
        for (_, _, kind), n in matched.items():
            tp[kind] += n
        for (_, _, kind), n in (predicted_spans - matched).items():
            fp[kind] += n
        for (_, _, kind), n in (gold_spans - matched).items():
            fn[kind] += n

    def row(t: int, p: int, n: int) -> dict[str, Any]:
        return {**_prf(t, p, n), "support": t + n, "tp": t, "fp": p, "fn": n}

    kinds = sorted(set(tp) | set(fp) | set(fn))
    return {"micro": row(sum(tp.values()), sum(fp.values()), sum(fn.values())),
            "per_type": {kind: row(tp[kind], fp[kind], fn[kind]) for kind in kinds}}


def _as_set(labels: LabelOrLabels) -> frozenset[str]:
    return frozenset([labels]) if isinstance(labels, str) else frozenset(labels)


def classification_scores(gold: Sequence[LabelOrLabels], predicted: Sequence[LabelOrLabels]) -> dict[str, float]:
    """Accuracy, micro-F1 and macro-F1 for single-label (one string per example) or multi-label (sets) data.

    Labels are compared as sets per example, so single-label data is the one-element case: accuracy is the
    share of examples whose label set is predicted exactly (subset accuracy for multi-label); micro-F1 pools
    the (example, label) decisions; macro-F1 averages the per-label F1 over every label seen in gold or
    predictions. For single-label data micro-F1 equals accuracy. An empty set means "no label".
    """
    if len(gold) != len(predicted):
        raise ValueError(f"gold has {len(gold)} examples but predicted has {len(predicted)}.")
    if not gold:
        raise ValueError("classification_scores needs at least one example.")
    gold_sets = [_as_set(g) for g in gold]
    predicted_sets = [_as_set(p) for p in predicted]
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for g, p in zip(gold_sets, predicted_sets):
        tp.update(g & p)
        fp.update(p - g)
        fn.update(g - p)
    labels = sorted(set(tp) | set(fp) | set(fn))
    per_label = [_prf(tp[label], fp[label], fn[label])["f1"] for label in labels]
    return {
        "accuracy": sum(g == p for g, p in zip(gold_sets, predicted_sets)) / len(gold_sets),
        "micro_f1": _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))["f1"],
        "macro_f1": sum(per_label) / len(per_label) if per_label else 1.0,
    }


def threshold_labels(probabilities: Mapping[str, float], threshold: float = 0.5) -> frozenset[str]:
    """The labels a multi-label classifier assigns: those with probability >= `threshold`."""
    return frozenset(label for label, p in probabilities.items() if p >= threshold)
