"""biogpt: an independent, weight-compatible PyTorch implementation of Microsoft's BioGPT.

`from biogpt import BioGptForCausalLM` works like `from transformers import BioGptForCausalLM` on the checkpoints
published on the Hugging Face Hub. Names are imported lazily so that `import biogpt` stays fast (torch is only
imported when a model or tensor is first needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "BioGptError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "GenerationParameterError": "errors",
    "DeviceError": "errors",
    "BioGptConfig": "configuration",
    "BioGptTokenizer": "tokenization",
    "BioGptModel": "modeling",
    "BioGptForCausalLM": "modeling",
    "BioGptForTokenClassification": "modeling",
    "BioGptForSequenceClassification": "modeling",
    "BioGptPreTrainedModel": "modeling",
    "KVCache": "cache",
    "BitsAndBytesConfig": "quantization",
    "TorchAoConfig": "quantization",
    "GenerationConfig": "generation",
    "stream_generate": "generation",
    "StreamDelta": "generation",
    "pipeline": "pipelines",
    "AutoConfig": "auto",
    "AutoTokenizer": "auto",
    "AutoModel": "auto",
    "AutoModelForCausalLM": "auto",
    "AutoModelForTokenClassification": "auto",
    "AutoModelForSequenceClassification": "auto",
    "ModelManager": "manager",
    "ModelSpec": "manager",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'biogpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .configuration import BioGptConfig
    from .errors import BioGptError, CheckpointError, ConfigError, DeviceError, GenerationParameterError
    from .modeling import (BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification,
                           BioGptModel, BioGptPreTrainedModel)
    from .cache import KVCache
    from .tokenization import BioGptTokenizer
