"""Turning texts into model inputs for the task heads: ids with character spans, right-padded batches, pad id.

Every task (entities, classification, relations, corpus annotation) batches texts the same way, so it lives here.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` (with the leading `</s>`) and each id's character span in `text`."""
    encoded = tokenizer(text, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


def pad_token_id(model: Any, tokenizer: Any) -> int:
    """The id used for padding: the model's `pad_token_id`, else the tokenizer's."""
    pad = model.config.pad_token_id
    return int(pad) if pad is not None else int(tokenizer.pad_token_id)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int,
              device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into (input_ids, attention_mask) long tensors, on `device` when given."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, :len(row)] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask
