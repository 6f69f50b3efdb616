"""Named-entity extraction: label schemes, sub-token aggregation, sentence windows, and a spaCy backend.

`aggregate` implements the five strategies of transformers' `TokenClassificationPipeline` (`none`, `simple`,
`first`, `average`, `max`) on plain token records, extended to BIOES/BILOU tags. `extract_entities` runs a
`BioGptForTokenClassification` over texts of any length: it splits them into sentences with spaCy, packs the
sentences into windows that fit the model's positions, and maps every entity back to the original text so
that `entity["text"] == text[entity["start"]:entity["end"]]` always holds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, NamedTuple, Optional, Sequence

import torch

from ..errors import ConfigError
from .inputs import encode_with_offsets, pad_token_id, right_pad

Strategy = Literal["none", "simple", "first", "average", "max"]
STRATEGIES: tuple[str, ...] = ("none", "simple", "first", "average", "max")
Scheme = Literal["BIOES", "BIO", "plain"]

# Tag prefixes; BILOU's L (last) and U (unit) are BIOES's E and S.
_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}


# ----------------------------------------------------------------------------------------------------------------
# Label schemes
# ----------------------------------------------------------------------------------------------------------------
def parse_label(label: str) -> tuple[str, Optional[str]]:
    """Split a tag into (prefix, entity type): `B-Chemical` -> ("B", "Chemical"), `O` -> ("O", None).

    BILOU prefixes are mapped to BIOES (`L-`->`E`, `U-`->`S`). A label without a known prefix (`Chemical`) is
    a plain label and reads as a continuation ("I"), as transformers does, so adjacent equal labels merge.
    """
    if label == "O":
        return "O", None
    head, sep, tail = label.partition("-")
    if sep and tail and head.upper() in _PREFIXES:
        return _PREFIXES[head.upper()], tail
    return "I", label


def entity_type(label: str) -> Optional[str]:
    """The entity type a tag belongs to (`B-Chemical` -> `Chemical`), None for `O`."""
    return parse_label(label)[1]


def detect_scheme(id2label: Mapping[int, str]) -> Scheme:
    """The tagging scheme of a label set: "BIOES" (any S-/E-/U-/L- tag), "BIO" (B-/I- tags) or "plain"."""
    prefixes = {label.partition("-")[0].upper() for label in id2label.values()
                if label != "O" and parse_label(label) != ("I", label)}
    if prefixes & {"S", "E", "U", "L"}:
        return "BIOES"
    if prefixes:
        return "BIO"
    return "plain"


def entity_types(id2label: Mapping[int, str]) -> list[str]:
    """The distinct entity types of a label set, in id order."""
    seen: dict[str, None] = {}
    for _, label in sorted(id2label.items()):
        kind = entity_type(label)
        if kind is not None:
            seen.setdefault(kind)
    return list(seen)


# ----------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TokenScores:
    """One model token: its label probabilities, its character span, and whether it starts a word.

    A token with `is_word_start=False` is a sub-token continuing the previous token's word (the word-level
    strategies fuse them), as transformers' `is_subword` is the negation. `index` is the token's position in
    the model input, reported by strategy `none`.
    """

    scores: Any  # 1-D probabilities over the labels: a tensor or a sequence of floats
    start: int
    end: int
    is_word_start: bool = True
    index: int = 0

    def __post_init__(self) -> None:
        self.scores = torch.as_tensor(self.scores, dtype=torch.float64)
        if self.scores.ndim != 1:
            raise ValueError(f"TokenScores.scores must be 1-D, got shape {tuple(self.scores.shape)}.")


@dataclass
class _Unit:
    """A token (strategies none/simple) or a fused word (first/average/max) with its chosen label."""

    label: str
    score: float
    start: int
    end: int
    index: int


def _argmax_unit(scores: torch.Tensor, id2label: Mapping[int, str], start: int, end: int, index: int) -> _Unit:
    # torch.argmax returns the first maximal index, as numpy's argmax in transformers does.
    best = int(torch.argmax(scores))
    return _Unit(id2label[best], float(scores[best]), start, end, index)


def _argmax_units(tokens: Sequence[TokenScores], id2label: Mapping[int, str]) -> list[_Unit]:
    """`_argmax_unit` of every token, in one tensor operation rather than one per token."""
    if not tokens:
        return []
    scores = torch.stack([token.scores for token in tokens])
    best = scores.argmax(dim=-1, keepdim=True)  # first maximal index, as for one token
    return [_Unit(id2label[label], score, token.start, token.end, token.index)
            for token, label, score in zip(tokens, best[:, 0].tolist(), scores.gather(1, best)[:, 0].tolist())]


def _words(tokens: Sequence[TokenScores]) -> list[list[TokenScores]]:
    groups: list[list[TokenScores]] = []
    for token in tokens:
        if token.is_word_start or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def _word_unit(word: list[TokenScores], strategy: str, id2label: Mapping[int, str]) -> _Unit:
    if strategy == "first":
        scores = word[0].scores
    elif strategy == "max":
        # The sub-token with the single most confident label decides (first one on ties, like Python's max).
        scores = max(word, key=lambda token: float(token.scores.max())).scores
    else:  # average: mean probabilities over the sub-tokens, then argmax
        scores = torch.stack([token.scores for token in word]).nanmean(dim=0)
    return _argmax_unit(scores, id2label, word[0].start, word[-1].end, word[0].index)


def _group(units: Sequence[_Unit]) -> list[list[_Unit]]:
    """Runs of units forming one entity, with BIO/BIOES repair; `O` units are dropped.

    B- and S- always open a new entity; I- and E- continue an open entity of the same type and otherwise open
    one (an `I-X` after `O` or after `B-Y` starts a new `X`, as transformers' grouping does); E- and S- close it.
    """
    groups: list[list[_Unit]] = []
    open_type: Optional[str] = None  # type of the entity that the next unit may extend
    for unit in units:
        prefix, kind = parse_label(unit.label)
        if prefix == "O":
            open_type = None
            continue
        if prefix in ("B", "S") or kind != open_type:
            groups.append([unit])
        else:
            groups[-1].append(unit)
        open_type = None if prefix in ("E", "S") else kind
    return groups


def aggregate(tokens: Sequence[TokenScores], id2label: Mapping[int, str], text: str,
              strategy: Strategy = "simple", threshold: float = 0.0) -> list[dict[str, Any]]:
    """Turn per-token label probabilities into entities, as transformers' TokenClassificationPipeline does.

    - `none`: every non-`O` token, labelled with its argmax tag (`B-Chemical`) and that tag's probability.
    - `simple`: argmax per token, then adjacent tokens grouped into entities (see `_group`); the score is the
      mean of the tokens' scores.
    - `first` / `average` / `max`: first the sub-tokens of each word agree on one label (that of the first
      sub-token / of the mean probabilities / of the sub-token with the highest probability), then words are
      grouped as in `simple`; the score is the mean of the words' scores.

    Entities are dicts `{"text", "label", "score", "start", "end"}` (plus `"index"` for `none`) with `text ==
    text[start:end]`; those scoring below `threshold`, and those with an empty span, are dropped.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"aggregation_strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if strategy in ("none", "simple"):
        units = _argmax_units(tokens, id2label)
    else:
        units = [_word_unit(word, strategy, id2label) for word in _words(tokens)]

    entities: list[dict[str, Any]] = []
    if strategy == "none":
        for unit in units:
            if unit.label != "O" and unit.end > unit.start and unit.score >= threshold:
                entities.append({"text": text[unit.start:unit.end], "label": unit.label, "score": unit.score,
                                 "start": unit.start, "end": unit.end, "index": unit.index})
        return entities
    for group in _group(units):
        score = sum(unit.score for unit in group) / len(group)
        if score < threshold:
            continue
        start, end = group[0].start, group[-1].end
        if end <= start:  # only pieces without a span of their own (e.g. the tail of an `&amp;` escape)
            continue
        entities.append({"text": text[start:end], "label": entity_type(group[0].label), "score": score,
                         "start": start, "end": end})
    return entities


# ----------------------------------------------------------------------------------------------------------------
# Sentences and windows
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def load_sentencizer(name: Optional[str] = None) -> Any:
    """A cached spaCy pipeline that sets sentence boundaries: `spacy.blank("en")` + `sentencizer` by default.

    A named pipeline must be installed (`spacy.load(name)`); one without a parser, senter or sentencizer gets
    a rule-based `sentencizer` added.
    """
    import spacy

    if name is None:
        nlp = spacy.blank("en")
    else:
        try:
            nlp = spacy.load(name)
        except OSError as exc:  # spaCy's "E050: can't find model" is an OSError
            raise ConfigError(f"spaCy pipeline {name!r} is not installed (spacy.load failed: {exc}).") from exc
    if not {"parser", "senter", "sentencizer"} & set(nlp.pipe_names):
        nlp.add_pipe("sentencizer")
    return nlp


def split_sentences(text: str, sentencizer: Optional[str] = None) -> list[tuple[int, int]]:
    """Character spans `(start, end)` of the sentences of `text`, without surrounding whitespace."""
    nlp = load_sentencizer(sentencizer)
    nlp.max_length = max(nlp.max_length, len(text) + 1)  # sentence splitting only: long texts are fine
    spans = []
    for sentence in nlp(text).sents:
        # spaCy attaches runs of whitespace to sentences; trim them so that spans start and end on text.
        chunk = text[sentence.start_char:sentence.end_char]
        stripped = chunk.lstrip()
        if stripped.strip():
            start = sentence.start_char + len(chunk) - len(stripped)
            spans.append((start, start + len(stripped.rstrip())))
    return spans


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def _word_end_flags(tokenizer: Any, input_ids: Sequence[int]) -> list[bool]:
    """Per token: does it end a word? BioGPT's BPE marks word-final pieces with `</w>`."""
    return [piece.endswith("</w>") for piece in tokenizer.convert_ids_to_tokens(list(input_ids))]


def _split_long_sentence(tokenizer: Any, text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Cut one over-long sentence into chunks of at most `limit` tokens (incl. `</s>`), preferably between words.

    Cut points are token boundaries of the sentence's own tokenization; a chunk whose re-tokenization comes out
    longer than planned (Moses/BPE can differ at a chunk's edges) is cut shorter.
    """
    ids, offsets = encode_with_offsets(tokenizer, text[start:end])
    word_end = _word_end_flags(tokenizer, ids)
    # Token positions that can begin or end a chunk: those with a real span (escape continuations have none).
    real = [i for i in range(1, len(ids)) if offsets[i][1] > offsets[i][0]]
    chunks: list[tuple[int, int]] = []
    position = 0
    while position < len(real):
        budget = limit - 1
        while True:
            stop = min(position + budget, len(real))
            if stop < len(real):
                # End on a word's last piece where possible, so that no word is split between chunks.
                word_stops = [j for j in range(position + 1, stop + 1) if word_end[real[j] - 1]]
                stop = word_stops[-1] if word_stops else stop
            chunk = (start + offsets[real[position]][0], start + offsets[real[stop - 1]][1])
            count = _count(tokenizer, text[chunk[0]:chunk[1]])
            if count <= limit or stop - position == 1:
                break
            budget = max(1, stop - position - (count - limit))
        chunks.append(chunk)
        position = stop
    return chunks


class Window(NamedTuple):
    """One window of a text: its character span and its own tokenization (`input_ids` with the leading `</s>`,
    `offsets` relative to `start`), which is what the model reads."""

    start: int
    end: int
    input_ids: list[int]
    offsets: list[tuple[int, int]]


def _window(tokenizer: Any, text: str, start: int, end: int) -> Window:
    return Window(start, end, *encode_with_offsets(tokenizer, text[start:end]))


def encode_windows(tokenizer: Any, text: str, max_tokens: int, sentencizer: Optional[str] = None) -> list[Window]:
    """The windows of `text`, each tokenizing to at most `max_tokens` tokens (the leading `</s>` included).

    Sentences are packed greedily, in order; a window's length is estimated from its sentences' token counts
    and then checked on the window's own tokenization (sentences are dropped from its end until it fits), the
    tokenization that is returned. A sentence that alone is too long is split at token boundaries. Windows are
    disjoint, so no entity can straddle or repeat across two.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must leave room for </s> and one token, got {max_tokens}.")
    sentences = split_sentences(text, sentencizer)
    counts = [_count(tokenizer, text[a:b]) for a, b in sentences]
    windows: list[Window] = []
    i = 0
    while i < len(sentences):
        if counts[i] > max_tokens:
            windows.extend(_window(tokenizer, text, start, end)
                           for start, end in _split_long_sentence(tokenizer, text, *sentences[i], max_tokens))
            i += 1
            continue
        last, estimate = i, counts[i]
        while last + 1 < len(sentences) and estimate + counts[last + 1] - 1 <= max_tokens:
            last += 1
            estimate += counts[last] - 1  # each sentence's own `</s>` is not repeated inside a window
        window = _window(tokenizer, text, sentences[i][0], sentences[last][1])
        while last > i and len(window.input_ids) > max_tokens:
            last -= 1
            window = _window(tokenizer, text, sentences[i][0], sentences[last][1])
        windows.append(window)
        i = last + 1
    return windows


def plan_windows(tokenizer: Any, text: str, max_tokens: int, sentencizer: Optional[str] = None
                 ) -> list[tuple[int, int]]:
    """Character spans of the windows of `encode_windows`."""
    return [(window.start, window.end) for window in encode_windows(tokenizer, text, max_tokens, sentencizer)]


def window_tokens(tokenizer: Any, window: Window, probabilities: torch.Tensor) -> list[TokenScores]:
    """TokenScores for one window's tokens (the leading `</s>` skipped), with spans in the whole text.

    `probabilities` is the window's (tokens, labels) matrix. Words are the tokenizer's words: a new word starts
    after each `</w>`-final piece.
    """
    word_end = _word_end_flags(tokenizer, window.input_ids)
    rows = probabilities.to(torch.float64)  # converted once: TokenScores then holds views, not copies
    return [TokenScores(rows[i], window.offsets[i][0] + window.start, window.offsets[i][1] + window.start,
                        is_word_start=i == 1 or word_end[i - 1], index=i)
            for i in range(1, len(window.input_ids))]


_WORD_CHARACTER = re.compile(r"[^\W_]")  # a letter or a digit: a word is a run of them


def whole_words(entities: Iterable[Mapping[str, Any]], text: str) -> list[dict[str, Any]]:
    """`entities` as a reader expects them: widened so that none starts or ends inside a word ("anti[cancer]" ->
    "anticancer"), without those that hold no letter or digit (a lone "-"), and with the ones that overlap once
    widened merged into one (labelled by the most confident of them, with its score).

    Sub-word tokens make a model label pieces of words; transformers' aggregation keeps those pieces, which is what
    `aggregate` reproduces, so this is a separate step for display.
    """
    def inside(position: int) -> bool:  # is `position` a boundary between two characters of one word?
        return (0 < position < len(text) and _WORD_CHARACTER.match(text[position - 1]) is not None
                and _WORD_CHARACTER.match(text[position]) is not None)

    merged: list[dict[str, Any]] = []
    for entity in sorted(entities, key=lambda e: (e["start"], e["end"])):
        start, end = entity["start"], entity["end"]
        while inside(start):
            start -= 1
        while inside(end):
            end += 1
        if not _WORD_CHARACTER.search(text[start:end]):
            continue
        widened = {**entity, "start": start, "end": end, "text": text[start:end]}
        if merged and start < merged[-1]["end"]:
            previous = merged[-1]
            winner = widened if widened["score"] > previous["score"] else previous
            start = min(start, previous["start"])
            end = max(end, previous["end"])
            merged[-1] = {**winner, "start": start, "end": end, "text": text[start:end]}
        else:
            merged.append(widened)
    return merged


@torch.inference_mode()
def extract_entities(model: Any, tokenizer: Any, text: str, aggregation_strategy: Strategy = "simple",
                     threshold: float = 0.0, sentencizer: Optional[str] = None,
                     batch_size: int = 8, words: bool = False) -> list[dict[str, Any]]:
    """Entities found by a token-classification model in `text`, of any length.

    Returns dicts `{"text", "label", "score", "start", "end"}` (plus `"index"` for strategy `none`: the
    token's position within its window) in text order; `text` is exactly `original[start:end]`.
    `sentencizer` names an installed spaCy pipeline used to split sentences (default: blank English +
    rule-based sentencizer); `batch_size` windows go through the model at a time. `words=True` passes them through
    `whole_words` (what a reader expects; the default keeps transformers' pipeline semantics).
    """
    if aggregation_strategy not in STRATEGIES:
        raise ValueError(f"aggregation_strategy must be one of {STRATEGIES}, got {aggregation_strategy!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not text.strip():
        return []
    config = model.config
    windows = encode_windows(tokenizer, text, config.max_position_embeddings, sentencizer)
    pad_id = pad_token_id(model, tokenizer)
    entities: list[dict[str, Any]] = []
    for first in range(0, len(windows), batch_size):
        batch = windows[first:first + batch_size]
        ids, mask = right_pad([window.input_ids for window in batch], pad_id)
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        probabilities = torch.softmax(logits.float(), dim=-1).cpu()
        for window, probs in zip(batch, probabilities):
            tokens = window_tokens(tokenizer, window, probs)
            entities.extend(aggregate(tokens, config.id2label, text, aggregation_strategy, threshold))
    return whole_words(entities, text) if words else entities


# ----------------------------------------------------------------------------------------------------------------
# spaCy backend
# ----------------------------------------------------------------------------------------------------------------
def spacy_pipelines() -> list[str]:
    """Installed spaCy pipelines, which can serve as entity backends (an empty list when spaCy is absent)."""
    try:
        import spacy.util
    except ImportError:
        return []
    return sorted(spacy.util.get_installed_models())


class SpacyEntityBackend:
    """Entities from an installed spaCy pipeline with an `ner` component, in `extract_entities`' format.

    spaCy gives no probabilities, so every score is 1.0. `name` is what `spacy.load` accepts (a package name
    or a directory).
    """

    def __init__(self, name: str):
        import spacy

        try:
            self.nlp = spacy.load(name)
        except OSError as exc:
            raise ConfigError(f"spaCy pipeline {name!r} is not installed (spacy.load failed: {exc}).") from exc
        if "ner" not in self.nlp.pipe_names:
            raise ConfigError(f"spaCy pipeline {name!r} has no 'ner' component (components: "
                              f"{self.nlp.pipe_names}); pick a pipeline that recognises entities.")
        self.name = name

    def __call__(self, text: str) -> list[dict[str, Any]]:
        if not text.strip():
            return []
        return [{"text": ent.text, "label": ent.label_, "score": 1.0, "start": ent.start_char,
                 "end": ent.end_char} for ent in self.nlp(text).ents]

    @property
    def labels(self) -> list[str]:
        return list(self.nlp.get_pipe("ner").labels)


def entities_to_spans(entities: Iterable[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """(start, end, label) triples of entity dicts, the form `metrics.entity_scores` compares."""
    return [(int(e["start"]), int(e["end"]), str(e["label"])) for e in entities]
