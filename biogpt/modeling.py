"""BioGPT in one file: a pre-LayerNorm GPT-2-style decoder with learned positions, and its three task heads.

Parameter names follow the Hub checkpoints (`biogpt.layers.N.self_attn.q_proj`, ...), so `state_dict()` keys are
those of `microsoft/biogpt` and of transformers' BioGpt classes. The modules are plain PyTorch; checkpoint I/O comes
from `loading.PreTrainedMixin` and text generation from `generation.GenerationMixin` (neither knows these classes,
so they depend on nothing here), the key/value cache from `cache.py`, the output dataclasses from `outputs.py`, and
CPU kernel choices are swapped in at load time by `kernels.py`.

Reading order: `BioGptAttention`, `BioGptDecoderLayer`, `BioGptModel` (embeddings + layers), then the heads.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .configuration import BioGptConfig
from .devices import attention_unavailable_reason
from .errors import ConfigError, DeviceError
from .generation import GenerationMixin
from .loading import PreTrainedMixin
from .outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast, SequenceClassifierOutputWithPast,
                      TokenClassifierOutput)

# The checkpoints were trained with fairseq's LayerNorm eps; the reference ignores config.layer_norm_eps.
LAYER_NORM_EPS = 1e-5
# BioGPT (like fairseq) reserves the first two rows of the position table; position p reads row p + 2.
POSITION_OFFSET = 2


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------
def _activation(name: str):
    if name in ("gelu",):
        return F.gelu  # exact (erf) GELU, as the checkpoints were trained
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name in ("silu", "swish"):
        return F.silu
    if name == "relu":
        return F.relu
    return torch.tanh


class BioGptAttention(nn.Module):
    def __init__(self, config: BioGptConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.dropout = config.attention_probs_dropout_prob
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[KVCache],
                head_mask: Optional[torch.Tensor] = None, output_attentions: bool = False
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`mask` is a boolean (batch, 1, q, k) "may attend" mask, or None for plain causal attention."""
        batch, length, _ = hidden_states.shape
        split = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(split).transpose(1, 2)
        key = self.k_proj(hidden_states).view(split).transpose(1, 2)
        value = self.v_proj(hidden_states).view(split).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(self.layer_idx, key, value)

        backend = self.config.attn_implementation
        dropout = self.dropout if self.training else 0.0
        weights = None
        if backend == "eager" or head_mask is not None or output_attentions:
            if backend != "eager":
                raise ConfigError(
                    ("head_mask" if head_mask is not None else "output_attentions=True")
                    + f" needs attn_implementation='eager' (this model uses {backend!r}); reload it with "
                    "attn_implementation='eager'."
                )
            scores = torch.matmul(query * self.scaling, key.transpose(2, 3))
            if mask is None:
                mask = _causal_mask(length, key.shape[2], scores.device)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = F.softmax(scores, dim=-1)
            if head_mask is not None:
                weights = weights * head_mask.view(1, -1, 1, 1).to(weights.dtype)
            attended = torch.matmul(F.dropout(weights, p=dropout, training=self.training), value)
        elif backend == "flash_attention_2" and mask is None:
            from flash_attn import flash_attn_func

            # flash-attn >= 2.1 aligns the causal mask bottom-right, which is what decoding after a cache needs.
            attended = flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                       dropout_p=dropout, softmax_scale=self.scaling, causal=True).transpose(1, 2)
        else:
            # SDPA; flash_attention_2 also comes here for padded batches, whose masks flash_attn_func cannot take.
            if mask is None and length == key.shape[2]:
                attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, is_causal=True,
                                                          scale=self.scaling)
            elif mask is None and length == 1:  # one new token after the cache sees every key: no mask to build
                attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=self.scaling)
            else:
                if mask is None:
                    mask = _causal_mask(length, key.shape[2], query.device)
                attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                                          scale=self.scaling)
        attended = attended.transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(attended), weights


def _causal_mask(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, q, k) boolean: query i (the last q of k positions) may attend key j <= its own position."""
    offset = key_length - query_length
    rows = torch.arange(query_length, device=device).unsqueeze(1) + offset
    return (torch.arange(key_length, device=device).unsqueeze(0) <= rows).view(1, 1, query_length, key_length)


def build_attention_mask(attention_mask: Optional[torch.Tensor], query_length: int, key_length: int,
                         device: torch.device) -> Optional[torch.Tensor]:
    """Combine causality with a (batch, key_length) padding mask into a (batch, 1, q, k) boolean mask.

    Returns None when there is no padding, so the attention can take its fastest causal path. Every query may
    always attend to itself: a left-pad query would otherwise see no key at all and SDPA would return NaN.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    causal = _causal_mask(query_length, key_length, device)
    keys = attention_mask[:, None, None, :].to(device=device, dtype=torch.bool)
    diagonal = torch.zeros(query_length, key_length, dtype=torch.bool, device=device)
    diagonal[torch.arange(query_length), torch.arange(key_length - query_length, key_length)] = True
    return (causal & keys) | diagonal


