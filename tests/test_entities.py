"""biogpt.tasks.entities: label schemes, the five aggregation strategies (hand-worked), BIO/BIOES repair,
windowing of long texts, exact offsets on the real BioGPT tokenizer, and the spaCy backend."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch

from biogpt.errors import BioGptError
from biogpt.tasks.entities import (SpacyEntityBackend, TokenScores, aggregate, detect_scheme, entity_type,
                                   entity_types, extract_entities, parse_label, plan_windows, split_sentences)

ID2LABEL = {0: "O", 1: "B-Chem", 2: "I-Chem", 3: "B-Dis", 4: "I-Dis"}


# ----------------------------------------------------------------------------------------------------------------
# Fixtures: the real BioGPT tokenizer (built from ../shared in the Hub layout)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(real_tokenizer):
    return real_tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Label schemes
# ----------------------------------------------------------------------------------------------------------------
def test_parse_label_and_schemes():
    assert parse_label("B-Chemical") == ("B", "Chemical")
    assert parse_label("I-Gene-or-protein") == ("I", "Gene-or-protein")
    assert parse_label("O") == ("O", None)
    assert parse_label("U-Chem") == ("S", "Chem") and parse_label("L-Chem") == ("E", "Chem")
    assert parse_label("Chemical") == ("I", "Chemical")  # plain labels continue, as in transformers
    assert parse_label("Gene-or-protein") == ("I", "Gene-or-protein")  # "Gene" is not a tag prefix
    assert entity_type("S-Dis") == "Dis" and entity_type("O") is None
    assert detect_scheme(ID2LABEL) == "BIO"
    assert detect_scheme({0: "O", 1: "S-X", 2: "B-X", 3: "I-X", 4: "E-X"}) == "BIOES"
    assert detect_scheme({0: "O", 1: "U-X", 2: "B-X", 3: "I-X", 4: "L-X"}) == "BIOES"
    assert detect_scheme({0: "O", 1: "Chemical", 2: "Disease"}) == "plain"
    assert entity_types(ID2LABEL) == ["Chem", "Dis"]


# ----------------------------------------------------------------------------------------------------------------
# Hand-worked aggregation
# ----------------------------------------------------------------------------------------------------------------
# text:  "ibuprofen caused liver injury"
#         0        9 10   16 17  22 23   29
# tokens: ibu(0-3) profen(3-9, sub) caused(10-16) liver(17-22) inj(23-26) ury(26-29, sub)
# probabilities over [O, B-Chem, I-Chem, B-Dis, I-Dis]:
TEXT = "ibuprofen caused liver injury"
TABLE = [
    # scores                           start end word_start   argmax
    ([0.10, 0.70, 0.10, 0.05, 0.05], 0, 3, True),     # B-Chem 0.7
    ([0.10, 0.10, 0.60, 0.10, 0.10], 3, 9, False),    # I-Chem 0.6
    ([0.80, 0.05, 0.05, 0.05, 0.05], 10, 16, True),   # O      0.8
    ([0.10, 0.00, 0.00, 0.50, 0.40], 17, 22, True),   # B-Dis  0.5
    ([0.20, 0.00, 0.00, 0.10, 0.70], 23, 26, True),   # I-Dis  0.7
    ([0.05, 0.00, 0.00, 0.90, 0.05], 26, 29, False),  # B-Dis  0.9
]


def _tokens():
    return [TokenScores(scores, start, end, word_start, index=i + 1)
            for i, (scores, start, end, word_start) in enumerate(TABLE)]


def _simplified(entities):
    return [(e["text"], e["label"], round(e["score"], 6), e["start"], e["end"]) for e in entities]


def test_strategy_none_lists_every_non_O_token():
    entities = aggregate(_tokens(), ID2LABEL, TEXT, "none")
    # caused (O) is dropped; every other token keeps its raw tag, its probability and its input index.
    assert _simplified(entities) == [("ibu", "B-Chem", 0.7, 0, 3), ("profen", "I-Chem", 0.6, 3, 9),
                                     ("liver", "B-Dis", 0.5, 17, 22), ("inj", "I-Dis", 0.7, 23, 26),
                                     ("ury", "B-Dis", 0.9, 26, 29)]
    assert [e["index"] for e in entities] == [1, 2, 4, 5, 6]
    assert all(type(e["score"]) is float for e in entities)


def test_strategy_simple_groups_token_tags():
    # B-Chem I-Chem -> "ibuprofen", mean(0.7, 0.6) = 0.65; B-Dis I-Dis -> "liver inj", mean(0.5, 0.7) = 0.6;
    # "ury" is B-Dis: a new entity (0.9) although it is inside the word "injury".
    assert _simplified(aggregate(_tokens(), ID2LABEL, TEXT, "simple")) == [
        ("ibuprofen", "Chem", 0.65, 0, 9), ("liver inj", "Dis", 0.6, 17, 26), ("ury", "Dis", 0.9, 26, 29)]


def test_strategy_first_uses_each_words_first_token():
    # ibuprofen <- ibu: B-Chem 0.7; liver: B-Dis 0.5; injury <- inj: I-Dis 0.7 -> "liver injury" mean 0.6.
    assert _simplified(aggregate(_tokens(), ID2LABEL, TEXT, "first")) == [
        ("ibuprofen", "Chem", 0.7, 0, 9), ("liver injury", "Dis", 0.6, 17, 29)]


def test_strategy_average_averages_probabilities_within_words():
    # ibuprofen: mean rows = [.1, .4, .35, .075, .075] -> B-Chem 0.4
    # injury:    mean rows = [.125, 0, 0, .5, .375]    -> B-Dis 0.5, so "liver" (B-Dis 0.5) and "injury" split.
    assert _simplified(aggregate(_tokens(), ID2LABEL, TEXT, "average")) == [
        ("ibuprofen", "Chem", 0.4, 0, 9), ("liver", "Dis", 0.5, 17, 22), ("injury", "Dis", 0.5, 23, 29)]


def test_strategy_max_takes_the_most_confident_sub_token():
    # ibuprofen: ibu (max 0.7) beats profen (0.6) -> B-Chem 0.7; injury: ury (0.9) beats inj (0.7) -> B-Dis 0.9.
    assert _simplified(aggregate(_tokens(), ID2LABEL, TEXT, "max")) == [
        ("ibuprofen", "Chem", 0.7, 0, 9), ("liver", "Dis", 0.5, 17, 22), ("injury", "Dis", 0.9, 23, 29)]


def test_threshold_filters_entities_by_their_aggregated_score():
    # simple scores: 0.65, 0.6, 0.9 -> with threshold 0.62 the 0.6 entity goes.
    kept = aggregate(_tokens(), ID2LABEL, TEXT, "simple", threshold=0.62)
    assert [e["text"] for e in kept] == ["ibuprofen", "ury"]
    assert aggregate(_tokens(), ID2LABEL, TEXT, "none", threshold=0.75) == [
        {"text": "ury", "label": "B-Dis", "score": pytest.approx(0.9), "start": 26, "end": 29, "index": 6}]


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="aggregation_strategy"):
        aggregate(_tokens(), ID2LABEL, TEXT, "longest")


# ----------------------------------------------------------------------------------------------------------------
# BIO / BIOES repair
# ----------------------------------------------------------------------------------------------------------------
def _groups(tags, id2label):
    """Entities of one-hot-ish predictions for `tags` on the text "t0 t1 t2 ..." (each token its own word)."""
    label2id = {label: i for i, label in id2label.items()}
    text = " ".join(f"t{i}" for i in range(len(tags)))
    tokens = []
    for i, tag in enumerate(tags):
        scores = [0.1 / (len(id2label) - 1)] * len(id2label)
        scores[label2id[tag]] = 0.9
        tokens.append(TokenScores(scores, 3 * i, 3 * i + 2))
    return [(e["text"], e["label"]) for e in aggregate(tokens, id2label, text, "simple")]


def test_bio_repair():
    # An I- without a preceding B-/I- of its type starts a new entity; B- always starts one.
    assert _groups(["I-Chem", "I-Chem", "O", "I-Chem"], ID2LABEL) == [("t0 t1", "Chem"), ("t3", "Chem")]
    assert _groups(["B-Chem", "I-Dis", "I-Dis"], ID2LABEL) == [("t0", "Chem"), ("t1 t2", "Dis")]
    assert _groups(["B-Chem", "B-Chem", "I-Chem"], ID2LABEL) == [("t0", "Chem"), ("t1 t2", "Chem")]
    assert _groups(["O", "O"], ID2LABEL) == []


def test_bioes_and_bilou():
    bioes = {0: "O", 1: "B-Chem", 2: "I-Chem", 3: "E-Chem", 4: "S-Chem", 5: "B-Dis", 6: "E-Dis"}
    # S closes at once; the I after it opens a new entity that E closes; a second E starts (and ends) its own.
    tags = ["S-Chem", "I-Chem", "E-Chem", "E-Chem", "B-Dis", "E-Dis", "O", "E-Chem"]
    assert _groups(tags, bioes) == [("t0", "Chem"), ("t1 t2", "Chem"), ("t3", "Chem"), ("t4 t5", "Dis"),
                                    ("t7", "Chem")]
    bilou = {0: "O", 1: "U-Chem", 2: "B-Dis", 3: "I-Dis", 4: "L-Dis"}
    assert _groups(["U-Chem", "B-Dis", "I-Dis", "L-Dis", "I-Dis"], bilou) == [
        ("t0", "Chem"), ("t1 t2 t3", "Dis"), ("t4", "Dis")]


def test_plain_labels_merge_when_adjacent():
    plain = {0: "O", 1: "Chemical", 2: "Disease"}
    assert _groups(["Chemical", "Chemical", "O", "Disease", "Chemical"], plain) == [
        ("t0 t1", "Chemical"), ("t3", "Disease"), ("t4", "Chemical")]


def test_spanless_pieces_never_make_empty_entities():
    # A piece continuing an escape has an empty span; alone it must not become an entity with text "".
    tokens = [TokenScores([0.1, 0.9, 0, 0, 0], 0, 1), TokenScores([0.1, 0.9, 0, 0, 0], 1, 1, False)]
    assert _simplified(aggregate(tokens, ID2LABEL, "&", "simple")) == [("&", "Chem", 0.9, 0, 1)]
    assert [e["text"] for e in aggregate(tokens, ID2LABEL, "&", "none")] == ["&"]


# ----------------------------------------------------------------------------------------------------------------
# Against transformers' own grouping (BIO tags: what transformers supports)
# ----------------------------------------------------------------------------------------------------------------
def test_matches_transformers_grouping():
    np = pytest.importorskip("numpy")
    pipelines = pytest.importorskip("transformers.pipelines.token_classification")
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    pipe = pipelines.TokenClassificationPipeline
    fake = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(id2label=ID2LABEL)),
                           tokenizer=SimpleNamespace(convert_tokens_to_string=" ".join))
    for name in ("aggregate", "aggregate_word", "aggregate_words", "group_sub_entities", "get_tag",
                 "group_entities"):
        setattr(fake, name, getattr(pipe, name).__get__(fake))

    row = st.lists(st.floats(0.01, 1.0), min_size=5, max_size=5)

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(st.lists(st.tuples(row, st.booleans()), min_size=1, max_size=12),
                      st.sampled_from(["none", "simple", "first", "average", "max"]))
    def check(rows, strategy):
        text = " ".join(f"w{i}" for i in range(len(rows)))
        tokens, pre = [], []
        for i, (raw, word_start) in enumerate(rows):
            scores = np.array(raw) / sum(raw)
            word_start = word_start or i == 0
            tokens.append(TokenScores(scores, 3 * i, 3 * i + 2, word_start, index=i))
            pre.append({"word": f"w{i}", "scores": scores, "start": 3 * i, "end": 3 * i + 2, "index": i,
                        "is_subword": not word_start})
        strategy_enum = pipelines.AggregationStrategy(strategy)
        expected = [e for e in fake.aggregate(pre, strategy_enum)
                    if e.get("entity", e.get("entity_group")) != "O"]
        ours = aggregate(tokens, ID2LABEL, text, strategy)
        key = "entity" if strategy == "none" else "entity_group"
        assert [(e["label"], e["start"], e["end"]) for e in ours] == [
            (e[key], e["start"], e["end"]) for e in expected]
        assert [e["score"] for e in ours] == pytest.approx([float(e["score"]) for e in expected])

    check()


# ----------------------------------------------------------------------------------------------------------------
# Windows and exact offsets on the real tokenizer
# ----------------------------------------------------------------------------------------------------------------
class PatternTagger:
    """A stand-in token classifier: tags each occurrence of the token-id sequence of a phrase B-/I-<type>."""

    def __init__(self, tokenizer, phrases, max_positions=32):
        from biogpt.configuration import BioGptConfig

        self.config = BioGptConfig(vocab_size=42384, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=8, max_position_embeddings=max_positions, id2label=ID2LABEL)
        self.device = torch.device("cpu")
        self.patterns = [(tokenizer(phrase)["input_ids"][1:], kind) for phrase, kind in phrases.items()]
        self.longest_input = 0

    def __call__(self, input_ids, attention_mask):
        self.longest_input = max(self.longest_input, int(attention_mask.sum(-1).max()))
        logits = torch.zeros(*input_ids.shape, len(ID2LABEL))
        logits[..., 0] = 5.0
        for b, row in enumerate(input_ids.tolist()):
            for pattern, kind in self.patterns:
                for i in range(len(row) - len(pattern) + 1):
                    if row[i:i + len(pattern)] == pattern:
                        logits[b, i:i + len(pattern), 0] = 0.0
                        logits[b, i, 1 if kind == "Chem" else 3] = 5.0
                        logits[b, i + 1:i + len(pattern), 2 if kind == "Chem" else 4] = 5.0
        return SimpleNamespace(logits=logits)


PHRASES = {"Ibuprofen": "Chem", "ibuprofen": "Chem", "α-synuclein": "Chem", "5-fluorouracil": "Chem",
           "TNF-α": "Chem", "liver injury": "Dis", "Parkinson's disease": "Dis"}
# (A sentence-final period stays attached by Moses when a lowercase word follows, so sentences here start upper-case.)
TRICKY = ("Ibuprofen-induced liver injury. The α-synuclein and TNF-α levels rose after 5-fluorouracil & ibuprofen "
          "(ibuprofen) in Parkinson's disease; liver injury followed.\n\nIbuprofen again: 5-fluorouracil, "
          "α-synuclein, ibuprofen")


def _expected(text):
    found = set()
    for phrase, kind in PHRASES.items():
        for match in re.finditer(re.escape(phrase), text):
            found.add((match.start(), match.end(), kind))
    return sorted(found)


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_offsets_exact_on_tricky_text(tokenizer, strategy):
    model = PatternTagger(tokenizer, PHRASES, max_positions=1024)
    entities = extract_entities(model, tokenizer, TRICKY, aggregation_strategy=strategy)
    assert [(e["start"], e["end"], e["label"]) for e in entities] == _expected(TRICKY)
    for entity in entities:
        assert entity["text"] == TRICKY[entity["start"]:entity["end"]]
    assert entities[0]["start"] == 0 and entities[-1]["end"] == len(TRICKY)  # entities at both ends


def test_long_text_is_windowed_without_straddling(tokenizer):
    text = " ".join([TRICKY] * 6)
    model = PatternTagger(tokenizer, PHRASES, max_positions=32)
    entities = extract_entities(model, tokenizer, text, batch_size=3)
    assert model.longest_input <= 32
    assert [(e["start"], e["end"], e["label"]) for e in entities] == _expected(text)
    assert all(e["text"] == text[e["start"]:e["end"]] for e in entities)

    windows = plan_windows(tokenizer, text, 32)
    assert len(windows) > 6
    assert all(a < b <= c for (a, b), (c, _) in zip(windows, windows[1:]))  # disjoint, in order
    assert all(len(tokenizer(text[a:b])["input_ids"]) <= 32 for a, b in windows)
    # Every non-space character belongs to a window.
    covered = "".join(text[a:b] for a, b in windows)
    assert re.sub(r"\s", "", covered) == re.sub(r"\s", "", text)


def test_overlong_sentence_is_cut_between_words(tokenizer):
    sentence = " ".join(["ibuprofen lowered hepatotoxicity markers"] * 20) + "."
    windows = plan_windows(tokenizer, sentence, 16)
    assert len(windows) > 5
    assert all(len(tokenizer(sentence[a:b])["input_ids"]) <= 16 for a, b in windows)
    for a, b in windows:  # cuts fall between words
        assert (a == 0 or sentence[a - 1] == " ") and (b == len(sentence) or sentence[b] == " ")
    model = PatternTagger(tokenizer, {"ibuprofen": "Chem"}, max_positions=16)
    entities = extract_entities(model, tokenizer, sentence)
    assert [(e["start"], e["end"]) for e in entities] == [(m.start(), m.end())
                                                         for m in re.finditer("ibuprofen", sentence)]


def test_empty_text_and_bad_arguments(tokenizer):
    model = PatternTagger(tokenizer, PHRASES)
    assert extract_entities(model, tokenizer, "") == []
    assert extract_entities(model, tokenizer, " \n\t ") == []
    with pytest.raises(ValueError, match="aggregation_strategy"):
        extract_entities(model, tokenizer, "ibuprofen", aggregation_strategy="best")


def test_sentences_are_split_with_offsets():
    text = "  First sentence here. Second one follows!  \n\nThird."
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == ["First sentence here.", "Second one follows!", "Third."]


def test_unknown_sentencizer_is_a_clear_error(tokenizer):
    with pytest.raises(BioGptError, match="no_such_pipeline"):
        split_sentences("One. Two.", "no_such_pipeline")


def test_real_tiny_model_matches_direct_forward(tokenizer):
    from biogpt.configuration import BioGptConfig
    from biogpt.modeling import BioGptForTokenClassification

    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=42384, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=32, id2label=ID2LABEL)
    model = BioGptForTokenClassification.from_config(config).eval()
    with torch.no_grad():  # make B-Chem the top label everywhere, so every token comes out in strategy none
        model.classifier.bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0]))
    text = "Ibuprofen-induced α-synuclein toxicity."
    entities = extract_entities(model, tokenizer, text, aggregation_strategy="none")
    encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(input_ids=encoded["input_ids"]).logits[0], -1)
    offsets = encoded["offset_mapping"][0].tolist()
    expected = [(i, offsets[i][0], offsets[i][1]) for i in range(1, len(offsets)) if offsets[i][1] > offsets[i][0]]
    assert [(e["index"], e["start"], e["end"]) for e in entities] == expected
    assert [e["score"] for e in entities] == pytest.approx([float(probabilities[i, 1]) for i, _, _ in expected])
    long_text = " ".join([text] * 10)
    for entity in extract_entities(model, tokenizer, long_text, aggregation_strategy="first"):
        assert entity["text"] == long_text[entity["start"]:entity["end"]]


# ----------------------------------------------------------------------------------------------------------------
# spaCy backend
# ----------------------------------------------------------------------------------------------------------------
def test_spacy_backend(tmp_path):
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    # An entity ruler registered under the name "ner" stands in for a trained recogniser.
    ruler = nlp.add_pipe("entity_ruler", name="ner")
    ruler.add_patterns([{"label": "CHEMICAL", "pattern": "ibuprofen"},
                        {"label": "DISEASE", "pattern": [{"LOWER": "liver"}, {"LOWER": "injury"}]}])
    nlp.to_disk(tmp_path / "with_ner")
    backend = SpacyEntityBackend(str(tmp_path / "with_ner"))
    text = "Liver injury after ibuprofen."
    assert backend(text) == [{"text": "Liver injury", "label": "DISEASE", "score": 1.0, "start": 0, "end": 12},
                             {"text": "ibuprofen", "label": "CHEMICAL", "score": 1.0, "start": 19, "end": 28}]
    assert backend("   ") == []

    spacy.blank("en").to_disk(tmp_path / "without_ner")
    with pytest.raises(ValueError, match="without_ner.*no 'ner'"):
        SpacyEntityBackend(str(tmp_path / "without_ner"))
    with pytest.raises(BioGptError, match="en_core_sci_nothing"):
        SpacyEntityBackend("en_core_sci_nothing")
