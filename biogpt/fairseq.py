"""Microsoft's fine-tuned BioGPT fairseq checkpoints: read them safely and convert them to the Hugging Face layout.

The paper's task models (RE-BC5CDR, RE-DDI, RE-DTI, QA-PubMedQA, DC-HoC) were released as fairseq 0.12 training
checkpoints (`checkpoint*.pt`) plus the base or Large vocabulary (`dict.txt`, `bpecodes`). This module turns such a
directory into one that `BioGptForCausalLM`/`BioGptTokenizer` (ours and transformers') load: `config.json` (with the
prompt settings under `biogpt_prompt`), `model.safetensors`, `vocab.json` (with the `learnedK</w>` prompt tokens at
their fairseq ids), `merges.txt` (the bpecodes verbatim) and `tokenizer_config.json`.

Reading is safe by construction: the pickle's globals are listed first without unpickling
(`torch.serialization.get_unsafe_globals_in_checkpoint`) and anything outside a fixed allowlist is refused by name;
the file is then read with `torch.load(weights_only=True)` under that allowlist, so no code from the file runs.
Everything not expressible in the Hugging Face BioGPT model is refused with a `CheckpointError` that says what was
found and what to do. See `../shared/docs/fairseq-finetuned.md` (sections 1-3) for the format.

Where the vocabulary comes from, in order: `dict_path`/`bpecodes_path` when given; `vocab=` ("base", "large" or a
directory); `dict.txt` + `bpecodes` beside the checkpoint; otherwise the released vocabulary whose size matches the
checkpoint. The released base/Large vocabulary is read from `$BIOGPT_FAIRSEQ_VOCAB_DIR/{base,large}/` (dict.txt +
bpecodes, e.g. a copy of microsoft/BioGPT's data files) when that variable is set, else from the Hub repos
`microsoft/biogpt` / `microsoft/BioGPT-Large` (their vocab.json + merges.txt are the same vocabulary, downloaded once
into the Hugging Face cache).

Command line: `python -m biogpt convert-fairseq SRC_DIR OUT_DIR [--vocab base|large|DIR]` (`biogpt.tasks.evaluate`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy
import torch
from safetensors.torch import save_file

from .bpe import convert_fairseq_vocab, hf_spelling
from .configuration import BioGptConfig
from .errors import CheckpointError, ConfigError
from .hub import resolve_file
from .settings import Settings

PathLike = Union[str, os.PathLike]

PROMPT_CONFIG_KEY = "biogpt_prompt"  # config.json key holding the task's prompt settings
CONVERSION_FORMAT = 1  # written under PROMPT_CONFIG_KEY and part of the cache key: bump when the output changes
# The release's file names (infer.sh of each task), in the order they are preferred when several are present.
CHECKPOINT_NAMES = ("checkpoint_avg.pt", "checkpoint.pt", "checkpoint_last.pt", "checkpoint_best.pt")
VOCAB_DIR_ENV = "BIOGPT_FAIRSEQ_VOCAB_DIR"
# The released vocabularies: dictionary size (4 specials + dict.txt lines) and the Hub repo holding the same files.
RELEASED_VOCABS = {"base": (42384, "microsoft/biogpt"), "large": (57717, "microsoft/BioGPT-Large")}
TASKS = ("bc5cdr", "ddi", "kd-dti", "pubmedqa", "hoc")
# Recognised in the training data path / directory name, first match wins ("kd-dti" before "ddi": "re-dti").
_TASK_PATTERNS = (("bc5cdr", r"bc5cdr"), ("kd-dti", r"kd[-_]?dti|re[-_]?dti"), ("ddi", r"ddi"),
                  ("pubmedqa", r"pubmedqa"), ("hoc", r"(^|[^a-z])(dc[-_])?hoc([^a-z]|$)"))

# fairseq activation names -> the config's hidden_act (gelu_accurate is the tanh approximation).
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_accurate": "gelu_new", "tanh": "tanh", "swish": "silu"}
_SCALE_FLAGS = ("scale_fc", "scale_attn", "scale_heads", "scale_resids")
_LAYER_KEYS = tuple(f"self_attn.{p}_proj.{w}" for p in "kvq" for w in ("weight", "bias")) + (
    "self_attn.out_proj.weight", "self_attn.out_proj.bias", "self_attn_layer_norm.weight",
    "self_attn_layer_norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "final_layer_norm.weight",
    "final_layer_norm.bias")


# ----------------------------------------------------------------------------------------------------------------
# Reading a checkpoint safely
# ----------------------------------------------------------------------------------------------------------------
def _numpy_scalar() -> Any:
    # numpy 2 moved numpy.core to numpy._core; files pickled under either name rebuild scalars with the same function.
    return numpy._core.multiarray.scalar if hasattr(numpy, "_core") else numpy.core.multiarray.scalar


def _allowlist() -> dict[str, Any]:
    """The only globals a fairseq checkpoint may name beyond torch's defaults (spec section 1), by pickled name."""
    scalar = _numpy_scalar()
    return {
        "argparse.Namespace": argparse.Namespace,  # pre-Hydra files keep their hyperparameters in "args"
        "numpy.core.multiarray.scalar": scalar,  # val_loss / best / metrics saved as numpy scalars
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": numpy.dtype,
        "numpy.dtypes.Float64DType": numpy.dtypes.Float64DType,
        "numpy.dtypes.Float32DType": numpy.dtypes.Float32DType,
        "numpy.dtypes.Int64DType": numpy.dtypes.Int64DType,
    }


