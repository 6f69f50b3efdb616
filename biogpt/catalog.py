"""The models the app offers by name, and the choice of the default one.

Entries are the published BioGPT checkpoints on the Hub, Microsoft's fine-tuned task models of the paper (released
as fairseq checkpoints, not on the Hub: they load from the unpacked release that `BIOGPT_FINETUNED_DIR` points at,
converted on first use), and `demo`, the tiny models bundled in the package's `demo_models/` (one per task;
`BIOGPT_DEMO_DIR` points elsewhere) that let the app run with no network. Any other Hub id or local path typed by a
user is loaded as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import CheckpointError
from .settings import Settings

DEMO = "demo"
DEFAULT_MODEL = "microsoft/biogpt"
# Package data (so editable and plain installs find them); `make demo` (tools/demo) rebuilds them there.
PACKAGED_DEMO_ROOT = Path(__file__).resolve().parent / "demo_models"
DEMO_DIRS = {"causal-lm": "demo-lm", "token-classification": "demo-ner", "sequence-classification": "demo-classify"}
_HUB_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    size: str
    tasks: tuple[str, ...] = ("causal-lm",)
    defaults: dict[str, Any] = field(default_factory=dict)  # ModelSpec fields a UI should preselect
    paper_task: Optional[str] = None  # bc5cdr, ddi, kd-dti, pubmedqa or hoc for the paper's fine-tuned models
    release: bool = False  # a folder of the unpacked fine-tuned release (BIOGPT_FINETUNED_DIR/<name>)


CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in (
    CatalogEntry("microsoft/biogpt", "BioGPT base: a GPT-2-style model pre-trained on 15M PubMed abstracts.",
                 "347M parameters"),
    CatalogEntry("microsoft/BioGPT-Large", "BioGPT-Large: the 1.5B-parameter model pre-trained on PubMed.",
                 "1.5B parameters", defaults={"quantization": "4bit"}),
    CatalogEntry("microsoft/BioGPT-Large-PubMedQA", "BioGPT-Large fine-tuned for PubMedQA yes/no/maybe answers.",
                 "1.5B parameters", defaults={"quantization": "4bit"}),
    CatalogEntry(DEMO, "Tiny bundled demo models trained on generated sentences (not BioGPT), for trying the app offline.",
                 "4M params each, 18 MB", tasks=tuple(DEMO_DIRS), defaults={"dtype": "float32"}),
    # The paper's fine-tuned models (scores as the paper reports them on each test set).
    CatalogEntry("RE-BC5CDR-BioGPT", "BioGPT fine-tuned to extract chemical-induced disease relations (BC5CDR; the "
                 "paper: 44.98 F1).", "347M parameters", paper_task="bc5cdr", release=True),
    CatalogEntry("RE-DDI-BioGPT", "BioGPT fine-tuned to extract drug-drug interactions (DDI 2013; the paper: 40.76 "
                 "F1).", "347M parameters", paper_task="ddi", release=True),
    CatalogEntry("RE-DTI-BioGPT", "BioGPT fine-tuned to extract drug-target interactions (KD-DTI; the paper: 38.42 "
                 "F1).", "347M parameters", paper_task="kd-dti", release=True),
    CatalogEntry("QA-PubMedQA-BioGPT", "BioGPT fine-tuned to answer PubMedQA questions yes / no / maybe (the paper: "
                 "78.2% accuracy).", "347M parameters", paper_task="pubmedqa", release=True),
    CatalogEntry("QA-PubMedQA-BioGPT-Large", "BioGPT-Large fine-tuned for PubMedQA (the paper: 81.0% accuracy).",
                 "1.5B parameters", defaults={"quantization": "4bit"}, paper_task="pubmedqa", release=True),
    CatalogEntry("DC-HoC-BioGPT", "BioGPT fine-tuned to label sentences with the Hallmarks of Cancer (HoC; the "
                 "paper: 85.12 F1).", "347M parameters", paper_task="hoc", release=True),
)}
RELATION_TASKS = ("bc5cdr", "ddi", "kd-dti")


def paper_models(*tasks: str) -> list[CatalogEntry]:
    """The catalog's fine-tuned task models for `tasks` (e.g. the relation extractors)."""
    return [entry for entry in CATALOG.values() if entry.paper_task in tasks]


