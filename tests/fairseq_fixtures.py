"""Synthetic fairseq BioGPT checkpoints in the released layout (spec `fairseq-finetuned.md` section 6).

A checkpoint here is what fairseq's `Trainer.state_dict` + `torch.save` write: `args`, `cfg` (a plain nested dict),
`model` (an OrderedDict of tensors), `criterion`, `optimizer_history`, `task_state`, `extra_state` and
`last_optimizer_state`, with tiny seeded weights. `write_checkpoint_dir` adds a 20-line `dict.txt` and a matching
`bpecodes`. The variants the converter must refuse (or accept) are options of `checkpoint_dict`.

`write_scripted_checkpoint` builds a different kind of tiny model: every attention and feed-forward weight is zero,
so the logits depend only on the position, and the position table is set so that greedy decoding writes a chosen
answer after a prefix of known length. The task tests use it to run each paper task end to end and get a parseable
answer.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

# 20 dictionary lines (fairseq `token count`), ending in madeupword padding like the released dict.txt.
DICT_LINES = [".", "the", "of", "and", "in", "to", "is", "a", "s@@", "t", "e@@", "r", "d@@", "o", "...", "&#124;",
              "madeupword0000", "madeupword0001", "madeupword0002", "madeupword0003"]
# fastBPE merges (`left right count`) that spell the dictionary's words.
BPECODES = ["t h", "th e</w>", "o f</w>", "a n", "an d</w>", "i n</w>", "t o</w>", "i s</w>", ". .", ".. .</w>"]
ELLIPSIS_ID = 4 + DICT_LINES.index("...")  # fairseq: line k (1-based) -> id k + 3

HIDDEN, LAYERS, FFN, MAX_POSITIONS = 16, 2, 32, 32


def write_vocab(directory: Path, lines: Sequence[str] = DICT_LINES, merges: Sequence[str] = BPECODES) -> None:
    """dict.txt (descending fake counts, as fairseq writes them) and bpecodes, each ending in a newline."""
    directory.mkdir(parents=True, exist_ok=True)
    count = len(lines) + 1
    (directory / "dict.txt").write_text("".join(f"{token} {0 if token.startswith('madeupword') else count - i}\n"
                                                for i, token in enumerate(lines)), encoding="utf-8")
    (directory / "bpecodes").write_text("".join(f"{merge} {len(merges) - i}\n" for i, merge in enumerate(merges)),
                                        encoding="utf-8")


def model_cfg(heads: int = 2, **overrides: Any) -> dict[str, Any]:
    """cfg["model"] as fairseq's TransformerLanguageModelConfig writes it for transformer_lm_prompt_biogpt."""
    cfg = {
        "_name": "transformer_lm_prompt_biogpt", "activation_fn": "gelu", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "relu_dropout": 0.0, "decoder_embed_dim": HIDDEN, "decoder_output_dim": HIDDEN,
        "decoder_input_dim": HIDDEN, "decoder_ffn_embed_dim": FFN, "decoder_layers": LAYERS,
        "decoder_attention_heads": heads, "decoder_normalize_before": True, "no_decoder_final_norm": False,
        "adaptive_softmax_cutoff": None, "adaptive_softmax_dropout": 0.0, "adaptive_softmax_factor": 4.0,
        "no_token_positional_embeddings": False, "share_decoder_input_output_embed": True,
        "character_embeddings": False, "adaptive_input": False, "tie_adaptive_weights": False,
        "decoder_learned_pos": True, "layernorm_embedding": False, "no_scale_embedding": False,
        "checkpoint_activations": False, "decoder_layerdrop": 0.0, "decoder_layers_to_keep": None,
        "quant_noise_pq": 0.0, "base_layers": 0, "scale_fc": False, "scale_attn": False, "scale_heads": False,
        "scale_resids": False, "decoder_xformers_att_config": None, "add_bos_token": False, "tokens_per_sample": 32,
        "max_target_positions": MAX_POSITIONS, "tpu": False,
    }
    cfg.update(overrides)
    return cfg


