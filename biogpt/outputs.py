"""What the models return: dataclasses that also index like tuples and dicts, as transformers' ModelOutput does.

`outputs.logits`, `outputs["logits"]` and `outputs[0]` (the first field that is not None) all work, so code written
for transformers' BioGPT keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional, Union

import torch

from .cache import KVCache


@dataclass
class ModelOutput:
    def _present(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: Union[int, str, slice]) -> Any:
        if isinstance(key, str):
            return dict(self._present())[key]
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(name for name, _ in self._present())

    def keys(self) -> list[str]:
        return [name for name, _ in self._present()]

    def to_tuple(self) -> tuple:
        return tuple(value for _, value in self._present())


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: Optional[torch.Tensor] = None
    past_key_values: Optional[KVCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None
    # only where the language model passed its output projection and a native decode step computed it (None
    # otherwise, so it is not among the keys or the tuple a caller of the decoder sees)
    logits: Optional[torch.Tensor] = None


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    past_key_values: Optional[KVCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    past_key_values: Optional[KVCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None
