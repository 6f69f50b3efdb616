"""Number inputs that check what an API client sends before Gradio converts it.

`gr.Slider.preprocess` compares the payload with its bounds, so a string ("hot" for the temperature, sent through
`gradio_client` or the HTTP API) raises a TypeError there, which Gradio reports as a bare "The upstream Gradio app
has raised an exception". These subclasses check the payload first with `biogpt.validation.check_value` (type,
finite, whole when the component is, in range) and raise `gr.Error` naming the parameter; Gradio 6 re-raises a
`gr.Error` from `preprocess` unchanged (`Blocks.preprocess_data`: `except Error: raise`) and sends its message to
the client.

`is_template = True` makes Gradio render them with the built-in Slider/Number front end (`Block.get_block_name`
returns the base class's name), and they keep gr.Slider's / gr.Number's constructor untouched: Gradio builds a
component's config from its `__init__` signature. The name used in messages is the label without a trailing
parenthesis ("Top-p (nucleus)" -> "Top-p").
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

from biogpt.validation import Parameter, check_value

from .errors import shown_to_user


def _name(component: gr.components.Component) -> str:
    return re.sub(r"\s*\([^)]*\)\s*$", "", str(component.label or "Value")) or "Value"


def _is_whole(*values: Any) -> bool:
    return all(value is None or float(value).is_integer() for value in values)


class CheckedSlider(gr.Slider):
    """A gr.Slider whose `preprocess` refuses non-numbers and out-of-range values with a named `gr.Error`."""

    is_template = True

    def preprocess(self, payload: Any) -> float:
        integer = _is_whole(self.minimum, self.step) and self.step is not None and self.step >= 1
        with shown_to_user():
            value = check_value(_name(self), payload, self.minimum, self.maximum, integer)
        return super().preprocess(value)


class CheckedNumber(gr.Number):
    """A gr.Number whose `preprocess` refuses non-numbers (and values outside its bounds) with a named `gr.Error`.

    None stays None, as in gr.Number; the handler decides whether a missing value is allowed.
    """

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        if payload is None:
            return None
        low = float("-inf") if self.minimum is None else self.minimum
        high = float("inf") if self.maximum is None else self.maximum
        with shown_to_user():
            value = check_value(_name(self), payload, low, high, self.precision == 0)
        return super().preprocess(value)


def parameter_slider(parameter: Parameter, **kwargs: Any) -> CheckedSlider:
    """The slider of a `biogpt.validation.GENERATION_PARAMETERS` entry: its label, range, step and default."""
    return CheckedSlider(parameter.low, parameter.high, value=parameter.default, step=parameter.step,
                         label=parameter.label, info=parameter.info or None, **kwargs)
