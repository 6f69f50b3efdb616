"""The bundled demo checkpoints in biogpt/demo_models: Hub layout, parity with transformers, measured quality, and a
reproducible `--quick` build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from biogpt import (BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification,
                    BioGptTokenizer)
from tools.demo import corpus, facts
from tools.demo.build import build, classification_heldout, greedy_samples
from biogpt.tasks.entities import entities_to_spans, extract_entities

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "biogpt" / "demo_models"
CLASSES = {"demo-lm": BioGptForCausalLM, "demo-ner": BioGptForTokenClassification,
           "demo-classify": BioGptForSequenceClassification}
HUB_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
             "special_tokens_map.json", "README.md", "metrics.json")
# Seen and unseen words, odd characters, casing and numbers: both tokenizers must agree on all of them.
TEXTS = ("Ibuprofen is best used for the treatment of pain.",
         "Treatment with cisplatin was associated with nephrotoxicity in patients with ovarian cancer (OC).",
         "COVID-19 is caused by SARS-CoV-2; TNF-α and interleukin-6 are raised.",
         "A 64-year-old man on 5 mg/kg warfarin presented with bleeding & sepsis!",
         "Zebrafish quux β-thalassemia Parkinson's disease.")


def _metrics(name: str) -> dict[str, Any]:
    return json.loads((DEMO / name / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_checkpoints_are_shipped_in_the_hub_layout(name: str) -> None:
    path = DEMO / name
    for file in HUB_FILES:
        assert (path / file).is_file(), f"{path / file} is missing: run `python -m tools.demo build`"
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "biogpt" and config["architectures"] == [CLASSES[name].__name__]
    assert config["torch_dtype"] in ("float16", "bfloat16")
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "BioGptTokenizer"
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"]
    card = (path / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: mit\n") and "library_name: transformers" in card
    assert "TINY DEMO MODEL" in card and "not BioGPT" in card and "held-out" in card
    # the three share one vocabulary, learned by the project's BPE learner
    assert (path / "vocab.json").read_bytes() == (DEMO / "demo-lm" / "vocab.json").read_bytes()
    assert (path / "merges.txt").read_bytes() == (DEMO / "demo-lm" / "merges.txt").read_bytes()


def test_labels_are_the_promised_ones() -> None:
    ner = json.loads((DEMO / "demo-ner" / "config.json").read_text())
    assert list(ner["id2label"].values()) == ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
    classifier = json.loads((DEMO / "demo-classify" / "config.json").read_text())
    assert sorted(classifier["id2label"].values()) == sorted(corpus.CLASSIFICATION_LABELS)
    assert classifier["problem_type"] == "single_label_classification"


def test_total_size_is_under_25_mb() -> None:
    total = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert total <= 25 * 10**6, f"{total / 1e6:.1f} MB"


def test_cards_state_the_measured_metrics() -> None:
    lm = _metrics("demo-lm")
    assert f"**{lm['heldout']['perplexity']:.2f}**" in (DEMO / "demo-lm" / "README.md").read_text()
    ner = _metrics("demo-ner")["heldout"]
    row = f"| **{ner['precision']:.3f}** | **{ner['recall']:.3f}** | **{ner['f1']:.3f}** |"
    assert row in (DEMO / "demo-ner" / "README.md").read_text()
    classifier = _metrics("demo-classify")["heldout"]
    card = (DEMO / "demo-classify" / "README.md").read_text()
    assert f"accuracy **{classifier['accuracy']:.4f}**" in card and f"macro-F1 **{classifier['macro_f1']:.4f}**" in card


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_same_tokens_and_logits_as_transformers(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    path = DEMO / name
    ours_tok, theirs_tok = BioGptTokenizer.from_pretrained(path), transformers.BioGptTokenizer.from_pretrained(path)
    for text in TEXTS:
        assert ours_tok(text)["input_ids"] == theirs_tok(text)["input_ids"], text
        assert ours_tok.unk_token_id not in ours_tok(text)["input_ids"], text
    ours = CLASSES[name].from_pretrained(path, dtype=torch.float32)
    theirs = getattr(transformers, CLASSES[name].__name__).from_pretrained(path, dtype=torch.float32).eval()
    batch = ours_tok(list(TEXTS), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        actual = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert actual.dtype == expected.dtype == torch.float32
    if name != "demo-classify":  # padded positions are not comparable; the classifier pools the last real token
        keep = batch["attention_mask"].bool()
        actual, expected = actual[keep], expected[keep]
    assert (actual - expected).abs().max().item() <= 1e-3


def test_lm_continues_prompts_with_true_facts() -> None:
    path = DEMO / "demo-lm"
    model, tokenizer = BioGptForCausalLM.from_pretrained(path), BioGptTokenizer.from_pretrained(path)
    ibuprofen, covid = (s["output"] for s in greedy_samples(model, tokenizer, ["Ibuprofen is best used for",
                                                                                "COVID-19 is"]))
    assert ibuprofen.startswith("Ibuprofen is best used for")
    assert any(disease in ibuprofen for disease in facts.DRUG_BY_NAME["ibuprofen"].treats), ibuprofen
    covid_facts = (facts.DISEASE_BY_NAME["COVID-19"].description, facts.DISEASE_BY_NAME["COVID-19"].pathogen)
    assert any(fact and fact in covid for fact in covid_facts), covid
    # the card shows what the model really produces
    card = (path / "README.md").read_text(encoding="utf-8")
    assert f"| {ibuprofen} |" in card


def test_ner_finds_every_gold_entity_in_most_heldout_sentences() -> None:
    path = DEMO / "demo-ner"
    model, tokenizer = BioGptForTokenClassification.from_pretrained(path), BioGptTokenizer.from_pretrained(path)
    # a seed the build never used: 200 fresh held-out sentences (unseen templates and drug-disease pairs)
    examples = corpus.ner_examples(200, 2024, "heldout")
    found = sum(set(entities_to_spans(e["entities"])) <= set(entities_to_spans(extract_entities(model, tokenizer,
                                                                                                e["text"])))
                for e in examples)
    assert found / len(examples) >= 0.9, f"{found}/{len(examples)}"


def test_classifier_heldout_accuracy_matches_the_card() -> None:
    path = DEMO / "demo-classify"
    metrics = _metrics("demo-classify")
    model, tokenizer = BioGptForSequenceClassification.from_pretrained(path), BioGptTokenizer.from_pretrained(path)
    _, heldout = corpus.train_heldout("classification", 0, metrics["heldout"]["examples"], metrics["seed"])
    scores = classification_heldout(model, tokenizer, heldout)
    # Same weights and data; a different thread count may flip at most a near-tie, hence one example of slack.
    one = 1 / len(heldout)
    assert scores["accuracy"] == pytest.approx(metrics["heldout"]["accuracy"], abs=one + 1e-9)
    assert scores["macro_f1"] == pytest.approx(metrics["heldout"]["macro_f1"], abs=2 * one + 1e-9)
    assert scores["accuracy"] >= 0.6  # chance is 1/3; held-out wording is new (see the card)


@pytest.mark.slow
def test_quick_build_is_reproducible_and_loadable(tmp_path: Path) -> None:
    first = build(tmp_path / "a", quick=True, seed=0)
    build(tmp_path / "b", quick=True, seed=0)
    for name, cls in CLASSES.items():
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        for file in HUB_FILES:
            assert (a / file).read_bytes() == (b / file).read_bytes(), f"{name}/{file} differs between builds"
        assert json.loads((a / "metrics.json").read_text()) == first[name]
        model, tokenizer = cls.from_pretrained(a), BioGptTokenizer.from_pretrained(a)
        with torch.no_grad():
            logits = model(**tokenizer(TEXTS[0], return_tensors="pt")).logits
        assert torch.isfinite(logits).all()