def _refuse_globals(path: Path, names: list[str]) -> CheckpointError:
    omegaconf = [name for name in names if name.split(".")[0] == "omegaconf"]
    if omegaconf:
        return CheckpointError(
            f"Refusing {path}: it holds omegaconf objects ({', '.join(omegaconf)}), which only files re-saved after "
            "fairseq's load_checkpoint_to_cpu contain, never the released ones. Unpickling them could run code, so "
            "they are not loaded: use the original checkpoint file from the BioGPT release.")
    return CheckpointError(
        f"Refusing {path}: unpickling it would import {', '.join(names)}, which a fairseq training checkpoint never "
        "needs. Loading it could run arbitrary code, so nothing was loaded: use the original file from the BioGPT "
        "release (or convert it with a tool you trust).")


def _load_pickle(path: Path) -> Any:
    """`torch.load(weights_only=True)` under the allowlist, after refusing any other global by name."""
    allow = _allowlist()
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        # Lists the pickle's GLOBAL opcodes without executing any of them.
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        refused = [name for name in unsafe if name not in allow]
        if refused:
            raise _refuse_globals(path, refused)
    safe = [(function, name) for name, function in allow.items()]
    try:
        with torch.serialization.safe_globals(safe):
            # mmap: the optimizer state (twice the weights) is never read into memory.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        # Legacy (non-zip) files cannot be listed beforehand; the weights-only unpickler refuses them here.
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        raise _refuse_globals(path, found or [str(exc).splitlines()[0]]) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {exc}).") from None