def task_cfg(prompts: int = 3, max_source: int = 12, data: str = "../../data/BC5CDR/relis-bin",
             **overrides: Any) -> dict[str, Any]:
    """cfg["task"] of BioGPT's language_modeling_prompt task."""
    cfg = {"_name": "language_modeling_prompt", "data": data, "sample_break_mode": "none",
           "tokens_per_sample": 1024, "output_dictionary_size": -1, "self_target": False, "future_target": False,
           "past_target": False, "add_bos_token": False, "max_target_positions": MAX_POSITIONS,
           "shorten_method": "none", "seed": 1, "source_lang": "x", "target_lang": "y",
           "max_source_positions": max_source, "manual_prompt": None, "learned_prompt": prompts,
           "learned_prompt_pattern": "learned", "prefix": False, "sep_token": "<seqsep>"}
    cfg.update(overrides)
    return cfg


def random_state(rows: int, *, seed: int = 0, layout: str = "trainer", hidden: int = HIDDEN, layers: int = LAYERS,
                 ffn: int = FFN, max_positions: int = MAX_POSITIONS, untied: bool = False,
                 version: Optional[float] = 3.0) -> "collections.OrderedDict[str, torch.Tensor]":
    """Seeded weights in fairseq's key layout.

    layout "trainer": `output_projection.weight` is the very tensor `embed_tokens.weight` (a shared parameter);
    "average": an equal clone (what average_checkpoints writes). `untied`: a different projection matrix.
    """
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    if version is not None:
        state["decoder.version"] = torch.tensor([version])
    embed = rand(rows, hidden, scale=hidden ** -0.5)
    embed[1] = 0  # fairseq zeroes the padding row
    state["decoder.embed_tokens.weight"] = embed
    state["decoder.embed_positions.weight"] = rand(max_positions + 2, hidden)
    for n in range(layers):
        prefix = f"decoder.layers.{n}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state[prefix + f"self_attn.{proj}.weight"] = rand(hidden, hidden)
            state[prefix + f"self_attn.{proj}.bias"] = rand(hidden, scale=0.1)
        state[prefix + "self_attn_layer_norm.weight"] = 1 + rand(hidden, scale=0.1)
        state[prefix + "self_attn_layer_norm.bias"] = rand(hidden, scale=0.1)
        state[prefix + "fc1.weight"] = rand(ffn, hidden)
        state[prefix + "fc1.bias"] = rand(ffn, scale=0.1)
        state[prefix + "fc2.weight"] = rand(hidden, ffn)
        state[prefix + "fc2.bias"] = rand(hidden, scale=0.1)
        state[prefix + "final_layer_norm.weight"] = 1 + rand(hidden, scale=0.1)
        state[prefix + "final_layer_norm.bias"] = rand(hidden, scale=0.1)
    state["decoder.layer_norm.weight"] = 1 + rand(hidden, scale=0.1)
    state["decoder.layer_norm.bias"] = rand(hidden, scale=0.1)
    if untied:
        state["decoder.output_projection.weight"] = rand(rows, hidden, scale=hidden ** -0.5)
    elif layout == "trainer":
        state["decoder.output_projection.weight"] = embed
    else:
        state["decoder.output_projection.weight"] = embed.clone()
    return state


