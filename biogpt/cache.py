"""The key/value cache of incremental decoding: what each attention layer keeps between decoding steps."""

from __future__ import annotations

from typing import Any, Optional

import torch


class KVCache:
    """Keys and values of every layer in preallocated buffers of shape (batch, heads, capacity, head_dim).

    Each forward writes its new positions in place at `[length : length + t]` and attends over the view
    `[:length + t]`, so decoding never concatenates the whole cache. When `capacity` is too small the buffers grow
    by doubling (amortised O(1) per token); generation sizes them exactly once (prompt + new tokens).
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values
        self.length = 0

    @classmethod
    def for_model(cls, model: Any, batch_size: int, capacity: int) -> "KVCache":
        """Zeroed buffers for a BioGPT `model`, each on its own layer's device (device_map may spread layers)."""
        config = model.config
        shape = (batch_size, config.num_attention_heads, capacity, config.head_dim)
        devices = [layer.self_attn.out_proj.weight.device for layer in model.base_model.layers]
        dtype = model.dtype
        return cls([torch.zeros(shape, dtype=dtype, device=d) for d in devices],
                   [torch.zeros(shape, dtype=dtype, device=d) for d in devices])

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` (batch, heads, t, head_dim) after the cached positions; return all keys/values."""
        end = self.length + key.shape[2]
        if end > self.keys[layer_idx].shape[2]:
            self._grow(layer_idx, end)
        self.keys[layer_idx][:, :, self.length:end] = key
        self.values[layer_idx][:, :, self.length:end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def _grow(self, layer_idx: int, needed: int) -> None:
        old_k, old_v = self.keys[layer_idx], self.values[layer_idx]
        capacity = max(needed, 2 * old_k.shape[2], 16)
        new_k = old_k.new_zeros(old_k.shape[:2] + (capacity,) + old_k.shape[3:])
        new_v = old_v.new_zeros(new_k.shape)
        new_k[:, :, :self.length] = old_k[:, :, :self.length]
        new_v[:, :, :self.length] = old_v[:, :, :self.length]
        self.keys[layer_idx], self.values[layer_idx] = new_k, new_v

    def advance(self, num_tokens: int) -> None:
        """Called once per forward, after every layer has written its `num_tokens` new positions."""
        self.length += num_tokens

    def reorder(self, batch_indices: torch.Tensor) -> None:
        """Keep rows `batch_indices` (beam search reorders, finished rows drop out)."""
        for i in range(len(self.keys)):
            idx = batch_indices.to(self.keys[i].device)
            self.keys[i] = self.keys[i].index_select(0, idx)
            self.values[i] = self.values[i].index_select(0, idx)

    def __len__(self) -> int:
        return len(self.keys)


class StaticKVCache(KVCache):
    """A `KVCache` whose decode steps keep every shape fixed, for CUDA graphs / `torch.compile(mode="reduce-overhead")`.

    Prefill (while `index` is None) works like `KVCache`. For decode steps the caller sets `index`, a one-element
    long tensor holding the slot to write: `update` copies the new key/value there with `index_copy_` and returns
    the whole buffers, so attention always spans the full capacity and the caller's boolean key mask hides the
    slots not written yet. No Python integer that changes from step to step enters the computation.
    """

    index: Optional[torch.Tensor] = None

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is None:
            return super().update(layer_idx, key, value)
        self.keys[layer_idx].index_copy_(2, self.index, key)
        self.values[layer_idx].index_copy_(2, self.index, value)
        return self.keys[layer_idx], self.values[layer_idx]
