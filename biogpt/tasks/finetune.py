"""Fine-tuning BioGPT for NER (token classification) and text classification (single- or multi-label).

Python API: `finetune_ner(train, dev, ...)` and `finetune_classifier(train, dev, ...)` take file paths or
in-memory examples and return the best dev metrics; the CLI (`python -m biogpt finetune ner|classify ...`) is a
thin layer over them (`main(argv)`).

Evaluation goes through the inference code, so the scores measure what users get: NER dev documents are decoded
by `entities.extract_entities` (same sentence windows, same sub-token aggregation) and scored entity-level
(exact span + type); classification uses `classify.classify` (softmax, or sigmoid >= threshold for multi-label).
Training windows come from the same splitter as inference (`entities.encode_windows`).

The best checkpoint (by the dev metric) is written in the Hub layout (config.json with id2label/label2id/
problem_type, model.safetensors, vocab.json, merges.txt) together with `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch

from ..bpe import convert_fairseq_vocab
from ..configuration import BioGptConfig
from ..devices import parse_device, resolve_device
from ..modeling import BioGptForSequenceClassification, BioGptForTokenClassification, BioGptPreTrainedModel
from ..tokenization import BioGptTokenizer
from .classify import classify
from .data import (IGNORE_INDEX, ClassificationExample, Document, bio_label_list, read_classification_jsonl,
                   read_classification_tsv, read_conll, read_pubtator, token_bio_labels)
from .entities import STRATEGIES, encode_windows, entities_to_spans, extract_entities, parse_label
from .inputs import pad_token_id
from .metrics import classification_scores, entity_scores, threshold_labels

PathLike = Union[str, os.PathLike]
NerExample = Mapping[str, Any]  # {"text": str, "entities": [{"start", "end", "label"}, ...]}
ClassExample = Mapping[str, Any]  # {"text": str, "label": str} or {"text": str, "labels": [str, ...]}

# Randomly initialised shapes for tests and CPU recipes (no pretrained weights involved).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 max_position_embeddings=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=512),
}


@dataclass
class TrainingArguments:
    """Optimisation and bookkeeping settings shared by both tasks (the CLI flags of the same names)."""

    output_dir: Optional[PathLike] = None  # where the best checkpoint and metrics.json go; None: keep in memory
    epochs: int = 3
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs (training may then span several epochs)
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    bf16: bool = False
    seed: int = 42
    max_length: int = 256  # tokens per training window (NER) or text (classification), `</s>` included
    eval_every: Optional[int] = None  # also evaluate every N optimizer steps, besides each epoch's end
    patience: Optional[int] = None  # stop after this many evaluations without improvement
    max_time: Optional[float] = None  # seconds of training before stopping early (a safety net for recipes)
    eval_batch_size: int = 16
    device: Optional[str] = None  # default: cuda when available, else cpu
    progress: bool = True


# ----------------------------------------------------------------------------------------------------------------
# Data: files or in-memory examples -> normalised examples
# ----------------------------------------------------------------------------------------------------------------
def conll_to_examples(sentences: Iterable[tuple[Sequence[str], Sequence[str]]]) -> list[dict[str, Any]]:
    """CoNLL (tokens, tags) sentences as NER examples: tokens joined by single spaces, tags turned into spans.

    BIO, BIOES/BILOU and plain tags are read as `entities.parse_label` reads model labels (an `I-` after `O`
    or after another type opens an entity), so training data and predictions follow the same grammar.
    """
    examples = []
    for tokens, tags in sentences:
        text, entities, position = "", [], 0
        open_entity: Optional[dict[str, Any]] = None
        for token, tag in zip(tokens, tags):
            start = position + (1 if text else 0)
            text = f"{text} {token}" if text else token
            position = start + len(token)
            prefix, kind = parse_label(tag)
            if prefix == "O":
                open_entity = None
                continue
            if prefix in ("B", "S") or open_entity is None or open_entity["label"] != kind:
                open_entity = {"start": start, "end": position, "label": kind}
                entities.append(open_entity)
            else:
                open_entity["end"] = position
            if prefix in ("E", "S"):
                open_entity = None
        examples.append({"text": text, "entities": entities})
    return examples


def _document_example(document: Document) -> dict[str, Any]:
    return {"text": document.text,
            "entities": [{"start": e.start, "end": e.end, "label": e.label} for e in document.entities]}


def load_ner_examples(source: Union[PathLike, Iterable[NerExample]], fmt: str = "auto") -> list[dict[str, Any]]:
    """NER examples from a PubTator file, a CoNLL file (`fmt` auto-detects) or an iterable of example dicts."""
    if not isinstance(source, (str, os.PathLike)):
        examples = [dict(example) for example in source]
        for i, example in enumerate(examples):
            for entity in example.get("entities", []):
                if not 0 <= entity["start"] < entity["end"] <= len(example["text"]):
                    raise ValueError(f"example {i}: entity {entity} lies outside its text.")
        return examples
    path = Path(source)
    if fmt == "auto":
        with open(path, encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        head = first.split("|", 2)
        fmt = "pubtator" if len(head) == 3 and head[1] in ("t", "a") else "conll"
    if fmt == "pubtator":
        return [_document_example(d) for d in read_pubtator(path)]
    if fmt == "conll":
        return conll_to_examples(read_conll(path))
    raise ValueError(f"NER data format must be auto, pubtator or conll; got {fmt!r}.")


def load_classification_examples(source: Union[PathLike, Iterable[Union[ClassExample, ClassificationExample]]],
                                 fmt: str = "auto") -> list[ClassificationExample]:
    """Classification examples from a TSV (`text<TAB>a|b`, `empty`) or JSONL file, or in-memory examples."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if fmt == "auto":
            fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "tsv"
        if fmt == "tsv":
            return read_classification_tsv(path)
        if fmt == "jsonl":
            return read_classification_jsonl(path)
        raise ValueError(f"classification data format must be auto, tsv or jsonl; got {fmt!r}.")
    examples = []
    for item in source:
        if isinstance(item, ClassificationExample):
            examples.append(item)
            continue
        value = item["labels"] if "labels" in item else item.get("label")
        if value is None or value == "empty":
            labels: tuple[str, ...] = ()
        elif isinstance(value, str):
            labels = tuple(label for label in value.split("|") if label and label != "empty")
        else:
            labels = tuple(str(label) for label in value)
        examples.append(ClassificationExample(str(item["text"]), labels))
    return examples


