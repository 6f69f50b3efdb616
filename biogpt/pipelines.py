"""`pipeline("text-generation", model=...)`: text in, `[{"generated_text": ...}]` out, as in transformers.

The continuation is decoded in context (see `generation.continuation_text`) and appended to the prompt, so
"Ibuprofen is best used for" continues as "... used for the treatment", never "... used forthe treatment".
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Union

from .devices import cpu_safe_dtype, parse_device, parse_dtype
from .errors import GenerationParameterError
from .generation import GenerationConfig, StreamDelta, continuation_text, generate, stream_generate
from .modeling import BioGptForCausalLM
from .tokenization import BioGptTokenizer

PIPELINE_DEFAULT_NEW_TOKENS = 256  # transformers' text-generation pipeline default, when nothing else sets a length


class TextGenerationPipeline:
    """Callable that continues one prompt or a list of prompts."""

    task = "text-generation"

    def __init__(self, model: Any, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer

    def _generation_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        config = getattr(self.model, "generation_config", None) or GenerationConfig.from_model_config(self.model.config)
        if (kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None
                and config.max_length is None and config.max_new_tokens is None):
            kwargs["max_new_tokens"] = PIPELINE_DEFAULT_NEW_TOKENS
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
                          **self._generation_kwargs(kwargs))
        used_prompt = result.sequences[0, :result.prompt_length].tolist()
        outputs = []
        for sequence in result.sequences:
            continuation = continuation_text(self.tokenizer, used_prompt, sequence[result.prompt_length:].tolist())
            outputs.append({"generated_text": text + continuation if return_full_text else continuation})
        return outputs

    def stream(self, text: str, **kwargs: Any) -> Iterator[StreamDelta]:
        """Deltas of the continuation of `text` (see `stream_generate`)."""
        return stream_generate(self.model, self.tokenizer, text, **self._generation_kwargs(kwargs))


SUPPORTED_TASKS = {"text-generation": TextGenerationPipeline}


def pipeline(task: str, model: Any = None, tokenizer: Any = None, torch_dtype: Any = None, device: Any = None,
             device_map: Any = None, **model_kwargs: Any) -> TextGenerationPipeline:
    """Build a pipeline for `task` from a model (Hub id, local path or loaded model) and its tokenizer.

    `device` is a GPU index, 'cpu', 'cuda', 'cuda:N' or 'mps'; a device this machine lacks raises `DeviceError`
    before anything is loaded. float16 on the CPU is loaded as float32 (with a warning), as `from_pretrained` does.
    """
    if task not in SUPPORTED_TASKS:
        raise GenerationParameterError(f"Unsupported task {task!r}; supported tasks: {', '.join(SUPPORTED_TASKS)}.")
    if model is None:
        raise GenerationParameterError("pipeline() needs model=... (a Hub id such as 'microsoft/biogpt', a local "
                                       "directory or a loaded BioGptForCausalLM).")
    target = parse_device(device) if device is not None else None
    if isinstance(model, (str, os.PathLike)):
        source = model
        model = BioGptForCausalLM.from_pretrained(model, torch_dtype=torch_dtype, device=target,
                                                  device_map=device_map, **model_kwargs)
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
        tokenizer = BioGptTokenizer.from_pretrained(tokenizer_source)
    model.eval()
    return SUPPORTED_TASKS[task](model, tokenizer)


__all__ = ["pipeline", "TextGenerationPipeline", "SUPPORTED_TASKS"]