def checkpoint_dict(state: dict[str, torch.Tensor], *, prompts: int = 3, heads: int = 2, max_source: int = 12,
                    legacy_args: bool = False, numpy_val_loss: bool = False, model_overrides: Optional[dict] = None,
                    task_overrides: Optional[dict] = None) -> dict[str, Any]:
    """Every top-level key of a fairseq 0.12 trainer checkpoint, with plausible plain values."""
    model = model_cfg(heads=heads, **(model_overrides or {}))
    task = task_cfg(prompts=prompts, max_source=max_source, **(task_overrides or {}))
    if numpy_val_loss:
        import numpy

        val_loss: Any = numpy.float64(1.5)
    else:
        val_loss = 1.5
    weight = state["decoder.embed_tokens.weight"]
    data: dict[str, Any] = {
        "args": None,
        "cfg": {"_name": None, "common": {"fp16": False, "cpu": False, "seed": 1}, "common_eval": {"path": None},
                "distributed_training": {"distributed_world_size": 1}, "dataset": {"max_tokens": 1024},
                "optimization": {"max_epoch": 100, "lr": [1e-5]}, "checkpoint": {"save_dir": "checkpoints"},
                "bmuf": {}, "generation": {"beam": 5, "max_len_a": 0.0, "max_len_b": 200, "min_len": 1,
                                           "lenpen": 1.0, "unkpen": 0.0, "temperature": 1.0, "sampling": False},
                "eval_lm": {}, "interactive": {}, "model": model, "task": task,
                "criterion": {"_name": "cross_entropy", "sentence_avg": False},
                "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-8, "lr": [1e-5]},
                "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 1000}, "scoring": None, "bpe": None,
                "tokenizer": None, "ema": {"store_ema": False}},
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 1.5}, "num_updates": 1000}],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 12.5,
                        "train_iterator": {"epoch": 100, "iterations_in_epoch": 10, "shuffle": True},
                        "val_loss": val_loss, "best": 1.5},
        "last_optimizer_state": {"state": {0: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(weight),
                                               "exp_avg_sq": torch.zeros_like(weight)}},
                                 "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.98), "eps": 1e-8,
                                                   "weight_decay": 0.0, "params": [0]}]},
    }
    if legacy_args:
        # Pre-Hydra fairseq: one flat argparse.Namespace with model and task options together, no cfg.
        flat = {**model, **task, "arch": model["_name"], "task": task["_name"]}
        del flat["_name"]
        data["args"] = argparse.Namespace(**flat)
        data["cfg"] = None
    return data


