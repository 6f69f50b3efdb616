"""The Gradio workbench over `biogpt`: the model panel, the tabs and their handlers (see `app.build_app`).

`ui/` validates inputs with `biogpt.validation`, calls the library (the model manager and each model's
`biogpt.serving.ModelServer`) and formats the results; it holds no tensor code and imports no torch.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from biogpt.settings import zero_gpu

F = TypeVar("F", bound=Callable)


def gpu(fn: F) -> F:
    """Run `fn` inside `@spaces.GPU` on a Hugging Face ZeroGPU Space; unchanged everywhere else."""
    if not zero_gpu():
        return fn
    import spaces

    return spaces.GPU(fn)
