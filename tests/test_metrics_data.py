"""biogpt.tasks.metrics (hand-computed values) and biogpt.tasks.data (readers, gold spans -> token tags)."""

from __future__ import annotations

import json

import pytest

from biogpt.tasks.data import (IGNORE_INDEX, ClassificationExample, EntitySpan, bio_label_list, read_conll,
                               read_classification_jsonl, read_classification_tsv, read_pubtator, token_bio_labels)
from biogpt.tasks.entities import TokenScores, aggregate
from biogpt.tasks.metrics import classification_scores, entity_scores


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------
def test_entity_scores_hand_computed():
    gold = [[(0, 5, "Chem"), (10, 15, "Dis"), (20, 25, "Chem")], [(0, 3, "Dis")]]
    predicted = [[(0, 5, "Chem"), (10, 15, "Chem"), (20, 26, "Chem")],
                 [{"start": 0, "end": 3, "label": "Dis", "text": "abc"}, (5, 8, "Dis")]]
    scores = entity_scores(gold, predicted)
    # Chem: tp 1 (0-5), fp 2 (10-15 has the wrong type, 20-26 the wrong end), fn 1 (20-25)
    #   P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    chem = scores["per_type"]["Chem"]
    assert (chem["tp"], chem["fp"], chem["fn"], chem["support"]) == (1, 2, 1, 2)
    assert (chem["precision"], chem["recall"], chem["f1"]) == pytest.approx((1 / 3, 1 / 2, 0.4))
    # Dis: tp 1 (doc 2, 0-3), fp 1 (5-8), fn 1 (10-15): P = R = F1 = 0.5
    assert scores["per_type"]["Dis"]["f1"] == pytest.approx(0.5)
    # micro: tp 2, fp 3, fn 2 -> P = 0.4, R = 0.5, F1 = 2 * 0.2 / 0.9 = 0.4444
    micro = scores["micro"]
    assert (micro["precision"], micro["recall"], micro["f1"]) == pytest.approx((0.4, 0.5, 4 / 9))


def test_entity_scores_edge_cases():
    assert entity_scores([[]], [[]])["micro"]["f1"] == 0.0  # nothing to find, nothing found
    perfect = entity_scores([[(1, 2, "X"), (1, 2, "X")]], [[(1, 2, "X"), (1, 2, "X")]])
    assert perfect["micro"]["f1"] == 1.0 and perfect["micro"]["tp"] == 2  # duplicates match as a multiset
    with pytest.raises(ValueError, match="documents"):
        entity_scores([[]], [])


def test_single_label_classification_scores():
    # per label: a tp 2 fp 1 -> P 2/3 R 1 F1 0.8; b fn 1 -> F1 0; c tp 1 -> F1 1. macro = 1.8 / 3 = 0.6
    scores = classification_scores(["a", "b", "a", "c"], ["a", "a", "a", "c"])
    assert scores == pytest.approx({"accuracy": 0.75, "micro_f1": 0.75, "macro_f1": 0.6})


def test_multi_label_classification_scores():
    # example 1: {a,b} vs {a} (a tp, b fn); example 2: {a} vs {a,c} (a tp, c fp); example 3: {} vs {} exact.
    # accuracy (exact sets) 1/3; micro tp 2 fp 1 fn 1 -> F1 2/3; macro: a 1, b 0, c 0 -> 1/3
    scores = classification_scores([{"a", "b"}, {"a"}, set()], [{"a"}, {"a", "c"}, set()])
    assert scores == pytest.approx({"accuracy": 1 / 3, "micro_f1": 2 / 3, "macro_f1": 1 / 3})
    with pytest.raises(ValueError, match="examples"):
        classification_scores(["a"], [])


# ----------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------
def test_pubtator_reader_on_bc5cdr(shared_dir):
    documents = read_pubtator(shared_dir / "data/bc5cdr/CDR_DevelopmentSet.PubTator.txt")
    assert len(documents) == 500
    first = documents[0]
    assert first.id == "6794356"
    assert first.text.startswith("Tricuspid valve regurgitation and lithium carbonate toxicity in a newborn infant. A ")
    assert first.entities[0] == EntitySpan(0, 29, "Tricuspid valve regurgitation", "Disease", "D014262")
    mentions = [e for d in documents for e in d.entities]
    assert len(mentions) > 9000 and {e.label for e in mentions} == {"Chemical", "Disease"}
    for document in documents:
        for entity in document.entities:
            assert document.text[entity.start:entity.end] == entity.text


