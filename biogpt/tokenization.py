"""BioGPT's tokenizer: Moses tokenization followed by fastBPE-style byte-pair encoding.

Behaves like `transformers.BioGptTokenizer` (the "slow" one) on the Hub files `vocab.json` + `merges.txt`: same
tokens, same ids, same decoded text. On top of it, `return_offsets_mapping=True` gives every id its character span
in the original text (which the reference cannot do), so that token-level predictions map back onto the input.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from .errors import CheckpointError
from .hub import resolve_file

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# Same order as transformers' SPECIAL_TOKENS_ATTRIBUTES (it decides the order of `all_special_tokens`).
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token")
_DEFAULT_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                           "pad_token": "<pad>"}
# Settings read from tokenizer_config.json (other keys there are transformers internals we do not need).
_CONFIG_KEYS = ("model_max_length", "padding_side", "clean_up_tokenization_spaces") + SPECIAL_TOKEN_ATTRIBUTES
# Keys transformers users commonly pass to from_pretrained that mean nothing for this tokenizer.
_IGNORED_KWARGS = ("use_fast", "trust_remote_code", "force_download", "resume_download", "proxies",
                   "subfolder", "legacy")

# The XML escapes Moses applies to its tokens (escape=True), and the original character each stands for.
_MOSES_ENTITIES = {"&amp;": "&", "&#124;": "|", "&lt;": "<", "&gt;": ">", "&apos;": "'", "&quot;": '"',
                   "&#91;": "[", "&#93;": "]"}
_ENTITY_RE = re.compile("|".join(re.escape(e) for e in _MOSES_ENTITIES))
_DASH_MARKER = "@-@"  # Moses' aggressive dash split writes an intra-word "-" as this token
_BPE_CACHE_LIMIT = 200_000

Span = tuple[int, int]
TextInput = Union[str, Sequence[str]]


class BatchEncoding(dict):
    """The result of `tokenizer(...)`: a dict (so `model(**enc)` works) with attribute access and `.to(device)`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> "BatchEncoding":
        """Move every tensor to `device` (in place) and return self, as `tok(...).to(model.device)` expects."""
        for key, value in self.items():
            if hasattr(value, "to") and hasattr(value, "device"):
                self[key] = value.to(device)
        return self

    @property
    def data(self) -> dict:
        return dict(self)


