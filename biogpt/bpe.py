"""BPE vocabulary tools in BioGPT's (fastBPE) format.

- `convert_fairseq_vocab`: the original BioGPT release files (`dict.txt` + `bpecodes`) to the Hugging Face layout
  (`vocab.json` + `merges.txt`) that `BioGptTokenizer` (ours and transformers') reads.
- `learn_bpe`: learn new merges from raw text, fastBPE style (Moses-tokenized words, `</w>` on a word's last
  symbol), and write the same two files.

Command line::

    python -m biogpt.bpe convert DICT_TXT BPECODES OUT_DIR
    python -m biogpt.bpe learn --num-merges 4000 [--min-frequency 2] OUT_DIR CORPUS.txt [CORPUS.txt ...]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, in this order, as in the published vocab.json
END_OF_WORD = "</w>"
CONTINUATION = "@@"  # fairseq's dict.txt marks a token that continues into the next one with this suffix


def _write_vocab(out_dir: Path, tokens: Iterable[str]) -> Path:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    path = out_dir / "vocab.json"
    path.write_text(json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def hf_spelling(symbol: str) -> str:
    """A fairseq dictionary symbol as vocab.json spells it: `X@@` -> `X`, any other `X` -> `X</w>`; the four
    special tokens stay as they are."""
    if symbol in SPECIAL_TOKENS:
        return symbol
    return symbol[: -len(CONTINUATION)] if symbol.endswith(CONTINUATION) else symbol + END_OF_WORD


def convert_fairseq_vocab(dict_txt: str | os.PathLike, bpecodes: str | os.PathLike, out_dir: str | os.PathLike
                          ) -> tuple[Path, Path]:
    """Write `vocab.json` and `merges.txt` for the fairseq dictionary `dict_txt` and fastBPE codes `bpecodes`.

    vocab.json: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then dictionary line i -> id i + 4, spelled `X` for `X@@`
    and `X</w>` for any other `X`. merges.txt: `bpecodes` byte for byte.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    with open(dict_txt, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            fields = line.rstrip("\n").split(" ")
            if len(fields) < 2 or not fields[0]:
                raise ValueError(f"{dict_txt}:{number + 1}: expected 'token count', got {line!r}")
            spelled = hf_spelling(fields[0])
            if spelled in vocab:
                raise ValueError(f"{dict_txt}:{number + 1}: {spelled!r} is already in the vocabulary")
            # ids follow line numbers even though specials come first: fairseq reserves 0..3 for them
            vocab[spelled] = number + len(SPECIAL_TOKENS)
    vocab_path = out / "vocab.json"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    merges_path = out / "merges.txt"
    merges_path.write_bytes(Path(bpecodes).read_bytes())
    return vocab_path, merges_path


def _moses_words(texts: Iterable[str]) -> Counter:
    """Word counts of `texts` after the tokenizer's Moses step (same options, so learned pieces match at use)."""
    import sacremoses

    moses = sacremoses.MosesTokenizer(lang="en")
    counts: Counter = Counter()
    for text in texts:
        counts.update(moses.tokenize(text, aggressive_dash_splits=True, return_str=False, escape=True))
    counts.pop("", None)
    return counts


def learn_bpe(
    texts: Iterable[str],
    num_merges: int,
    out_dir: str | os.PathLike,
    min_frequency: int = 2,
) -> tuple[Path, Path]:
    """Learn up to `num_merges` BPE merges from `texts` and write `merges.txt` + `vocab.json` to `out_dir`.

    Each text is Moses-tokenized like `BioGptTokenizer` does; a word is its characters with `</w>` glued to the last
    one. The most frequent adjacent pair (weighted by word counts) is merged repeatedly; ties go to the
    lexicographically smallest (left, right), so results are deterministic. Learning stops early when the best pair
    occurs fewer than `min_frequency` times.

    merges.txt has fastBPE's `left right count` lines. vocab.json holds the four special tokens (ids 0..3), every
    character seen in both its word-internal (`c`) and word-final (`c</w>`) spellings, then every merge result in
    merge order, so any word made of seen characters encodes without `<unk>`.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    word_counts = _moses_words(texts)
    # Sorted so that the word order (hence every tie and the files) does not depend on the input order.
    words = [list(w[:-1]) + [w[-1] + END_OF_WORD] for w in sorted(word_counts)]
    freqs = [word_counts[w] for w in sorted(word_counts)]

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words that (may) contain it
    for index, (symbols, freq) in enumerate(zip(words, freqs)):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freq
            where[pair].add(index)
    # Max-heap by count (ties: smallest pair). Entries go stale when counts change; they are checked on pop.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str, int]] = []
    while len(merges) < num_merges and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # stale entry
        if -negative < max(min_frequency, 1):
            break
        merges.append((pair[0], pair[1], -negative))
        changed: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair)):
            symbols, freq = words[index], freqs[index]
            merged = _merge(symbols, pair)
            if merged is symbols:
                continue  # an earlier merge already consumed this occurrence
            # Incremental update: only this word's pairs change, by its frequency.
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= freq
                changed.add(old)
            for new in zip(merged, merged[1:]):
                pair_counts[new] += freq
                where[new].add(index)
                changed.add(new)
            words[index] = merged
        pair_counts.pop(pair, None)
        for other in changed:
            count = pair_counts.get(other, 0)
            if count > 0:
                heapq.heappush(heap, (-count, other))
            else:
                pair_counts.pop(other, None)

    merges_path = out / "merges.txt"
    merges_path.write_text("".join(f"{a} {b} {count}\n" for a, b, count in merges), encoding="utf-8")
    characters = sorted({char for word in word_counts for char in word})
    symbols = characters + [char + END_OF_WORD for char in characters] + [a + b for a, b, _ in merges]
    return _write_vocab(out, symbols), merges_path


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """`symbols` with every non-overlapping occurrence of `pair` (left to right) merged; the same list if none."""
    left, right = pair
    merged, i, found = [], 0, False
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
            merged.append(left + right)
            i += 2
            found = True
        else:
            merged.append(symbols[i])
            i += 1
    return merged if found else symbols


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biogpt.bpe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="dict.txt + bpecodes -> vocab.json + merges.txt")
    convert.add_argument("dict_txt")
    convert.add_argument("bpecodes")
    convert.add_argument("out_dir")
    learn = commands.add_parser("learn", help="learn BPE merges from text files (one document or sentence a line)")
    learn.add_argument("out_dir")
    learn.add_argument("corpus", nargs="+", help="UTF-8 text files")
    learn.add_argument("--num-merges", type=int, required=True)
    learn.add_argument("--min-frequency", type=int, default=2)
    args = parser.parse_args(argv)

    if args.command == "convert":
        paths = convert_fairseq_vocab(args.dict_txt, args.bpecodes, args.out_dir)
    else:
        def lines() -> Iterable[str]:
            for name in args.corpus:
                with open(name, encoding="utf-8") as handle:
                    yield from handle
        paths = learn_bpe(lines(), args.num_merges, args.out_dir, min_frequency=args.min_frequency)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
