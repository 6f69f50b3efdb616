"""biogpt.tasks.classify: head probabilities (hand-computed), multi-label thresholds, and zero-shot scoring of
label continuations under a tiny causal LM (checked token by token)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from biogpt.configuration import BioGptConfig
from biogpt.errors import ConfigError
from biogpt.tasks.classify import (HOC_LABELS, HOC_TEMPLATE, PUBMEDQA_LABELS, PUBMEDQA_TEMPLATE, classify,
                                   continuation_ids, label_log_likelihoods, zero_shot)
from biogpt.tasks.metrics import threshold_labels

TINY = dict(vocab_size=42384, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)


@pytest.fixture(scope="module")
def tokenizer(real_tokenizer):
    return real_tokenizer


@pytest.fixture(scope="module")
def causal_lm():
    from biogpt.modeling import BioGptForCausalLM

    torch.manual_seed(0)
    return BioGptForCausalLM.from_config(BioGptConfig(**TINY)).eval()


class FixedHead:
    """A stand-in classifier whose logits are the same fixed row for every text."""

    def __init__(self, row, problem_type=None):
        self.config = BioGptConfig(**TINY, id2label={i: name for i, name in enumerate("abc"[:len(row)])},
                                   problem_type=problem_type)
        self.device = torch.device("cpu")
        self.row = torch.tensor(row)

    def __call__(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.row.expand(input_ids.shape[0], -1))


class CharTokenizer:
    """Whitespace tokenizer over a tiny vocabulary, enough for the head tests."""

    def __call__(self, text):
        return {"input_ids": [2] + [4 + len(word) for word in text.split()]}


# ----------------------------------------------------------------------------------------------------------------
# classify
# ----------------------------------------------------------------------------------------------------------------
def test_single_label_softmax_hand_computed():
    # logits [2, 0, -1]: softmax = e^2, e^0, e^-1 over their sum 7.389056 + 1 + 0.367879 = 8.756935
    # -> a 0.843795, b 0.114195, c 0.042010
    result = classify(FixedHead([0.0, 2.0, -1.0]), CharTokenizer(), "some text")
    assert list(result) == ["b", "a", "c"]
    assert result == pytest.approx({"b": 0.843795, "a": 0.114195, "c": 0.042010}, abs=1e-6)
    assert classify(FixedHead([0.0, 2.0, -1.0]), CharTokenizer(), "x", top_k=1) == pytest.approx({"b": 0.843795},
                                                                                               abs=1e-6)


def test_multi_label_sigmoid_and_thresholds():
    # sigmoid(2) = 0.880797, sigmoid(0) = 0.5, sigmoid(-1) = 0.268941: independent, not summing to 1.
    head = FixedHead([2.0, 0.0, -1.0], problem_type="multi_label_classification")
    results = classify(head, CharTokenizer(), ["one", "two words"])
    assert len(results) == 2
    assert results[0] == pytest.approx({"a": 0.880797, "b": 0.5, "c": 0.268941}, abs=1e-6)
    assert threshold_labels(results[0], 0.5) == {"a", "b"}  # the threshold is inclusive
    assert threshold_labels(results[0], 0.6) == {"a"}
    assert threshold_labels(results[0], 0.95) == frozenset()


def test_regression_head_is_refused():
    with pytest.raises(ConfigError, match="regression"):
        classify(FixedHead([1.0], problem_type="regression"), CharTokenizer(), "x")


def test_real_head_batching_matches_single_texts(tokenizer):
    from biogpt.modeling import BioGptForSequenceClassification

    torch.manual_seed(1)
    config = BioGptConfig(**TINY, id2label={0: "negative", 1: "positive", 2: "neutral"})
    model = BioGptForSequenceClassification.from_config(config).eval()
    texts = ["Aspirin reduces fever.", "No effect was observed in the control group of mice treated daily.",
             " ".join(["long"] * 60)]  # longer than 32 positions: truncated
    batched = classify(model, tokenizer, texts, batch_size=3)
    for text, result in zip(texts, batched):
        alone = classify(model, tokenizer, text)
        assert result == pytest.approx(alone, abs=1e-5)
        assert math.isclose(sum(result.values()), 1.0, rel_tol=1e-6)
        assert list(result.values()) == sorted(result.values(), reverse=True)
    ids = tokenizer(texts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        direct = torch.softmax(model(input_ids=ids).logits[0], -1)
    assert batched[0] == pytest.approx({config.id2label[i]: float(p) for i, p in enumerate(direct)}, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# zero-shot
# ----------------------------------------------------------------------------------------------------------------
def test_label_is_tokenized_as_a_continuation(tokenizer):
    prompt = HOC_TEMPLATE.format(text="Tumour cells evade apoptosis.")
    ids, start = continuation_ids(tokenizer, prompt, "resisting cell death")
    assert ids[:start] == tokenizer(prompt)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[start:]) == tokenizer.tokenize("resisting cell death")
    # A prompt whose last token changes once text follows (Moses keeps "end." whole before a lowercase word):
    ids, start = continuation_ids(tokenizer, "this is the end.", "yes")
    assert tokenizer.convert_ids_to_tokens(ids[start:]) == tokenizer.convert_ids_to_tokens(
        tokenizer("this is the end. yes")["input_ids"][start:])
    assert start == len(tokenizer("this is the")["input_ids"])


def _manual_log_likelihood(model, tokenizer, prompt, label):
    """Sum of log p(token | everything before it) over the label's tokens, one token at a time."""
    ids, start = continuation_ids(tokenizer, prompt, label)
    total = 0.0
    with torch.no_grad():
        for position in range(start, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:position]])).logits[0, -1]
            total += float(torch.log_softmax(logits.float(), -1)[ids[position]])
    return total, len(ids) - start