def _check_primitive(value: Any, where: str, path: Path) -> None:
    """Hyperparameters must be plain data; anything else means a file this converter does not understand."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_primitive(item, f"{where}[{i}]", path)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_primitive(item, f"{where}.{key}", path)
        return
    raise CheckpointError(f"Refusing {path}: {where} holds a {type(value).__name__}, where a fairseq checkpoint's "
                          "configuration has only plain values.")


@dataclass
class FairseqCheckpoint:
    """What conversion needs from a fairseq checkpoint: model and task hyperparameters, and the weights."""

    path: Path
    model_cfg: dict[str, Any]  # cfg["model"], or vars(args) for pre-Hydra files
    task_cfg: dict[str, Any]  # cfg["task"], or vars(args)
    common_cfg: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def architecture(self) -> str:
        return str(self.model_cfg.get("_name") or self.model_cfg.get("arch") or "")

    @property
    def task_name(self) -> str:
        name = self.task_cfg.get("_name")
        return str(name if name is not None else self.task_cfg.get("task") or "")


def load_fairseq_checkpoint(path: PathLike) -> FairseqCheckpoint:
    """Read a fairseq checkpoint file safely and keep only its hyperparameters and weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No such checkpoint file: {str(path)!r}.")
    data = _load_pickle(path)
    if not isinstance(data, dict) or "model" not in data:
        raise CheckpointError(f"{path} is not a fairseq checkpoint: expected a dict with a 'model' entry.")
    cfg, args = data.get("cfg"), data.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        _check_primitive(cfg, "cfg", path)
        model_cfg, task_cfg = dict(cfg["model"]), dict(cfg.get("task") or {})
        common_cfg = dict(cfg.get("common") or {})
    elif isinstance(args, argparse.Namespace):
        flat = vars(args)
        _check_primitive(flat, "args", path)
        model_cfg = task_cfg = common_cfg = dict(flat)
    else:
        raise CheckpointError(f"{path} has no hyperparameters: neither cfg['model'] (fairseq >= 0.10) nor a legacy "
                              "'args' namespace. It cannot be converted without them.")
    state = data["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is a {type(state).__name__}, not a state dict.")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: model entry {key!r} is a {type(value).__name__}, not a tensor.")
    return FairseqCheckpoint(path, model_cfg, task_cfg, common_cfg, dict(state))


# ----------------------------------------------------------------------------------------------------------------
# Architecture checks and the Hugging Face config
# ----------------------------------------------------------------------------------------------------------------
def _refuse_setting(ckpt: FairseqCheckpoint, name: str, value: Any, meaning: str) -> CheckpointError:
    return CheckpointError(
        f"Refusing {ckpt.path.name}: its architecture sets {name}={value!r} ({meaning}), which the Hugging Face "
        "BioGPT model cannot express, so converting it would change its outputs. BioGPT's released checkpoints "
        "(transformer_lm_prompt_biogpt / _large) never do; this one needs fairseq itself.")


def _check_architecture(ckpt: FairseqCheckpoint, hidden: int) -> None:
    hp = ckpt.model_cfg
    if not ckpt.architecture.startswith("transformer_lm"):
        raise CheckpointError(f"Refusing {ckpt.path.name}: its model is {ckpt.architecture or 'unnamed'!r}, not a "
                              "fairseq transformer language model (transformer_lm*), so it is no BioGPT checkpoint.")
    unsupported = [
        ("adaptive_input", bool(hp.get("adaptive_input")), "adaptive input embeddings"),
        ("adaptive_softmax_cutoff", hp.get("adaptive_softmax_cutoff") not in (None, ""), "an adaptive softmax"),
        ("character_embeddings", bool(hp.get("character_embeddings")), "character embeddings"),
        ("layernorm_embedding", bool(hp.get("layernorm_embedding")), "a LayerNorm after the embeddings"),
        ("no_decoder_final_norm", bool(hp.get("no_decoder_final_norm")), "no final LayerNorm"),
        ("decoder_normalize_before", hp.get("decoder_normalize_before") is not True,
         "post-LayerNorm blocks; BioGPT is pre-LN"),
        ("decoder_learned_pos", hp.get("decoder_learned_pos") is not True,
         "sinusoidal positions; BioGPT learns them"),
        ("no_token_positional_embeddings", bool(hp.get("no_token_positional_embeddings")), "no positions at all"),
        ("decoder_input_dim", hp.get("decoder_input_dim") not in (None, hidden),
         f"an input projection to the hidden size {hidden}"),
        ("decoder_output_dim", hp.get("decoder_output_dim") not in (None, hidden),
         f"an output projection from the hidden size {hidden}"),
        ("decoder_layers_to_keep", hp.get("decoder_layers_to_keep") not in (None, ""), "pruned layers"),
        ("base_layers", bool(hp.get("base_layers")), "BASE mixture-of-experts layers"),
    ] + [(flag, bool(hp.get(flag)), "an extra scaling module") for flag in _SCALE_FLAGS]
    for name, bad, meaning in unsupported:
        if bad:
            raise _refuse_setting(ckpt, name, hp.get(name), meaning)
    if hp.get("activation_fn", "relu") not in _ACTIVATIONS:
        raise _refuse_setting(ckpt, "activation_fn", hp.get("activation_fn"),
                              f"supported: {', '.join(_ACTIVATIONS)}")
    for name in ("add_bos_token", "prefix"):
        # Both change the sequence the model sees; no released checkpoint sets them and their layout is unverified.
        if ckpt.task_cfg.get(name) or (name == "add_bos_token" and hp.get(name)):
            raise CheckpointError(f"Refusing {ckpt.path.name}: its task sets {name}=True, an input layout no "
                                  "released BioGPT checkpoint uses and this converter does not reproduce.")


