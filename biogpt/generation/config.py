"""`GenerationConfig`: the decoding parameters, with transformers' names and defaults, and their validation."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import GenerationParameterError
from ..hub import resolve_file

GENERATION_CONFIG_NAME = "generation_config.json"
DEFAULT_NEW_TOKENS = 20  # transformers 5: with no max_length anywhere, generate 20 new tokens
# Accepted for drop-in compatibility; they change nothing here (the cache is always used, the result is a tensor).
_ALWAYS_HARMLESS = {"use_cache", "synced_gpus"}
_HARMLESS_WHEN_EMPTY = {"streamer", "logits_processor", "stopping_criteria"}
_UNSUPPORTED_WHEN_TRUE = {"output_scores", "output_logits", "output_attentions", "output_hidden_states"}


@dataclass
class GenerationConfig:
    """Decoding parameters with transformers' names and defaults (`generation_config.json` on the Hub).

    `max_length=None` means "20 new tokens" as in transformers 5. Unknown fields read from a file are kept in
    `extra` and written back, so a round-trip loses nothing.
    """

    max_length: Optional[int] = None
    max_new_tokens: Optional[int] = None
    min_length: int = 0
    min_new_tokens: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    num_return_sequences: int = 1
    bad_words_ids: Optional[list[list[int]]] = None
    bos_token_id: Optional[int] = 0
    eos_token_id: Union[int, list[int], None] = 2
    pad_token_id: Optional[int] = 1
    return_dict_in_generate: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)} - {"extra"}

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        """Token ids from the model's config (BioGPT: bos 0, pad 1, eos 2)."""
        return cls(bos_token_id=getattr(config, "bos_token_id", 0), eos_token_id=getattr(config, "eos_token_id", 2),
                   pad_token_id=getattr(config, "pad_token_id", 1))

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "GenerationConfig":
        data = {**data, **overrides}
        known = {k: v for k, v in data.items() if k in cls.field_names()}
        extra = {k: v for k, v in data.items() if k not in cls.field_names() and k != "extra"}
        config = cls(**known, extra=extra)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        return {**copy.deepcopy(self.extra), **data}

    @classmethod
    def from_pretrained(cls, source: Union[str, os.PathLike], config_file_name: str = GENERATION_CONFIG_NAME,
                        **hub: Any) -> "GenerationConfig":
        """Read `generation_config.json` from a directory, a file path or a Hub repo id."""
        path = Path(source) if Path(source).is_file() else resolve_file(source, config_file_name, **hub)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> None:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        with open(Path(save_directory) / GENERATION_CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the known fields; return the kwargs that are not fields."""
        unused = {}
        for key, value in kwargs.items():
            if key in self.field_names():
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def validate(self) -> None:
        """Raise `GenerationParameterError` naming the first out-of-range parameter.

        Floats must be finite (NaN or infinity in temperature, top_p, repetition_penalty or length_penalty would
        turn every probability into NaN), token ids must be ints (2.0 is refused, not silently used as an index)
        and `num_beams` is capped at 64: each beam is a full row of the key/value cache, and no published decoding
        recipe uses more (an API that serves untrusted requests should cap it far lower, see
        `biogpt.validation.Limits`).
        """
        max_beams = 64

        def bad(name: str, allowed: str) -> GenerationParameterError:
            got = repr(getattr(self, name))
            got = got if len(got) <= 40 else got[:39] + "…"  # a message echoes what was sent, never megabytes of it
            return GenerationParameterError(f"{name} must be {allowed}; got {got}.")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            value = getattr(self, name)
            if is_number(value) and not math.isfinite(value):
                raise bad(name, "a finite number")
        for name in ("max_length", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise bad(name, "a positive integer or None")
        if self.min_new_tokens is not None and (not is_int(self.min_new_tokens) or self.min_new_tokens < 0):
            raise bad("min_new_tokens", "an integer >= 0 or None")
        if not is_int(self.min_length) or self.min_length < 0:
            raise bad("min_length", "an integer >= 0")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise bad("num_beams", "an integer >= 1")
        if self.num_beams > max_beams:
            raise bad("num_beams", f"at most {max_beams} (each beam holds a full key/value cache)")
        if not is_int(self.num_return_sequences) or self.num_return_sequences < 1:
            raise bad("num_return_sequences", "an integer >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"<= num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise bad("num_return_sequences", "1 for greedy decoding (use do_sample=True or num_beams > 1)")
        if not is_number(self.temperature) or self.temperature <= 0:
            raise bad("temperature", "a number > 0 (use do_sample=False for greedy decoding)")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 0):
            raise bad("top_k", "an integer >= 0 (0 or None disables it)")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "a number > 0 (1.0 disables it)")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise bad("no_repeat_ngram_size", "an integer >= 0 (0 disables it)")
        if not is_number(self.length_penalty):
            raise bad("length_penalty", "a number")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise bad("early_stopping", "True, False or 'never'")
        if self.bad_words_ids is not None and not (
                isinstance(self.bad_words_ids, (list, tuple)) and all(
                    isinstance(seq, (list, tuple)) and seq and all(is_int(t) and t >= 0 for t in seq)
                    for seq in self.bad_words_ids)):
            raise bad("bad_words_ids", "a list of non-empty lists of token ids")
        for name in ("eos_token_id", "pad_token_id"):
            ids = getattr(self, name)
            ids = ids if isinstance(ids, (list, tuple)) and name == "eos_token_id" else [ids]
            if not all(i is None or (is_int(i) and i >= 0) for i in ids):
                raise bad(name, "a token id (an integer >= 0)" + (", a list of them" if name == "eos_token_id" else "")
                          + " or None")



@dataclass
class GenerationResult:
    """What `generate(..., return_dict_in_generate=True)` returns."""

    sequences: torch.LongTensor
    prompt_length: int
    prompt_truncated: bool = False


def resolve_config(model: Any, generation_config: Optional[GenerationConfig],
                    kwargs: dict[str, Any]) -> GenerationConfig:
    base = generation_config or getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig.from_model_config(model.config)
    if not isinstance(config, GenerationConfig):  # e.g. a transformers GenerationConfig or a dict
        data = config if isinstance(config, dict) else config.to_dict()
        config = GenerationConfig.from_dict({k: v for k, v in data.items() if v is not None})
    unused = config.update(**kwargs)
    for name in list(unused):
        value = unused[name]
        harmless = (name in _ALWAYS_HARMLESS or (name in _HARMLESS_WHEN_EMPTY and not value)
                    or (name in _UNSUPPORTED_WHEN_TRUE and not value))
        if harmless:
            del unused[name]
    if unused:
        names = ", ".join(sorted(unused))
        raise GenerationParameterError(
            f"Unknown or unsupported generation argument(s): {names}. Supported: "
            f"{', '.join(sorted(GenerationConfig.field_names()))}, generator, seed.")
    if config.top_k is None:
        config.top_k = 0
    config.validate()
    return config


