"""BioGptTokenizer: same ids and text as transformers' BioGptTokenizer on the real vocabularies, plus offsets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biogpt.bpe import convert_fairseq_vocab, learn_bpe
from biogpt.tokenization import BatchEncoding, BioGptTokenizer, _align_pieces

HAND_WRITTEN = [
    "", " ", "   \t\n  ", "\n",
    "α-synuclein and β-amyloid aggregate; γ-secretase too.",
    "Patients received 5 mg/kg of drug at 37 °C for 2 h (n = 12).",
    "IC50 was 3.5 µM; Km = 0.2 μM and pH 7.4 ± 0.1.",
    "naïve café résumé Schrödinger Ångström",
    "well-known non-small-cell lung cancer – and — dashes -- here",
    "He said \"no\" and 'yes' then didn't; it's the patient's.",
    "brackets [1], (2), {3} and <4>",
    "<b>bold</b> & <i>italic</i> &amp; &lt;tag&gt;",
    "see https://www.ncbi.nlm.nih.gov/pubmed/?term=a-b&x=1 or doi:10.1000/xyz123",
    "1,000,000 cells and 3,5-dimethyl 12.5% of 1.234",
    "Mr. Smith vs. Dr. Who et al. e.g. i.e. Fig. 3A.",
    "Wait... what?! Really?? Yes!!!",
    "a | b || c",
    "repeated repeated repeated words words",
    "  leading and trailing spaces  ",
    "TNF-alpha/IL-6 ratio >= 2 and <= 5",
    "100°C 20µg ±5 ×10^6 ≥3 ≤4 → ←",
    "CO2 + H2O ⇌ H2CO3",
    "5'-UTR and 3'-end of the mRNA",
    "The @-@ marker and @ signs and #hashtags",
    "an unknown token <unk> and the separator </s> inside <s> text <pad>",
    "Ω ∑ ∫ 漢字 emoji 🙂 mixed",
    "tab\tseparated\tvalues\nand new lines\r\nwindows",
    "non\u00a0breaking\u2009thin space",
    "COVID-19 SARS-CoV-2 ACE2-expressing cells",
    "N-acetyl-L-cysteine (NAC) 600 mg b.i.d.",
]


def bc5cdr_texts(shared_dir, limit_titles=120, limit_sentences=240) -> list[str]:
    titles, sentences = [], []
    with open(shared_dir / "data/bc5cdr/CDR_DevelopmentSet.PubTator.txt", encoding="utf-8") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("|", 2)
            if len(parts) != 3:
                continue
            if parts[1] == "t":
                titles.append(parts[2])
            elif parts[1] == "a":
                sentences.extend(re.split(r"(?<=[.!?])\s+(?=[A-Z])", parts[2]))
    return titles[:limit_titles] + sentences[:limit_sentences]


@pytest.fixture(scope="session")
def base_dir(real_vocab_dir):
    return real_vocab_dir


@pytest.fixture(scope="session")
def ours(base_dir):
    return BioGptTokenizer.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def ref(base_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BioGptTokenizer.from_pretrained(str(base_dir))


@pytest.fixture(scope="session")
def texts(shared_dir):
    return bc5cdr_texts(shared_dir) + HAND_WRITTEN


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A small learned vocabulary, so that API tests run without ../shared."""
    out = tmp_path_factory.mktemp("tiny")
    corpus = ["The patient received aspirin and ibuprofen.", "Aspirin-induced asthma in patients.",
              "The patients were treated with 5 mg/kg ibuprofen."] * 3
    learn_bpe(corpus, 60, out)
    return out


# ------------------------------------------------------------------------------ parity with transformers
def test_ids_and_decode_match_reference(ours, ref, texts):
    assert len(texts) >= 300
    for text in texts:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ours.tokenize(text) == ref.tokenize(text), text
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    # the inputs really exercise unknown pieces, escapes and in-text special tokens
    all_ids = [i for text in texts for i in ours(text, add_special_tokens=False)["input_ids"]]
    assert ours.unk_token_id in all_ids and ours.sep_token_id in all_ids