def release_path(name: str, settings: Optional[Settings] = None) -> Path:
    """The folder of the fine-tuned model `name` in the unpacked release, or a `CheckpointError` saying how to get it."""
    settings = settings or Settings.from_env()
    if settings.finetuned_dir is None:
        raise CheckpointError(f"{name} is one of Microsoft's fine-tuned BioGPT checkpoints, which are not on the "
                              "Hugging Face Hub: download and unpack the release (see the README, \"The paper's "
                              "tasks\") and set BIOGPT_FINETUNED_DIR to its checkpoints/ folder.")
    path = settings.finetuned_dir / name
    if not path.is_dir():
        raise CheckpointError(f"{name} is not in BIOGPT_FINETUNED_DIR (no folder named {name} there): unpack its "
                              "release archive into that folder.")
    return path


def demo_root(settings: Optional[Settings] = None) -> Path:
    """Where the demo checkpoints are: BIOGPT_DEMO_DIR, else the package's own copy."""
    settings = settings or Settings.from_env()
    return settings.demo_dir or PACKAGED_DEMO_ROOT


def demo_path(task: str = "causal-lm", settings: Optional[Settings] = None) -> Path:
    """The bundled demo checkpoint for `task`, or a `CheckpointError` saying how to build it."""
    if task not in DEMO_DIRS:
        raise CheckpointError(f"There is no bundled demo model for task {task!r} (tasks: {', '.join(DEMO_DIRS)}).")
    path = demo_root(settings) / DEMO_DIRS[task]
    if not (path / "config.json").is_file():
        raise CheckpointError(f"The bundled demo model for {task} is not built ({path} is missing): run `make demo` "
                              "or point BIOGPT_DEMO_DIR at a directory that has it.")
    return path


def demo_available(task: str = "causal-lm", settings: Optional[Settings] = None) -> bool:
    return task in DEMO_DIRS and (demo_root(settings) / DEMO_DIRS[task] / "config.json").is_file()


def is_cached(repo_id: str, cache_dir: Union[str, os.PathLike, None] = None) -> bool:
    """True when the local Hugging Face cache holds the config and a weights file of `repo_id` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str)

    return cached("config.json") and any(cached(name) for name in (
        "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"))


def hub_unreachable_reason(repo_id: str = DEFAULT_MODEL, timeout: float = _HUB_TIMEOUT_S) -> Optional[str]:
    """None when the Hub answers for `repo_id` within `timeout` seconds, else why not (bounded, never retries)."""
    import huggingface_hub
    from huggingface_hub import constants, errors as hub_errors

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout)
    except hub_errors.HfHubHTTPError as exc:  # the Hub answered, but not with the repo
        return f"the Hugging Face Hub refused {repo_id} ({exc.__class__.__name__})"
    except (hub_errors.HTTPError, OSError) as exc:  # DNS, connection, timeout (httpx errors and OSErrors)
        return f"the Hugging Face Hub is unreachable ({exc.__class__.__name__})"
    return None


def default_source(requested: Optional[str] = None,
                   cache_dir: Union[str, os.PathLike, None] = None) -> tuple[str, str]:
    """(source, human-readable reason) of the model the app starts with.

    `requested` (BIOGPT_MODEL) wins: `demo` forces the bundled demos, any other value is used as is. Otherwise
    microsoft/biogpt when it is cached or the Hub is reachable, else the bundled demos.
    """
    if requested:
        if requested == DEMO:
            return DEMO, "bundled demo models (BIOGPT_MODEL=demo)"
        return requested, f"{requested} (BIOGPT_MODEL)"
    if is_cached(DEFAULT_MODEL, cache_dir):
        return DEFAULT_MODEL, f"{DEFAULT_MODEL} (cached)"
    why_not = hub_unreachable_reason(DEFAULT_MODEL)
    if why_not is None:
        return DEFAULT_MODEL, f"{DEFAULT_MODEL} (downloaded from the Hugging Face Hub on first use)"
    if why_not == "HF_HUB_OFFLINE is set":
        return DEMO, f"bundled demo models: HF_HUB_OFFLINE is set and {DEFAULT_MODEL} is not cached"
    return DEMO, f"bundled demo models: {why_not}"


def local_source(name: str, task: str = "causal-lm", settings: Optional[Settings] = None) -> str:
    """What to load for `name`: the bundled demo for `demo`, the release folder of a fine-tuned catalog model, or
    `name` itself (a Hub id or a path), so that command lines accept the names the app shows."""
    if name == DEMO:
        return str(demo_path(task, settings))
    entry = CATALOG.get(name)
    if entry is not None and entry.release:
        return str(release_path(name, settings))
    return name
