"""Property fuzzing of the code that sees untrusted input: `python -m bench.fuzz [--cases 10000] [--out FILE]`.

Targets (each a hypothesis property, shared with tests/test_fuzz.py which runs a few hundred cases in CI):
- `tokenizer`: random text (any non-surrogate code point incl. controls, HTML, emoji, very long words) through
  `clean_text` and the tokenizer: only `InputError` from validation, and every offset inside the text, in order
  and non-overlapping.
- `params`: random dicts of generation parameters of random types: only `GenerationParameterError`, and what is
  accepted is accepted by the library's `GenerationConfig.validate` too.
- `aggregate`: random texts with random label probabilities (BIO, BIOES and plain label sets, all five strategies)
  through `aggregate`: spans inside the text, non-overlapping, `text[start:end] == entity["text"]`.
- `extract`: random texts through `extract_entities` on a tiny random model with 24 positions (so windowing and
  long-sentence splitting run): the same span properties.

The tokenizer targets run on a BPE vocabulary learned from a few sentences (no files needed) and, with
`--real-vocab DIR` (vocab.json + merges.txt of microsoft/biogpt), on the real one too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CORPUS = [
    "COVID-19 is a respiratory disease caused by the SARS-CoV-2 coronavirus.",
    "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer.",
    "Metformin reduces blood glucose in patients with type 2 diabetes (T2D) & obesity.",
    "Aspirin inhibits platelet aggregation; warfarin increases the risk of bleeding.",
] * 4
FRAGMENTS = ["Aspirin", "IL-6", "TNF-α", "β-catenin", " ", "  ", "\n", "\t", ".", ",", "-", "--", "'", '"', "&",
             "&amp;", "<b>", "</b>", "<script>alert(1)</script>", "@-@", "&#124;", "|", "[", "]", "(", ")", "…",
             "😷", "👩\u200d🔬", "🇺🇳", "\u200b", "\u00a0", "\x00", "\x1b[31m", "\r\n", "ﬁ", "Å", "é", "中文",
             "مرحبا", "</s>", "<unk>", "<pad>", "10mg/kg", "p<0.05", "Ca2+", "http://x.org/a?b=c"]
LABEL_SETS = {
    "bio": ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"],
    "bioes": ["O", "B-Gene", "I-Gene", "E-Gene", "S-Gene", "B-Species", "E-Species", "S-Species"],
    "plain": ["O", "Chemical", "Disease"],
}
STRATEGIES = ("none", "simple", "first", "average", "max")

# Text: any code point except lone surrogates (validation refuses those; a separate case checks the refusal).
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
pieces_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=40).map("".join)
long_words = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-αβ0123456789"), min_size=50, max_size=600)
texts = st.one_of(any_text, pieces_text, long_words)
values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(), st.floats(),
                   st.floats(-5, 5), st.text(max_size=8), st.lists(st.integers(0, 9), max_size=3),
                   st.sampled_from(["never", "0.5", "1"]))


def learned_tokenizer(out_dir: Path) -> Any:
    """A BioGptTokenizer on a BPE vocabulary learned from `CORPUS` (written to `out_dir`)."""
    from biogpt.bpe import learn_bpe
    from biogpt.tokenization import BioGptTokenizer

    learn_bpe(CORPUS, num_merges=150, out_dir=out_dir)
    return BioGptTokenizer.from_pretrained(out_dir)


def tiny_ner_model(vocab_size: int, labels: list[str]) -> Any:
    """A random token-classification model with 24 positions: long texts are cut into many windows."""
    import torch

    from biogpt import BioGptConfig
    from biogpt.modeling import BioGptForTokenClassification

    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=24, id2label=dict(enumerate(labels)))
    return BioGptForTokenClassification.from_config(config).eval()


# ----------------------------------------------------------------------------------------------------------------
# The properties
# ----------------------------------------------------------------------------------------------------------------
def check_spans(text: str, spans: list[tuple[int, int]], allow_empty: bool) -> None:
    """Every span inside `text`, in order and non-overlapping (empty spans allowed where the API allows them)."""
    previous_end = 0
    for start, end in spans:
        assert 0 <= start <= end <= len(text), (start, end, len(text))
        assert allow_empty or start < end, (start, end)
        assert start >= previous_end, f"span {(start, end)} overlaps the previous one ending at {previous_end}"
        previous_end = end


def check_entities(text: str, entities: list[dict]) -> None:
    for entity in entities:
        assert entity["text"] == text[entity["start"]:entity["end"]], entity
    check_spans(text, [(e["start"], e["end"]) for e in entities], allow_empty=False)


def tokenizer_case(tokenizer: Any, text: str) -> None:
    from biogpt.validation import InputError, clean_text, is_clean

    try:
        clean = clean_text(text, max_chars=10_000)
    except InputError as exc:
        # Refused only as empty: nothing but whitespace and control characters.
        assert not "".join(c for c in text if is_clean(c)).strip(), str(exc)
        return
    assert is_clean(clean) and clean.strip()
    tokens, spans = tokenizer.tokenize_with_offsets(clean)
    assert len(tokens) == len(spans) and tokens == tokenizer.tokenize(clean)
    check_spans(clean, spans, allow_empty=True)
    encoded = tokenizer(clean, return_offsets_mapping=True)
    assert len(encoded["input_ids"]) == len(tokens) + 1 and encoded["offset_mapping"][1:] == spans
    tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)


def params_case(params: dict) -> None:
    from biogpt.errors import GenerationParameterError
    from biogpt.generation import GenerationConfig
    from biogpt.settings import Settings
    from biogpt.validation import check_generation_params

    try:
        checked = check_generation_params(params, Settings(), prompt_tokens=len(params), max_positions=1024)
    except GenerationParameterError as exc:
        assert str(exc)
        return
    library = {k: v for k, v in checked.items() if k not in ("seed", "truncate")}
    config = GenerationConfig()
    assert config.update(**library) == {}
    config.validate()  # what the boundary accepts, the library accepts


def aggregate_case(tokenizer: Any, text: str, scheme: str, strategy: str, seed: int, threshold: float) -> None:
    import torch

    from biogpt.tasks.entities import TokenScores, aggregate

    labels = LABEL_SETS[scheme]
    tokens, spans = tokenizer.tokenize_with_offsets(text)
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(len(tokens), len(labels), generator=generator) * 3, dim=-1)
    word_start = [True] + [tokens[i - 1].endswith("</w>") for i in range(1, len(tokens))]
    scores = [TokenScores(probs[i], *spans[i], is_word_start=word_start[i], index=i + 1) for i in range(len(tokens))]
    check_entities(text, aggregate(scores, dict(enumerate(labels)), text, strategy, threshold))


def extract_case(model: Any, tokenizer: Any, text: str, strategy: str) -> None:
    from biogpt.tasks.entities import extract_entities

    check_entities(text, extract_entities(model, tokenizer, text, aggregation_strategy=strategy, batch_size=4))


# ----------------------------------------------------------------------------------------------------------------
# Hypothesis wrappers: the same property at any example count
# ----------------------------------------------------------------------------------------------------------------
def fuzz_settings(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def run_tokenizer(tokenizer: Any, cases: int, counter: Optional[list] = None) -> None:
    @fuzz_settings(cases)
    @given(text=texts)
    def prop(text: str) -> None:
        tokenizer_case(tokenizer, text)
        _count(counter)

    prop()


def run_params(cases: int, counter: Optional[list] = None) -> None:
    from biogpt.validation import GENERATION_PARAMETERS

    keys = st.one_of(st.sampled_from(sorted([*GENERATION_PARAMETERS, "do_sample", "truncate", "early_stopping"])), st.sampled_from(["min_length", "foo", ""]))

    @fuzz_settings(cases)
    @given(params=st.dictionaries(keys, values, max_size=6))
    def prop(params: dict) -> None:
        params_case(params)
        _count(counter)

    prop()


def run_aggregate(tokenizer: Any, cases: int, counter: Optional[list] = None) -> None:
    @fuzz_settings(cases)
    @given(text=texts, scheme=st.sampled_from(sorted(LABEL_SETS)),
           strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 2**31), threshold=st.floats(0, 1))
    def prop(text: str, scheme: str, strategy: str, seed: int, threshold: float) -> None:
        aggregate_case(tokenizer, text, scheme, strategy, seed, threshold)
        _count(counter)

    prop()


def run_extract(model: Any, tokenizer: Any, cases: int, counter: Optional[list] = None) -> None:
    @fuzz_settings(cases)
    @given(text=texts, strategy=st.sampled_from(STRATEGIES))
    def prop(text: str, strategy: str) -> None:
        extract_case(model, tokenizer, text, strategy)
        _count(counter)

    prop()


def _count(counter: Optional[list]) -> None:
    if counter is not None:
        counter[0] += 1


def main(argv: Optional[list[str]] = None) -> dict:
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="examples per target")
    parser.add_argument("--real-vocab", type=Path, help="a directory with microsoft/biogpt's vocab.json + merges.txt")
    parser.add_argument("--out", type=Path, help="write the counts as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from biogpt.tokenization import BioGptTokenizer

    learned = learned_tokenizer(Path(tempfile.mkdtemp(prefix="fuzz-vocab-")))
    model = tiny_ner_model(len(learned), LABEL_SETS["bio"])
    targets: list[tuple[str, Callable[[list], None]]] = [
        ("tokenizer (learned vocab)", lambda c: run_tokenizer(learned, args.cases, c)),
        ("params", lambda c: run_params(args.cases, c)),
        ("aggregate (learned vocab)", lambda c: run_aggregate(learned, args.cases, c)),
        ("extract_entities (tiny model)", lambda c: run_extract(model, learned, args.cases, c)),
    ]
    if args.real_vocab:
        real = BioGptTokenizer.from_pretrained(args.real_vocab)
        targets.insert(1, ("tokenizer (real BioGPT vocab)", lambda c: run_tokenizer(real, args.cases, c)))
        targets.insert(3, ("aggregate (real BioGPT vocab)", lambda c: run_aggregate(real, args.cases, c)))
    rows = []
    for name, run in targets:
        counter, started = [0], time.perf_counter()
        run(counter)  # a failing property raises with hypothesis' minimal example
        rows.append({"target": name, "cases": counter[0], "failures": 0,
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name:34s} {counter[0]:>7,} cases  0 failures  {rows[-1]['seconds']:>7.1f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return {"targets": rows}


if __name__ == "__main__":
    main()