def _split_dev(examples: list, dev_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random hold-out, for when no dev set is given."""
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}.")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(examples) * dev_fraction))
    return [examples[i] for i in order[cut:]], [examples[i] for i in order[:cut]]


def _train_and_dev(load: Callable[[Any, str], list], train: Any, dev: Any, data_format: str, dev_fraction: float,
                   seed: int, limit_train: Optional[int], limit_dev: Optional[int]) -> tuple[list, list]:
    """Read train (and dev, or hold out a seeded `dev_fraction` of train), then apply the size limits."""
    train_examples = load(train, data_format)
    if dev is None:
        train_examples, dev_examples = _split_dev(train_examples, dev_fraction, seed)
    else:
        dev_examples = load(dev, data_format)
    return train_examples[:limit_train], dev_examples[:limit_dev]


# ----------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------
def ner_features(examples: Sequence[NerExample], tokenizer: BioGptTokenizer, label2id: Mapping[str, int],
                 max_length: int) -> list[dict[str, list[int]]]:
    """Token ids and BIO label ids per training window (`encode_windows`, the splitter inference uses).

    Windows are disjoint sentence packs, so an entity crossing a window edge is practically impossible; one
    that does is dropped from both windows rather than half-labelled.
    """
    features = []
    for example in examples:
        text = example["text"]
        for window in encode_windows(tokenizer, text, max_length):
            spans = [(e["start"] - window.start, e["end"] - window.start, e["label"])
                     for e in example.get("entities", []) if window.start <= e["start"] and e["end"] <= window.end]
            labels = token_bio_labels(window.offsets, spans, label2id)
            features.append({"input_ids": window.input_ids, "labels": labels})
    return features


def classification_features(examples: Sequence[ClassificationExample], tokenizer: BioGptTokenizer,
                            label2id: Mapping[str, int], multi_label: bool, max_length: int
                            ) -> list[dict[str, Any]]:
    features = []
    for example in examples:
        ids = tokenizer(example.text, truncation=True, max_length=max_length)["input_ids"]
        if multi_label:
            target: Any = [0.0] * len(label2id)
            for label in example.labels:
                target[label2id[label]] = 1.0
        else:
            target = label2id[example.labels[0]]
        features.append({"input_ids": list(ids), "labels": target})
    return features


def _collate(features: Sequence[Mapping[str, Any]], pad_id: int, token_labels: bool) -> dict[str, torch.Tensor]:
    """Right-pad a batch; token labels are padded with IGNORE_INDEX so padding never counts in the loss."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, :len(f["input_ids"])] = 1
    if token_labels:
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, :len(f["labels"])] = torch.tensor(f["labels"])
    else:  # class ids (long) or multi-hot rows (float): the dtype selects the loss, as in transformers
        labels = torch.tensor([f["labels"] for f in features])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ----------------------------------------------------------------------------------------------------------------
