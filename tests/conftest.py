"""Fixtures shared by the whole suite: where ../shared is, and tiny checkpoints in the exact Hub layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIOGPT_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's read-only shared data (real vocabularies, BC5CDR, HoC); skip where a clone has none."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): tests on the real BioGPT vocabulary and corpora need it")
    return SHARED


@pytest.fixture(scope="session")
def real_vocab_dir(shared_dir, tmp_path_factory) -> Path:
    """microsoft/biogpt's vocab.json + merges.txt, made from the original release files by our converter."""
    from biogpt.bpe import convert_fairseq_vocab

    out = tmp_path_factory.mktemp("biogpt-base-vocab")
    source = shared_dir / "data/biogpt-vocab/base"
    convert_fairseq_vocab(source / "dict.txt", source / "bpecodes", out)
    return out


@pytest.fixture(scope="session")
def real_tokenizer(real_vocab_dir):
    """The real BioGPT tokenizer (ids of the published checkpoints)."""
    from biogpt.tokenization import BioGptTokenizer

    return BioGptTokenizer.from_pretrained(real_vocab_dir)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run tiny models, dominated by thread start-up costs: one thread is ~20x faster on a busy 2-core box."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def caches_in_temporary_folders(tmp_path_factory):
    """Tests write only to temporary folders: point the library's own caches (fairseq conversions, the CPU kernel
    probe's choices) at them."""
    values = {"BIOGPT_FAIRSEQ_CACHE_DIR": str(tmp_path_factory.mktemp("fairseq-conversions")),
              "BIOGPT_KERNEL_CACHE": str(tmp_path_factory.mktemp("cpu-kernels") / "cpu-kernels.json")}
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    yield
    for name, value in previous.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value
