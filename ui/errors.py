"""The one translation of library errors for the browser: a `BioGptError` becomes a `gr.Error` whose message has
nothing of the server's own in it.

Library messages are written for the person who runs the code, so they name resolved paths, cache locations and
endpoints. At this boundary, before a message reaches a (possibly remote) user, and whatever the exposure:

- a file path the user did not type (the checkout, the Hugging Face cache, the resolved form of what they typed)
  becomes `<server path>` (a checkpoint file's own name is kept: `<server path>/model.safetensors`); what the
  user typed is shown as typed;
- a URL of another host than the Hugging Face Hub (an HF_ENDPOINT mirror) becomes `<server URL>`, a Hugging Face
  token `<token>`, and a traceback is cut off.

The full message goes to the server log. Errors that are not `BioGptError`s never reach users: Gradio shows them
as a bare "Error" (the app does not set `show_error`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar
from urllib.parse import urlsplit

import gradio as gr

from biogpt.errors import BioGptError
from biogpt.hub import is_local

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger(__name__)

# An absolute POSIX path (or ~/...) or a Windows drive path, not inside a word, a relative path or a URL.
_PATH = re.compile(r"(?<![\w.~/:\\-])(?:~?/|[A-Za-z]:\\)[^\s'\"`<>|,;()\[\]{}]+")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"`<>)\]]+", re.IGNORECASE)
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
_CHECKPOINT_FILE = re.compile(r"^[\w-]+(?:\.[\w-]+)*\.(?:json|txt|safetensors|bin|pt|pth)$")
_PUBLIC_HOSTS = ("huggingface.co", "hf.co")
SERVER_PATH, SERVER_URL = "<server path>", "<server URL>"


def _resolved_forms(typed: str) -> list[str]:
    """The absolute forms the library may print for a path the user typed (expanded `~`, folded `..`, symlinks)."""
    expanded = os.path.expanduser(typed)
    forms = {expanded, os.path.abspath(expanded)}
    with contextlib.suppress(OSError, RuntimeError):  # a symlink loop, an unreadable parent
        forms.add(str(Path(expanded).resolve()))
    return sorted((form for form in forms if form != typed and len(form) > 1), key=len, reverse=True)


def _server_path(path: str) -> str:
    name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return f"{SERVER_PATH}/{name}" if _CHECKPOINT_FILE.match(name) else SERVER_PATH


def _public_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == public or host.endswith("." + public) for public in _PUBLIC_HOSTS)


def redact(message: str, typed: Iterable[str] = ()) -> str:
    """`message` without the server's paths, private URLs, tokens and tracebacks; `typed` are the texts the user
    sent (model ids, paths), which stay as they were written."""
    message = message.split("Traceback (most recent call last)", 1)[0].rstrip()
    own = [text for text in typed if text and is_local(text)]
    for text in own:  # the library prints resolved forms: show them as the user wrote them
        for form in _resolved_forms(text):  # a whole path only, never the tail of what the user typed
            message = re.sub(r"(?<![\w.~/\\-])" + re.escape(form) + r"(?![\w-])", lambda _: text, message)

    def path(match: re.Match) -> str:
        token = match.group(0)
        body = token.rstrip(".:")
        # What the user typed, a file inside it or a folder above it: nothing they do not know already.
        if any(body == text or body.startswith(text.rstrip("/\\") + os.sep)
               or text.startswith(body.rstrip(os.sep) + os.sep) for text in own):
            return token
        return _server_path(body) + token[len(body):]

    message = _URL.sub(lambda m: m.group(0) if _public_url(m.group(0)) else SERVER_URL, message)
    message = _TOKEN.sub("<token>", message)
    return _PATH.sub(path, message)


@contextlib.contextmanager
def shown_to_user(prefix: Optional[str] = None, typed: Iterable[str] = ()) -> Iterator[None]:
    """Re-raise any `BioGptError` inside the block as a `gr.Error` (Gradio shows its message to the user),
    redacted (`redact`; `typed`: what the user sent, kept as written)."""
    try:
        yield
    except BioGptError as exc:
        typed = tuple(typed)
        message = f"{prefix}{exc}" if prefix else str(exc)
        shown = redact(message, typed)
        # One log line per refused request (a user's mistake is not the server's: no traceback).
        logger.info("Refused a request: %s", message)
        raise gr.Error(shown, print_exception=False) from exc


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
