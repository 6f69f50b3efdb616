"""`pipeline(task, model=...)` as in transformers, for BioGPT's three heads.

- "text-generation": text in, `[{"generated_text": ...}]` out. The continuation is decoded in context (see
  `generation.continuation_text`) and appended to the prompt, so "Ibuprofen is best used for" continues as
  "... used for the treatment", never "... used forthe treatment".
- "token-classification" (alias "ner"): entities with transformers' keys (`entity` or `entity_group`, `score`,
  `word`, `start`, `end`) and `aggregation_strategy`; the offsets are exact character spans, which transformers'
  slow BioGPT tokenizer cannot give.
- "text-classification": `[{"label", "score"}]` with transformers' `top_k` and `function_to_apply`.

The two classification pipelines refuse a checkpoint whose head would start from random values (see
`loading.load_model(random_heads=False)`): its entities or labels would be noise.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Union

from .auto import AutoTokenizer
from .devices import cpu_safe_dtype, parse_device, parse_dtype
from .errors import ConfigError, GenerationParameterError
from .generation import GenerationConfig, StreamDelta, continuation_text, generate, stream_generate
from .modeling import BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification
from .tasks.classify import classify
from .tasks.entities import STRATEGIES, extract_entities

PIPELINE_DEFAULT_NEW_TOKENS = 256  # transformers' text-generation pipeline default, when nothing else sets a length


class TextGenerationPipeline:
    """Callable that continues one prompt or a list of prompts."""

    task = "text-generation"

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer

    def _generation_kwargs(self, kwargs: dict[str, Any], prompt_length: int) -> dict[str, Any]:
        """The generation arguments: when nothing sets a length, the pipeline's default of 256 new tokens, or what
        fits after the prompt (a default is not a request: no warning that it was cut)."""
        config = getattr(self.model, "generation_config", None) or GenerationConfig.from_model_config(self.model.config)
        if (kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None
                and config.max_length is None and config.max_new_tokens is None):
            room = self.model.config.max_position_embeddings - prompt_length
            kwargs["max_new_tokens"] = max(1, min(PIPELINE_DEFAULT_NEW_TOKENS, room))
        return {k: v for k, v in kwargs.items() if v is not None}

    def __call__(self, text_inputs: Union[str, list[str]], *, max_length: Optional[int] = None,
                 max_new_tokens: Optional[int] = None, do_sample: Optional[bool] = None,
                 truncation: Optional[bool] = None, num_return_sequences: int = 1, return_full_text: bool = True,
                 **generate_kwargs: Any) -> Union[list[dict[str, str]], list[list[dict[str, str]]]]:
        """`truncation=True` keeps the end of a prompt that does not fit the model's positions (and its `</s>`)."""
        if isinstance(text_inputs, str):
            return self._one(text_inputs, max_length=max_length, max_new_tokens=max_new_tokens,
                             do_sample=do_sample, truncation=truncation, num_return_sequences=num_return_sequences,
                             return_full_text=return_full_text, **generate_kwargs)
        if not isinstance(text_inputs, (list, tuple)) or not all(isinstance(t, str) for t in text_inputs):
            raise GenerationParameterError("text_inputs must be a string or a list of strings.")
        return [self._one(text, max_length=max_length, max_new_tokens=max_new_tokens, do_sample=do_sample,
                          truncation=truncation, num_return_sequences=num_return_sequences,
                          return_full_text=return_full_text, **generate_kwargs) for text in text_inputs]

    def _one(self, text: str, *, truncation: Optional[bool], return_full_text: bool,
             **kwargs: Any) -> list[dict[str, str]]:
        prompt_ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self.model.device)
        result = generate(self.model, prompt_ids, truncate_prompt=bool(truncation), return_dict_in_generate=True,
                          **self._generation_kwargs(kwargs, prompt_ids.shape[1]))
        used_prompt = result.sequences[0, :result.prompt_length].tolist()
        outputs = []
        for sequence in result.sequences:
            continuation = continuation_text(self.tokenizer, used_prompt, sequence[result.prompt_length:].tolist())
            outputs.append({"generated_text": text + continuation if return_full_text else continuation})
        return outputs

    def stream(self, text: str, **kwargs: Any) -> Iterator[StreamDelta]:
        """Deltas of the continuation of `text` (see `stream_generate`)."""
        prompt_length = len(self.tokenizer(text)["input_ids"])
        return stream_generate(self.model, self.tokenizer, text, **self._generation_kwargs(kwargs, prompt_length))


