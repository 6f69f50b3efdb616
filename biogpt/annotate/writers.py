"""Turning a shard's results into the bytes of its output files: JSONL records, PubTator, CSV, rejects.

Every function here is pure (results in, bytes out) so that the local and the Ray engine, which both call them,
write identical files. A JSONL record is one document: its id, the task, the task's structured result (entity
offsets index the document text exactly: for `title` + `abstract` records and PubTator, `title + " " + abstract`),
the model and its revision, and the parameters. PubTator is written for entity and relation tasks, CSV for
classification.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Mapping, Sequence

from .readers import Document, Reject

# PubTator is line- and tab-delimited: such characters inside a text or mention become spaces (same length, so
# offsets stay valid).
_PUBTATOR_BREAKS = re.compile(r"[\t\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) + "\n"


def records_jsonl(task: str, documents: Sequence[Document], results: Sequence[Mapping[str, Any]],
                  model: Mapping[str, str], parameters: Mapping[str, Any]) -> bytes:
    """One JSON line per document: `{"id", "task", "result", "model", "parameters"}`."""
    return "".join(_json_line({"id": document.id, "task": task, "result": result, "model": model,
                               "parameters": parameters})
                   for document, result in zip(documents, results, strict=True)).encode("utf-8")


def rejects_jsonl(rejects: Sequence[Reject]) -> bytes:
    """One JSON line per reject: `{"id", "source", "reason"}` (id null when it could not be read)."""
    return "".join(_json_line({"id": reject.id, "source": reject.source, "reason": reject.reason})
                   for reject in rejects).encode("utf-8")


def _pubtator_text(text: str) -> str:
    return _PUBTATOR_BREAKS.sub(" ", text)


def entities_pubtator(documents: Sequence[Document], results: Sequence[Mapping[str, Any]]) -> bytes:
    """PubTator: `id|t|title`, `id|a|abstract`, then `id<TAB>start<TAB>end<TAB>mention<TAB>label` per entity.

    A document read as one text (not title + abstract) is written as the title with an empty abstract, so that
    offsets, which PubTator counts in `title + " " + abstract`, are unchanged.
    """
    return _pubtator(documents, results, "label", relations=False)


def relations_pubtator(documents: Sequence[Document], results: Sequence[Mapping[str, Any]]) -> bytes:
    """PubTator as `entities_pubtator` writes it (the entity type as the label), then one
    `id<TAB>relation<TAB>head<TAB>tail` line per relation (entity names where BC5CDR's files have MeSH ids: the
    model names entities, it does not normalise them)."""
    return _pubtator(documents, results, "type", relations=True)


def _pubtator(documents: Sequence[Document], results: Sequence[Mapping[str, Any]], label_key: str,
              relations: bool) -> bytes:
    out = io.StringIO()
    for document, result in zip(documents, results, strict=True):
        doc_id, text = _pubtator_text(document.id).replace("|", " "), _pubtator_text(document.text)
        split = document.title_length
        title, abstract = (text, "") if split is None else (text[:split], text[split + 1:])
        out.write(f"{doc_id}|t|{title}\n{doc_id}|a|{abstract}\n")
        for entity in result["entities"]:
            out.write(f"{doc_id}\t{entity['start']}\t{entity['end']}\t{_pubtator_text(entity['text'])}\t"
                      f"{entity[label_key]}\n")
        for relation in result["relations"] if relations else ():
            out.write(f"{doc_id}\t{relation['relation']}\t{_pubtator_text(relation['head'])}\t"
                      f"{_pubtator_text(relation['tail'])}\n")
        out.write("\n")
    return out.getvalue().encode("utf-8")


def labels_csv(documents: Sequence[Document], results: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> bytes:
    """CSV with a header: `id,label,score` (the most probable label) then one probability column per label.

    A label left out of a result (`top_k`) has an empty cell.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "label", "score", *labels])
    for document, result in zip(documents, results, strict=True):
        probabilities = result["labels"]
        best = next(iter(probabilities))
        writer.writerow([document.id, best, repr(probabilities[best]),
                         *(repr(probabilities[label]) if label in probabilities else "" for label in labels)])
    return out.getvalue().encode("utf-8")