def _expected_shapes(layers: int, hidden: int, ffn: int, rows: int, positions: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "decoder.embed_tokens.weight": (rows, hidden),
        "decoder.embed_positions.weight": (positions, hidden),
        "decoder.layer_norm.weight": (hidden,),
        "decoder.layer_norm.bias": (hidden,),
        "decoder.output_projection.weight": (rows, hidden),
    }
    for n in range(layers):
        for key in _LAYER_KEYS:
            if key.startswith("fc1"):
                shape: tuple[int, ...] = (ffn, hidden) if key.endswith("weight") else (ffn,)
            elif key.startswith("fc2"):
                shape = (hidden, ffn) if key.endswith("weight") else (hidden,)
            elif key.endswith("proj.weight"):
                shape = (hidden, hidden)
            else:
                shape = (hidden,)
            shapes[f"decoder.layers.{n}.{key}"] = shape
    return shapes


@dataclass
class _Architecture:
    config: dict[str, Any]  # BioGptConfig fields
    tied: bool
    state: dict[str, torch.Tensor]  # fairseq keys, decoder.version dropped, output projection present


def _architecture(ckpt: FairseqCheckpoint) -> _Architecture:
    """Check the weights against the hyperparameters; the config fields of the equivalent Hugging Face model."""
    state, hp, name = dict(ckpt.state), ckpt.model_cfg, ckpt.path.name
    embed = state.get("decoder.embed_tokens.weight")
    if embed is None or embed.dim() != 2:
        raise CheckpointError(f"Refusing {name}: decoder.embed_tokens.weight is missing or not a matrix; this is no "
                              "fairseq transformer language model.")
    rows, hidden = embed.shape
    _check_architecture(ckpt, hidden)
    version = state.pop("decoder.version", None)
    if version is None or version.numel() < 1 or float(version.flatten()[0]) <= 2:
        found = "missing" if version is None else f"{float(version.flatten()[0]):g}"
        raise CheckpointError(
            f"Refusing {name}: decoder.version is {found} (3 expected). fairseq reads a version <= 2 (or none) as a "
            "pre-2019 checkpoint and silently drops the final LayerNorm, a model the Hugging Face layout cannot "
            "express. BioGPT's released checkpoints have version 3: use the original file.")
    shared = bool(hp.get("share_decoder_input_output_embed"))
    if "decoder.output_projection.weight" not in state and shared:
        state["decoder.output_projection.weight"] = embed  # fairseq ties them the same way when the key is absent
    layers = len({key.split(".")[2] for key in state if key.startswith("decoder.layers.")})
    if hp.get("decoder_layers") not in (None, layers):
        raise CheckpointError(f"Refusing {name}: cfg says decoder_layers={hp.get('decoder_layers')} but the weights "
                              f"hold {layers} layers.")
    ffn = state["decoder.layers.0.fc1.weight"].shape[0] if "decoder.layers.0.fc1.weight" in state else 0
    positions = state.get("decoder.embed_positions.weight")
    position_rows = positions.shape[0] if positions is not None else 0
    expected = _expected_shapes(layers, hidden, ffn, rows, position_rows)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:5])}"] if unexpected else [])
        raise CheckpointError(f"Refusing {name}: its weights are not those of a BioGPT decoder ({'; '.join(parts)}).")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"Refusing {name}: {key} has shape {tuple(state[key].shape)}, expected {shape}.")
        if not state[key].is_floating_point():
            raise CheckpointError(f"Refusing {name}: {key} holds {state[key].dtype} values, not weights.")
    max_positions = position_rows - 2  # fairseq: max_target_positions + padding_idx (1) + 1 rows
    configured = hp.get("max_target_positions")
    if configured not in (None, max_positions):
        raise CheckpointError(f"Refusing {name}: decoder.embed_positions.weight has {position_rows} rows but cfg says "
                              f"max_target_positions={configured} (which needs {configured} + 2).")
    heads = hp.get("decoder_attention_heads")
    if not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise CheckpointError(f"Refusing {name}: decoder_attention_heads={heads!r} does not divide the hidden size "
                              f"{hidden}.")
    # Tie only what is really equal: averaged checkpoints hold equal clones, and an untied pair must stay untied.
    tied = shared and torch.equal(state["decoder.output_projection.weight"], embed)
    config = {
        "vocab_size": rows, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": ffn, "hidden_act": _ACTIVATIONS[hp.get("activation_fn", "relu")],
        "hidden_dropout_prob": float(hp.get("dropout", 0.1)),
        "attention_probs_dropout_prob": float(hp.get("attention_dropout", 0.0)),
        "activation_dropout": float(hp.get("activation_dropout", 0.0)),
        "layerdrop": float(hp.get("decoder_layerdrop", 0.0)),
        "max_position_embeddings": max_positions, "scale_embedding": not hp.get("no_scale_embedding", False),
        "tie_word_embeddings": tied, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "architectures": ["BioGptForCausalLM"], "torch_dtype": str(embed.dtype).replace("torch.", ""),
    }
    return _Architecture(config, tied, state)