class BioGptTokenizer:
    """Moses + BPE tokenizer of BioGPT, file- and id-compatible with `transformers.BioGptTokenizer`."""

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        merges_file: str | os.PathLike,
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        sep_token: str = "</s>",
        pad_token: str = "<pad>",
        model_max_length: int = 1024,
        padding_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        import sacremoses  # a hard dependency of this tokenizer, imported here to keep `import biogpt` light

        self._moses_tokenizer = sacremoses.MosesTokenizer(lang="en")
        self._moses_detokenizer = sacremoses.MosesDetokenizer(lang="en")

        try:
            with open(vocab_file, encoding="utf-8") as handle:
                self.encoder: dict[str, int] = json.load(handle)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{vocab_file} is not valid JSON ({exc}).") from None
        with open(merges_file, encoding="utf-8") as handle:
            # Like the reference: one merge per line, extra fields (fastBPE counts) ignored, and the text after the
            # last newline dropped (so a file must end with a newline, as merges.txt/bpecodes do).
            lines = handle.read().split("\n")[:-1]
        merges = [tuple(line.split()[:2]) for line in lines]
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges) if len(pair) == 2}
        self.decoder: dict[int, str] = {i: t for t, i in self.encoder.items()}

        self.unk_token, self.bos_token, self.eos_token = unk_token, bos_token, eos_token
        self.sep_token, self.pad_token = sep_token, pad_token
        # Special tokens missing from the vocabulary get ids after it, as transformers adds them.
        self._added_tokens: dict[str, int] = {}
        for token in self.all_special_tokens:
            if token not in self.encoder and token not in self._added_tokens:
                self._added_tokens[token] = len(self.encoder) + len(self._added_tokens)
        self._added_decoder = {i: t for t, i in self._added_tokens.items()}

        self.model_max_length = int(model_max_length)
        self.padding_side = _check_side(padding_side)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self._cache: dict[str, tuple[str, ...]] = {}

    # ----------------------------------------------------------------------------------------- loading, saving
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        revision: Optional[str] = None,
        cache_dir: Optional[str | os.PathLike] = None,
        local_files_only: bool = False,
        token: Optional[str] = None,
        padding_side: Optional[str] = None,
        **kwargs: Any,
    ) -> "BioGptTokenizer":
        """Load from a local directory or a Hub repo id holding vocab.json + merges.txt (+ optional configs).

        Keyword arguments (`model_max_length`, `padding_side`, special tokens, ...) override the saved config.
        """
        where = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        vocab = resolve_file(source, VOCAB_FILES_NAMES["vocab_file"], **where)
        merges = resolve_file(source, VOCAB_FILES_NAMES["merges_file"], **where)
        settings: dict[str, Any] = {}
        for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):  # the tokenizer config wins, as in transformers
            path = resolve_file(source, name, required=False, **where)
            if path is not None:
                settings.update(_read_settings(path))
        for key, value in kwargs.items():
            if key in _CONFIG_KEYS:
                settings[key] = value
            elif key not in _IGNORED_KWARGS:
                warnings.warn(f"BioGptTokenizer.from_pretrained ignores the unknown argument {key!r}.", stacklevel=2)
        if padding_side is not None:
            settings["padding_side"] = padding_side
        return cls(vocab, merges, **settings)

    def save_vocabulary(self, save_directory: str | os.PathLike, filename_prefix: Optional[str] = None
                        ) -> tuple[str, str]:
        """Write vocab.json and merges.txt (as the reference writes them) and return their paths."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"Vocabulary path ({save_directory}) should be a directory")
        prefix = filename_prefix + "-" if filename_prefix else ""
        vocab_file = directory / (prefix + VOCAB_FILES_NAMES["vocab_file"])
        merges_file = directory / (prefix + VOCAB_FILES_NAMES["merges_file"])
        vocab_file.write_text(json.dumps(self.encoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                              encoding="utf-8")
        ordered = sorted(self.bpe_ranks.items(), key=lambda item: item[1])
        merges_file.write_text("".join(f"{left} {right}\n" for (left, right), _ in ordered), encoding="utf-8")
        return str(vocab_file), str(merges_file)

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write a directory that both `biogpt` and `transformers` load with `BioGptTokenizer.from_pretrained`."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        specials = {name: getattr(self, name) for name in SPECIAL_TOKEN_ATTRIBUTES}
        config = {"tokenizer_class": "BioGptTokenizer", "model_max_length": self.model_max_length,
                  "padding_side": self.padding_side,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces, **specials}
        config_file = directory / TOKENIZER_CONFIG_FILE
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        map_file = directory / SPECIAL_TOKENS_MAP_FILE
        map_file.write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return (str(config_file), str(map_file)) + self.save_vocabulary(directory)

    # ------------------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        """Size of vocab.json (without special tokens added on top of it), like the reference."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder) + len(self._added_tokens)

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self._added_tokens}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(getattr(self, name) for name in SPECIAL_TOKEN_ATTRIBUTES))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._token_to_id(token) for token in self.all_special_tokens]

    @property
    def bos_token_id(self) -> int:
        return self._token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self._token_to_id(self.eos_token)

    @property
    def sep_token_id(self) -> int:
        return self._token_to_id(self.sep_token)

    @property
    def pad_token_id(self) -> int:
        return self._token_to_id(self.pad_token)

    @property
    def unk_token_id(self) -> int:
        return self._token_to_id(self.unk_token)

    def _token_to_id(self, token: str) -> int:
        if token in self._added_tokens:
            return self._added_tokens[token]
        return self.encoder.get(token, self.encoder.get(self.unk_token, self._added_tokens.get(self.unk_token)))

    def _id_to_token(self, index: int) -> str:
        if index in self._added_decoder:
            return self._added_decoder[index]
        return self.decoder.get(index, self.unk_token)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        ids = _to_python(ids)
        if isinstance(ids, int):
            return self._id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in skip]

    # ------------------------------------------------------------------------------------------ tokenizing
    def _bpe(self, word: str) -> tuple[str, ...]:
        """BPE pieces of one Moses token; the last piece carries the end-of-word marker `</w>`."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            # Merge the best-ranked adjacent pair everywhere it occurs (left to right, no overlaps), then repeat.
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        pieces = tuple(symbols)
        if len(self._cache) >= _BPE_CACHE_LIMIT:  # bound memory in long-running processes
            self._cache.clear()
        self._cache[word] = pieces
        return pieces

    def _segments(self, text: str) -> list[tuple[int, int, bool]]:
        """Split `text` around special tokens written in it (they are kept whole, as the reference does).

        Returns (start, end, is_special) spans covering the text.
        """
        specials = sorted(self.all_special_tokens, key=len, reverse=True)  # longest match first
        pattern = re.compile("|".join(re.escape(token) for token in specials))
        segments, cursor = [], 0
        for match in pattern.finditer(text):
            if match.start() > cursor:
                segments.append((cursor, match.start(), False))
            segments.append((match.start(), match.end(), True))
            cursor = match.end()
        if cursor < len(text):
            segments.append((cursor, len(text), False))
        return segments

    def _moses(self, text: str) -> list[str]:
        return self._moses_tokenizer.tokenize(text, aggressive_dash_splits=True, return_str=False, escape=True)

    def _tokenize_with_spans(self, text: str, with_spans: bool) -> tuple[list[str], list[Span]]:
        tokens: list[str] = []
        spans: list[Span] = []
        for start, end, special in self._segments(text):
            if special:
                tokens.append(text[start:end])
                spans.append((start, end))
                continue
            cursor = start
            for word in self._moses(text[start:end]):
                if not word:
                    continue
                pieces = self._bpe(word)
                tokens.extend(pieces)
                if with_spans:
                    piece_spans, cursor = _align_pieces(text, cursor, end, word, pieces)
                    spans.extend(piece_spans)
        return tokens, spans

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens of `text` (no special tokens added)."""
        return self._tokenize_with_spans(text, with_spans=False)[0]

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[Span]]:
        """The BPE tokens of `text` and, for each, its (start, end) character span in `text`.

        Spans are in order and never overlap; the pieces of one word tile that word. A piece that only continues an
        XML escape or the `@-@` dash marker begun by the previous piece gets an empty span at the end of the previous
        one.
        """
        return self._tokenize_with_spans(text, with_spans=True)

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None
                                         ) -> list[int]:
        """`</s> A` for one sequence, `</s> A </s> B` for a pair (BioGPT/fairseq prefixes the separator)."""
        if token_ids_1 is None:
            return [self.sep_token_id] + list(token_ids_0)
        return [self.sep_token_id] + list(token_ids_0) + [self.sep_token_id] + list(token_ids_1)

    def encode(self, text: str, add_special_tokens: bool = True, truncation: Optional[bool | str] = None,
               max_length: Optional[int] = None, return_tensors: Optional[str] = None) -> Any:
        """The ids of `text` (a list; with `return_tensors`, a (1, length) tensor), as `__call__` computes them."""
        return self(text, add_special_tokens=add_special_tokens, truncation=truncation, max_length=max_length,
                    return_tensors=return_tensors, return_attention_mask=False)["input_ids"]

    def __call__(
        self,
        text: TextInput,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: Optional[bool | str] = None,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
        padding_side: Optional[str] = None,
    ) -> BatchEncoding:
        """Encode one text or a batch of texts into `input_ids` (+ `attention_mask`, + `offset_mapping`).

        `truncation` keeps the first `max_length` ids (default `model_max_length`); as in transformers, giving only
        `max_length` (no padding, truncation unset) also truncates. `padding` is True/"longest" (to the longest in the
        batch) or "max_length". `return_tensors="pt"` (or "np") adds a batch dimension to a single text.
        `return_offsets_mapping=True` adds, for every id, its (start, end) span in its text; (0, 0) for special
        tokens and padding.
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        for item in texts:
            if not isinstance(item, str):
                raise TypeError(f"text must be a str or a list of str, got an item of type {type(item).__name__}.")
        pad_to, limit = self._lengths(padding, truncation, max_length)
        side = _check_side(padding_side or self.padding_side)

        rows_ids, rows_spans = [], []
        for item in texts:
            tokens, spans = self._tokenize_with_spans(item, with_spans=return_offsets_mapping)
            ids = [self._token_to_id(token) for token in tokens]
            if add_special_tokens:
                ids = self.build_inputs_with_special_tokens(ids)
                spans = [(0, 0)] + spans
            if limit is not None:
                ids, spans = ids[:limit], spans[:limit]
            rows_ids.append(ids)
            rows_spans.append(spans)

        target = max((len(ids) for ids in rows_ids), default=0) if pad_to == "longest" else pad_to
        rows_mask = []
        for row, (ids, spans) in enumerate(zip(rows_ids, rows_spans)):
            missing = max(0, (target or 0) - len(ids))
            mask = [1] * len(ids)
            pad_ids, pad_mask, pad_spans = [self.pad_token_id] * missing, [0] * missing, [(0, 0)] * missing
            if side == "right":
                rows_ids[row], mask, rows_spans[row] = ids + pad_ids, mask + pad_mask, spans + pad_spans
            else:
                rows_ids[row], mask, rows_spans[row] = pad_ids + ids, pad_mask + mask, pad_spans + spans
            rows_mask.append(mask)

        columns: dict[str, list] = {"input_ids": rows_ids}
        if return_attention_mask:
            columns["attention_mask"] = rows_mask
        if return_offsets_mapping:
            columns["offset_mapping"] = rows_spans
        return BatchEncoding({key: _as_output(key, rows, batched, return_tensors) for key, rows in columns.items()})

    def _lengths(self, padding: bool | str, truncation: Optional[bool | str], max_length: Optional[int]
                 ) -> tuple[Optional[int | str], Optional[int]]:
        """(pad target: None, "longest" or a length; truncation limit or None) from the call's arguments."""
        if max_length is not None and padding is False and truncation is None:
            truncation = True  # transformers' rule: a bare max_length truncates
        if padding in (True, "longest"):
            pad_to: Optional[int | str] = "longest"
        elif padding in (False, None, "do_not_pad"):
            pad_to = None
        elif padding == "max_length":
            pad_to = max_length if max_length is not None else self.model_max_length
        else:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}.")
        if truncation in (True, "longest_first", "only_first"):
            limit: Optional[int] = max_length if max_length is not None else self.model_max_length
        elif truncation in (False, None, "do_not_truncate"):
            limit = None
        else:
            raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'do_not_truncate' "
                             f"(single sequences only), got {truncation!r}.")
        if limit is not None and limit < 0:
            raise ValueError(f"max_length must be >= 0, got {limit}.")
        return pad_to, limit

    # ------------------------------------------------------------------------------------------- decoding
    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Undo BPE (drop `</w>`, join pieces) and Moses-detokenize."""
        words = "".join(token.replace(" ", "").replace("</w>", " ") for token in tokens).split()
        return self._moses_detokenizer.detokenize(words)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: Optional[bool] = None) -> str | list[str]:
        """Text of one sequence of ids (list, tensor, numpy); a batch (list of lists, 2-D tensor) gives a list."""
        ids = _to_python(token_ids)
        if isinstance(ids, list) and ids and isinstance(ids[0], (list, tuple)):
            return self.batch_decode(ids, skip_special_tokens, clean_up_tokenization_spaces)
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string([tokens] if isinstance(tokens, str) else tokens)
        cleanup = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return _clean_up_tokenization(text) if cleanup else text

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: Optional[bool] = None) -> list[str]:
        return [self.decode(list(seq), skip_special_tokens, clean_up_tokenization_spaces)
                for seq in _to_python(sequences)]

    def __repr__(self) -> str:
        return (f"BioGptTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"padding_side={self.padding_side!r})")


# ------------------------------------------------------------------------------------------------- helpers
def _check_side(side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
    return side


def _read_settings(path: Path) -> dict[str, Any]:
    """The settings we honour from a tokenizer_config.json / special_tokens_map.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}).") from None
    settings = {}
    for key in _CONFIG_KEYS:
        value = data.get(key)
        if isinstance(value, dict):  # transformers saves special tokens as AddedToken dicts
            value = value.get("content")
        if value is not None:
            settings[key] = value
    # transformers writes a huge sentinel when a checkpoint sets no limit; BioGPT's positions stop at 1024.
    if int(settings.get("model_max_length", 0)) > 1_000_000:
        settings.pop("model_max_length")
    return settings


