"""Checks for untrusted input, shared by the app's handlers and any API in front of the library.

Everything a remote user sends goes through here before it reaches a tokenizer or a model: `clean_text` for text
(type, encoding, control characters, size, emptiness) and `check_generation_params` for decoding parameters
(types, ranges, the `max_new_tokens` cap and a beams × length memory guard). Each failure raises a `BioGptError`
subclass whose message names the field and says what is allowed, so a handler only has to show it.

Limits come from `Limits.from_env()`: BIOGPT_MAX_INPUT_CHARS (characters of one text, 20,000),
BIOGPT_MAX_NEW_TOKENS (512), BIOGPT_MAX_BEAMS (8) and BIOGPT_MAX_BEAM_TOKENS (8,192: num_beams × (prompt +
new tokens), i.e. the rows × positions of the key/value cache beam search allocates).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import BioGptError, ConfigError, GenerationParameterError, InputError  # InputError: re-exported


# C0 and C1 control characters except tab and newline (carriage returns are folded into newlines first).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}={text!r} must be a whole number >= 1.")
    return int(text)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; `from_env` reads the BIOGPT_* variables named in the module docstring."""

    max_input_chars: int = 20_000
    max_new_tokens: int = 512
    max_beams: int = 8
    max_beam_tokens: int = 8_192

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Limits":
        env = os.environ if env is None else env
        return cls(max_input_chars=_env_int(env, "BIOGPT_MAX_INPUT_CHARS", cls.max_input_chars),
                   max_new_tokens=_env_int(env, "BIOGPT_MAX_NEW_TOKENS", cls.max_new_tokens),
                   max_beams=_env_int(env, "BIOGPT_MAX_BEAMS", cls.max_beams),
                   max_beam_tokens=_env_int(env, "BIOGPT_MAX_BEAM_TOKENS", cls.max_beam_tokens))


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------
def clean_text(value: Any, what: str = "prompt", max_chars: Optional[int] = None) -> str:
    """`value` as safe text: CR/CRLF become newlines and other control characters (except tab and newline) are
    removed; raises `InputError` if it is not text, not valid UTF-8, contains a lone surrogate, is longer than
    `max_chars` (default `Limits.from_env().max_input_chars`) or is empty once cleaned.
    """
    cap = Limits.from_env().max_input_chars if max_chars is None else max_chars
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"The {what} is not valid UTF-8: byte 0x{value[exc.start]:02x} at position {exc.start} "
                             "cannot be decoded. Send UTF-8 text.") from None
    if value is None:
        raise InputError(f"The {what} is empty: type or paste some text first.")
    if not isinstance(value, str):
        raise InputError(f"The {what} must be text; got {type(value).__name__}.")
    # The size cap comes first, so an oversized request costs no more than a length check.
    if len(value) > cap:
        raise InputError(f"The {what} is {len(value):,} characters long; the limit is {cap:,}.")
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        # A lone UTF-16 surrogate (e.g. JSON "\ud800") is not a character: it cannot be encoded, tokenized or shown.
        raise InputError(f"The {what} contains an invalid character at position {surrogate.start()}: a lone UTF-16 "
                         f"surrogate (U+{ord(surrogate.group()):04X}), which is not valid Unicode text. Remove it or "
                         "re-encode the text as UTF-8.")
    text = _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    if not text.strip():
        raise InputError(f"The {what} is empty: type or paste some text first.")
    return text


def is_clean(text: str) -> bool:
    """True when `text` has no control character other than tab/newline and no lone surrogate."""
    return _CONTROL.search(text) is None and _SURROGATE.search(text) is None and "\r" not in text


# ----------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------
def check_number(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, *,
                 integer: bool = False, low_inclusive: bool = True,
                 error: type[BioGptError] = GenerationParameterError) -> Any:
    """`value` as an int (`integer=True`; whole floats such as 24.0 from a slider are accepted) or a float, inside
    [low, high] (or (low, high] with `low_inclusive=False`); otherwise `error` naming `name`.

    Strings, booleans, None, NaN and infinities are refused rather than converted: an API client sending
    "0.5" for a number has a bug worth reporting.
    """
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be {kind}; got {type(value).__name__} {_short(value)}.")
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise error(f"{name} must be a finite number; got {_short(value)}.")
    if integer and not isinstance(value, numbers.Integral) and not float(value).is_integer():
        raise error(f"{name} must be a whole number; got {_short(value)}.")
    # Compared before any conversion: a huge int (10**400) has no float, and Python compares int and float exactly.
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low or (high is not None and value > high):
        left = "[" if low_inclusive else "("
        raise error(f"{name} must be in {left}{_fmt(low)}, {_fmt(high)}]; got {_short(value, _fmt(value))}.")
    return int(value) if integer else float(value)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "∞"
    return f"{value:,}" if isinstance(value, numbers.Integral) else f"{float(value):g}"


def _short(value: Any, text: Optional[str] = None) -> str:
    """`repr(value)` (or `text`) cut to 40 characters: messages echo what was sent, never megabytes of it."""
    text = repr(value) if text is None else text
    return text if len(text) <= 40 else text[:39] + "…"


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GenerationParameterError(f"{name} must be true or false; got {type(value).__name__} {_short(value)}.")
    return value


