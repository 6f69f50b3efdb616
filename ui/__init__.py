"""The Gradio workbench over `biogpt`: the model panel, the tabs and their handlers (see `app.build_app`)."""

from __future__ import annotations

import importlib.util
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def gpu(fn: F) -> F:
    """Run `fn` inside `@spaces.GPU` on a Hugging Face ZeroGPU Space; unchanged everywhere else."""
    if importlib.util.find_spec("spaces") is None:
        return fn
    import spaces

    return spaces.GPU(fn)
