"""Checks for untrusted input, and the one table of generation parameters that the app's controls also draw.

Everything a remote user sends goes through here before it reaches a tokenizer or a model: `clean_text` for text
(type, encoding, control characters, size, emptiness), `check_value` / `check_choice` for single values, and
`generation_params` (the app's decoding controls) or `check_generation_params` (a mapping of `stream_generate`
keyword arguments) for decoding parameters. Each failure raises a `BioGptError` subclass whose message names the
field and says what is allowed, so a caller only has to show it.

`GENERATION_PARAMETERS` holds each parameter's label, range, step and default: the app's sliders are built from it
and the server-side checks use it, so an API client that bypasses the browser meets the same bounds. The caps that
a deployment sets (`BIOGPT_MAX_NEW_TOKENS`, `BIOGPT_MAX_BEAMS`, `BIOGPT_MAX_BEAM_TOKENS`,
`BIOGPT_MAX_INPUT_CHARS`) come from `biogpt.settings.Settings`.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from .errors import BioGptError, GenerationParameterError, InputError
from .settings import Settings

# C0 and C1 control characters except tab and newline (carriage returns are folded into newlines first).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# ----------------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------------
def clean_text(value: Any, what: str = "prompt", max_chars: Optional[int] = None) -> str:
    """`value` as safe text: CR/CRLF become newlines and other control characters (except tab and newline) are
    removed; raises `InputError` if it is not text, not valid UTF-8, contains a lone surrogate, is longer than
    `max_chars` (default: BIOGPT_MAX_INPUT_CHARS) or is empty once cleaned.
    """
    cap = Settings.from_env().max_input_chars if max_chars is None else max_chars
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
# Single values
# ----------------------------------------------------------------------------------------------------------------
def _clip(text: str) -> str:
    """`text` cut to 40 characters: messages echo what was sent, never megabytes of it."""
    return text if len(text) <= 40 else text[:39] + "…"


def _short(value: Any) -> str:
    return _clip(repr(value))


def check_value(name: str, value: Any, low: float, high: float, integer: bool = False, *,
                error: type[BioGptError] = GenerationParameterError) -> Any:
    """`value` as an int (`integer`; whole floats such as 24.0 from a slider are accepted) or a float in
    [low, high]; otherwise `error` naming `name`.

    Strings, booleans, None, NaN and infinities are refused rather than converted: an API client sending "0.5" for
    a number has a bug worth reporting.
    """
    if value is None:
        raise error(f"{name} is missing.")
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be {kind}; got {type(value).__name__} {_short(value)}.")
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise error(f"{name} must be a finite number; got {_short(value)}.")
    if integer and not isinstance(value, numbers.Integral) and not float(value).is_integer():
        raise error(f"{name} must be a whole number; got {_short(value)}.")
    # Compared before any conversion: a huge int (10**400) has no float, and Python compares int and float exactly.
    if not low <= value <= high:
        shown = (f"{value:g}" if not isinstance(value, numbers.Integral)
                 else str(value) if abs(value) < 10**20 else "a huge number")
        raise error(f"{name} must be between {low:g} and {high:g}, got {shown}.")
    return int(value) if integer else float(value)


def check_choice(name: str, value: Any, choices: tuple, *, error: type[BioGptError] = InputError) -> Any:
    """`value` if it is one of `choices`, else `error` listing them."""
    if not isinstance(value, (str, int, type(None))) or value not in choices:
        raise error(f"{name} must be one of {', '.join(map(str, choices))}; got {_short(value)}.")
    return value


# ----------------------------------------------------------------------------------------------------------------
# The generation parameters
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One decoding parameter as a control shows it and as the server checks it."""

    name: str  # the `stream_generate` keyword
    label: str  # what the control says; messages use it without its parenthesis
    low: float
    high: float
    step: float
    default: float
    integer: bool = False
    info: str = ""

    @property
    def title(self) -> str:
        """The label without a trailing parenthesis ("Top-p (nucleus)" -> "Top-p"), for messages."""
        return re.sub(r"\s*\([^)]*\)\s*$", "", self.label) or self.name

    def check(self, value: Any) -> Any:
        return check_value(self.title, value, self.low, self.high, self.integer)


DECODING_MODES = ("greedy", "beam", "sampling")
GENERATION_PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    # max_new_tokens and num_beams reach up to BIOGPT_MAX_NEW_TOKENS / BIOGPT_MAX_BEAMS (see `parameters`).
    Parameter("max_new_tokens", "Max new tokens", 1, 512, 1, 64, True),
    Parameter("temperature", "Temperature", 0.05, 2.0, 0.05, 0.8),
    Parameter("top_p", "Top-p (nucleus)", 0.05, 1.0, 0.01, 0.95),
    Parameter("top_k", "Top-k", 0, 500, 1, 50, True, "0 = no top-k filter"),
    Parameter("seed", "Seed", -1, 2**31 - 1, 1, -1, True, "-1 = a new random seed each run"),
    Parameter("num_beams", "Beams", 1, 8, 1, 4, True),
    Parameter("repetition_penalty", "Repetition penalty", 1.0, 3.0, 0.05, 1.0),
    Parameter("no_repeat_ngram_size", "No-repeat n-gram size", 0, 10, 1, 0, True, "0 = off"),
    Parameter("length_penalty", "Length penalty", -10.0, 10.0, 0.1, 1.0),
    Parameter("num_return_sequences", "Returned sequences", 1, 8, 1, 1, True),
    Parameter("min_new_tokens", "Min new tokens", 0, 512, 1, 0, True),
)}
_FLAGS = ("do_sample", "truncate")