class BioGptDecoderLayer(nn.Module):
    def __init__(self, config: BioGptConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BioGptAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.activation = _activation(config.hidden_act)
        self.dropout = config.hidden_dropout_prob
        self.activation_dropout = config.activation_dropout

    def forward(self, hidden_states: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[KVCache],
                head_mask: Optional[torch.Tensor] = None, output_attentions: bool = False
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        attended, weights = self.self_attn(self.self_attn_layer_norm(hidden_states), mask, cache, head_mask,
                                           output_attentions)
        hidden_states = hidden_states + F.dropout(attended, p=self.dropout, training=self.training)
        inner = self.activation(self.fc1(self.final_layer_norm(hidden_states)))
        inner = self.fc2(F.dropout(inner, p=self.activation_dropout, training=self.training))
        hidden_states = hidden_states + F.dropout(inner, p=self.dropout, training=self.training)
        return hidden_states, weights


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------
class BioGptPreTrainedModel(PreTrainedMixin, nn.Module):
    """Shared machinery: weight init, device/dtype helpers; `from_pretrained`/`save_pretrained` from the mixin."""

    config_class = BioGptConfig
    base_model_prefix = "biogpt"
    # Parameters that are views of others in the checkpoints (omitted on save, re-tied on load).
    tied_weights = {}  # type: dict[str, str]

    def __init__(self, config: BioGptConfig):
        super().__init__()
        self.config = config

    # -- construction ----------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Random initialisation as the reference does (normal(0, initializer_range), zero biases)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        for target, source in self.tied_weights.items():
            _set_parameter(self, target, self.get_parameter(source))

    @property
    def base_model(self) -> "BioGptModel":
        return getattr(self, self.base_model_prefix, self)

    # -- devices and sizes -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the token embeddings."""
        return self.base_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: that of the floating-point parameters (LayerNorms stay in it under 4-bit)."""
        return self.base_model.layer_norm.weight.dtype

    @property
    def is_quantized(self) -> bool:
        return getattr(self, "quantization_config", None) is not None

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and buffers): tied weights and 4-bit packed storage counted once."""
        seen, total = set(), 0
        tensors = list(self.parameters()) + (list(self.buffers()) if return_buffers else [])
        for tensor in tensors:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            total += tensor.nelement() * tensor.element_size()
        return total

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @classmethod
    def from_config(cls, config: BioGptConfig, **kwargs: Any) -> "BioGptPreTrainedModel":
        if "attn_implementation" in kwargs:
            config.attn_implementation = kwargs.pop("attn_implementation")
        model = cls(config)
        model.init_weights()
        dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        if dtype is not None:
            model.to(dtype)
        return model

    def set_attn_implementation(self, backend: str) -> None:
        self.config.attn_implementation = backend

    def _check_backend(self) -> None:
        if self.config.attn_implementation == "flash_attention_2":
            reason = attention_unavailable_reason("flash_attention_2", self.device, self.dtype)
            if reason:
                raise DeviceError(reason + ". Choose attn_implementation='sdpa' or 'eager'.")


def _set_parameter(module: nn.Module, dotted_name: str, parameter: nn.Parameter) -> None:
    owner_name, _, attr = dotted_name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    setattr(owner, attr, parameter)


def _embedding(num: int, dim: int, padding_idx: Optional[int] = None) -> nn.Embedding:
    """nn.Embedding; when built under `torch.device("meta")` (loading), without its random init.

    `normal_` on a meta tensor goes through torch._refs, whose first use imports torch._dynamo (~2 s of a cold
    `from_pretrained`); the values are about to be replaced by the checkpoint's anyway.
    """
    if torch.empty(0).is_meta:
        return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim, padding_idx=padding_idx)


class BioGptModel(BioGptPreTrainedModel):
    """The decoder: token + position embeddings, `num_hidden_layers` pre-LN blocks, a final LayerNorm."""

    base_model_prefix = "biogpt"
    # Set by `kernels.apply_cpu_kernels` where our native CPU kernels run the decode products: a callable that
    # computes a decode step's layers, the final LayerNorm and the output projection in one call, given (layers,
    # hidden, mask, cache, final LayerNorm, projection or None), returning (the LayerNorm's output, the logits or None
    # where it did not compute them), or None for a step it does not take.
    native_decoder: Optional[Callable[..., Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]]] = None

    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.embed_scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0
        self.embed_tokens = _embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = _embedding(config.max_position_embeddings + POSITION_OFFSET, config.hidden_size)
        self.layers = nn.ModuleList(BioGptDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = config.hidden_dropout_prob
        self.layerdrop = config.layerdrop

    @property
    def base_model(self) -> "BioGptModel":
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def embed(self, position_ids: torch.Tensor, input_ids: Optional[torch.Tensor] = None,
              inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled token embeddings (or `inputs_embeds`) plus the embeddings of `position_ids` (0 = first token)."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        return inputs_embeds + self.embed_positions(position_ids + POSITION_OFFSET).to(inputs_embeds.dtype)

    def run_layers(self, hidden_states: torch.Tensor, mask: Optional[torch.Tensor], cache: Optional[KVCache],
                   head_mask: Optional[torch.Tensor] = None, output_attentions: bool = False,
                   output_hidden_states: bool = False, projection: Optional[nn.Module] = None
                   ) -> tuple[torch.Tensor, Optional[list], Optional[list], Optional[torch.Tensor]]:
        """The decoder blocks then the final LayerNorm: (last hidden state, every hidden state, every attention map,
        the logits of `projection` where the native decoder computed them in the same call, else None).

        `mask` is a boolean (batch, 1, q, k) "may attend" mask, or None for plain causal attention; the caller
        advances `cache` once every layer has written its keys and values.
        """
        if (self.native_decoder is not None and head_mask is None and not output_attentions
                and not output_hidden_states and not self.training):
            done = self.native_decoder(self.layers, hidden_states, mask, cache, self.layer_norm, projection)
            if done is not None:
                return done[0], None, None, done[1]
        all_hidden = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for i, layer in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if self.training and self.layerdrop and torch.rand(()) < self.layerdrop:
                continue
            layer_device = layer.fc1.weight.device
            if hidden_states.device != layer_device:  # device_map placed this layer elsewhere
                hidden_states = hidden_states.to(layer_device)
                mask = mask.to(layer_device) if mask is not None else None
            hidden_states, weights = layer(hidden_states, mask, cache, head_mask[i] if head_mask is not None else None,
                                           output_attentions)
            if all_attentions is not None:
                all_attentions.append(weights)
        hidden_states = self.layer_norm(hidden_states.to(self.layer_norm.weight.device))
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return hidden_states, all_hidden, all_attentions, None

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                head_mask: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                past_key_values: Optional[KVCache] = None, use_cache: Optional[bool] = None,
                position_ids: Optional[torch.LongTensor] = None, output_attentions: bool = False,
                output_hidden_states: bool = False, return_dict: bool = True,
                projection: Optional[nn.Module] = None, **unused: Any) -> BaseModelOutputWithPast:
        """`projection` (the language model's passes its output projection): the output's `logits` are its logits
        where the native decoder computed them with the layers in one call (a CPU decode step), else None."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        use_cache = self.config.use_cache if use_cache is None else use_cache
        use_cache = use_cache and not self.training
        past = past_key_values.length if past_key_values is not None else 0
        if past + length > self.config.max_position_embeddings:
            raise ValueError(
                f"The sequence is {past + length} tokens long but this model has only "
                f"{self.config.max_position_embeddings} positions (max_position_embeddings): shorten the input."
            )
        if attention_mask is not None and attention_mask.shape != (batch, past + length):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                             f"{(batch, past + length)} (cached + new tokens).")
        if position_ids is None:
            position_ids = _positions_from_mask(attention_mask, past, length, device)
        hidden_states = F.dropout(self.embed(position_ids, inputs_embeds=inputs_embeds), p=self.dropout,
                                  training=self.training)
        if use_cache and past_key_values is None:
            past_key_values = KVCache.for_model(self, batch, length)
        cache = past_key_values if use_cache or past_key_values is not None else None
        mask = build_attention_mask(attention_mask, length, past + length, device)
        self._check_backend()
        hidden_states, all_hidden, all_attentions, logits = self.run_layers(
            hidden_states, mask, cache, _per_layer_head_mask(head_mask, self.config), output_attentions,
            output_hidden_states, projection)
        if cache is not None:
            cache.advance(length)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
            logits=logits,
        )


def _positions_from_mask(attention_mask: Optional[torch.Tensor], past: int, length: int,
                         device: torch.device) -> torch.Tensor:
    """Position of each new token = number of real tokens before it, so left padding does not shift positions."""
    if attention_mask is None:
        return torch.arange(past, past + length, device=device).unsqueeze(0)
    mask = attention_mask.to(device=device, dtype=torch.long)
    positions = mask.cumsum(dim=1) * mask - 1  # pads get -1 (row 1 of the table), as the reference does
    return positions[:, past:]


def _per_layer_head_mask(head_mask: Optional[torch.Tensor], config: BioGptConfig) -> Optional[torch.Tensor]:
    if head_mask is None:
        return None
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    if head_mask.dim() == 1 and head_mask.shape[0] == heads:
        return head_mask.unsqueeze(0).expand(layers, heads)
    if head_mask.shape == (layers, heads):
        return head_mask
    raise ValueError(f"head_mask must have shape ({heads},) or ({layers}, {heads}); got {tuple(head_mask.shape)}.")


class BioGptForCausalLM(GenerationMixin, BioGptPreTrainedModel):
    """The language model: the decoder plus `output_projection`, tied to the token embeddings."""

    tied_weights = {"output_projection.weight": "biogpt.embed_tokens.weight"}

    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.biogpt = BioGptModel(config)
        self.output_projection = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.output_projection.weight = self.biogpt.embed_tokens.weight
        else:
            self.tied_weights = {}

    def get_output_embeddings(self) -> nn.Linear:
        return self.output_projection

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                head_mask: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                past_key_values: Optional[KVCache] = None, labels: Optional[torch.LongTensor] = None,
                use_cache: Optional[bool] = None, position_ids: Optional[torch.LongTensor] = None,
                output_attentions: bool = False, output_hidden_states: bool = False, return_dict: bool = True,
                logits_to_keep: int = 0, **unused: Any) -> CausalLMOutputWithPast:
        """`labels` are the input ids (shifted inside); `logits_to_keep=k` computes logits for the last k only."""
        out = self.biogpt(input_ids=input_ids, attention_mask=attention_mask, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values, use_cache=use_cache,
                          position_ids=position_ids, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states, projection=self.output_projection)
        logits = out.logits
        if logits is None:  # (a decode step's native call computes them with the layers: one position, kept)
            hidden = out.last_hidden_state
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
            logits = self.output_projection(hidden.to(self.output_projection.weight.device))
        loss = None
        if labels is not None:
            shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)


class BioGptForTokenClassification(BioGptPreTrainedModel):
    """Per-token labels (NER): dropout then `classifier` over the decoder's hidden states."""

    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.biogpt = BioGptModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                head_mask: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                past_key_values: Optional[KVCache] = None, labels: Optional[torch.LongTensor] = None,
                use_cache: Optional[bool] = None, position_ids: Optional[torch.LongTensor] = None,
                output_attentions: bool = False, output_hidden_states: bool = False, return_dict: bool = True,
                **unused: Any) -> TokenClassifierOutput:
        out = self.biogpt(input_ids=input_ids, attention_mask=attention_mask, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values, use_cache=False,
                          position_ids=position_ids, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            targets = labels.to(logits.device)
            if attention_mask is not None:  # as the reference: padded positions never count
                targets = targets.masked_fill(attention_mask.to(logits.device) == 0, -100)
            loss = F.cross_entropy(logits.float().reshape(-1, self.num_labels), targets.reshape(-1),
                                   ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                     attentions=out.attentions)


class BioGptForSequenceClassification(BioGptPreTrainedModel):
    """One label (or several, or a score) per text, read at the last non-pad token by `score`."""

    def __init__(self, config: BioGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.biogpt = BioGptModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                head_mask: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                past_key_values: Optional[KVCache] = None, labels: Optional[torch.Tensor] = None,
                use_cache: Optional[bool] = None, position_ids: Optional[torch.LongTensor] = None,
                output_attentions: bool = False, output_hidden_states: bool = False, return_dict: bool = True,
                **unused: Any) -> SequenceClassifierOutputWithPast:
        out = self.biogpt(input_ids=input_ids, attention_mask=attention_mask, head_mask=head_mask,
                          inputs_embeds=inputs_embeds, past_key_values=past_key_values, use_cache=use_cache,
                          position_ids=position_ids, output_attentions=output_attentions,
                          output_hidden_states=output_hidden_states)
        logits = self.score(out.last_hidden_state)
        batch = logits.shape[0]
        if input_ids is not None and self.config.pad_token_id is not None:
            # The rightmost non-pad token, which works for left and right padding alike.
            real = (input_ids != self.config.pad_token_id).to(logits.device, torch.long)
            last = (torch.arange(input_ids.shape[1], device=logits.device) * real).argmax(-1)
        else:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = self._loss(pooled, labels) if labels is not None else None
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, past_key_values=out.past_key_values,
                                                hidden_states=out.hidden_states, attentions=out.attentions)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        problem = self.config.problem_type
        if problem is None:  # inferred once, as the reference does, and remembered in the config
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
            self.config.problem_type = problem
        if problem == "regression":
            return F.mse_loss(logits.float().squeeze(-1) if self.num_labels == 1 else logits.float(),
                              labels.float().squeeze(-1) if self.num_labels == 1 else labels.float())
        if problem == "single_label_classification":
            return F.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
