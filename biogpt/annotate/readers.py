"""Reading a corpus: which files an input names, their formats, and their records as documents or rejects.

An input is a file, a directory (every file under it whose format is known, in path order) or a glob; `.gz`
files are read through gzip. Formats: JSONL (`id` + `text`, or `title` + `abstract`), CSV and TSV with a header
row naming the same columns, PubTator (`pmid|t|title`, `pmid|a|abstract`, annotation lines ignored) and plain
text (one document per line, its id the line number). A record that cannot be annotated (no text, a field of
the wrong type, bytes that are not UTF-8, text over the length cap, malformed JSON or CSV) becomes a `Reject`
with the reason; reading goes on. Documents are grouped into `Shard`s of consecutive records of one file: the
unit that the engines annotate, commit and resume.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterator, Optional, Union

from ..errors import InputError

FORMATS = ("jsonl", "csv", "tsv", "pubtator", "text")
DEFAULT_MAX_CHARS = 100_000
# Bytes that are not UTF-8 are read as lone surrogates (errors="surrogateescape") so that one bad record does not
# stop the file; any surrogate in a field then rejects the record.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
             ".pubtator": "pubtator", ".txt": "text"}
_GLOB_CHARS = re.compile(r"[*?\[]")
# A CSV field may hold a whole article; the length cap is applied per record, after parsing.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class Document:
    """One text to annotate. `title_length` is set when the text is `title + " " + abstract` (PubTator-style)."""

    id: str
    text: str
    source: str  # "file:line", for messages and rejects
    title_length: Optional[int] = None


@dataclass(frozen=True)
class Reject:
    """A record that was not annotated, and why."""

    source: str
    reason: str
    id: Optional[str] = None


Item = Union[Document, Reject]


@dataclass(frozen=True)
class ReaderOptions:
    """How records are read: the length cap, the field/column names, and a format forced for every file."""

    max_chars: int = DEFAULT_MAX_CHARS
    id_field: str = "id"
    text_field: str = "text"
    input_format: str = "auto"

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise InputError(f"max_chars must be >= 1, got {self.max_chars}.")
        if self.input_format != "auto" and self.input_format not in FORMATS:
            raise InputError(f"Unknown input format {self.input_format!r}; use auto or one of {', '.join(FORMATS)}.")


@dataclass(frozen=True)
class InputFile:
    """One input file: its index in the input (shard keys use it), path, name in messages, and format."""

    index: int
    path: Path
    name: str
    format: str


# ----------------------------------------------------------------------------------------------------------------
# Which files
# ----------------------------------------------------------------------------------------------------------------
def detect_format(path: Union[str, Path]) -> Optional[str]:
    """The format a file name implies (`.gz` stripped), None when it implies none. PubTator files are often
    named `*.PubTator.txt`, so a name containing "pubtator" is PubTator whatever its suffix."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if "pubtator" in name:
        return "pubtator"
    return _SUFFIXES.get(Path(name).suffix)


def discover_inputs(spec: Union[str, os.PathLike], options: ReaderOptions = ReaderOptions()) -> list[InputFile]:
    """The files an input names, in a fixed order, each with its format.

    A file is taken as is (its format from `options.input_format` or its name); a directory contributes every
    non-hidden file below it whose format is known (all of them when a format is forced); a glob (`*`, `?`,
    `[`) its matching files. Raises `InputError` when nothing is found or a file's format cannot be told.
    """
    text = os.path.expanduser(str(spec))
    forced = None if options.input_format == "auto" else options.input_format
    path = Path(text)
    if path.is_file():
        root, candidates = path.parent, [path]
    elif path.is_dir():
        root = path
        candidates = sorted((p for p in path.rglob("*") if p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                            key=lambda p: p.relative_to(path).as_posix())
        candidates = [p for p in candidates if forced or detect_format(p)]
    elif _GLOB_CHARS.search(text):
        prefix = _GLOB_CHARS.split(text, 1)[0]
        root = Path(prefix if prefix.endswith(os.sep) else os.path.dirname(prefix) or ".")
        candidates = sorted((Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()),
                            key=lambda p: p.as_posix())
    else:
        raise InputError(f"No such file or directory: {text!r}.")
    if not candidates:
        raise InputError(f"{text!r} names no input file (known formats: {', '.join(sorted(_SUFFIXES))}, "
                         "optionally .gz; or pass --format).")
    files = []
    for index, candidate in enumerate(candidates):
        kind = forced or detect_format(candidate)
        if kind is None:
            raise InputError(f"Cannot tell the format of {candidate} from its name; pass --format "
                             f"({', '.join(FORMATS)}).")
        name = candidate.relative_to(root).as_posix() if candidate.is_relative_to(root) else candidate.as_posix()
        files.append(InputFile(index, candidate.resolve(), name, kind))
    return files


def open_text(stream: BinaryIO, name: str) -> IO[str]:
    """A text view of a binary stream: gunzipped when `name` ends in .gz, undecodable bytes kept as surrogates."""
    raw: BinaryIO = gzip.GzipFile(fileobj=stream) if name.lower().endswith(".gz") else stream
    # utf-8-sig drops the byte-order mark spreadsheets write before a CSV header; newline="" hands "\r\n" through,
    # as the csv module wants (the line readers strip it themselves).
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


# ----------------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------------
def _check(doc_id: str, text: str, source: str, options: ReaderOptions,
           title_length: Optional[int] = None) -> Item:
    """The document, or the reason it cannot be annotated."""
    if _SURROGATE.search(doc_id):
        return Reject(source, "undecodable bytes in the id (not valid UTF-8)")
    position = _SURROGATE.search(text)
    if position is not None:
        return Reject(source, f"undecodable bytes in the text at character {position.start()} (not valid UTF-8)",
                      doc_id)
    if not text.strip():
        return Reject(source, "no text (empty or only whitespace)", doc_id)
    if len(text) > options.max_chars:
        return Reject(source, f"text is {len(text):,} characters long, over the cap of {options.max_chars:,} "
                              "(--max-chars)", doc_id)
    return Document(doc_id, text, source, title_length)


def _join(title: Optional[str], abstract: Optional[str]) -> tuple[str, Optional[int]]:
    """`title + " " + abstract` (the PubTator convention offsets refer to) and the title's length."""
    if title is not None and abstract is not None:
        return f"{title} {abstract}", len(title)
    return (title if title is not None else abstract or ""), None


def _lines(handle: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(handle, 1):
        yield number, line.rstrip("\n").rstrip("\r")


def _id_value(value: Any) -> Optional[str]:
    """An id as text; ints are accepted (PMIDs), other types are not."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def _from_mapping(record: dict[str, Any], default_id: str, source: str, options: ReaderOptions) -> Item:
    """A JSONL object or CSV row: id from `id_field` (default: the line/row number), text from `text_field` or
    from `title` + `abstract`."""
    raw_id = record.get(options.id_field)
    doc_id = default_id if raw_id is None or raw_id == "" else _id_value(raw_id)
    if doc_id is None:
        return Reject(source, f"wrong type: {options.id_field!r} is {type(raw_id).__name__}, expected a string or "
                              "an integer")
    if options.text_field in record:
        text = record[options.text_field]
        if not isinstance(text, str):
            return Reject(source, f"wrong type: {options.text_field!r} is {type(text).__name__}, expected a string",
                          doc_id)
        return _check(doc_id, text, source, options)
    parts = {key: record.get(key) for key in ("title", "abstract")}
    if all(value is None for value in parts.values()):
        return Reject(source, f"no text: the record has no {options.text_field!r}, 'title' or 'abstract'", doc_id)
    for key, value in parts.items():
        if value is not None and not isinstance(value, str):
            return Reject(source, f"wrong type: {key!r} is {type(value).__name__}, expected a string", doc_id)
    text, title_length = _join(parts["title"], parts["abstract"])
    return _check(doc_id, text, source, options, title_length)


def _read_jsonl(handle: IO[str], name: str, options: ReaderOptions) -> Iterator[Item]:
    for number, line in _lines(handle):
        if not line.strip():
            continue
        source = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = ("undecodable bytes (not valid UTF-8)" if _SURROGATE.search(line)
                      else f"invalid JSON ({exc.msg} at column {exc.colno})")
            yield Reject(source, reason)
            continue
        if not isinstance(record, dict):
            yield Reject(source, f"wrong type: the line is a JSON {type(record).__name__}, expected an object")
            continue
        yield _from_mapping(record, str(number), source, options)


def _read_table(handle: IO[str], name: str, options: ReaderOptions, delimiter: str) -> Iterator[Item]:
    # TSV has no quoting (a quote is an ordinary character); CSV uses the usual double quotes.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
        return
    if options.text_field not in header and not {"title", "abstract"} & set(header):
        raise InputError(f"{name}: the header ({', '.join(header)}) has no {options.text_field!r} column, nor "
                         "'title'/'abstract' (pass --text-field to name the text column).")
    row_number = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Reject(f"{name}:{start}", f"malformed row ({exc})")
            continue
        if not row:
            continue
        row_number += 1
        source = f"{name}:{start}"
        if len(row) != len(header):
            yield Reject(source, f"malformed row: {len(row)} fields where the header has {len(header)}")
            continue
        yield _from_mapping(dict(zip(header, row)), str(row_number), source, options)


def _read_pubtator(handle: IO[str], name: str, options: ReaderOptions) -> Iterator[Item]:
    current: Optional[str] = None
    parts: dict[str, Optional[str]] = {"t": None, "a": None}
    first_line = 0

    def finish() -> Item:
        text, title_length = _join(parts["t"], parts["a"])
        return _check(current or "", text, f"{name}:{first_line}", options, title_length)

    for number, line in _lines(handle):
        head = line.split("|", 2)
        if len(head) == 3 and head[1] in ("t", "a") and "\t" not in head[0]:
            if current is not None and head[0] != current:  # a new document without a blank line between
                yield finish()
                current = None
            if current is None:
                current, parts, first_line = head[0], {"t": None, "a": None}, number
            parts[head[1]] = head[2]
        elif not line.strip():
            if current is not None:
                yield finish()
            current = None
        elif current is None or not line.startswith(current + "\t"):
            yield Reject(f"{name}:{number}", "malformed PubTator line: expected `id|t|title`, `id|a|abstract` or "
                                             "an annotation line of the current document")
        # annotation lines of the current document (mentions, relations) are not needed to annotate it again
    if current is not None:
        yield finish()


def _read_text(handle: IO[str], name: str, options: ReaderOptions, ids: str) -> Iterator[Item]:
    for number, line in _lines(handle):
        doc_id = str(number) if ids == "line" else f"{name}:{number}"
        yield _check(doc_id, line, f"{name}:{number}", options)


def read_items(stream: BinaryIO, input_file: InputFile, options: ReaderOptions, single_file: bool = True
               ) -> Iterator[Item]:
    """The documents and rejects of one file, in file order.

    Plain-text ids are line numbers; when the input has several files (`single_file=False`) they are prefixed
    with the file's name (`notes.txt:12`) so that ids stay distinct.
    """
    handle = open_text(stream, input_file.path.name)
    name, kind = input_file.name, input_file.format
    if kind == "jsonl":
        records = _read_jsonl(handle, name, options)
    elif kind in ("csv", "tsv"):
        records = _read_table(handle, name, options, "," if kind == "csv" else "\t")
    elif kind == "pubtator":
        records = _read_pubtator(handle, name, options)
    else:
        records = _read_text(handle, name, options, "line" if single_file else "name:line")
    try:
        yield from records
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # the file, not a record, is broken: nothing to skip
        raise InputError(f"{name} is not a complete gzip file ({exc}); re-download or re-compress it.") from None


# ----------------------------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Up to `shard_size` consecutive records of one file; `key` orders shards and names their output files."""

    key: str
    items: tuple[Item, ...]

    @property
    def documents(self) -> list[Document]:
        return [item for item in self.items if isinstance(item, Document)]

    @property
    def rejects(self) -> list[Reject]:
        return [item for item in self.items if isinstance(item, Reject)]


def shard_key(file_index: int, chunk: int) -> str:
    return f"{file_index:05d}-{chunk:06d}"


def file_shards(stream: BinaryIO, input_file: InputFile, options: ReaderOptions, shard_size: int,
                single_file: bool = True) -> Iterator[Shard]:
    """The shards of one file: its records cut into runs of `shard_size` (the last one shorter)."""
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}.")
    chunk: list[Item] = []
    index = 0
    for item in read_items(stream, input_file, options, single_file):
        chunk.append(item)
        if len(chunk) == shard_size:
            yield Shard(shard_key(input_file.index, index), tuple(chunk))
            chunk, index = [], index + 1
    if chunk:
        yield Shard(shard_key(input_file.index, index), tuple(chunk))


def iter_shards(files: list[InputFile], options: ReaderOptions, shard_size: int) -> Iterator[Shard]:
    """Every shard of every file, in order."""
    for input_file in files:
        with open(input_file.path, "rb") as stream:
            yield from file_shards(stream, input_file, options, shard_size, single_file=len(files) == 1)


def estimate_records(input_file: InputFile) -> int:
    """A quick count of a file's records for the progress bar's ETA (lines, or `|t|` lines for PubTator)."""
    opener = gzip.open if input_file.path.name.lower().endswith(".gz") else open
    marker = b"|t|" if input_file.format == "pubtator" else b"\n"
    keep = len(marker) - 1  # bytes carried into the next block, so that a marker split between blocks counts once
    count, tail = 0, b""
    with opener(input_file.path, "rb") as handle:
        while block := handle.read(1 << 20):
            data = tail + block
            count += data.count(marker)
            tail = data[len(data) - keep:] if keep else b""
    header = 1 if input_file.format in ("csv", "tsv") else 0
    return max(count - header, 0)