def parameters(settings: Optional[Settings] = None) -> dict[str, Parameter]:
    """`GENERATION_PARAMETERS` with this deployment's caps on new tokens and beams applied."""
    settings = settings or Settings.from_env()
    table = dict(GENERATION_PARAMETERS)
    for name in ("max_new_tokens", "min_new_tokens"):
        table[name] = replace(table[name], high=settings.max_new_tokens,
                              default=min(table[name].default, settings.max_new_tokens))
    for name in ("num_beams", "num_return_sequences"):
        table[name] = replace(table[name], high=settings.max_beams,
                              default=min(table[name].default, settings.max_beams))
    return table


def generation_params(mode: str, values: Mapping[str, Any], settings: Optional[Settings] = None) -> dict[str, Any]:
    """The `stream_generate` keyword arguments of the app's decoding controls, each checked against the table.

    `mode` is greedy, beam or sampling; only the controls that mode uses are read from `values` (a mapping of
    parameter names to the controls' values). A seed of -1 means a fresh random seed.
    """
    table = parameters(settings)
    check_choice("Decoding mode", mode, DECODING_MODES, error=GenerationParameterError)
    params: dict[str, Any] = {
        "max_new_tokens": table["max_new_tokens"].check(values.get("max_new_tokens")),
        "repetition_penalty": table["repetition_penalty"].check(values.get("repetition_penalty")),
        "no_repeat_ngram_size": table["no_repeat_ngram_size"].check(values.get("no_repeat_ngram_size")),
        "do_sample": mode == "sampling",
        "num_beams": table["num_beams"].check(values.get("num_beams")) if mode == "beam" else 1,
        "truncate": True,  # a prompt longer than the context keeps its end; the stats line says so
    }
    if mode == "sampling":
        for name in ("temperature", "top_p", "top_k", "seed"):
            params[name] = table[name].check(values.get(name))
        if params["seed"] < 0:
            params["seed"] = None
    return params


def check_generation_params(params: Mapping[str, Any], settings: Optional[Settings] = None, *,
                            prompt_tokens: Optional[int] = None, max_positions: Optional[int] = None
                            ) -> dict[str, Any]:
    """`stream_generate`/`generate` keyword arguments from an untrusted mapping, checked against the table.

    Raises `GenerationParameterError` naming the first unknown, mistyped or out-of-range parameter. A seed of None
    or -1 means a fresh random seed. With `prompt_tokens` (and `max_positions`, as generation clamps prompt + new
    tokens to the model's positions), beam search is also held to BIOGPT_MAX_BEAM_TOKENS (`check_beam_memory`).
    """
    settings = settings or Settings.from_env()
    table = parameters(settings)
    if not isinstance(params, Mapping):
        raise GenerationParameterError(f"Generation parameters must be a mapping of names to values; got "
                                       f"{type(params).__name__}.")
    allowed = sorted([*table, *_FLAGS, "early_stopping"])
    unknown = sorted(_clip(str(name)) for name in params if name not in allowed)
    if unknown:
        raise GenerationParameterError(f"Unknown generation parameter(s): {', '.join(unknown)}. Allowed: "
                                       f"{', '.join(allowed)}.")
    checked: dict[str, Any] = {}
    for name in sorted(params):
        value = params[name]
        if name in _FLAGS:
            if not isinstance(value, bool):
                raise GenerationParameterError(f"{name} must be true or false; got {type(value).__name__} "
                                               f"{_short(value)}.")
            checked[name] = value
        elif name == "early_stopping":
            if not (isinstance(value, bool) or value == "never"):
                raise GenerationParameterError(f"early_stopping must be true, false or 'never'; got {_short(value)}.")
            checked[name] = value
        elif name == "seed" and value is None:
            checked[name] = None
        else:
            checked[name] = table[name].check(value)
            if name == "seed" and checked[name] < 0:
                checked[name] = None
    if checked.get("min_new_tokens", 0) > checked.get("max_new_tokens", settings.max_new_tokens):
        raise GenerationParameterError(f"min_new_tokens ({checked['min_new_tokens']}) must not exceed "
                                       f"max_new_tokens ({checked['max_new_tokens']}).")
    beams, returned = checked.get("num_beams", 1), checked.get("num_return_sequences", 1)
    if returned > beams and (beams > 1 or not checked.get("do_sample", False)):
        raise GenerationParameterError(f"num_return_sequences ({returned}) must not exceed num_beams ({beams}) "
                                       "unless sampling with a single beam.")
    if beams > 1:
        check_beam_memory(beams, checked.get("max_new_tokens", settings.max_new_tokens), settings,
                          prompt_tokens=prompt_tokens, max_positions=max_positions)
    return checked


def check_beam_memory(num_beams: int, max_new_tokens: int, settings: Optional[Settings] = None, *,
                      prompt_tokens: Optional[int] = None, max_positions: Optional[int] = None) -> None:
    """Refuse a beam search whose key/value cache (num_beams rows × its length in positions) is over the limit."""
    settings = settings or Settings.from_env()
    length = (prompt_tokens or 0) + max_new_tokens
    if max_positions is not None:
        length = min(length, max_positions)  # generation never runs past the model's positions
    if num_beams * length > settings.max_beam_tokens:
        raise GenerationParameterError(
            f"Beam search would hold num_beams × (prompt + new tokens) = {num_beams} × {length:,} = "
            f"{num_beams * length:,} tokens, over the limit of {settings.max_beam_tokens:,} (BIOGPT_MAX_BEAM_TOKENS): "
            "use fewer beams, fewer new tokens or a shorter prompt.")


__all__ = ["DECODING_MODES", "GENERATION_PARAMETERS", "InputError", "Parameter", "check_beam_memory", "check_choice",
           "check_generation_params", "check_value", "clean_text", "generation_params", "is_clean", "parameters"]