def load_tokenizer(source: PathLike) -> BioGptTokenizer:
    """A tokenizer directory (vocab.json + merges.txt), or a fairseq one (dict.txt + bpecodes) converted on the fly."""
    path = Path(source)
    if path.is_dir() and not (path / "vocab.json").is_file() and (path / "dict.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            convert_fairseq_vocab(path / "dict.txt", path / "bpecodes", tmp)
            return BioGptTokenizer.from_pretrained(tmp)  # reads both files eagerly
    return BioGptTokenizer.from_pretrained(source)


def build_model(cls: type[BioGptPreTrainedModel], id2label: Mapping[int, str], problem_type: Optional[str], *,
                model: Optional[Union[PathLike, BioGptPreTrainedModel]] = None,
                init_config: Optional[Union[PathLike, BioGptConfig]] = None, preset: Optional[str] = None,
                tokenizer: Optional[Union[PathLike, BioGptTokenizer]] = None, seed: int = 42
                ) -> tuple[BioGptPreTrainedModel, BioGptTokenizer]:
    """The model to fine-tune and its tokenizer, from exactly one of:

    - `model`: a Hub id or local checkpoint (a new head is initialised when the label count differs), or a
      model object (trained in place; its labels must already match);
    - `init_config`: a config.json (or BioGptConfig), randomly initialised;
    - `preset`: a name in `PRESETS`, randomly initialised with the tokenizer's vocabulary size.

    `tokenizer` defaults to the checkpoint's own; random initialisations need one.
    """
    if sum(x is not None for x in (model, init_config, preset)) != 1:
        raise ValueError("Give exactly one of model, init_config or preset.")
    labels = {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()},
              "problem_type": problem_type}
    if tokenizer is None and not isinstance(model, (str, os.PathLike)):
        raise ValueError("A tokenizer (directory or object) is needed unless a checkpoint path or id is given.")
    source = tokenizer if tokenizer is not None else model
    tok = source if isinstance(source, BioGptTokenizer) else load_tokenizer(source)
    torch.manual_seed(seed)  # the new head (or the whole model) is initialised reproducibly
    if isinstance(model, BioGptPreTrainedModel):
        if dict(model.config.id2label) != dict(id2label):
            raise ValueError(f"The given model's labels {model.config.id2label} differ from the data's {id2label}.")
        model.config.problem_type = problem_type
        return model, tok
    if model is not None:
        return cls.from_pretrained(model, ignore_mismatched_sizes=True, **labels), tok
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
        config = BioGptConfig(vocab_size=len(tok), **PRESETS[preset], **labels)
    elif isinstance(init_config, BioGptConfig):
        config = BioGptConfig.from_dict({**init_config.to_dict(), **labels})
    else:
        config = BioGptConfig.from_pretrained(init_config, **labels)
    if config.vocab_size < len(tok):
        raise ValueError(f"The config's vocab_size ({config.vocab_size}) is smaller than the tokenizer's ({len(tok)}).")
    return cls.from_config(config), tok


