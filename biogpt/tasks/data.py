"""Dataset readers (PubTator, CoNLL, classification TSV/JSONL) and the gold-span -> token-tag alignment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

PathLike = str | os.PathLike
IGNORE_INDEX = -100  # the label id the model's loss skips


@dataclass(frozen=True)
class EntitySpan:
    """A gold mention: `text == document.text[start:end]`."""

    start: int
    end: int
    text: str
    label: str
    identifier: str = ""  # e.g. the MeSH id of a PubTator mention


@dataclass
class Document:
    """A text with its gold entity mentions (for PubTator: title + " " + abstract)."""

    id: str
    text: str
    entities: list[EntitySpan] = field(default_factory=list)


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    labels: tuple[str, ...]  # empty: no label


def _finish(document: Optional[Document], title: Optional[str], abstract: Optional[str],
            mentions: list[tuple[int, int, str, str, str]], path: PathLike) -> Document:
    """Assemble a PubTator document and check every mention against its text."""
    text = (title or "") if abstract is None else f"{title or ''} {abstract}"
    for start, end, mention, label, identifier in mentions:
        if text[start:end] != mention:
            raise ValueError(f"{path}: document {document.id}: mention {mention!r} at {start}-{end} does not "
                             f"match the text there ({text[start:end]!r}).")
        document.entities.append(EntitySpan(start, end, mention, label, identifier))
    document.text = text
    return document


def read_pubtator(path: PathLike) -> list[Document]:
    """Documents of a PubTator file, with their mentions; relation lines (4 fields) are skipped.

    Format: `pmid|t|title`, `pmid|a|abstract`, then tab-separated `pmid start end mention type id [extra]`
    lines with offsets into `title + " " + abstract`; a blank line ends a document. Every mention is checked
    to equal the text at its offsets (ValueError otherwise).
    """
    documents: list[Document] = []
    current: Optional[Document] = None
    title: Optional[str] = None
    abstract: Optional[str] = None
    mentions: list[tuple[int, int, str, str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                if current is not None:
                    documents.append(_finish(current, title, abstract, mentions, path))
                current, title, abstract, mentions = None, None, None, []
                continue
            head = line.split("|", 2)
            if len(head) == 3 and head[1] in ("t", "a") and "\t" not in head[0]:
                if current is None:
                    current = Document(head[0], "")
                if head[1] == "t":
                    title = head[2]
                else:
                    abstract = head[2]
                continue
            fields = line.split("\t")
            if current is None:
                raise ValueError(f"{path}:{number}: annotation line before any title/abstract line.")
            if len(fields) == 4:  # a relation (e.g. `pmid CID chemical disease`)
                continue
            if len(fields) < 5:
                raise ValueError(f"{path}:{number}: expected `pmid start end mention type [id]`, got {line!r}.")
            identifier = fields[5] if len(fields) > 5 else ""
            mentions.append((int(fields[1]), int(fields[2]), fields[3], fields[4], identifier))
    if current is not None:
        documents.append(_finish(current, title, abstract, mentions, path))
    return documents


def read_conll(path: PathLike) -> list[tuple[list[str], list[str]]]:
    """Sentences of a CoNLL-style file as (tokens, tags): token in the first column, tag in the last.

    Columns are separated by tabs or spaces; a blank line ends a sentence; `-DOCSTART-` lines are skipped.
    """
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            columns = raw.split()
            if not columns or columns[0] == "-DOCSTART-":
                if tokens:
                    sentences.append((tokens, tags))
                tokens, tags = [], []
                continue
            if len(columns) < 2:
                raise ValueError(f"{path}:{number}: expected a token and a tag, got {raw.strip()!r}.")
            tokens.append(columns[0])
            tags.append(columns[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def _labels(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(label for label in value.split("|") if label and label != "empty")
    if isinstance(value, (list, tuple)):
        return tuple(str(label) for label in value)
    raise ValueError(f"{where}: labels must be a string or a list of strings, got {type(value).__name__}.")


def read_classification_tsv(path: PathLike) -> list[ClassificationExample]:
    """`text<TAB>labels` lines (as HoC's train.tsv): labels joined by `|`, `empty` meaning no label."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            text, sep, labels = line.rpartition("\t")
            if not sep:
                raise ValueError(f"{path}:{number}: expected `text<TAB>labels`, found no tab.")
            examples.append(ClassificationExample(text, _labels(labels, f"{path}:{number}")))
    return examples


def read_classification_jsonl(path: PathLike) -> list[ClassificationExample]:
    """One JSON object per line: `{"text": ..., "label": "x"}` or `{"text": ..., "labels": ["x", "y"]}`.

    A string label may join several labels with `|`; `empty` (or an empty list) means no label.
    """
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc}).") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{where}: each line must be an object with a string 'text'.")
            value = record["labels"] if "labels" in record else record.get("label")
            examples.append(ClassificationExample(record["text"], _labels(value, where)))
    return examples


def bio_label_list(entity_types: Iterable[str]) -> list[str]:
    """`["O", "B-T1", "I-T1", "B-T2", ...]`: the BIO labels for the given types (their order kept)."""
    labels = ["O"]
    for kind in dict.fromkeys(entity_types):
        labels += [f"B-{kind}", f"I-{kind}"]
    return labels


def token_bio_labels(offsets: Sequence[Sequence[int]], spans: Iterable[EntitySpan | tuple[int, int, str]],
                     label2id: Mapping[str, int]) -> list[int]:
    """Per-token BIO label ids for fine-tuning, from character spans and the tokenizer's offsets.

    Every sub-token overlapping an entity is labelled: `B-type` for the entity's first token, `I-type` for
    all later ones (so a word's continuation pieces carry `I-`); other tokens get `O`. Tokens without a span
    (special tokens, padding, and the spanless tail pieces of an escape such as `&amp;`) get `IGNORE_INDEX`
    so the loss skips them. Overlapping gold spans
    cannot all be represented in BIO: the earliest-starting (then longest) wins, later overlapping ones are
    dropped.
    """
    triples = sorted(((s.start, s.end, s.label) if isinstance(s, EntitySpan) else tuple(s) for s in spans),
                     key=lambda t: (t[0], -t[1]))
    tags: list[Optional[str]] = [None if end <= start else "O" for start, end in offsets]
    taken_until = -1
    for start, end, kind in triples:
        if start < taken_until:
            continue  # overlaps an entity already placed
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
        if not inside:
            continue
        if any(tags[i] != "O" for i in inside):
            continue  # a token shared with a previous entity: BIO cannot give it two tags
        for position, i in enumerate(inside):
            tags[i] = ("B-" if position == 0 else "I-") + kind
        taken_until = end
    missing = {tag for tag in tags if tag is not None and tag not in label2id}
    if missing:
        raise ValueError(f"label2id lacks {sorted(missing)}; build it with bio_label_list(types).")
    return [IGNORE_INDEX if tag is None else label2id[tag] for tag in tags]
