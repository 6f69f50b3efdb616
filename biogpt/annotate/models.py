"""Loading the model a task needs, and naming it in records: its id and its revision.

The revision of a Hub checkpoint is the commit its cached files come from; that of a local directory is a hash of
its `config.json` and of its weights files' names and sizes, so a record says which weights produced it and a
resumed run refuses to mix the output of two different models.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Union

from .. import catalog
from ..configuration import BioGptConfig
from ..errors import CheckpointError
from ..fairseq import convert_into_cache, is_fairseq_checkpoint_dir
from ..hub import is_local, resolve_file
from ..modeling import BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification
from ..tokenization import BioGptTokenizer
from .registry import AnnotationTask

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
# The kernel of the CPU linear layers is fixed, not measured per machine and process (BIOGPT_CPU_KERNELS=auto):
# kernels round differently, and a resumed run, a second process or a Ray actor must compute the bits of the first.
CPU_KERNELS = "onednn"
# The bundled demo model (`--model demo`) of each model class.
_DEMO_TASKS = {BioGptForCausalLM: "causal-lm", BioGptForTokenClassification: "token-classification",
               BioGptForSequenceClassification: "sequence-classification"}


def checkpoint_source(source: Union[str, os.PathLike], task: AnnotationTask) -> str:
    """What `--model` names, as a loadable checkpoint: `demo` (the bundled model of the task's kind), a fine-tuned
    catalog model's release folder, a fairseq checkpoint directory (converted once into the conversion cache), a
    local checkpoint directory or a Hub id."""
    text = catalog.local_source(os.path.expanduser(str(source)), _DEMO_TASKS[task.model_class])
    return str(convert_into_cache(text)) if is_fairseq_checkpoint_dir(text) else text


def model_info(source: Union[str, os.PathLike]) -> dict[str, str]:
    """`{"id", "revision"}`: a local directory's resolved path and content hash, or a Hub id and its commit."""
    text = os.path.expanduser(str(source))
    if is_local(text):
        directory = Path(text).resolve()
        config = directory / "config.json"
        if not config.is_file():
            raise CheckpointError(f"config.json is missing from {str(directory)!r}: is this a BioGPT checkpoint "
                                  "directory?")
        digest = hashlib.sha256(config.read_bytes())
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.name.endswith(_WEIGHT_SUFFIXES):
                digest.update(f"\0{path.name}\0{path.stat().st_size}".encode())
        return {"id": str(directory), "revision": f"sha256:{digest.hexdigest()[:16]}"}
    config_path = resolve_file(text, "config.json")
    # The Hub cache keeps a repo's files under snapshots/<commit>/.
    parts = config_path.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else "unknown"
    return {"id": text, "revision": commit}


def read_config(source: Union[str, os.PathLike], task: AnnotationTask) -> BioGptConfig:
    """The checkpoint's config, after checking that it is the kind of model `task` needs."""
    config = BioGptConfig.from_pretrained(checkpoint_source(source, task))
    wanted = task.model_class.__name__
    if config.architectures and wanted not in config.architectures:
        raise CheckpointError(f"Task {task.name} needs a {wanted} checkpoint; {source} is a "
                              f"{', '.join(config.architectures)}.")
    return config


def load_for_task(task: AnnotationTask, source: Union[str, os.PathLike], device: str = "cpu",
                  dtype: str = "float32") -> tuple[Any, Any]:
    """(model in eval mode on `device` in `dtype`, tokenizer) of the checkpoint `source`, for `task`.

    Models given to `run_local` or `annotate_texts` should be loaded here too, so that they compute what the
    engine's own models compute (see CPU_KERNELS).
    """
    read_config(source, task)
    source = checkpoint_source(source, task)
    # random_heads=False: a checkpoint without the task's head would annotate a corpus with noise.
    model = task.model_class.from_pretrained(source, device=device, torch_dtype=dtype, cpu_kernels=CPU_KERNELS,
                                             random_heads=False)
    return model.eval(), BioGptTokenizer.from_pretrained(source)
