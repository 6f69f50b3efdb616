"""Auto classes, as `transformers` users write them: `AutoModelForCausalLM.from_pretrained("microsoft/biogpt")`.

They dispatch on the checkpoint's `model_type`. This library serves BioGPT only, so every Auto class maps to one
BioGpt class, and any other `model_type` gets an error that says so (raised by `BioGptConfig.from_dict`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Union

from . import modeling
from .configuration import BioGptConfig
from .errors import CheckpointError
from .fairseq import convert_into_cache, is_fairseq_checkpoint_dir
from .hub import resolve_file
from .tokenization import BioGptTokenizer


class AutoConfig:
    @staticmethod
    def from_pretrained(source: Union[str, os.PathLike], **kwargs: Any) -> BioGptConfig:
        return BioGptConfig.from_pretrained(source, **kwargs)

    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> BioGptConfig:
        return BioGptConfig.from_dict({"model_type": model_type, **kwargs})


class AutoTokenizer:
    @staticmethod
    def from_pretrained(source: Union[str, os.PathLike], **kwargs: Any) -> BioGptTokenizer:
        if is_fairseq_checkpoint_dir(source):  # the vocabulary of the converted checkpoint, prompt tokens included
            source = convert_into_cache(source)
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs}
        declared = resolve_file(source, "tokenizer_config.json", required=False, **hub)
        if declared is not None:
            tokenizer_class = json.loads(declared.read_text(encoding="utf-8")).get("tokenizer_class")
            if tokenizer_class not in (None, "BioGptTokenizer"):
                raise CheckpointError(f"{source} declares tokenizer_class {tokenizer_class!r}; the biogpt library "
                                      "serves BioGPT checkpoints only (BioGptTokenizer).")
        kwargs.pop("use_fast", None)  # BioGPT has one (Moses + BPE) tokenizer; transformers users often pass this
        return BioGptTokenizer.from_pretrained(source, **kwargs)


class _AutoModel:
    """from_pretrained/from_config for one BioGpt class, checking the checkpoint's model_type first."""

    _class_name = ""

    @classmethod
    def _model_class(cls) -> type:
        return getattr(modeling, cls._class_name)

    @classmethod
    def from_pretrained(cls, source: Union[str, os.PathLike], *model_args: Any, **kwargs: Any):
        return cls._model_class().from_pretrained(source, *model_args, **kwargs)

    @classmethod
    def from_config(cls, config: BioGptConfig, **kwargs: Any):
        if not isinstance(config, BioGptConfig):
            raise CheckpointError(f"{type(config).__name__} is not a BioGptConfig; the biogpt library serves BioGPT "
                                  "checkpoints only.")
        return cls._model_class().from_config(config, **kwargs)


class AutoModel(_AutoModel):
    _class_name = "BioGptModel"


class AutoModelForCausalLM(_AutoModel):
    _class_name = "BioGptForCausalLM"


class AutoModelForTokenClassification(_AutoModel):
    _class_name = "BioGptForTokenClassification"


class AutoModelForSequenceClassification(_AutoModel):
    _class_name = "BioGptForSequenceClassification"