def _hf_state_dict(arch: _Architecture) -> dict[str, torch.Tensor]:
    """transformers' rename rule; the projection only when untied, then as a copy, since it may share the
    embeddings' storage, which safetensors refuses. Other tensors are written straight from the memory map."""
    out = {}
    for key, tensor in arch.state.items():
        if key == "decoder.output_projection.weight":
            if not arch.tied:
                out["output_projection.weight"] = tensor.contiguous().clone()
            continue
        out["biogpt." + key.removeprefix("decoder.")] = tensor.contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------
def _prompt_symbols(task_cfg: Mapping[str, Any]) -> list[str]:
    """The symbols BioGPT's prompt task adds to the dictionary (B `setup_prompt`), in the order it adds them."""
    learned = int(task_cfg.get("learned_prompt") or 0)
    manual = task_cfg.get("manual_prompt")
    if manual and learned:
        raise CheckpointError("The checkpoint sets both manual_prompt and learned_prompt, which BioGPT's prompt task "
                              "forbids; it cannot be a BioGPT checkpoint.")
    if manual:
        return str(manual).split()
    pattern = str(task_cfg.get("learned_prompt_pattern") or "learned")
    return [f"{pattern}{k}" for k in range(1, learned + 1)]


@dataclass
class _VocabSource:
    description: str  # for messages and config.json
    dict_txt: Optional[Path] = None
    bpecodes: Optional[Path] = None
    vocab_json: Optional[Path] = None
    merges_txt: Optional[Path] = None

    def write(self, out: Path) -> None:
        """vocab.json + merges.txt of the base vocabulary (without prompt tokens) into `out`."""
        if self.dict_txt is not None:
            try:
                convert_fairseq_vocab(self.dict_txt, self.bpecodes, out)
            except ValueError as exc:
                raise CheckpointError(f"{self.dict_txt} is not a fairseq dictionary: {exc}") from None
        else:
            shutil.copyfile(self.vocab_json, out / "vocab.json")
            shutil.copyfile(self.merges_txt, out / "merges.txt")