def test_pubtator_reader_small_file(tmp_path):
    path = tmp_path / "mini.txt"
    path.write_text("1|t|Aspirin helps.\n1|a|Stroke risk fell.\n1\t0\t7\tAspirin\tChemical\tD001241\n"
                    "1\t15\t21\tStroke\tDisease\tD020521\n1\tCID\tD001241\tD020521\n\n"
                    "2|t|Title only\n2|a|\n", encoding="utf-8")
    first, second = read_pubtator(path)
    assert first.text == "Aspirin helps. Stroke risk fell."
    assert [(e.text, e.label) for e in first.entities] == [("Aspirin", "Chemical"), ("Stroke", "Disease")]
    assert second.text == "Title only " and second.entities == []
    path.write_text("1|t|Aspirin helps.\n1\t0\t7\tAspirim\tChemical\tD1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Aspirim"):
        read_pubtator(path)


def test_conll_reader(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text("-DOCSTART- O\n\nAspirin NN B-Chemical\nhelps VB O\n\n\nliver\tB-Disease\ninjury\tI-Disease\n",
                    encoding="utf-8")
    assert read_conll(path) == [(["Aspirin", "helps"], ["B-Chemical", "O"]),
                                (["liver", "injury"], ["B-Disease", "I-Disease"])]


def test_classification_readers(tmp_path, shared_dir):
    tsv = tmp_path / "data.tsv"
    tsv.write_text("text one\tempty\ntext two\tinducing angiogenesis|resisting cell death\n\n", encoding="utf-8")
    assert read_classification_tsv(tsv) == [
        ClassificationExample("text one", ()),
        ClassificationExample("text two", ("inducing angiogenesis", "resisting cell death"))]
    hoc = read_classification_tsv(shared_dir / "data/hoc/train.tsv")
    assert len(hoc) == 9972 and hoc[0].labels == ()

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "label": "yes"},
                                                       {"text": "b", "labels": ["x", "y"]},
                                                       {"text": "c", "labels": []},
                                                       {"text": "d", "label": "empty"}]) + "\n", encoding="utf-8")
    assert read_classification_jsonl(jsonl) == [ClassificationExample("a", ("yes",)),
                                                 ClassificationExample("b", ("x", "y")),
                                                 ClassificationExample("c", ()), ClassificationExample("d", ())]
    jsonl.write_text('{"label": "yes"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'text'"):
        read_classification_jsonl(jsonl)


# ----------------------------------------------------------------------------------------------------------------
# Gold spans -> token tags
# ----------------------------------------------------------------------------------------------------------------
def test_token_bio_labels_hand_made():
    labels = bio_label_list(["Chem", "Dis"])
    assert labels == ["O", "B-Chem", "I-Chem", "B-Dis", "I-Dis"]
    label2id = {label: i for i, label in enumerate(labels)}
    # "ibuprofen caused liver injury": </s>, ibu, profen, caused, liver, inj, ury, padding
    offsets = [(0, 0), (0, 3), (3, 9), (10, 16), (17, 22), (23, 26), (26, 29), (0, 0)]
    spans = [EntitySpan(0, 9, "ibuprofen", "Chem"), (17, 29, "Dis"), (23, 29, "Dis")]  # the last overlaps: dropped
    assert token_bio_labels(offsets, spans, label2id) == [IGNORE_INDEX, 1, 2, 0, 3, 4, 4, IGNORE_INDEX]
    with pytest.raises(ValueError, match="B-Gene"):
        token_bio_labels(offsets, [(0, 3, "Gene")], label2id)


def test_token_tags_round_trip_through_aggregation(shared_dir, real_tokenizer):
    """Gold spans -> token tags -> one-hot predictions -> entities gives back the gold spans."""
    tokenizer = real_tokenizer

    labels = bio_label_list(["Chemical", "Disease"])
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))
    documents = read_pubtator(shared_dir / "data/bc5cdr/CDR_DevelopmentSet.PubTator.txt")[:20]
    gold, recovered = [], []
    for document in documents:
        encoded = tokenizer(document.text, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        tags = token_bio_labels(offsets, document.entities, label2id)
        tokens = []
        for i, ((start, end), tag) in enumerate(zip(offsets, tags)):
            if tag == IGNORE_INDEX:
                continue
            scores = [0.0] * len(labels)
            scores[tag] = 1.0
            tokens.append(TokenScores(scores, start, end, index=i))
        gold.append([(e.start, e.end, e.label) for e in document.entities])
        recovered.append([(e["start"], e["end"], e["label"])
                          for e in aggregate(tokens, id2label, document.text, "simple")])
    # Only mentions whose edges are not token edges (e.g. "injury." kept whole by Moses) can differ.
    assert entity_scores(gold, recovered)["micro"]["f1"] > 0.99