@pytest.mark.parametrize("kwargs", [
    dict(padding=True),
    dict(padding=True, padding_side="left"),
    dict(padding="longest", truncation=True, max_length=8),
    dict(truncation=True, max_length=5),
    dict(max_length=4),
    dict(padding="max_length", max_length=40, truncation=True),
    dict(padding=True, add_special_tokens=False),
    dict(padding=True, return_attention_mask=False),
])
def test_batches_match_reference(ours, ref, texts, kwargs):
    batch = texts[:20] + HAND_WRITTEN[:6]
    assert dict(ours(batch, **kwargs)) == dict(ref(batch, **kwargs))


def test_tensor_batch_and_batch_decode_match_reference(ours, ref, texts):
    batch = texts[100:116]
    mine, theirs = ours(batch, padding=True, return_tensors="pt"), ref(batch, padding=True, return_tensors="pt")
    assert torch.equal(mine["input_ids"], theirs["input_ids"])
    assert torch.equal(mine["attention_mask"], theirs["attention_mask"])
    assert ours.batch_decode(mine["input_ids"], skip_special_tokens=True) == \
        ref.batch_decode(theirs["input_ids"], skip_special_tokens=True)
    assert ours.decode(mine["input_ids"]) == ref.decode(theirs["input_ids"])  # a 2-D input decodes to a list
    assert ours.decode(mine["input_ids"][0].numpy()) == ref.decode(theirs["input_ids"][0])


def test_large_vocabulary_matches_reference(shared_dir, texts, tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = shared_dir / "data/biogpt-vocab/large"
    convert_fairseq_vocab(vocab / "dict.txt", vocab / "bpecodes", tmp_path)
    ours, ref = BioGptTokenizer.from_pretrained(tmp_path), transformers.BioGptTokenizer.from_pretrained(str(tmp_path))
    assert ours.vocab_size == ref.vocab_size == 57713 + 4
    for text in texts[::10]:
        assert ours(text)["input_ids"] == ref(text)["input_ids"], text


def test_attributes_match_reference(ours, ref):
    for name in ("bos_token", "eos_token", "sep_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(ref, name)
        assert getattr(ours, name + "_id") == getattr(ref, name + "_id")
    assert (ours.vocab_size, len(ours)) == (ref.vocab_size, len(ref)) == (42384, 42384)
    assert ours.get_vocab() == ref.get_vocab()
    assert ours.model_max_length == 1024 and ours.padding_side == "right"
    tokens = ours.tokenize("Naloxone reverses hypotension")
    assert tokens == ["Nal", "oxone</w>", "reverses</w>", "hypotension</w>"]
    assert ours.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    ids = ours.convert_tokens_to_ids(tokens + ["never-a-token"])
    assert ids[-1] == ours.unk_token_id
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(torch.tensor(ids[:2])) == tokens[:2]


def test_save_pretrained_loads_in_transformers(ours, tmp_path, texts):
    transformers = pytest.importorskip("transformers")
    ours.padding_side = "left"
    try:
        ours.save_pretrained(tmp_path)
    finally:
        ours.padding_side = "right"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BioGptTokenizer"
    theirs = transformers.BioGptTokenizer.from_pretrained(str(tmp_path))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    again = BioGptTokenizer.from_pretrained(tmp_path)
    assert theirs.padding_side == again.padding_side == "left"
    for text in texts[:30]:
        expected = ours(text)["input_ids"]
        assert theirs(text)["input_ids"] == auto(text)["input_ids"] == again(text)["input_ids"] == expected


def test_save_vocabulary_returns_paths_like_reference(ours, ref, tmp_path):
    mine = ours.save_vocabulary(tmp_path / ".", filename_prefix="x")
    (tmp_path / "ref").mkdir()
    theirs = ref.save_vocabulary(str(tmp_path / "ref"), filename_prefix="x")
    assert [p.rsplit("/", 1)[1] for p in mine] == [p.rsplit("/", 1)[1] for p in theirs] == ["x-vocab.json",
                                                                                              "x-merges.txt"]
    for a, b in zip(mine, theirs):
        assert open(a, encoding="utf-8").read() == open(b, encoding="utf-8").read()


# ---------------------------------------------------------------------------------------------- offsets
def check_offsets(tok: BioGptTokenizer, text: str) -> None:
    tokens, spans = tok.tokenize_with_offsets(text)
    assert tokens == tok.tokenize(text) and len(spans) == len(tokens)
    previous = 0
    for token, (start, end) in zip(tokens, spans):
        assert previous <= start <= end <= len(text), (text, token, start, end)
        previous = end
        surface = token.replace("</w>", "")
        if "&" not in surface and surface != "@-@":  # no Moses rewriting inside: the span spells the piece
            assert text[start:end] == surface, (text, token, start, end)
        elif surface in ("&amp;", "&quot;", "&apos;", "&lt;", "&gt;", "&#91;", "&#93;", "&#124;", "@-@"):
            assert end - start == 1 and text[start] in "&\"'<>[]|-", (text, token, start, end)


def test_offset_invariants(ours, texts):
    for text in texts:
        check_offsets(ours, text)


_PIECES = st.sampled_from(["</s>", "<unk>", "&amp;", "n't", "'s", "...", "@-@", " ", "\t", "\n", "\u00a0", "-",
                           "α", "µ", "°", "é", "protein", "kinase", "IL", "2", ",", ".", '"', "'", "[", "]", "<", ">",
                           "|", "&", "/", "(", ")"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_PIECES, st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=4)),
                max_size=12).map("".join))