def _pair(directory: Path, description: str) -> Optional[_VocabSource]:
    """dict.txt + bpecodes (fairseq) or vocab.json + merges.txt (Hugging Face) in `directory`, if present."""
    for dict_name in ("dict.txt", "dict.x.txt"):  # fairseq-preprocess writes dict.x.txt beside the binarized data
        if (directory / dict_name).is_file() and (directory / "bpecodes").is_file():
            return _VocabSource(description, dict_txt=directory / dict_name, bpecodes=directory / "bpecodes")
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return _VocabSource(description, vocab_json=directory / "vocab.json", merges_txt=directory / "merges.txt")
    return None


def _released_vocab(name: str, vocab_dir: Optional[PathLike]) -> _VocabSource:
    """The released base/Large vocabulary: from `vocab_dir` (or $BIOGPT_FAIRSEQ_VOCAB_DIR), else from the Hub."""
    root = vocab_dir if vocab_dir is not None else Settings.from_env().fairseq_vocab_dir
    if root is not None:
        found = _pair(Path(os.path.expanduser(str(root))) / name, name)
        if found is None:
            raise CheckpointError(f"{Path(str(root)) / name} holds no dict.txt + bpecodes (set by {VOCAB_DIR_ENV} "
                                  f"or vocab_dir): point it at a directory with base/ and large/ subdirectories.")
        return found
    repo = RELEASED_VOCABS[name][1]
    try:
        vocab_json, merges = resolve_file(repo, "vocab.json"), resolve_file(repo, "merges.txt")
    except CheckpointError as exc:
        raise CheckpointError(
            f"The released {name} vocabulary is needed but could not be read from {repo}: {exc} Either allow that "
            f"download once, set {VOCAB_DIR_ENV} to a "
            f"directory holding {name}/dict.txt and {name}/bpecodes (microsoft/BioGPT's data files), or pass "
            "--dict and --bpecodes.") from None
    return _VocabSource(name, vocab_json=vocab_json, merges_txt=merges)


def _vocab_source(checkpoint: Path, rows: int, n_symbols: int, vocab: Optional[str],
                  dict_path: Optional[PathLike], bpecodes_path: Optional[PathLike],
                  vocab_dir: Optional[PathLike]) -> _VocabSource:
    if (dict_path is None) != (bpecodes_path is None):
        raise ConfigError("Pass both dict_path and bpecodes_path (--dict and --bpecodes), or neither.")
    if dict_path is not None:
        return _VocabSource(str(dict_path), dict_txt=Path(dict_path), bpecodes=Path(bpecodes_path))
    if vocab in RELEASED_VOCABS:
        return _released_vocab(vocab, vocab_dir)
    if vocab is not None:
        found = _pair(Path(os.path.expanduser(vocab)), vocab)
        if found is None:
            raise ConfigError(f"vocab={vocab!r} is neither 'base', 'large' nor a directory holding dict.txt + "
                              "bpecodes (or vocab.json + merges.txt).")
        return found
    beside = _pair(checkpoint.parent, f"the files beside {checkpoint.name}")
    if beside is not None:
        return beside
    for name, (size, _) in RELEASED_VOCABS.items():
        if size + n_symbols == rows:  # the matrix size tells base from Large unambiguously
            return _released_vocab(name, vocab_dir)
    raise CheckpointError(
        f"{checkpoint.parent} has no dict.txt + bpecodes, and the checkpoint's {rows} embedding rows match neither "
        f"released vocabulary plus its {n_symbols} prompt tokens (base {RELEASED_VOCABS['base'][0]}, Large "
        f"{RELEASED_VOCABS['large'][0]}). Put the dictionary it was trained with beside it, or pass --dict and "
        "--bpecodes.")


