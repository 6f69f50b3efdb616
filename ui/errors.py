"""The one translation of library errors for the browser: a `BioGptError` becomes a `gr.Error` with its message."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator, Optional, TypeVar

import gradio as gr

from biogpt.errors import BioGptError

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def shown_to_user(prefix: Optional[str] = None) -> Iterator[None]:
    """Re-raise any `BioGptError` inside the block as a `gr.Error` (Gradio shows its message to the user)."""
    try:
        yield
    except BioGptError as exc:
        raise gr.Error(f"{prefix}{exc}" if prefix else str(exc)) from exc


def handler(fn: F) -> F:
    """A handler whose library errors reach the user as `gr.Error`s (plain functions and generators alike)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with shown_to_user():
                yield from fn(*args, **kwargs)
        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with shown_to_user():
            return fn(*args, **kwargs)
    return call  # type: ignore[return-value]