def test_random_text_offsets_and_parity(ours, ref, text):
    check_offsets(ours, text)
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    ids = ours(text)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_offsets_exact(ours):
    text = "  α-synuclein &amp; 37 °C  "
    assert list(zip(*ours.tokenize_with_offsets(text))) == [
        ("α</w>", (2, 3)), ("@-@</w>", (3, 4)), ("synuclein</w>", (4, 13)), ("&amp;</w>", (14, 15)),
        ("amp</w>", (15, 18)), (";</w>", (18, 19)), ("37</w>", (20, 22)), ("°</w>", (23, 24)), ("C</w>", (24, 25))]
    second = [(0, 0), (0, 2), (3, 7), (8, 9), (9, 11), (11, 12), (13, 14), (14, 15), (15, 16), (16, 17), (18, 20)]
    assert ours("He said \"no\" [1]. no", return_offsets_mapping=True)["offset_mapping"] == second
    # per text in a batch, pads get (0, 0)
    enc = ours(["Naloxone reverses", "He said \"no\" [1]. no"], return_offsets_mapping=True, padding=True)
    assert enc["offset_mapping"] == [[(0, 0), (0, 3), (3, 8), (9, 17)] + [(0, 0)] * 7, second]
    # a special token written in the text keeps its real span; the one we add gets (0, 0)
    assert ours("x </s>", return_offsets_mapping=True)["offset_mapping"] == [(0, 0), (0, 1), (2, 6)]


def test_offsets_for_pieces_split_inside_an_escape():
    # "&" is escaped to "&amp;"; if BPE cut inside it, the first piece gets the "&", the rest an empty span after it
    assert _align_pieces("a&b", 0, 3, "a&amp;b", ("a&am", "p;b</w>")) == ([(0, 2), (2, 3)], 3)
    assert _align_pieces("x-y", 1, 3, "@-@", ("@-", "@</w>")) == ([(1, 2), (2, 2)], 2)
    # text Moses rewrote beyond what we model: empty spans, in order, and the cursor does not move
    assert _align_pieces("DOTMULTI", 0, 8, ".", (".</w>",)) == ([(0, 0)], 0)