def test_zero_shot_scores_match_token_by_token_computation(tokenizer, causal_lm):
    prompt = "Aspirin inhibits platelet aggregation. the type of this document is"
    labels = ["inducing angiogenesis", "resisting cell death", "cellular energetics", "no"]
    raw = label_log_likelihoods(causal_lm, tokenizer, prompt, labels, normalize=False, batch_size=3)
    normalised = label_log_likelihoods(causal_lm, tokenizer, prompt, labels, normalize=True, batch_size=2)
    for label in labels:
        total, count = _manual_log_likelihood(causal_lm, tokenizer, prompt, label)
        assert raw[label] == pytest.approx(total, abs=1e-4)
        assert normalised[label] == pytest.approx(total / count, abs=1e-4)

    probabilities = zero_shot(causal_lm, tokenizer, "Aspirin inhibits platelet aggregation.", labels,
                              HOC_TEMPLATE)
    assert list(probabilities.values()) == sorted(probabilities.values(), reverse=True)
    assert sum(probabilities.values()) == pytest.approx(1.0)
    exp = {label: math.exp(normalised[label]) for label in labels}  # the softmax of the normalised scores
    assert probabilities == pytest.approx({label: v / sum(exp.values()) for label, v in exp.items()}, abs=1e-5)


def test_zero_shot_pubmedqa_template_and_long_prompts(tokenizer, causal_lm):
    fields = {"question": "Does aspirin prevent stroke?",
              "context": " ".join(["Aspirin was given to patients with atrial fibrillation."] * 8)}
    result = zero_shot(causal_lm, tokenizer, fields, PUBMEDQA_LABELS, PUBMEDQA_TEMPLATE)
    assert set(result) == {"yes", "no", "maybe"} and sum(result.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="context"):
        zero_shot(causal_lm, tokenizer, {"question": "Why?"}, PUBMEDQA_LABELS, PUBMEDQA_TEMPLATE)
    with pytest.raises(ValueError, match="distinct"):
        zero_shot(causal_lm, tokenizer, "x", ["yes", "yes"], HOC_TEMPLATE)


def test_hoc_labels_are_those_of_the_dataset(shared_dir):
    names = set()
    for line in (shared_dir / "data/hoc/train.tsv").read_text(encoding="utf-8").splitlines():
        names.update(line.rsplit("\t", 1)[1].split("|"))
    assert set(HOC_LABELS) == names - {"empty"}