def _add_prompt_tokens(vocab_path: Path, symbols: list[str], rows: int, source: _VocabSource,
                       checkpoint: Path) -> list[int]:
    """Append the prompt symbols to vocab.json the way fairseq's `add_symbol` does; return their ids."""
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise CheckpointError(f"The vocabulary from {source.description} does not number its tokens 0..n-1.")
    base = len(vocab)
    ids = []
    for symbol in symbols:
        ids.append(vocab.setdefault(hf_spelling(symbol), len(vocab)))
    if len(vocab) != rows:
        hint = ""
        for name, (size, _) in RELEASED_VOCABS.items():
            if size + len(vocab) - base == rows and size != base:
                hint = f" The sizes fit the released {name} vocabulary: pass --vocab {name}."
        raise CheckpointError(
            f"Refusing {checkpoint.name}: it has {rows} embedding rows, but the dictionary from "
            f"{source.description} has {base} tokens (4 specials + {base - 4} lines) and the task adds "
            f"{len(vocab) - base} prompt tokens, {len(vocab)} in all. The checkpoint was trained with another "
            f"dictionary.{hint}")
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return ids


# ----------------------------------------------------------------------------------------------------------------
# Finding checkpoints, converting, caching
# ----------------------------------------------------------------------------------------------------------------
def find_checkpoint_file(source: PathLike) -> Path:
    """The checkpoint file of `source`: the file itself, or the release's file in a directory."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"No such file or directory: {str(source)!r}.")
    for name in CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p.name for p in path.glob("checkpoint*.pt") if p.is_file())
    if len(candidates) == 1:
        return path / candidates[0]
    if not candidates:
        raise CheckpointError(f"{str(source)!r} holds no fairseq checkpoint (checkpoint*.pt).")
    raise CheckpointError(f"{str(source)!r} holds several checkpoints ({', '.join(candidates)}): pass the file to "
                          "convert instead of the directory.")


def is_fairseq_checkpoint_dir(path: PathLike) -> bool:
    """True for a directory holding a `checkpoint*.pt` and no `config.json` (a Hugging Face checkpoint has one)."""
    directory = Path(os.path.expanduser(str(path)))
    return (directory.is_dir() and not (directory / "config.json").exists()
            and any(p.is_file() for p in directory.glob("checkpoint*.pt")))


def detect_task(*hints: str) -> Optional[str]:
    """The paper task the first telling hint names (e.g. '../../data/BC5CDR/relis-bin' -> 'bc5cdr'), or None.

    Conversion passes the training data path first, then the checkpoint's directory.
    """
    for hint in hints:
        for task, pattern in _TASK_PATTERNS:
            if re.search(pattern, hint.lower()):
                return task
    return None


def convert_fairseq_checkpoint(src_dir: PathLike, out_dir: PathLike, vocab: Optional[str] = None, *,
                               dict_path: Optional[PathLike] = None, bpecodes_path: Optional[PathLike] = None,
                               task: Optional[str] = None, vocab_dir: Optional[PathLike] = None) -> Path:
    """Convert a fairseq BioGPT checkpoint (a directory or a `checkpoint*.pt`) into a Hugging Face directory.

    `vocab`: None (dict.txt + bpecodes beside the checkpoint, else the released vocabulary whose size matches),
    "base", "large", or a directory with dict.txt + bpecodes. `dict_path` + `bpecodes_path` name the files directly.
    `task` ("bc5cdr", "ddi", "kd-dti", "pubmedqa", "hoc") is recorded in config.json; by default it is read from the
    training data path or the directory name. `vocab_dir` overrides $BIOGPT_FAIRSEQ_VOCAB_DIR.

    The output directory must not exist or be empty. It appears complete or not at all: the files are written into
    a temporary directory beside it, which is renamed at the end and removed on any failure.
    """
    if task is not None and task not in TASKS:
        raise ConfigError(f"task={task!r} is not one of {', '.join(TASKS)}.")
    out = Path(os.path.expanduser(str(out_dir)))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} already exists and is not empty: remove it or choose another output directory.")
    checkpoint_path = find_checkpoint_file(src_dir)
    ckpt = load_fairseq_checkpoint(checkpoint_path)
    arch = _architecture(ckpt)
    symbols = _prompt_symbols(ckpt.task_cfg)
    source = _vocab_source(checkpoint_path, arch.config["vocab_size"], len(symbols), vocab, dict_path,
                           bpecodes_path, vocab_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        source.write(staging)
        prompt_ids = _add_prompt_tokens(staging / "vocab.json", symbols, arch.config["vocab_size"], source,
                                        checkpoint_path)
        prompt = {
            "format": CONVERSION_FORMAT,
            "task": task or detect_task(str(ckpt.task_cfg.get("data") or ""), str(checkpoint_path.parent)),
            "source_checkpoint": checkpoint_path.name,
            "architecture": ckpt.architecture,
            "fairseq_task": ckpt.task_name,
            "vocabulary": source.description,
            "learned_prompt": int(ckpt.task_cfg.get("learned_prompt") or 0),
            "learned_prompt_pattern": ckpt.task_cfg.get("learned_prompt_pattern"),
            "manual_prompt": ckpt.task_cfg.get("manual_prompt"),
            "prompt_tokens": [hf_spelling(s) for s in symbols],
            "prompt_token_ids": prompt_ids,
            "max_source_positions": ckpt.task_cfg.get("max_source_positions"),
            "max_target_positions": arch.config["max_position_embeddings"],
            "fp16": bool(ckpt.common_cfg.get("fp16", False)),
        }
        BioGptConfig(**arch.config, **{PROMPT_CONFIG_KEY: prompt}).save_pretrained(staging)
        save_file(_hf_state_dict(arch), str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer_config = {"tokenizer_class": "BioGptTokenizer", "model_max_length": arch.config[
            "max_position_embeddings"], "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
            "unk_token": "<unk>", "pad_token": "<pad>"}
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n",
                                                       encoding="utf-8")
        try:
            if out.exists():
                out.rmdir()  # empty (checked above); rename() cannot replace a directory on every platform
            os.rename(staging, out)
        except OSError as exc:
            raise CheckpointError(f"Could not move the conversion into {out} ({exc}): did another process write "
                                  "there meanwhile?") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def converted_cache_path(src_dir: PathLike, cache_root: Optional[PathLike] = None,
                         vocab: Optional[str] = None) -> Path:
    """Where `convert_into_cache` puts the conversion of `src_dir`: `<cache_root>/<key>`.

    The key hashes the checkpoint file's resolved path, size and modification time (so a replaced file converts
    again), the vocabulary choice and the converter's output format. `cache_root` defaults to
    BIOGPT_FAIRSEQ_CACHE_DIR (~/.cache/biogpt/fairseq).
    """
    checkpoint = find_checkpoint_file(src_dir).resolve()
    stat = checkpoint.stat()
    vocab_files = [checkpoint.parent / name for name in ("dict.txt", "dict.x.txt", "bpecodes")]
    parts = [str(checkpoint), str(stat.st_size), str(stat.st_mtime_ns), str(vocab), str(CONVERSION_FORMAT)] + [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in vocab_files if p.is_file()]
    key = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:24]
    root = (Path(os.path.expanduser(str(cache_root))) if cache_root is not None
            else Settings.from_env().fairseq_cache_dir)
    return root / key


def convert_into_cache(src_dir: PathLike, cache_root: Optional[PathLike] = None, vocab: Optional[str] = None) -> Path:
    """The Hugging Face conversion of the fairseq checkpoint `src_dir`, converted on first use and reused after."""
    target = converted_cache_path(src_dir, cache_root, vocab)
    if (target / "config.json").is_file():
        return target  # conversions appear atomically, so a present directory is complete
    try:
        return convert_fairseq_checkpoint(src_dir, target, vocab)
    except CheckpointError:
        if (target / "config.json").is_file():  # another process finished the same conversion first
            return target
        raise