def test_offsets_with_padding_tensors_and_truncation(ours):
    texts = ["IL-2 at 5 mg/kg", "α"]
    enc = ours(texts, return_offsets_mapping=True, padding=True, padding_side="left", return_tensors="pt")
    assert enc["offset_mapping"].shape == (*enc["input_ids"].shape, 2)
    assert enc["offset_mapping"][1].tolist()[-2:] == [[0, 0], [0, 1]]
    assert (enc["offset_mapping"][1][enc["attention_mask"][1] == 0] == 0).all()
    truncated = ours(texts[0], return_offsets_mapping=True, truncation=True, max_length=3)
    assert truncated["offset_mapping"] == [(0, 0), (0, 2), (2, 3)]
    assert "offset_mapping" not in ours(texts)  # only on request, so model(**enc) keeps working


# ----------------------------------------------------------------------------------- API without ../shared
def test_batch_encoding_api(tiny_dir):
    tok = BioGptTokenizer.from_pretrained(tiny_dir)
    enc = tok("The patient", return_tensors="pt")
    assert isinstance(enc, BatchEncoding) and enc.input_ids is enc["input_ids"]
    assert enc.input_ids.shape == (1, 3) and enc.input_ids[0, 0].item() == tok.sep_token_id == 2
    assert set(enc) == {"input_ids", "attention_mask"}
    assert torch.equal(tok.encode("The patient", return_tensors="pt"), enc.input_ids)
    assert enc.to("cpu") is enc and enc.attention_mask.device.type == "cpu"
    with pytest.raises(AttributeError):
        enc.offset_mapping
    assert isinstance(tok(["a", "b c"], padding=True, return_tensors="np")["input_ids"], np.ndarray)


def test_unequal_lengths_to_tensors_is_a_clear_error(tiny_dir):
    tok = BioGptTokenizer.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["The patient", "The patient received aspirin"], return_tensors="pt")


def test_padding_truncation_and_model_max_length(tiny_dir):
    tok = BioGptTokenizer.from_pretrained(tiny_dir, model_max_length=4, padding_side="left")
    long = "The patients were treated with aspirin and ibuprofen"
    assert len(tok(long)["input_ids"]) > 4  # model_max_length alone does not truncate
    assert tok(long, truncation=True)["input_ids"] == tok(long)["input_ids"][:4]
    assert len(tok(long, truncation=True, max_length=6)["input_ids"]) == 6
    enc = tok(["The", long], padding="max_length", max_length=5, truncation=True)
    assert enc["input_ids"][0] == [1, 1, 1, 2, tok.convert_tokens_to_ids("The</w>")]
    assert enc["attention_mask"][0] == [0, 0, 0, 1, 1] and enc["attention_mask"][1] == [1] * 5
    right = tok(["The", "The patient"], padding=True, padding_side="right")
    assert right["input_ids"][0][-1] == tok.pad_token_id and right["attention_mask"][0][-1] == 0
    with pytest.raises(ValueError):
        tok("x", padding_side="middle")
    with pytest.raises(ValueError):
        tok("x", padding="sideways")


def test_decode_inputs(tiny_dir):
    tok = BioGptTokenizer.from_pretrained(tiny_dir)
    ids = tok("The patients received aspirin.")["input_ids"]
    text = "</s>The patients received aspirin."  # as the reference: "</s>" has no "</w>", so no space follows
    assert tok.decode(ids) == tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == text
    assert tok.decode(ids, skip_special_tokens=True) == "The patients received aspirin."
    assert tok.batch_decode([ids, ids[:2]], skip_special_tokens=True) == ["The patients received aspirin.", "The"]


def test_special_tokens_missing_from_vocab_are_added_after_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "vocab.json").write_text(json.dumps({"a</w>": 0, "b</w>": 1, "<unk>": 2}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("", encoding="utf-8")
    ours, ref = BioGptTokenizer.from_pretrained(tmp_path), transformers.BioGptTokenizer.from_pretrained(str(tmp_path))
    assert (ours.vocab_size, len(ours)) == (ref.vocab_size, len(ref)) == (3, 6)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(ref, name)
    assert ours("a c <pad>")["input_ids"] == ref("a c <pad>")["input_ids"]
    assert ours.decode([0, 5, 3]) == ref.decode([0, 5, 3])
