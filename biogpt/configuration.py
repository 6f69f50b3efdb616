"""`BioGptConfig`: the `config.json` of a BioGPT checkpoint, read and written exactly as the Hub files spell it."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Optional

from .errors import CheckpointError, ConfigError
from .hub import resolve_file

# The defaults are those of microsoft/biogpt (and of transformers' BioGptConfig).
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 42384,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 1024,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,  # kept for round-trips only: the model always uses 1e-5, as the reference does
    "scale_embedding": True,
    "use_cache": True,
    "layerdrop": 0.0,
    "activation_dropout": 0.0,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "tie_word_embeddings": True,
    "classifier_dropout": None,
    "problem_type": None,
    "torch_dtype": None,
    "architectures": None,
}

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "gelu_fast", "quick_gelu", "tanh")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
ATTENTION_BACKENDS = ("eager", "sdpa", "flash_attention_2")
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")


class BioGptConfig:
    """Hyper-parameters of a BioGPT model, with the field names of the Hub's `config.json`.

    Unknown fields are kept as attributes and written back by `save_pretrained`, so a config read from any
    fine-tuned repo survives a round-trip unchanged.
    """

    model_type = "biogpt"

    def __init__(self, *, id2label: Optional[dict] = None, label2id: Optional[dict] = None,
                 num_labels: Optional[int] = None, attn_implementation: Optional[str] = None, **kwargs: Any):
        # transformers 5 writes "dtype"; older files write "torch_dtype". Both mean the weights' dtype.
        if "dtype" in kwargs:
            dtype = kwargs.pop("dtype")
            kwargs.setdefault("torch_dtype", dtype)
        kwargs.pop("model_type", None)
        for name, default in _DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        self._extra: dict[str, Any] = kwargs  # unknown fields, preserved verbatim
        for name, value in kwargs.items():
            setattr(self, name, value)
        self._attn_implementation = attn_implementation or "sdpa"
        self._set_labels(id2label, label2id, num_labels)
        self.validate()

    # -- labels ---------------------------------------------------------------------------------------------
    def _set_labels(self, id2label, label2id, num_labels) -> None:
        if id2label:
            self.id2label = {int(k): str(v) for k, v in id2label.items()}
        elif num_labels is not None:
            self.id2label = {i: f"LABEL_{i}" for i in range(int(num_labels))}
        elif label2id:
            self.id2label = {int(v): str(k) for k, v in label2id.items()}
        else:
            self.id2label = {0: "LABEL_0", 1: "LABEL_1"}
        if num_labels is not None and int(num_labels) != len(self.id2label):
            raise ConfigError(f"num_labels={num_labels} but id2label has {len(self.id2label)} entries.")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError(f"id2label keys must be 0..{len(self.id2label) - 1}, got {sorted(self.id2label)}.")
        self.label2id = {label: i for i, label in self.id2label.items()}
        if len(self.label2id) != len(self.id2label):
            raise ConfigError("id2label maps two ids to the same label name.")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        self._set_labels(None, None, value)

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def attn_implementation(self) -> str:
        return self._attn_implementation

    @attn_implementation.setter
    def attn_implementation(self, value: str) -> None:
        if value not in ATTENTION_BACKENDS:
            raise ConfigError(f"attn_implementation must be one of {', '.join(ATTENTION_BACKENDS)}; got {value!r}.")
        self._attn_implementation = value

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout", "layerdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}.")
        if self.classifier_dropout is not None and not 0.0 <= float(self.classifier_dropout) <= 1.0:
            raise ConfigError(f"classifier_dropout must be in [0, 1], got {self.classifier_dropout!r}.")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act must be one of {', '.join(ACTIVATIONS)}; got {self.hidden_act!r}.")
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {PROBLEM_TYPES}; got {self.problem_type!r}.")
        if self.torch_dtype is not None and str(self.torch_dtype).replace("torch.", "") not in _DTYPE_NAMES:
            raise ConfigError(f"torch_dtype must be one of {', '.join(_DTYPE_NAMES)}; got {self.torch_dtype!r}.")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id ({self.pad_token_id}) must be a token id below vocab_size.")

    # -- (de)serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for name in _DEFAULTS:
            out[name] = copy.deepcopy(getattr(self, name))
        if out["torch_dtype"] is not None:
            out["torch_dtype"] = str(out["torch_dtype"]).replace("torch.", "")
        out["id2label"] = {str(i): label for i, label in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        for name in self._extra:
            out[name] = copy.deepcopy(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "BioGptConfig":
        if "num_labels" in overrides and "id2label" not in overrides:
            # As in transformers, num_labels= replaces the file's label names when their count differs.
            if len(data.get("id2label") or {}) != overrides["num_labels"]:
                data = {k: v for k, v in data.items() if k not in ("id2label", "label2id")}
        data = {**data, **overrides}
        model_type = data.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise CheckpointError(
                f"This checkpoint's model_type is {model_type!r}; the biogpt library serves BioGPT checkpoints "
                "only (model_type 'biogpt')."
            )
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, revision: Optional[str] = None,
                        cache_dir: Optional[str | os.PathLike] = None, local_files_only: bool = False,
                        token: Optional[str] = None, **overrides: Any) -> "BioGptConfig":
        """Read `config.json` from a local directory, a config file, or a Hub repo id."""
        if Path(str(source)).is_file() and str(source).endswith(".json"):
            path = Path(str(source))
        else:
            path = resolve_file(source, "config.json", revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} must hold a JSON object.")
        try:
            return cls.from_dict(data, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BioGptConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"BioGptConfig {self.to_json_string()}"
