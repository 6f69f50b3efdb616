"""The demo corpus generators: deterministic, exact spans, only true facts, balanced labels, real held-out splits."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from sacremoses import MosesTokenizer

from tools.demo import corpus, facts

N = 600


@pytest.fixture(scope="module")
def moses() -> MosesTokenizer:
    return MosesTokenizer(lang="en")


def _names(label: str) -> set[str]:
    """Every surface form the tables can write for a label (names, synonyms, abbreviations)."""
    if label == "Chemical":
        return {x for d in facts.DRUGS for x in (d.name, *d.synonyms, d.abbreviation) if x}
    return {x for d in facts.DISEASES for x in (d.name, d.abbreviation) if x}


def _surface_to_name(label: str) -> dict[str, str]:
    if label == "Chemical":
        return {x: d.name for d in facts.DRUGS for x in (d.name, *d.synonyms, d.abbreviation) if x}
    return {x: d.name for d in facts.DISEASES for x in (d.name, d.abbreviation) if x}


def _all_passages() -> list[corpus.Passage]:
    return (corpus.lm_passages(N, 3) + corpus.ner_passages(N, 3, "train") + corpus.ner_passages(N, 3, "heldout")
            + corpus.classification_passages(N, 3, "train") + corpus.classification_passages(N, 3, "heldout"))


def test_fact_tables_have_the_promised_size_and_names() -> None:
    assert 60 <= len(facts.DRUGS) <= 100
    assert len(facts.GENES) >= 30
    assert len(facts.DISEASES) >= 60
    diseases, drugs = facts.DISEASE_BY_NAME, facts.DRUG_BY_NAME
    for name in ("type 2 diabetes", "non-small cell lung cancer", "Parkinson's disease", "COVID-19"):
        assert name in diseases
    assert "5-fluorouracil" in drugs and "acetylsalicylic acid" in drugs["aspirin"].synonyms
    assert {"TNF-α", "interleukin-6"} <= set(facts.GENE_BY_NAME) and "interferon-β" in drugs
    assert diseases["COVID-19"].pathogen == "SARS-CoV-2"
    # a disease mentioned only as an adverse effect must still be a Disease, never also a drug or gene name
    assert not set(drugs) & set(diseases) and not set(facts.GENE_BY_NAME) & set(diseases)


def test_enough_templates_in_each_split() -> None:
    assert sum(len(v) for v in corpus.TEMPLATES.values()) >= 40
    for topic in corpus.TOPICS:
        train, held = corpus.templates(topic, "train"), corpus.templates(topic, "heldout")
        assert train and held and not set(train) & set(held)
        assert set(train) | set(held) == set(corpus.TEMPLATES[topic])
    # every gene kind has wording in both splits, so held-out genetics covers all genes
    for split in ("train", "heldout"):
        kinds = {k for t in corpus.templates("genetics", split) for k in t.gene_kinds or ()}
        assert kinds == {"mendelian", "risk", "driver", "mediator"}


@pytest.mark.parametrize("generate", [corpus.lm_sentences, corpus.ner_examples, corpus.classification_examples])
def test_same_seed_same_output(generate) -> None:
    assert generate(200, 7) == generate(200, 7)
    assert generate(200, 7, "heldout") == generate(200, 7, "heldout")
    assert generate(200, 7) != generate(200, 8)


def test_ner_spans_are_exact_and_disjoint() -> None:
    surface = {label: _surface_to_name(label) for label in corpus.NER_LABELS}
    for split in ("train", "heldout", "all"):
        for ex in corpus.ner_examples(N, 11, split):
            text, ents = ex["text"], ex["entities"]
            assert ents, text
            spans = sorted((e["start"], e["end"]) for e in ents)
            assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), text
            for e in ents:
                assert e["label"] in corpus.NER_LABELS
                got = text[e["start"]:e["end"]]
                # only a sentence-initial mention may differ, and only by its capital first letter
                name = got[0].lower() + got[1:] if e["start"] == 0 else got
                assert got in surface[e["label"]] or name in surface[e["label"]], (got, text)


def test_mention_names_match_their_spans() -> None:
    maps = {label: _surface_to_name(label) for label in corpus.NER_LABELS}
    for p in corpus.ner_passages(N, 5) + corpus.lm_passages(N, 5):
        for m in p.mentions:
            got = p.text[m.start:m.end]
            forms = {got, got[0].lower() + got[1:]}  # a sentence-initial mention is capitalised
            names = {maps[m.label].get(f) for f in forms} if m.label in maps else forms
            assert m.name in names, (got, m, p.text)


def test_every_named_entity_is_labelled() -> None:
    """A Chemical or Disease name never appears in the text outside a span (the NER targets are complete)."""
    patterns = {label: [re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])") for n in _names(label)]
                for label in corpus.NER_LABELS}
    for p in corpus.ner_passages(N, 13) + corpus.lm_passages(N, 13):
        text = p.text[0].lower() + p.text[1:]  # undo the sentence-initial capital for matching
        covered = [(m.start, m.end) for m in p.mentions]
        for label, regexes in patterns.items():
            for rx in regexes:
                for hit in rx.finditer(text):
                    assert any(s <= hit.start() and hit.end() <= e for s, e in covered), (label, hit.group(), p.text)


def test_only_true_facts_are_stated() -> None:
    true = facts.all_facts()
    for p in _all_passages():
        assert p.facts and set(p.facts) <= true, p.text
        named = {m.name for m in p.mentions}
        for f in p.facts:
            if f.relation not in ("drug_class", "disease_description"):
                assert {f.subject, f.object} <= named, (f, p.text)


def test_classification_labels_are_balanced_and_match_the_topic() -> None:
    for split in ("train", "heldout"):
        passages = corpus.classification_passages(900, 17, split)
        counts = Counter(p.topic for p in passages)
        assert set(counts) == set(corpus.CLASSIFICATION_LABELS)
        assert max(counts.values()) - min(counts.values()) <= 0.05 * len(passages)
        for p in passages:
            relations = {f.relation for f in p.facts}
            expected = {"treatment": "treats", "adverse effect": "adverse_effect", "genetics": "gene_disease"}[p.topic]
            assert expected in relations, p.text
    examples = corpus.classification_examples(30, 17)
    assert all(set(e) == {"text", "label"} and e["label"] in corpus.CLASSIFICATION_LABELS for e in examples)


def test_heldout_differs_from_train() -> None:
    for kind in ("lm", "ner", "classification"):
        train, held = corpus.train_heldout(kind, 1000, 300, seed=0)
        texts = lambda xs: {x if isinstance(x, str) else x["text"] for x in xs}  # noqa: E731
        assert len(train) == 1000 and len(held) == 300
        assert len(texts(held) & texts(train)) <= 0.02 * len(held), kind
    # NER/classification training never states a held-out pair; held-out data does
    relations = {"treats", "adverse_effect", "gene_disease"}
    pairs = lambda ps: {(f.subject, f.object) for p in ps for f in p.facts if f.relation in relations}  # noqa: E731
    train_pairs = pairs(corpus.ner_passages(3000, 0, "train") + corpus.classification_passages(3000, 0, "train"))
    held_pairs = pairs(corpus.ner_passages(1000, 0, "heldout"))
    assert not any(corpus.is_heldout_pair(a, b) for a, b in train_pairs)
    assert any(corpus.is_heldout_pair(a, b) for a, b in held_pairs)


def test_text_is_well_formed_and_moses_tokenizes_cleanly(moses: MosesTokenizer) -> None:
    for p in _all_passages():
        text = p.text
        assert text == text.strip() and "  " not in text and text.endswith("."), text
        assert not re.search(r" [.,;:)]|\( |\.\.|,,", text), text
        assert text[0].isupper() or not text[0].isascii() or text[0].isdigit(), text
        for sentence in re.split(r"(?<=\.) (?=[A-Z0-9α-ω])", text):
            assert sentence.endswith("."), (sentence, text)
        tokens = moses.tokenize(text, escape=False)
        # every sentence-final period is its own token (no "C." glued on by Moses' non-breaking prefixes)
        assert tokens[-1] == "." and not [t for t in tokens if t.endswith(".") and t != "."], tokens


def test_spans_align_with_moses_tokens(moses: MosesTokenizer) -> None:
    """Every entity span starts and ends on a Moses token boundary, so word-level BIO tags reproduce it exactly
    (this is why names never end in a lone capital such as "hepatitis C.": Moses keeps "C." as one token)."""
    for p in _all_passages():
        text = p.text
        starts, ends, pos = set(), set(), 0
        for token in moses.tokenize(text, aggressive_dash_splits=False, escape=False):
            pos = text.index(token, pos)
            starts.add(pos)
            ends.add(pos + len(token))
            pos += len(token)
        for m in p.mentions:
            assert m.start in starts and m.end in ends, (text[m.start:m.end], text)


def test_prompts_used_by_the_app_are_covered() -> None:
    texts = corpus.lm_sentences(4000, 0)
    assert any(t.startswith("COVID-19 is an infectious disease caused by SARS-CoV-2") for t in texts)
    assert any(t.startswith("Ibuprofen is best used for the treatment of") for t in texts)
    assert any(len(re.findall(r"\.(?: |$)", t)) >= 3 for t in texts)  # multi-sentence abstracts exist