def _to_python(value: Any) -> Any:
    """Tensors and numpy arrays (any depth) to Python ints / lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value


def _as_output(key: str, rows: list[list], batched: bool, return_tensors: Optional[str]) -> Any:
    if return_tensors is None:
        return rows if batched else rows[0]
    if len({len(row) for row in rows}) > 1:
        raise ValueError(
            f"Cannot make a tensor of {key}: the texts have different lengths. Pass padding=True (or "
            "padding='max_length' with max_length=...) and/or truncation=True to get equal lengths."
        )
    if return_tensors == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.long)
    if return_tensors == "np":
        import numpy as np

        return np.array(rows, dtype=np.int64)
    raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}.")


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (only used when clean_up_tokenization_spaces is on)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def _units(word: str) -> list[tuple[int, int, str]]:
    """Split a Moses token into (start, end, original character) units.

    An XML escape (`&amp;`) or the dash marker `@-@` is one unit standing for one character of the input.
    """
    if word == _DASH_MARKER:
        return [(0, len(word), "-")]
    units, i = [], 0
    while i < len(word):
        match = _ENTITY_RE.match(word, i) if word[i] == "&" else None
        end = match.end() if match else i + 1
        units.append((i, end, _MOSES_ENTITIES[match.group()] if match else word[i]))
        i = end
    return units


def _skippable(char: str) -> bool:
    # Moses drops whitespace and ASCII control characters; nothing else of the input is lost.
    return char.isspace() or ord(char) < 32


def _match_chars(text: str, cursor: int, limit: int, chars: str) -> Optional[list[int]]:
    """Positions of `chars` in text[cursor:limit], in order, allowing only skippable characters in between."""
    positions, pos = [], cursor
    for char in chars:
        while pos < limit and text[pos] != char and _skippable(text[pos]):
            pos += 1
        if pos >= limit or text[pos] != char:
            return None
        positions.append(pos)
        pos += 1
    return positions


def _align_pieces(text: str, cursor: int, limit: int, word: str, pieces: tuple[str, ...]
                  ) -> tuple[list[Span], int]:
    """Spans in `text` of the BPE `pieces` of the Moses token `word`, searching from `cursor` up to `limit`.

    Returns the spans and the cursor after the word. Moses only drops whitespace and control characters, so the
    word's characters are matched one by one, skipping those. Should Moses have rewritten the text in a way we do
    not model (a literal "DOTMULTI" in the input), the word is looked up verbatim further on, and failing that its
    pieces get empty spans at `cursor`: still in order, never past the text.
    """
    units = _units(word)
    chars = "".join(char for _, _, char in units)
    positions = _match_chars(text, cursor, limit, chars)
    if positions is None:
        found = text.find(chars, cursor, limit)
        if found < 0:
            return [(cursor, cursor)] * len(pieces), cursor
        positions = list(range(found, found + len(chars)))

    # unit index of every character of the escaped word
    unit_of = [k for k, (start, end, _) in enumerate(units) for _ in range(start, end)]
    spans, offset, previous_end = [], 0, cursor
    for piece in pieces:
        length = len(piece) - (4 if piece.endswith("</w>") else 0)
        first, last = unit_of[offset], unit_of[offset + length - 1]
        start = max(positions[first], previous_end)
        end = max(positions[last] + 1, start)
        spans.append((start, end))
        previous_end, offset = end, offset + length
    return spans, positions[-1] + 1