class TokenClassificationPipeline:
    """Callable that finds the entities of one text or a list of texts (transformers' output format)."""

    task = "token-classification"

    def __init__(self, model: Any, tokenizer: Any, aggregation_strategy: str = "none"):
        self.model = model
        self.tokenizer = tokenizer
        self.aggregation_strategy = self._strategy(aggregation_strategy)

    @staticmethod
    def _strategy(value: Any) -> str:
        name = getattr(value, "value", value)  # transformers' AggregationStrategy enum, or its name
        name = str(name).lower()
        if name not in STRATEGIES:
            raise ConfigError(f"aggregation_strategy must be one of {', '.join(STRATEGIES)}; got {value!r}.")
        return name

    def __call__(self, inputs: Union[str, list[str]], aggregation_strategy: Any = None
                 ) -> Union[list[dict[str, Any]], list[list[dict[str, Any]]]]:
        strategy = self._strategy(aggregation_strategy) if aggregation_strategy is not None \
            else self.aggregation_strategy
        if isinstance(inputs, str):
            return self._one(inputs, strategy)
        return [self._one(text, strategy) for text in _texts(inputs)]

    def _one(self, text: str, strategy: str) -> list[dict[str, Any]]:
        found = extract_entities(self.model, self.tokenizer, text, aggregation_strategy=strategy)
        if strategy == "none":
            return [{"entity": e["label"], "score": e["score"], "index": e["index"], "word": e["text"],
                     "start": e["start"], "end": e["end"]} for e in found]
        return [{"entity_group": e["label"], "score": e["score"], "word": e["text"], "start": e["start"],
                 "end": e["end"]} for e in found]


_TOP_ONE = object()  # transformers' default: the best label only


class TextClassificationPipeline:
    """Callable that labels one text or a list of texts (transformers' output format)."""

    task = "text-classification"

    def __init__(self, model: Any, tokenizer: Any, top_k: Any = _TOP_ONE, function_to_apply: Optional[str] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.top_k = top_k
        self.function_to_apply = function_to_apply

    def __call__(self, inputs: Union[str, list[str]], top_k: Any = _TOP_ONE,
                 function_to_apply: Optional[str] = None) -> Union[list[dict[str, Any]], list[Any]]:
        """Default: the best label of each text; `top_k=k` the k best (None: all), each input's as a list."""
        top_k = self.top_k if top_k is _TOP_ONE else top_k
        if top_k is not _TOP_ONE and top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or None; got {top_k!r}.")
        single = isinstance(inputs, str)
        texts = [inputs] if single else _texts(inputs)
        scores = classify(self.model, self.tokenizer, texts, function_to_apply=function_to_apply
                          or self.function_to_apply)
        rows = [[{"label": label, "score": score} for label, score in row.items()] for row in scores]
        if top_k is _TOP_ONE:
            return [row[0] for row in rows]
        rows = [row if top_k is None else row[:top_k] for row in rows]
        return rows[0] if single else rows


def _texts(inputs: Any) -> list[str]:
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(t, str) for t in inputs):
        raise GenerationParameterError("inputs must be a string or a list of strings.")
    return list(inputs)


# task -> (pipeline class, model class, whether a head missing from the checkpoint is refused)
SUPPORTED_TASKS = {
    "text-generation": (TextGenerationPipeline, BioGptForCausalLM),
    "token-classification": (TokenClassificationPipeline, BioGptForTokenClassification),
    "ner": (TokenClassificationPipeline, BioGptForTokenClassification),
    "text-classification": (TextClassificationPipeline, BioGptForSequenceClassification),
}
_PIPELINE_ARGUMENTS = {TokenClassificationPipeline: ("aggregation_strategy",),
                       TextClassificationPipeline: ("top_k", "function_to_apply")}


def pipeline(task: str, model: Any = None, tokenizer: Any = None, torch_dtype: Any = None, device: Any = None,
             device_map: Any = None, **kwargs: Any) -> Any:
    """Build a pipeline for `task` from a model (Hub id, local path or loaded model) and its tokenizer.

    `device` is a GPU index, 'cpu', 'cuda', 'cuda:N' or 'mps'; a device this machine lacks raises `DeviceError`
    before anything is loaded. float16 on the CPU is loaded as float32 (with a warning), as `from_pretrained` does.
    The classification pipelines' own arguments (`aggregation_strategy`; `top_k`, `function_to_apply`) may be given
    here or per call; everything else goes to `from_pretrained`.
    """
    if task not in SUPPORTED_TASKS:
        raise GenerationParameterError(f"Unsupported task {task!r}; supported tasks: {', '.join(SUPPORTED_TASKS)}.")
    pipeline_class, model_class = SUPPORTED_TASKS[task]
    if model is None:
        raise GenerationParameterError(f"pipeline() needs model=... (a Hub id such as 'microsoft/biogpt', a local "
                                       f"directory or a loaded {model_class.__name__}).")
    own = {name: kwargs.pop(name) for name in _PIPELINE_ARGUMENTS.get(pipeline_class, ()) if name in kwargs}
    target = parse_device(device) if device is not None else None
    if isinstance(model, (str, os.PathLike)):
        source = model
        if pipeline_class is not TextGenerationPipeline:
            kwargs.setdefault("random_heads", False)
        model = model_class.from_pretrained(model, torch_dtype=torch_dtype, device=target, device_map=device_map,
                                            **kwargs)
    else:
        source = getattr(model, "name_or_path", None)
        if target is not None:
            model = model.to(target)
        if torch_dtype is not None:
            model = model.to(cpu_safe_dtype(parse_dtype(torch_dtype), model.device))
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_source = tokenizer if tokenizer is not None else source
        if tokenizer_source is None:
            raise GenerationParameterError("This model was not loaded from a path: pass tokenizer=... as well.")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    model.eval()
    return pipeline_class(model, tokenizer, **own)


__all__ = ["pipeline", "SUPPORTED_TASKS", "TextClassificationPipeline", "TextGenerationPipeline",
           "TokenClassificationPipeline"]
