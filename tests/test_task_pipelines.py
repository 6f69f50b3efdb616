"""pipeline("token-classification" / "ner" / "text-classification") against transformers' own pipelines on the
same checkpoints, and the refusal of heads that would start from random values (pipeline, manager)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import biogpt
from biogpt import CheckpointError
from biogpt.manager import ModelManager, ModelSpec

LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
CLASSES = ["activating invasion and metastasis", "inducing angiogenesis", "resisting cell death"]
TEXT = "Cisplatin induced nephrotoxicity and ototoxicity in patients treated for ovarian cancer."


@pytest.fixture(scope="module")
def checkpoints(real_vocab_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints with the real BioGPT vocabulary: an LM (no task head), an NER model and a classifier."""
    made = {}
    for name, cls, labels in (("lm", biogpt.BioGptForCausalLM, None), ("ner", biogpt.BioGptForTokenClassification,
                                                                       LABELS),
                              ("classify", biogpt.BioGptForSequenceClassification, CLASSES)):
        torch.manual_seed(1)
        extra = {"id2label": dict(enumerate(labels))} if labels else {}
        config = biogpt.BioGptConfig(vocab_size=42384, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=128, initializer_range=0.5,
                                     **extra)
        out = tmp_path_factory.mktemp(name)
        cls.from_config(config).save_pretrained(out)
        for file in ("vocab.json", "merges.txt"):
            (out / file).write_bytes((real_vocab_dir / file).read_bytes())
        made[name] = out
    return made


def test_token_classification_matches_transformers(checkpoints: dict[str, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.pipeline("token-classification", model=str(checkpoints["ner"]))
    ours = biogpt.pipeline("ner", model=str(checkpoints["ner"]))
    theirs = reference(TEXT)
    mine = ours(TEXT)
    assert theirs, "the random head should tag something"
    assert [(e["entity"], e["index"]) for e in mine] == [(e["entity"], e["index"]) for e in theirs]
    for a, b in zip(mine, theirs):
        assert a["score"] == pytest.approx(float(b["score"]), abs=1e-5)
        assert TEXT[a["start"]:a["end"]] == a["word"] and a["end"] > a["start"]  # exact offsets (theirs: None)
    grouped = biogpt.pipeline("token-classification", model=str(checkpoints["ner"]), aggregation_strategy="simple")
    groups = grouped(TEXT)
    assert groups and set(groups[0]) == {"entity_group", "score", "word", "start", "end"}
    assert all(TEXT[g["start"]:g["end"]] == g["word"] for g in groups)
    assert ours([TEXT, TEXT], aggregation_strategy="simple") == [groups, groups]


def test_text_classification_matches_transformers(checkpoints: dict[str, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.pipeline("text-classification", model=str(checkpoints["classify"]))
    ours = biogpt.pipeline("text-classification", model=str(checkpoints["classify"]))
    (theirs,), (mine,) = reference(TEXT), ours(TEXT)
    assert mine["label"] == theirs["label"] and mine["score"] == pytest.approx(theirs["score"], abs=1e-5)
    everything = ours(TEXT, top_k=None)
    assert [e["label"] for e in everything] == [e["label"] for e in reference(TEXT, top_k=None)]
    assert abs(sum(e["score"] for e in everything) - 1) < 1e-5
    raw = ours([TEXT, TEXT], top_k=2, function_to_apply="none")
    logits = {e["label"]: e["score"] for e in reference(TEXT, top_k=None, function_to_apply="none")}
    assert len(raw) == 2 and all(e["score"] == pytest.approx(logits[e["label"]], abs=1e-5) for e in raw[0])


@pytest.mark.parametrize("task, message", [
    ("ner", "has no trained token-classification (NER) head (classifier.weight, classifier.bias would start from "
            "random values, so its entities would be noise). Use a checkpoint fine-tuned for NER, one you fine-tune "
            "(`python -m biogpt finetune ner --model {source} ...`), or, for chemical-disease or drug relations, one "
            "of the paper's relation-extraction models (the app's Relations mode)."),
    ("text-classification", "has no trained sequence-classification head (score.weight would start from random "
                            "values, so its labels would be noise)."),
])
def test_a_random_head_is_refused_by_the_pipeline(checkpoints: dict[str, Path], task: str, message: str) -> None:
    source = str(checkpoints["lm"])
    with pytest.raises(CheckpointError) as excinfo:
        biogpt.pipeline(task, model=source)
    assert message.format(source=source) in str(excinfo.value)
    # The library itself keeps transformers' behaviour for training: a warning and a fresh head.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        biogpt.BioGptForTokenClassification.from_pretrained(source, num_labels=3)
    assert any("newly initialised" in str(w.message) for w in caught)


def test_the_manager_refuses_a_random_head_and_keeps_serving(checkpoints: dict[str, Path]) -> None:
    manager = ModelManager()
    lm = ModelSpec(str(checkpoints["lm"]))
    manager.get(lm)
    with pytest.raises(CheckpointError, match="has no trained token-classification \\(NER\\) head"):
        manager.get(ModelSpec(str(checkpoints["lm"]), task="token-classification"))
    assert manager.loaded(lm) and [row["task"] for row in manager.status()] == ["causal-lm"]
    config = json.loads((checkpoints["ner"] / "config.json").read_text())
    assert manager.get(ModelSpec(str(checkpoints["ner"]), task="token-classification")).model.config.num_labels \
        == len(config["id2label"])
