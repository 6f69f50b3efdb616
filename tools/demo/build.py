"""Build the tiny demo checkpoints bundled in `biogpt/demo_models/` (`python -m tools.demo build`).

Three BioGPT-architecture models in the exact Hub layout, all trained on text generated from the hand-written
fact table (`tools.demo.corpus`), so the app does something meaningful on a machine with no network:

- `demo-lm`: a causal LM (vocabulary learned here by `biogpt.bpe.learn_bpe`, then trained from scratch);
- `demo-ner`: Chemical / Disease BIO tagger, initialised from the LM's embeddings and first blocks;
- `demo-classify`: treatment / adverse effect / genetics sentence classifier, initialised the same way.

Every number in `metrics.json` and the model cards is measured on the saved (fp16) weights reloaded in float32,
as the app loads them, on generated held-out data (templates, random streams and, for the tasks, relation pairs
that training never saw). Nothing time-dependent goes into the files, so a rebuild with the same seed reproduces
them byte for byte.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import string
import tempfile
import time
from contextlib import contextmanager
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from biogpt.bpe import learn_bpe
from biogpt.configuration import BioGptConfig
from biogpt.generation import GenerationConfig
from biogpt.modeling import (BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification,
                        BioGptPreTrainedModel)
from biogpt.tasks.classify import classify
from biogpt.tasks.data import ClassificationExample, bio_label_list
from biogpt.tasks.entities import entities_to_spans, extract_entities
from biogpt.tasks.finetune import TrainingArguments, evaluate_classifier, finetune_classifier, finetune_ner
from biogpt.tasks.metrics import entity_scores
from biogpt.tokenization import BioGptTokenizer
from . import corpus, facts

LM_DIR, NER_DIR, CLASSIFY_DIR = "demo-lm", "demo-ner", "demo-classify"
SAVE_DTYPE = torch.float16  # halves the files; metrics are measured after the round trip through it
LM_PROMPTS: tuple[str, ...] = ("Ibuprofen is best used for", "COVID-19 is", "Metformin is used to treat",
                               "Cisplatin can cause", "BRCA1 is associated with", "Aspirin is")
NER_SAMPLE = "Treatment with cisplatin was associated with nephrotoxicity in patients with ovarian cancer."
CLASSIFY_SAMPLES: tuple[str, ...] = ("Metformin is widely prescribed for type 2 diabetes.",
                                     "Patients receiving amiodarone should be monitored for hypothyroidism.",
                                     "Mutations in CFTR cause cystic fibrosis.")


@dataclass(frozen=True)
class Recipe:
    """Sizes and optimisation settings of one build (`FULL` ships; `QUICK` is for CI)."""

    name: str
    lm_passages: int  # training passages for the vocabulary and the LM
    num_merges: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    lm_steps: int
    lm_batch_size: int
    lm_lr: float
    task_layers: int  # the NER and classifier models keep the LM's embeddings and first `task_layers` blocks
    ner_train: int
    ner_epochs: int
    classify_train: int
    classify_epochs: int
    task_lr: float
    task_batch_size: int
    dev: int  # examples (from the training distribution) that pick the best fine-tuning checkpoint
    heldout: int  # held-out examples behind every reported metric


FULL = Recipe(name="full", lm_passages=20000, num_merges=4000, hidden_size=256, num_layers=4, num_heads=4,
              intermediate_size=1024, max_positions=256, lm_steps=1500, lm_batch_size=32, lm_lr=1e-3,
              task_layers=2, ner_train=3000, ner_epochs=2, classify_train=1500, classify_epochs=2, task_lr=3e-4,
              task_batch_size=16, dev=200, heldout=600)
QUICK = Recipe(name="quick", lm_passages=400, num_merges=200, hidden_size=32, num_layers=2, num_heads=2,
               intermediate_size=64, max_positions=128, lm_steps=15, lm_batch_size=16, lm_lr=3e-3,
               task_layers=1, ner_train=80, ner_epochs=1, classify_train=60, classify_epochs=1, task_lr=1e-3,
               task_batch_size=16, dev=20, heldout=30)


@contextmanager
def _deterministic() -> Iterator[None]:
    """One thread and deterministic kernels for the build; both restored after, so importers are unaffected.

    One thread makes float reductions run in a fixed order (the same bits on every rebuild), and with these small
    matrices it is also the fastest choice: on a busy 2-core machine two threads were 5x slower per step.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------------