def write_checkpoint_dir(directory: Path, *, prompts: int = 3, layout: str = "trainer", untied: bool = False,
                         **options: Any) -> Path:
    """A release-like directory (RE tasks' name): checkpoint_avg.pt + dict.txt + bpecodes. Returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = 4 + len(DICT_LINES) + prompts
    state = random_state(rows, layout=layout, untied=untied)
    torch.save(checkpoint_dict(state, prompts=prompts, **options), directory / "checkpoint_avg.pt")
    write_vocab(directory)
    return directory


# ----------------------------------------------------------------------------------------------------------------
# Scripted checkpoints: greedy decoding writes a chosen answer
# ----------------------------------------------------------------------------------------------------------------
def write_scripted_checkpoint(directory: Path, dict_lines: Sequence[str], merges: Sequence[str], *, prompts: int,
                              prefix_length: int, answer_ids: Sequence[int], max_source: int = 40,
                              max_positions: int = 64, data: str = "RE-BC5CDR") -> Path:
    """A checkpoint whose greedy continuation of any `prefix_length`-token input is `answer_ids` then `</s>`.

    All attention and feed-forward weights are zero and the embeddings scale to nothing next to the positions, so
    the hidden state at position i is the (layer-normed) position row. Each answer step gets its own direction
    among `hidden` orthogonal zero-mean vectors, and the output matrix maps that direction to the wanted token.
    """
    hidden = 32
    steps = list(answer_ids) + [2]
    if len(steps) > hidden - 1:
        raise ValueError(f"at most {hidden - 1} scripted tokens, got {len(steps)}")
    rows = 4 + len(dict_lines) + prompts
    # Orthonormal directions orthogonal to the all-ones vector, so LayerNorm keeps them (up to scale).
    basis = torch.linalg.qr(torch.cat([torch.ones(hidden, 1), torch.eye(hidden)[:, : hidden - 1]], dim=1))[0]
    directions = basis[:, 1:].T  # (hidden - 1, hidden)
    state = random_state(rows, hidden=hidden, layers=1, ffn=hidden, max_positions=max_positions, untied=True)
    for key, tensor in state.items():
        if ".self_attn." in key or ".fc" in key or key.endswith("layer_norm.bias"):
            tensor.zero_()
        elif key.endswith("layer_norm.weight"):
            tensor.fill_(1.0)
    state["decoder.embed_tokens.weight"].mul_(1e-3)
    positions = torch.zeros(max_positions + 2, hidden)
    projection = torch.zeros(rows, hidden)
    for k, token in enumerate(steps):
        # The token at sequence index i reads position row i + 2; the answer's k-th token is predicted at the
        # prefix's last index plus k.
        positions[prefix_length - 1 + k + 2] = directions[k] * 10
        projection[token] += directions[k] * 10
    state["decoder.embed_positions.weight"] = positions
    state["decoder.output_projection.weight"] = projection
    options = dict(prompts=prompts, heads=2, max_source=max_source,
                   model_overrides={"decoder_embed_dim": hidden, "decoder_input_dim": hidden,
                                    "decoder_output_dim": hidden, "decoder_ffn_embed_dim": hidden,
                                    "decoder_layers": 1, "max_target_positions": max_positions,
                                    "share_decoder_input_output_embed": False},
                   task_overrides={"max_target_positions": max_positions, "data": data})
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(state, **options), directory / "checkpoint.pt")
    write_vocab(directory, dict_lines, merges)
    return directory


def vocab_from_learned_bpe(learned_dir: Path) -> tuple[list[str], list[str]]:
    """dict.txt lines and bpecodes merges equal to a `biogpt.bpe.learn_bpe` output (vocab.json + merges.txt)."""
    vocab = json.loads((learned_dir / "vocab.json").read_text(encoding="utf-8"))
    ordered = sorted(vocab.items(), key=lambda item: item[1])[4:]  # the four specials are implicit in fairseq
    lines = [token[:-4] if token.endswith("</w>") else token + "@@" for token, _ in ordered]
    merges = [" ".join(line.split()[:2]) for line in (learned_dir / "merges.txt").read_text().splitlines()]
    return lines, merges


# ----------------------------------------------------------------------------------------------------------------
# One scripted example per task (inputs whose answers the scripted checkpoints write)
# ----------------------------------------------------------------------------------------------------------------
BC5CDR = {"title": "Lithium carbonate toxicity in a newborn.",
          "abstract": "Cyanosis was seen after lithium carbonate exposure.",
          "answer": "the relation between lithium carbonate and cyanosis exists."}
DDI = {"abstract": "Aspirin increases the effect of warfarin.\nAvoid aspirin with warfarin.",
       "answer": "the interaction between aspirin and warfarin is effect."}
KD_DTI = {"title": "Imatinib inhibits ABL1", "abstract": "Imatinib is a kinase inhibitor of ABL1 and KIT.",
          "answer": "the interaction between imatinib and abl1 is inhibitor."}
PUBMEDQA = {"question": "Does aspirin prevent stroke?", "context": ["Aspirin reduced stroke in trials."],
            "answer": "the answer to the question given the context is yes."}
HOC = {"text": "Tumor cells switch to glycolysis and grow new vessels .",
       "answer": "the type of this document is cellular energetics|inducing angiogenesis."}


def task_vocab(directory: Path) -> tuple[Path, list[str], list[str]]:
    """A BPE vocabulary learned on the examples' texts (every word one token): (learned dir, dict.txt lines,
    bpecodes merges)."""
    from biogpt.bpe import learn_bpe
    from biogpt.tasks.hoc import HOC_CLASSES

    corpus = [BC5CDR["title"], BC5CDR["abstract"], DDI["abstract"], KD_DTI["title"], KD_DTI["abstract"],
              PUBMEDQA["question"], "Does heparin prevent stroke?", " ".join(PUBMEDQA["context"]), HOC["text"],
              "Normal cells switch to glycolysis and grow new vessels .", "question: context: yes no maybe",
              BC5CDR["answer"], DDI["answer"], KD_DTI["answer"], PUBMEDQA["answer"], HOC["answer"], *HOC_CLASSES]
    corpus += [text.lower() for text in corpus]
    learn_bpe(corpus, num_merges=5000, out_dir=directory, min_frequency=1)
    lines, merges = vocab_from_learned_bpe(directory)
    return directory, lines, merges


def scripted_task_checkpoint(directory: Path, vocab: tuple[Path, list[str], list[str]], source: str, answer: str,
                             prompts: int, data: str) -> Path:
    """A fairseq checkpoint directory (checkpoint.pt + dict.txt + bpecodes) whose model answers `answer` to the
    task input built from `source` (the source text as the task builds it, e.g. lowercased)."""
    from biogpt.tokenization import BioGptTokenizer

    learned, lines, merges = vocab
    tokenizer = BioGptTokenizer.from_pretrained(learned)
    prefix_length = 1 + len(tokenizer(source, add_special_tokens=False)["input_ids"]) + prompts
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in answer_ids
    return write_scripted_checkpoint(directory, lines, merges, prompts=prompts, prefix_length=prefix_length,
                                     answer_ids=answer_ids, data=data)