# name -> (integer, low, high, low_inclusive); high None means limits.max_beams.
_NUMBERS: dict[str, tuple[bool, float, Optional[float], bool]] = {
    "temperature": (False, 0.0, 100.0, False),
    "top_p": (False, 0.0, 1.0, False),
    "top_k": (True, 0, 1_000_000, True),
    "repetition_penalty": (False, 0.0, 100.0, False),
    "no_repeat_ngram_size": (True, 0, 1_024, True),
    "length_penalty": (False, -100.0, 100.0, True),
    "seed": (True, 0, 2**63 - 1, True),
    "num_return_sequences": (True, 1, None, True),
}
_BOOLS = ("do_sample", "truncate")
ALLOWED_PARAMETERS = frozenset({"max_new_tokens", "min_new_tokens", "num_beams", "early_stopping", *_NUMBERS,
                                *_BOOLS})


def check_generation_params(params: Mapping[str, Any], limits: Optional[Limits] = None, *,
                            prompt_tokens: Optional[int] = None, max_positions: Optional[int] = None
                            ) -> dict[str, Any]:
    """The keyword arguments of `stream_generate`/`generate` from an untrusted mapping, checked and normalised.

    Raises `GenerationParameterError` naming the first unknown, mistyped or out-of-range parameter. With
    `prompt_tokens` (and `max_positions`, as generation clamps prompt + new tokens to the model's positions), beam
    search is refused when num_beams × (prompt + max_new_tokens) exceeds `limits.max_beam_tokens`.
    """
    limits = limits or Limits.from_env()
    if not isinstance(params, Mapping):
        raise GenerationParameterError(f"Generation parameters must be a mapping of names to values; got "
                                       f"{type(params).__name__}.")
    unknown = sorted(_short(None, str(name)) for name in params if name not in ALLOWED_PARAMETERS)
    if unknown:
        raise GenerationParameterError(f"Unknown generation parameter(s): {', '.join(unknown)}. Allowed: "
                                       f"{', '.join(sorted(ALLOWED_PARAMETERS))}.")
    checked: dict[str, Any] = {}
    for name in sorted(params):
        value = params[name]
        if name in _BOOLS:
            checked[name] = _check_bool(name, value)
        elif name == "early_stopping":
            if not (isinstance(value, bool) or (isinstance(value, str) and value == "never")):
                raise GenerationParameterError(f"early_stopping must be true, false or 'never'; got {_short(value)}.")
            checked[name] = value
        elif name == "seed" and value is None:
            checked[name] = None  # a fresh random seed
        elif name == "max_new_tokens":
            checked[name] = check_number(name, value, 1, limits.max_new_tokens, integer=True)
        elif name == "min_new_tokens":
            checked[name] = check_number(name, value, 0, limits.max_new_tokens, integer=True)
        elif name == "num_beams":
            checked[name] = check_number(name, value, 1, limits.max_beams, integer=True)
        else:
            integer, low, high, inclusive = _NUMBERS[name]
            checked[name] = check_number(name, value, low, limits.max_beams if high is None else high,
                                         integer=integer, low_inclusive=inclusive)
    if checked.get("min_new_tokens", 0) > checked.get("max_new_tokens", limits.max_new_tokens):
        raise GenerationParameterError(f"min_new_tokens ({checked['min_new_tokens']}) must not exceed "
                                       f"max_new_tokens ({checked['max_new_tokens']}).")
    beams, returned = checked.get("num_beams", 1), checked.get("num_return_sequences", 1)
    if returned > beams and (beams > 1 or not checked.get("do_sample", False)):
        raise GenerationParameterError(f"num_return_sequences ({returned}) must not exceed num_beams ({beams}) "
                                       "unless sampling with a single beam.")
    if beams > 1:
        check_beam_memory(beams, checked.get("max_new_tokens", limits.max_new_tokens), limits,
                          prompt_tokens=prompt_tokens, max_positions=max_positions)
    return checked


def check_beam_memory(num_beams: int, max_new_tokens: int, limits: Optional[Limits] = None, *,
                      prompt_tokens: Optional[int] = None, max_positions: Optional[int] = None) -> None:
    """Refuse a beam search whose key/value cache (num_beams rows × its length in positions) is over the limit."""
    limits = limits or Limits.from_env()
    length = (prompt_tokens or 0) + max_new_tokens
    if max_positions is not None:
        length = min(length, max_positions)  # generation never runs past the model's positions
    if num_beams * length > limits.max_beam_tokens:
        raise GenerationParameterError(
            f"Beam search would hold num_beams × (prompt + new tokens) = {num_beams} × {length:,} = "
            f"{num_beams * length:,} tokens, over the limit of {limits.max_beam_tokens:,} (BIOGPT_MAX_BEAM_TOKENS): "
            "use fewer beams, fewer new tokens or a shorter prompt.")


__all__ = ["ALLOWED_PARAMETERS", "InputError", "Limits", "check_beam_memory", "check_generation_params",
           "check_number", "clean_text", "is_clean"]