def learn_tokenizer(texts: Sequence[str], recipe: Recipe) -> BioGptTokenizer:
    """A BioGPT tokenizer whose BPE vocabulary is learned from `texts` by the project's learner."""
    # Every printable ASCII character enters the vocabulary (as a one-off word each), so user text such as
    # "Sepsis" or "50 mg/kg" never becomes <unk> even when a letter never starts a word in the corpus.
    alphabet = " ".join(string.ascii_letters + string.digits + string.punctuation)
    with tempfile.TemporaryDirectory() as tmp:
        learn_bpe([*texts, alphabet], recipe.num_merges, tmp)
        return BioGptTokenizer.from_pretrained(tmp, model_max_length=recipe.max_positions)  # reads both files now


# ----------------------------------------------------------------------------------------------------------------
# Causal LM
# ----------------------------------------------------------------------------------------------------------------
def lm_sequences(tokenizer: BioGptTokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """`</s> text </s>`: BioGPT's prefix, plus an end marker so generation learns to stop after a sentence."""
    eos = tokenizer.eos_token_id
    return [(tokenizer(text)["input_ids"] + [eos])[:max_length] for text in texts]


def _length_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): shuffle, sort within pools of 50 batches, shuffle."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * 50
    batches = []
    for first in range(0, len(order), pool):
        chunk = sorted(order[first:first + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, (ids != pad_id).long()


def train_lm(model: BioGptForCausalLM, sequences: list[list[int]], recipe: Recipe, seed: int,
             log: Callable[[str], None] = lambda message: None) -> list[float]:
    """AdamW with linear warmup and cosine decay for `recipe.lm_steps` steps; returns the mean loss of every
    100 steps (also passed to `log`)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.lm_lr, betas=(0.9, 0.98))
    warmup = max(1, recipe.lm_steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, recipe.lm_steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))  # cosine down to 10% of the peak

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    pad_id = model.config.pad_token_id
    lengths = [len(s) for s in sequences]
    losses: list[float] = []
    window: list[float] = []
    model.train()
    step = 0
    while step < recipe.lm_steps:
        for batch in _length_batches(lengths, recipe.lm_batch_size, generator):
            ids, mask = _pad([sequences[i] for i in batch], pad_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window.append(loss.item())
            step += 1
            if step % 100 == 0 or step == recipe.lm_steps:
                losses.append(round(sum(window) / len(window), 4))
                window = []
                log(f"LM step {step}/{recipe.lm_steps}: loss {losses[-1]}")
            if step >= recipe.lm_steps:
                break
    model.eval()
    return losses


@torch.inference_mode()
def perplexity(model: BioGptForCausalLM, sequences: Sequence[Sequence[int]], batch_size: int = 64) -> float:
    """exp(mean negative log-likelihood) of every token after the leading `</s>` (the final `</s>` included)."""
    pad_id = model.config.pad_token_id
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    nll, count = 0.0, 0
    for first in range(0, len(order), batch_size):
        ids, mask = _pad([sequences[i] for i in order[first:first + batch_size]], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                               reduction="sum").item()
        count += int((targets != -100).sum())
    return math.exp(nll / count)


@torch.inference_mode()
def greedy_samples(model: BioGptForCausalLM, tokenizer: BioGptTokenizer, prompts: Sequence[str],
                   max_new_tokens: int = 32) -> list[dict[str, str]]:
    samples = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        samples.append({"prompt": prompt, "output": tokenizer.decode(out[0], skip_special_tokens=True)})
    return samples


# ----------------------------------------------------------------------------------------------------------------
# Task models
# ----------------------------------------------------------------------------------------------------------------
def task_model(cls: type[BioGptPreTrainedModel], lm: BioGptForCausalLM, layers: int, id2label: dict[int, str],
               seed: int) -> BioGptPreTrainedModel:
    """A `cls` with the LM's embeddings and first `layers` blocks (a head initialised with `seed`).

    Starting from the LM's weights is what makes a 2-block tagger learn from a few thousand sentences: the
    embeddings already separate drug, disease and function words.
    """
    data = lm.config.to_dict()
    data.update(num_hidden_layers=layers, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                architectures=None, torch_dtype=None)
    torch.manual_seed(seed)
    model = cls.from_config(BioGptConfig.from_dict(data))
    kept = {name: tensor for name, tensor in lm.biogpt.state_dict().items()
            if not name.startswith("layers.") or int(name.split(".")[1]) < layers}
    model.biogpt.load_state_dict(kept, strict=True)
    return model


_WORD = re.compile(r"[A-Za-z]+")
UNKNOWN_WORD_RATE = 0.15


def with_unknown_words(examples: Sequence[dict[str, Any]], seed: int, rate: float = UNKNOWN_WORD_RATE
                       ) -> list[dict[str, Any]]:
    """Copies of `examples` in which about `rate` of the words outside entities are random letter strings.

    Why: the vocabulary is learned from the training sentences, so a word the training templates never use
    splits into rare sub-word pieces, and such pieces occur in training almost only inside rare drug and disease
    names. Without this, the tagger calls any new word an entity and the classifier reads new wording as noise.
    Entity spans are moved with the text; other keys (`label`) are kept.
    """
    rng = random.Random(f"biogpt-demo/unknown-words/{seed}")
    out = []
    for example in examples:
        text, entities = example["text"], example.get("entities", [])
        parts, cursor, shifts = [], 0, [(0, 0)]  # shifts: (old offset, cumulative length change from there on)
        for match in _WORD.finditer(text):
            start, end = match.span()
            if any(e["start"] < end and start < e["end"] for e in entities) or rng.random() >= rate:
                continue
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 10)))
            word = word.capitalize() if match.group()[0].isupper() else word
            parts += [text[cursor:start], word]
            cursor = end
            shifts.append((end, shifts[-1][1] + len(word) - (end - start)))
        parts.append(text[cursor:])

        def moved(offset: int) -> int:
            return offset + next(delta for position, delta in reversed(shifts) if position <= offset)

        changed = {**example, "text": "".join(parts)}
        if "entities" in example:
            changed["entities"] = [{**e, "start": moved(e["start"]), "end": moved(e["start"]) + e["end"] - e["start"]}
                                   for e in entities]
        out.append(changed)
    return out


def _args(recipe: Recipe, epochs: int, seed: int) -> TrainingArguments:
    return TrainingArguments(epochs=epochs, batch_size=recipe.task_batch_size, lr=recipe.task_lr, seed=seed,
                             max_length=recipe.max_positions, device="cpu", progress=False)


def ner_heldout(model: BioGptPreTrainedModel, tokenizer: BioGptTokenizer, examples: Sequence[dict[str, Any]]
                ) -> dict[str, Any]:
    """Entity-level P/R/F1 (exact span and type) of `extract_entities`, and the shares of sentences in which it
    finds every gold entity (`sentences_all_found`) and finds exactly the gold entities (`sentences_exact`)."""
    predicted = [entities_to_spans(extract_entities(model, tokenizer, e["text"])) for e in examples]
    gold = [entities_to_spans(e["entities"]) for e in examples]
    scores = entity_scores(gold, predicted)
    return {"examples": len(examples), **{k: round(v, 4) for k, v in scores["micro"].items() if isinstance(v, float)},
            "per_type": {kind: {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                         for kind, row in scores["per_type"].items()},
            "sentences_all_found": round(sum(set(g) <= set(p) for g, p in zip(gold, predicted)) / len(examples), 4),
            "sentences_exact": round(sum(set(g) == set(p) for g, p in zip(gold, predicted)) / len(examples), 4)}


def classification_heldout(model: BioGptPreTrainedModel, tokenizer: BioGptTokenizer,
                           examples: Sequence[dict[str, str]]) -> dict[str, float]:
    """Held-out accuracy, macro-F1 and micro-F1 of `classify` (argmax) on `{"text", "label"}` examples."""
    scores = evaluate_classifier(model, tokenizer, [ClassificationExample(e["text"], (e["label"],)) for e in examples])
    return {k: round(v, 4) for k, v in scores.items()}


# ----------------------------------------------------------------------------------------------------------------
# Saving and model cards
# ----------------------------------------------------------------------------------------------------------------
def save_checkpoint(model: BioGptPreTrainedModel, tokenizer: BioGptTokenizer, path: Path) -> BioGptPreTrainedModel:
    """Write `model` in SAVE_DTYPE with the tokenizer; return it reloaded in float32 (what the metrics measure)."""
    if path.exists():
        shutil.rmtree(path)  # no stale files from an earlier build
    model.to(SAVE_DTYPE).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if isinstance(model, BioGptForCausalLM):
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    return type(model).from_pretrained(path)


def _size_summary(model: BioGptPreTrainedModel, path: Path) -> dict[str, Any]:
    config = model.config
    return {"parameters": model.num_parameters(), "weights_bytes": (path / "model.safetensors").stat().st_size,
            "dtype": str(SAVE_DTYPE).replace("torch.", ""), "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
            "max_position_embeddings": config.max_position_embeddings}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


_WARNING = ("**This is a TINY DEMO MODEL, not BioGPT.** It was trained in a few minutes on a CPU, on "
            "template sentences generated from a small hand-written table of textbook pharmacology facts "
            f"({len(facts.DRUGS)} drugs, {len(facts.DISEASES)} diseases and adverse effects, {len(facts.GENES)} "
            "genes; `tools/demo/facts.py`). It knows only what that table says, in the phrasings of those "
            "templates. It exists so that the BioGPT workbench runs offline and in CI. Do not use it for anything "
            "medical, and do not read its scores as BioGPT's.")


def _front_matter(pipeline_tag: str, tags: Sequence[str]) -> str:
    tag_lines = "".join(f"- {tag}\n" for tag in ("biogpt", "tiny", "demo", "synthetic-data", *tags))
    return (f"---\nlicense: mit\nlanguage:\n- en\nlibrary_name: transformers\npipeline_tag: {pipeline_tag}\n"
            f"tags:\n{tag_lines}---\n\n")


def _size_section(size: dict[str, Any]) -> str:
    return ("## Model size\n\n"
            f"{size['parameters']:,} parameters ({size['weights_bytes'] / 1e6:.1f} MB of {size['dtype']} weights): "
            f"BioGPT architecture with {size['num_hidden_layers']} layers, hidden size {size['hidden_size']}, "
            f"{size['num_attention_heads']} attention heads, feed-forward size {size['intermediate_size']}, "
            f"{size['max_position_embeddings']} positions and a {size['vocab_size']:,}-token BPE vocabulary "
            "(fastBPE format, learned from the training sentences by `biogpt.bpe.learn_bpe`; every printable ASCII "
            "character is in it, so ASCII text never maps to `<unk>`).\n\n")


def _rebuild_section(recipe: Recipe, seed: int) -> str:
    flag = " --quick" if recipe.name == "quick" else ""
    return ("## Reproducing\n\n"
            f"Built by `python -m tools.demo build{flag}` (recipe `{recipe.name}`, seed {seed}); the build is "
            "deterministic, so it rewrites these files with the same numbers. `metrics.json` holds every number on "
            "this card and the training settings.\n")


def lm_card(metrics: dict[str, Any], recipe: Recipe, seed: int) -> str:
    size, held, train = metrics["size"], metrics["heldout"], metrics["train"]
    samples = "".join(f"| {s['prompt']} | {s['output']} |\n" for s in metrics["samples"])
    return (_front_matter("text-generation", ("text-generation", "causal-lm"))
            + "# demo-lm: a tiny BioGPT-architecture causal LM (demo only)\n\n" + _WARNING + "\n\n"
            "## Training data\n\n"
            f"{train['passages']:,} generated passages ({train['tokens']:,} tokens): single sentences and short "
            "abstract-like paragraphs stating drug indications, adverse effects, drug classes, gene-disease "
            "associations and pathogens, from `tools.demo.corpus.lm_sentences(split=\"train\")`. Each text is "
            "`</s> text </s>`, so the model learned to stop after a statement. "
            f"{train['steps']:,} AdamW steps of batch {train['batch_size']} from random initialisation.\n\n"
            + _size_section(size)
            + "## Quality on generated held-out data\n\n"
            f"Perplexity on {held['passages']} held-out passages written with templates the model never saw in "
            f"training: **{held['perplexity']:.2f}** (training passages: {metrics['train_perplexity']:.2f}). "
            "The facts are the same table, so this measures phrasing generalisation, not knowledge. It is high "
            "because the held-out templates use words that no training sentence contains: the vocabulary, learned "
            "from the training sentences, splits them into rare sub-word pieces the model has hardly seen.\n\n"
            "## Greedy samples\n\n| prompt | greedy continuation |\n|---|---|\n" + samples + "\n"
            "Outside the table's drugs, diseases and sentence patterns the output is fluent-looking template text "
            "with no grounding.\n\n"
            "## Usage\n\n```python\nfrom biogpt import BioGptForCausalLM, BioGptTokenizer  # or from transformers\n\n"
            "tokenizer = BioGptTokenizer.from_pretrained(\"biogpt/demo_models/demo-lm\")\n"
            "model = BioGptForCausalLM.from_pretrained(\"biogpt/demo_models/demo-lm\")\n"
            "ids = tokenizer(\"Ibuprofen is best used for\", return_tensors=\"pt\").input_ids\n"
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=30)[0], skip_special_tokens=True))\n```\n\n"
            + _rebuild_section(recipe, seed))


def _per_type_rows(per_type: dict[str, dict[str, Any]]) -> str:
    return "".join(f"| {kind} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} |\n"
                   for kind, row in per_type.items())


_AUGMENTATION = (f"In each training sentence about {UNKNOWN_WORD_RATE:.0%} of the words outside entities were replaced by "
                 "random letter strings (`with_unknown_words`), so that words the training templates never use are "
                 "read as ordinary words, not as parts of rare entity names.")


def ner_card(metrics: dict[str, Any], recipe: Recipe, seed: int) -> str:
    held, train = metrics["heldout"], metrics["train"]
    return (_front_matter("token-classification", ("token-classification", "ner"))
            + "# demo-ner: a tiny BioGPT-architecture Chemical/Disease tagger (demo only)\n\n" + _WARNING + "\n\n"
            "Labels (BIO): " + ", ".join(f"`{label}`" for label in metrics["labels"]) + ". Chemicals are the drugs "
            "of the table (names, synonyms, abbreviations); Diseases are its diseases and adverse effects. Genes "
            "and pathogens appear in the text but are not labelled, as in BC5CDR.\n\n"
            "## Training data\n\n"
            f"{train['examples']:,} generated sentences with exact character spans "
            "(`tools.demo.corpus.ner_examples(split=\"train\")`), fine-tuned for "
            f"{train['epochs']} epoch{'s' if train['epochs'] != 1 else ''} ({train['steps']} steps, batch {train['batch_size']}) with "
            "`biogpt.tasks.finetune.finetune_ner`, starting from demo-lm's embeddings and first "
            f"{metrics['size']['num_hidden_layers']} blocks. " + _AUGMENTATION + "\n\n"
            + _size_section(metrics["size"])
            + "## Quality on generated held-out data\n\n"
            f"{held['examples']} held-out sentences (templates and drug-disease pairs never seen in training), decoded "
            "by `biogpt.tasks.entities.extract_entities` (aggregation `simple`) and scored entity by entity (exact "
            "span and type):\n\n| | precision | recall | F1 |\n|---|---|---|---|\n"
            f"| **all (micro)** | **{held['precision']:.3f}** | **{held['recall']:.3f}** | **{held['f1']:.3f}** |\n"
            + _per_type_rows(held["per_type"])
            + f"\nSentences in which every gold entity is found exactly: {held['sentences_all_found']:.1%}; with "
            f"nothing extra as well: {held['sentences_exact']:.1%}.\n\n"
            f"Example: `{NER_SAMPLE}` ->\n\n"
            + "".join(f"- `{e['text']}` ({e['label']})\n" for e in metrics["sample"])
            + "\nReal abstracts use words and constructions the generator never produces; expect much lower "
            "scores on them.\n\n"
            "## Usage\n\n```python\nfrom biogpt import BioGptForTokenClassification, BioGptTokenizer\n"
            "from biogpt.tasks.entities import extract_entities\n\n"
            "path = \"biogpt/demo_models/demo-ner\"\n"
            "model = BioGptForTokenClassification.from_pretrained(path)\n"
            f"print(extract_entities(model, BioGptTokenizer.from_pretrained(path), {NER_SAMPLE!r}))\n```\n\n"
            + _rebuild_section(recipe, seed))


def classify_card(metrics: dict[str, Any], recipe: Recipe, seed: int) -> str:
    held, train = metrics["heldout"], metrics["train"]
    samples = "".join(f"| {s['text']} | {s['label']} |\n" for s in metrics["samples"])
    return (_front_matter("text-classification", ("text-classification",))
            + "# demo-classify: a tiny BioGPT-architecture sentence classifier (demo only)\n\n" + _WARNING + "\n\n"
            "Labels: " + ", ".join(f"`{label}`" for label in metrics["labels"]) + ": what a sentence is about (a "
            "drug treating a disease, a drug's adverse effect, or a gene-disease association).\n\n"
            "## Training data\n\n"
            f"{train['examples']:,} generated sentences, balanced over the labels "
            "(`tools.demo.corpus.classification_examples(split=\"train\")`), fine-tuned for "
            f"{train['epochs']} epoch{'s' if train['epochs'] != 1 else ''} ({train['steps']} steps, batch {train['batch_size']}) with "
            "`biogpt.tasks.finetune.finetune_classifier`, starting from demo-lm's embeddings and first "
            f"{metrics['size']['num_hidden_layers']} blocks. " + _AUGMENTATION + "\n\n"
            + _size_section(metrics["size"])
            + "## Quality on generated held-out data\n\n"
            f"{held['examples']} held-out sentences (templates and relation pairs never seen in training): "
            f"accuracy **{held['accuracy']:.4f}**, macro-F1 **{held['macro_f1']:.4f}** "
            f"(always answering the most frequent training label: accuracy {metrics['baseline_accuracy']:.4f}).\n\n"
            "Most held-out errors are sentences built on wording that training never used (for example "
            "\"X was reported in patients treated with Y\" or \"Elevated levels of G have been observed in patients "
            "with D\"): the model learned the training templates' cue words rather than the relation.\n\n"
            "| sentence | predicted |\n|---|---|\n" + samples + "\n"
            "Sentences about anything else (mechanisms, trials, questions) still get one of the three labels.\n\n"
            "## Usage\n\n```python\nfrom biogpt import BioGptForSequenceClassification, BioGptTokenizer\n"
            "from biogpt.tasks.classify import classify\n\n"
            "path = \"biogpt/demo_models/demo-classify\"\n"
            "model = BioGptForSequenceClassification.from_pretrained(path)\n"
            f"print(classify(model, BioGptTokenizer.from_pretrained(path), {CLASSIFY_SAMPLES[0]!r}))\n```\n\n"
            + _rebuild_section(recipe, seed))


# ----------------------------------------------------------------------------------------------------------------
# The build
# ----------------------------------------------------------------------------------------------------------------
def _log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)


def build(out_dir: str | Path = "biogpt/demo_models", quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Build demo-lm, demo-ner and demo-classify under `out_dir`; return their metrics (plus wall and CPU time)."""
    recipe = QUICK if quick else FULL
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    with _deterministic():
        lm_metrics, lm, tokenizer = _build_lm(out / LM_DIR, recipe, seed, started)
        ner_metrics = _build_ner(out / NER_DIR, lm, tokenizer, recipe, seed, started)
        classify_metrics = _build_classifier(out / CLASSIFY_DIR, lm, tokenizer, recipe, seed, started)
    # CPU seconds too: on a shared machine the wall time mostly measures the other processes.
    seconds, cpu_seconds = round(time.perf_counter() - started, 1), round(time.process_time() - cpu_started, 1)
    _log(f"done: {out} ({_directory_bytes(out) / 1e6:.1f} MB), {cpu_seconds} CPU seconds", started)
    return {LM_DIR: lm_metrics, NER_DIR: ner_metrics, CLASSIFY_DIR: classify_metrics, "build_seconds": seconds,
            "cpu_seconds": cpu_seconds}


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _build_lm(path: Path, recipe: Recipe, seed: int, started: float
              ) -> tuple[dict[str, Any], BioGptForCausalLM, BioGptTokenizer]:
    train_texts, heldout_texts = corpus.train_heldout("lm", recipe.lm_passages, recipe.heldout, seed)
    # The task sets share the vocabulary, so their (training) sentences count too.
    task_texts = [e["text"] for e in corpus.ner_examples(recipe.ner_train, seed, "train")]
    task_texts += [e["text"] for e in corpus.classification_examples(recipe.classify_train, seed, "train")]
    tokenizer = learn_tokenizer(train_texts + task_texts, recipe)
    _log(f"vocabulary: {len(tokenizer)} tokens", started)
    train = lm_sequences(tokenizer, train_texts, recipe.max_positions)
    heldout = lm_sequences(tokenizer, heldout_texts, recipe.max_positions)
    config = BioGptConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
                          num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
                          intermediate_size=recipe.intermediate_size, max_position_embeddings=recipe.max_positions)
    torch.manual_seed(seed)
    model = BioGptForCausalLM.from_config(config)
    losses = train_lm(model, train, recipe, seed, log=lambda message: _log(message, started))
    _log(f"LM trained: {recipe.lm_steps} steps, loss {losses[-1]}", started)
    model = save_checkpoint(model, tokenizer, path)
    # Training perplexity on as many passages as the held-out set, for comparison.
    metrics = {
        "model": LM_DIR, "recipe": recipe.name, "seed": seed, "size": _size_summary(model, path),
        "train": {"passages": len(train), "tokens": sum(len(s) for s in train), "steps": recipe.lm_steps,
                  "batch_size": recipe.lm_batch_size, "lr": recipe.lm_lr, "loss_every_100_steps": losses},
        "heldout": {"passages": len(heldout), "tokens": sum(len(s) for s in heldout),
                    "perplexity": round(perplexity(model, heldout), 3)},
        "train_perplexity": round(perplexity(model, train[:recipe.heldout]), 3),
        "samples": greedy_samples(model, tokenizer, LM_PROMPTS),
    }
    _write_json(path / "metrics.json", metrics)
    (path / "README.md").write_text(lm_card(metrics, recipe, seed), encoding="utf-8")
    _log(f"{LM_DIR}: held-out perplexity {metrics['heldout']['perplexity']}", started)
    return metrics, model, tokenizer


def _build_ner(path: Path, lm: BioGptForCausalLM, tokenizer: BioGptTokenizer, recipe: Recipe, seed: int,
               started: float) -> dict[str, Any]:
    train, heldout = corpus.train_heldout("ner", recipe.ner_train, recipe.heldout, seed)
    dev = corpus.ner_examples(recipe.dev, seed + 1, "train")  # selection data, disjoint from the held-out split
    labels = bio_label_list(corpus.NER_LABELS)
    model = task_model(BioGptForTokenClassification, lm, recipe.task_layers, dict(enumerate(labels)), seed)
    args = _args(recipe, recipe.ner_epochs, seed)
    result, model = finetune_ner(with_unknown_words(train, seed), dev, model=model, tokenizer=tokenizer, args=args,
                                 entity_types=corpus.NER_LABELS, return_model=True)
    model = save_checkpoint(model, tokenizer, path)
    metrics = {
        "model": NER_DIR, "recipe": recipe.name, "seed": seed, "labels": labels, "size": _size_summary(model, path),
        "train": {"examples": len(train), "dev_examples": len(dev), "epochs": recipe.ner_epochs,
                  "steps": result["steps"], "batch_size": recipe.task_batch_size, "lr": recipe.task_lr,
                  "best_dev_f1": round(result["best"]["f1"], 4)},
        "heldout": ner_heldout(model, tokenizer, heldout),
        "sample": [{k: e[k] for k in ("text", "label", "start", "end")}
                   for e in extract_entities(model, tokenizer, NER_SAMPLE)],
    }
    _write_json(path / "metrics.json", metrics)
    (path / "README.md").write_text(ner_card(metrics, recipe, seed), encoding="utf-8")
    _log(f"{NER_DIR}: held-out entity F1 {metrics['heldout']['f1']}, sentences exact "
         f"{metrics['heldout']['sentences_exact']}", started)
    return metrics


def _build_classifier(path: Path, lm: BioGptForCausalLM, tokenizer: BioGptTokenizer, recipe: Recipe, seed: int,
                      started: float) -> dict[str, Any]:
    train, heldout = corpus.train_heldout("classification", recipe.classify_train, recipe.heldout, seed)
    dev = corpus.classification_examples(recipe.dev, seed + 1, "train")
    labels = sorted(corpus.CLASSIFICATION_LABELS)  # the order finetune_classifier gives them
    model = task_model(BioGptForSequenceClassification, lm, recipe.task_layers, dict(enumerate(labels)), seed)
    args = _args(recipe, recipe.classify_epochs, seed)
    result, model = finetune_classifier(with_unknown_words(train, seed), dev, model=model, tokenizer=tokenizer,
                                        args=args, multi_label=False, return_model=True)
    model = save_checkpoint(model, tokenizer, path)
    majority = Counter(e["label"] for e in train).most_common(1)[0][0]
    metrics = {
        "model": CLASSIFY_DIR, "recipe": recipe.name, "seed": seed, "labels": labels,
        "size": _size_summary(model, path),
        "train": {"examples": len(train), "dev_examples": len(dev), "epochs": recipe.classify_epochs,
                  "steps": result["steps"], "batch_size": recipe.task_batch_size, "lr": recipe.task_lr,
                  "best_dev_accuracy": round(result["best"]["accuracy"], 4)},
        "heldout": {"examples": len(heldout), **classification_heldout(model, tokenizer, heldout)},
        "baseline_accuracy": round(sum(e["label"] == majority for e in heldout) / len(heldout), 4),
        "samples": [{"text": text, "label": next(iter(scores))}
                    for text, scores in zip(CLASSIFY_SAMPLES, classify(model, tokenizer, list(CLASSIFY_SAMPLES)))],
    }
    _write_json(path / "metrics.json", metrics)
    (path / "README.md").write_text(classify_card(metrics, recipe, seed), encoding="utf-8")
    _log(f"{CLASSIFY_DIR}: held-out accuracy {metrics['heldout']['accuracy']}, macro-F1 "
         f"{metrics['heldout']['macro_f1']}", started)
    return metrics

