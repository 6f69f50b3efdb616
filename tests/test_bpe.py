"""BPE tools: the fairseq -> Hugging Face converter and the fastBPE-style learner."""

from __future__ import annotations

import json
import time

import pytest
import sacremoses

from biogpt.bpe import convert_fairseq_vocab, learn_bpe, main
from biogpt.tokenization import BioGptTokenizer


def read_corpus(shared_dir, name="CDR_DevelopmentSet.PubTator.txt", limit=None) -> list[str]:
    texts = []
    with open(shared_dir / "data/bc5cdr" / name, encoding="utf-8") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("|", 2)
            if len(parts) == 3 and parts[1] in ("t", "a"):
                texts.append(parts[2])
    return texts[:limit]


# ---------------------------------------------------------------------------------------------- converter
def test_convert_base_vocabulary(shared_dir, tmp_path):
    source = shared_dir / "data/biogpt-vocab/base"
    vocab_path, merges_path = convert_fairseq_vocab(source / "dict.txt", source / "bpecodes", tmp_path)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    assert len(vocab) == 42384 and sorted(vocab.values()) == list(range(42384))
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    lines = (source / "dict.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].split()[0] == "." and vocab[".</w>"] == 4
    continuation = next(i for i, line in enumerate(lines) if line.split()[0].endswith("@@"))
    token = lines[continuation].split()[0]
    assert vocab[token[:-2]] == continuation + 4  # "X@@" is spelled "X"
    last = lines[-1].split()[0]
    assert vocab[last[:-2] if last.endswith("@@") else last + "</w>"] == 42383
    assert merges_path.read_bytes() == (source / "bpecodes").read_bytes()


def test_convert_tiny_by_hand(tmp_path):
    (tmp_path / "dict.txt").write_text("the 10\nin@@ 7\ng 3\n", encoding="utf-8")
    (tmp_path / "bpecodes").write_text("i n 20\nt h 10\nth e</w> 9\n", encoding="utf-8")
    convert_fairseq_vocab(tmp_path / "dict.txt", tmp_path / "bpecodes", tmp_path / "out")
    vocab = json.loads((tmp_path / "out/vocab.json").read_text(encoding="utf-8"))
    assert vocab == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "the</w>": 4, "in": 5, "g</w>": 6}
    tok = BioGptTokenizer.from_pretrained(tmp_path / "out")
    assert tok.tokenize("the ing") == ["the</w>", "in", "g</w>"]
    assert tok("the ing")["input_ids"] == [2, 4, 5, 6]


def test_convert_rejects_malformed_dictionary(tmp_path):
    (tmp_path / "dict.txt").write_text("the 10\nbroken\n", encoding="utf-8")
    (tmp_path / "bpecodes").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="dict.txt:2"):
        convert_fairseq_vocab(tmp_path / "dict.txt", tmp_path / "bpecodes", tmp_path / "out")


# ------------------------------------------------------------------------------------------------ learner
def test_learn_by_hand(tmp_path):
    learn_bpe(["low low low lower newest newest"], 10, tmp_path, min_frequency=2)
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    # (l, o) occurs 4 times; then (lo, w</w>) and (w, e) tie at 3: the lexicographically smaller pair wins.
    # Pairs seen once, like (we, r</w>), stay below min_frequency.
    assert merges == ["l o 4", "lo w</w> 3", "w e 3", "e we 2", "ewe s 2", "ewes t</w> 2", "n ewest</w> 2"]
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert list(vocab)[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and sorted(vocab.values()) == list(range(len(vocab)))
    assert {"l", "l</w>", "r", "r</w>", "lo", "low</w>"} <= set(vocab)
    tok = BioGptTokenizer.from_pretrained(tmp_path)
    assert tok.tokenize("low lower") == ["low</w>", "lo", "we", "r</w>"]
    assert tok.unk_token_id not in tok("lower newest west")["input_ids"]


def test_learn_is_deterministic(shared_dir, tmp_path):
    texts = read_corpus(shared_dir, limit=80)
    learn_bpe(texts, 300, tmp_path / "a")
    learn_bpe(reversed(texts), 300, tmp_path / "b")  # input order must not matter either
    for name in ("merges.txt", "vocab.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len((tmp_path / "a/merges.txt").read_text(encoding="utf-8").splitlines()) == 300


@pytest.fixture(scope="module")
def learned(shared_dir, tmp_path_factory):
    texts = read_corpus(shared_dir)  # ~0.65 MB
    out = tmp_path_factory.mktemp("learned")
    start = time.perf_counter()
    learn_bpe(texts, 3000, out)
    return texts, out, time.perf_counter() - start


def test_learn_is_fast(learned):
    _, _, seconds = learned
    assert seconds < 30, f"learning 3000 merges on 0.65 MB took {seconds:.1f} s"


def test_learned_files_work_in_transformers(learned):
    transformers = pytest.importorskip("transformers")
    texts, out, _ = learned
    ours, ref = BioGptTokenizer.from_pretrained(out), transformers.BioGptTokenizer.from_pretrained(str(out))
    assert len(ours) == len(ref) == len(json.loads((out / "vocab.json").read_text(encoding="utf-8")))
    samples = texts[::10] + ["Unseen: Ωmega & <b>tags</b>, α-β 37 °C"]
    for text in samples:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_learned_vocabulary_round_trips_training_text(learned):
    texts, out, _ = learned
    tok = BioGptTokenizer.from_pretrained(out)
    moses = sacremoses.MosesTokenizer(lang="en")
    demoses = sacremoses.MosesDetokenizer(lang="en")
    for text in texts[:100]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids  # every training character is in the vocabulary
        # BPE is lossless: decoding gives exactly what Moses' own round trip gives
        words = moses.tokenize(text, aggressive_dash_splits=True, escape=True)
        assert tok.decode(ids, skip_special_tokens=True) == demoses.detokenize(words), text
    # merges make words shorter than characters
    words = " ".join(texts[:50]).split()
    assert len(tok.tokenize(" ".join(texts[:50]))) < 0.5 * sum(map(len, words))


def test_cli(tmp_path, capsys):
    (tmp_path / "dict.txt").write_text("a 3\nb@@ 2\n", encoding="utf-8")
    (tmp_path / "bpecodes").write_text("b a</w> 2\n", encoding="utf-8")
    assert main(["convert", str(tmp_path / "dict.txt"), str(tmp_path / "bpecodes"), str(tmp_path / "conv")]) == 0
    assert BioGptTokenizer.from_pretrained(tmp_path / "conv").tokenize("ba a") == ["ba</w>", "a</w>"]
    (tmp_path / "corpus.txt").write_text("aspirin aspirin\nasthma aspirin\n", encoding="utf-8")
    assert main(["learn", "--num-merges", "5", str(tmp_path / "learned"), str(tmp_path / "corpus.txt")]) == 0
    assert len((tmp_path / "learned/merges.txt").read_text(encoding="utf-8").splitlines()) == 5
    assert "vocab.json" in capsys.readouterr().out