# ----------------------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------------------
def _optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights, as is standard for transformers.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def run_training(model: BioGptPreTrainedModel, tokenizer: BioGptTokenizer, features: list[dict[str, Any]],
                 evaluate: Callable[[BioGptPreTrainedModel], dict[str, Any]], metric: str, args: TrainingArguments,
                 loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> dict[str, Any]:
    """AdamW + linear warmup/decay over `features`; evaluates, early-stops and keeps the best weights.

    The loss is the model's own (that of transformers' classes) unless `loss_fn(logits, labels)` replaces it.

    `evaluate(model)` returns a metrics dict with `metric` (higher is better). On return the model holds the best
    weights; with `args.output_dir` they are also saved there (Hub layout + tokenizer) as soon as they improve.
    """
    from tqdm.auto import tqdm

    if not features:
        raise ValueError("No training examples.")
    device = parse_device(args.device or resolve_device("auto"))
    model.to(device)
    pad_id = pad_token_id(model, tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # dropout masks
    batches_per_epoch = math.ceil(len(features) / args.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // args.grad_accum)
    total = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
    if total < 1:
        raise ValueError(f"Nothing to train: {total} optimizer steps (check max_steps / epochs).")
    optimizer = _optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  _linear_schedule(round(args.warmup_ratio * total), total))
    output_dir = Path(args.output_dir) if args.output_dir is not None else None

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state: Optional[dict[str, torch.Tensor]] = None
    stale, step, epoch = 0, 0, 0
    started = time.perf_counter()
    progress = tqdm(total=total, desc="fine-tuning", disable=not args.progress, dynamic_ncols=True)

    def run_eval() -> bool:
        """Evaluate, keep the best; True when early stopping says stop."""
        nonlocal best, best_state, stale
        model.eval()
        scores = evaluate(model)
        model.train()
        record = {"step": step, "epoch": epoch, "elapsed_s": round(time.perf_counter() - started, 1), **scores}
        history.append(record)
        progress.write(f"step {step} epoch {epoch}: {metric} = {scores[metric]:.4f}")
        if not best or scores[metric] > best[metric]:
            best, stale = record, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if output_dir is not None:
                model.save_pretrained(output_dir)
                tokenizer.save_pretrained(output_dir)
            return False
        stale += 1
        return args.patience is not None and stale >= args.patience

    token_labels = isinstance(model, BioGptForTokenClassification)
    model.train()
    stop = False
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    while not stop:
        order = torch.randperm(len(features), generator=generator).tolist()
        batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        # A last partial accumulation group is dropped (as a partial batch would skew the step's gradient scale).
        usable = len(batches) - len(batches) % args.grad_accum or len(batches)
        for first in range(0, usable, args.grad_accum):
            for indices in batches[first:first + args.grad_accum]:
                batch = _collate([features[i] for i in indices], pad_id, token_labels)
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast:
                    if loss_fn is None:
                        loss = model(**batch).loss
                    else:
                        labels = batch.pop("labels")
                        loss = loss_fn(model(**batch).logits, labels)
                (loss / args.grad_accum).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            epoch_done = first + args.grad_accum >= usable
            epoch += int(epoch_done)
            finished = step >= total or (args.max_time is not None and time.perf_counter() - started > args.max_time)
            # Evaluate at each epoch's end, every eval_every steps, and always on the final weights.
            if epoch_done or finished or (args.eval_every and step % args.eval_every == 0):
                stop = run_eval() or finished
            if stop:
                break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best": best, "history": history, "steps": step, "epochs_completed": epoch,
            "train_seconds": round(time.perf_counter() - started, 1),
            "parameters": model.num_parameters(), "train_features": len(features)}


# ----------------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------------
def evaluate_ner(model: BioGptPreTrainedModel, tokenizer: BioGptTokenizer, examples: Sequence[NerExample],
                 aggregation_strategy: str = "simple", batch_size: int = 16) -> dict[str, Any]:
    """Entity-level exact-match scores of `extract_entities` on `examples` (what users of the model get)."""
    predicted = [entities_to_spans(extract_entities(model, tokenizer, e["text"], aggregation_strategy,
                                                    batch_size=batch_size)) for e in examples]
    gold = [entities_to_spans(e.get("entities", [])) for e in examples]
    scores = entity_scores(gold, predicted)
    return {"f1": scores["micro"]["f1"], "precision": scores["micro"]["precision"],
            "recall": scores["micro"]["recall"], "per_type": scores["per_type"]}


def evaluate_classifier(model: BioGptPreTrainedModel, tokenizer: BioGptTokenizer,
                        examples: Sequence[ClassificationExample], threshold: float = 0.5, batch_size: int = 16
                        ) -> dict[str, float]:
    """Accuracy and micro/macro-F1 of `classify`'s output: argmax, or every label with sigmoid >= threshold."""
    # Length-sorted batches pad less; results are put back in the original order.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))
    probabilities = classify(model, tokenizer, [examples[i].text for i in order], batch_size=batch_size)
    predicted: list[frozenset[str]] = [frozenset()] * len(examples)
    multi = model.config.problem_type == "multi_label_classification"
    for i, scores in zip(order, probabilities):
        predicted[i] = threshold_labels(scores, threshold) if multi else frozenset([next(iter(scores))])
    return classification_scores([frozenset(e.labels) for e in examples], predicted)


def classification_baselines(train: Sequence[ClassificationExample], dev: Sequence[ClassificationExample]
                             ) -> dict[str, dict[str, float]]:
    """Constant predictors fitted on train: the most frequent label set, and the most frequent single label."""
    gold = [frozenset(e.labels) for e in dev]
    majority_set = Counter(frozenset(e.labels) for e in train).most_common(1)[0][0]
    baselines = {"majority_label_set": classification_scores(gold, [majority_set] * len(dev))}
    label_counts = Counter(label for e in train for label in e.labels)
    if label_counts:
        frequent = frozenset([label_counts.most_common(1)[0][0]])
        baselines["most_frequent_label"] = classification_scores(gold, [frequent] * len(dev))
    return baselines


def _write_metrics(args: TrainingArguments, metrics: dict[str, Any]) -> None:
    if args.output_dir is not None:
        path = Path(args.output_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def finetune_ner(train: Union[PathLike, Iterable[NerExample]], dev: Union[PathLike, Iterable[NerExample], None] = None,
                 *, model: Optional[Union[PathLike, BioGptPreTrainedModel]] = None,
                 init_config: Optional[Union[PathLike, BioGptConfig]] = None, preset: Optional[str] = None,
                 tokenizer: Optional[Union[PathLike, BioGptTokenizer]] = None,
                 args: Optional[TrainingArguments] = None, data_format: str = "auto", dev_fraction: float = 0.1,
                 aggregation_strategy: str = "simple", entity_types: Optional[Sequence[str]] = None,
                 limit_train: Optional[int] = None, limit_dev: Optional[int] = None,
                 return_model: bool = False) -> Union[dict[str, Any], tuple[dict[str, Any], BioGptPreTrainedModel]]:
    """Fine-tune a `BioGptForTokenClassification` with BIO tags; return the metrics (and the model if asked).

    `train`/`dev`: PubTator or CoNLL files, or `[{"text", "entities": [{"start", "end", "label"}]}]`. Without
    `dev`, a seeded `dev_fraction` of train is held out. The metric is dev entity micro-F1 (exact span + type),
    decoded by `extract_entities` with `aggregation_strategy`. The model source is one of `model`,
    `init_config`, `preset` (see `build_model`).
    """
    args = args or TrainingArguments()
    if aggregation_strategy not in STRATEGIES:
        raise ValueError(f"aggregation_strategy must be one of {STRATEGIES}, got {aggregation_strategy!r}.")
    train_examples, dev_examples = _train_and_dev(load_ner_examples, train, dev, data_format, dev_fraction,
                                                  args.seed, limit_train, limit_dev)
    types = list(entity_types) if entity_types else sorted({e["label"] for x in train_examples
                                                           for e in x.get("entities", [])})
    if not types:
        raise ValueError("The training data has no entities: nothing to learn.")
    labels = bio_label_list(types)
    id2label = dict(enumerate(labels))
    network, tok = build_model(BioGptForTokenClassification, id2label, None, model=model, init_config=init_config,
                               preset=preset, tokenizer=tokenizer, seed=args.seed)
    if args.max_length > network.config.max_position_embeddings:
        raise ValueError(f"max_length {args.max_length} exceeds the model's {network.config.max_position_embeddings} "
                         "positions.")
    features = ner_features(train_examples, tok, network.config.label2id, args.max_length)
    result = run_training(network, tok, features,
                   lambda m: evaluate_ner(m, tok, dev_examples, aggregation_strategy, args.eval_batch_size),
                   "f1", args)
    metrics = {"task": "ner", "metric": "entity micro-F1 (exact span + type)", **result,
               "labels": labels, "train_examples": len(train_examples), "dev_examples": len(dev_examples),
               "aggregation_strategy": aggregation_strategy,
               # Predicting no entity at all (every token O) scores 0: nothing predicted, nothing right.
               "baseline": {"all_O": {"f1": 0.0, "precision": 0.0, "recall": 0.0}},
               "config": _config_summary(network.config), "args": _args_dict(args)}
    _write_metrics(args, metrics)
    return (metrics, network) if return_model else metrics


def finetune_classifier(train: Union[PathLike, Iterable[ClassExample]],
                        dev: Union[PathLike, Iterable[ClassExample], None] = None, *,
                        model: Optional[Union[PathLike, BioGptPreTrainedModel]] = None,
                        init_config: Optional[Union[PathLike, BioGptConfig]] = None, preset: Optional[str] = None,
                        tokenizer: Optional[Union[PathLike, BioGptTokenizer]] = None,
                        args: Optional[TrainingArguments] = None, data_format: str = "auto",
                        multi_label: Optional[bool] = None, threshold: float = 0.5, dev_fraction: float = 0.1,
                        metric: Optional[str] = None, pos_weight: Optional[str] = None,
                        limit_train: Optional[int] = None,
                        limit_dev: Optional[int] = None, return_model: bool = False
                        ) -> Union[dict[str, Any], tuple[dict[str, Any], BioGptPreTrainedModel]]:
    """Fine-tune a `BioGptForSequenceClassification`; return the metrics (and the model if asked).

    `train`/`dev`: TSV (`text<TAB>a|b`, `empty` for none) or JSONL files, or `[{"text", "label"|"labels"}]`.
    `multi_label=None` infers it: multi-label when any example has no label or several. The selection metric
    is `metric` (default: micro_f1 for multi-label, accuracy for single-label). `pos_weight` ("ratio" or
    "sqrt", multi-label only) weighs each label's positives by its train negatives/positives (or the square
    root): with rare labels (HoC: ~5% each) plain BCE otherwise learns to predict nothing above 0.5.
    """
    args = args or TrainingArguments()
    train_examples, dev_examples = _train_and_dev(load_classification_examples, train, dev, data_format,
                                                  dev_fraction, args.seed, limit_train, limit_dev)
    if multi_label is None:
        multi_label = any(len(e.labels) != 1 for e in train_examples)
    elif not multi_label and any(len(e.labels) != 1 for e in train_examples):
        raise ValueError("single-label classification needs exactly one label per training example.")
    labels = sorted({label for e in train_examples for label in e.labels})
    if len(labels) < (1 if multi_label else 2):
        raise ValueError(f"The training data has too few distinct labels ({labels}).")
    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    metric = metric or ("micro_f1" if multi_label else "accuracy")
    network, tok = build_model(BioGptForSequenceClassification, dict(enumerate(labels)), problem_type, model=model,
                               init_config=init_config, preset=preset, tokenizer=tokenizer, seed=args.seed)
    label2id = network.config.label2id
    features = classification_features(train_examples, tok, label2id, multi_label, args.max_length)
    loss_fn = _weighted_bce(train_examples, labels, pos_weight) if pos_weight is not None else None
    if loss_fn is not None and not multi_label:
        raise ValueError("pos_weight applies to multi-label classification only.")
    result = run_training(network, tok, features,
                          lambda m: evaluate_classifier(m, tok, dev_examples, threshold, args.eval_batch_size),
                          metric, args, loss_fn)
    metrics = {"task": "classify", "metric": metric, "problem_type": problem_type, "threshold": threshold,
               "pos_weight": pos_weight,
               **result, "labels": labels, "train_examples": len(train_examples),
               "dev_examples": len(dev_examples), "baseline": classification_baselines(train_examples, dev_examples),
               "config": _config_summary(network.config), "args": _args_dict(args)}
    _write_metrics(args, metrics)
    return (metrics, network) if return_model else metrics


def _weighted_bce(examples: Sequence[ClassificationExample], labels: Sequence[str], mode: str
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if mode not in ("ratio", "sqrt"):
        raise ValueError(f"pos_weight must be 'ratio' or 'sqrt', got {mode!r}.")
    counts = Counter(label for e in examples for label in e.labels)
    positives = torch.tensor([max(1, counts[label]) for label in labels], dtype=torch.float)
    weight = (len(examples) - positives).clamp(min=1.0) / positives
    weight = weight.sqrt() if mode == "sqrt" else weight

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                                    pos_weight=weight.to(logits.device))
    return loss


def _config_summary(config: BioGptConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                            "intermediate_size", "max_position_embeddings")}


def _args_dict(args: TrainingArguments) -> dict[str, Any]:
    values = asdict(args)
    values["output_dir"] = str(args.output_dir) if args.output_dir is not None else None
    return values


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biogpt finetune",
                                     description="Fine-tune BioGPT for NER or text classification.")
    tasks = parser.add_subparsers(dest="task", required=True)
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_argument_group("model (exactly one)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument("--model", help="Hub id or local checkpoint directory to start from")
    choice.add_argument("--init-config", help="config.json of a randomly initialised model")
    choice.add_argument("--preset", choices=sorted(PRESETS), help="a randomly initialised shape")
    choice.add_argument("--tiny", action="store_const", const="tiny", dest="preset",
                        help="same as --preset tiny (for tests)")
    source.add_argument("--tokenizer", help="tokenizer directory (vocab.json + merges.txt, or fairseq dict.txt + "
                                            "bpecodes); default: the --model checkpoint's")
    data = common.add_argument_group("data")
    data.add_argument("--train", required=True)
    data.add_argument("--dev", help="dev set; default: a seeded --dev-fraction of --train")
    data.add_argument("--dev-fraction", type=float, default=0.1)
    data.add_argument("--format", default="auto", help="data format (default: detected)")
    data.add_argument("--limit-train", type=int, help="use only the first N training examples")
    data.add_argument("--limit-dev", type=int, help="use only the first N dev examples")
    opt = common.add_argument_group("training")
    defaults = TrainingArguments()
    opt.add_argument("--output-dir", required=True)
    opt.add_argument("--epochs", type=int, default=defaults.epochs)
    opt.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    opt.add_argument("--batch-size", type=int, default=defaults.batch_size)
    opt.add_argument("--grad-accum", type=int, default=defaults.grad_accum, help="gradient accumulation steps")
    opt.add_argument("--lr", type=float, default=defaults.lr)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    opt.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    opt.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm)
    opt.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU and recent GPUs)")
    opt.add_argument("--seed", type=int, default=defaults.seed)
    opt.add_argument("--max-length", type=int, default=defaults.max_length)
    opt.add_argument("--eval-every", type=int, help="also evaluate every N optimizer steps")
    opt.add_argument("--patience", type=int, help="early stopping: evaluations without improvement")
    opt.add_argument("--max-time", type=float, help="stop training after this many seconds")
    opt.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    opt.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    opt.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")

    ner = tasks.add_parser("ner", parents=[common], help="token classification (PubTator or CoNLL data)")
    ner.add_argument("--aggregation", default="simple", choices=STRATEGIES,
                     help="sub-token aggregation used to decode dev predictions (as extract_entities)")
    classify = tasks.add_parser("classify", parents=[common], help="text classification (TSV or JSONL data)")
    labels = classify.add_mutually_exclusive_group()
    labels.add_argument("--multi-label", action="store_const", const=True, dest="multi_label")
    labels.add_argument("--single-label", action="store_const", const=False, dest="multi_label")
    classify.add_argument("--threshold", type=float, default=0.5, help="sigmoid threshold for multi-label")
    classify.add_argument("--pos-weight", choices=("ratio", "sqrt"),
                          help="multi-label: weigh each label's positives by negatives/positives (or its sqrt)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m biogpt finetune ner|classify ...`: train, save the best checkpoint + metrics.json, print a summary."""
    options = _parser().parse_args(argv)
    args = TrainingArguments(
        output_dir=options.output_dir, epochs=options.epochs, max_steps=options.max_steps,
        batch_size=options.batch_size, grad_accum=options.grad_accum, lr=options.lr,
        weight_decay=options.weight_decay, warmup_ratio=options.warmup_ratio, max_grad_norm=options.max_grad_norm,
        bf16=options.bf16, seed=options.seed, max_length=options.max_length, eval_every=options.eval_every,
        patience=options.patience, max_time=options.max_time, eval_batch_size=options.eval_batch_size,
        device=options.device, progress=not options.no_progress)
    common = dict(model=options.model, init_config=options.init_config, preset=options.preset,
                  tokenizer=options.tokenizer, args=args, data_format=options.format,
                  dev_fraction=options.dev_fraction, limit_train=options.limit_train, limit_dev=options.limit_dev)
    if options.task == "ner":
        metrics = finetune_ner(options.train, options.dev, aggregation_strategy=options.aggregation, **common)
    else:
        metrics = finetune_classifier(options.train, options.dev, multi_label=options.multi_label,
                                      threshold=options.threshold, pos_weight=options.pos_weight, **common)
    best = {k: v for k, v in metrics["best"].items() if k != "per_type"}
    print(json.dumps({"output_dir": str(options.output_dir), "best": best, "steps": metrics["steps"],
                      "train_seconds": metrics["train_seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
