"""Shared pieces of the app tests: real checkpoints for the three tasks, and a launched app server.

The bundled demo models (`make demo`) are used when they are built; otherwise tiny checkpoints in the exact Hub
layout (config.json + model.safetensors + vocab.json + merges.txt) are written once per session, with a BPE
vocabulary learned from a few biomedical sentences. Either way the app loads them through the real ModelManager.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent

SENTENCES = [
    "COVID-19 is a respiratory disease caused by the SARS-CoV-2 coronavirus.",
    "Ibuprofen is best used for pain, fever and inflammation.",
    "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer.",
    "Metformin reduces blood glucose in patients with type 2 diabetes.",
    "Aspirin inhibits platelet aggregation and prevents myocardial infarction.",
    "Warfarin increases the risk of bleeding when combined with ibuprofen.",
] * 4
NER_LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
CLASS_LABELS = ["activating invasion and metastasis", "inducing angiogenesis", "resisting cell death"]


@dataclass(frozen=True)
class Checkpoints:
    lm: str
    ner: str
    classify: str
    demo: bool  # True when these are the bundled demo models (source "demo" for every task)


def _tiny(root: Path) -> Checkpoints:
    import torch

    from biogpt import BioGptConfig
    from biogpt.bpe import learn_bpe
    from biogpt.modeling import (BioGptForCausalLM, BioGptForSequenceClassification,
                                 BioGptForTokenClassification)

    vocab_dir = root / "vocab"
    learn_bpe(SENTENCES, num_merges=200, out_dir=vocab_dir)
    vocab_size = len(json.loads((vocab_dir / "vocab.json").read_text(encoding="utf-8")))
    made = {}
    for name, cls, labels in (("lm", BioGptForCausalLM, None), ("ner", BioGptForTokenClassification, NER_LABELS),
                              ("classify", BioGptForSequenceClassification, CLASS_LABELS)):
        torch.manual_seed(0)
        extra = {"id2label": dict(enumerate(labels))} if labels else {}
        config = BioGptConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, **extra)
        model = cls.from_config(config)
        if name == "ner":  # make "O" likely but not certain, so spans with labels appear
            with torch.no_grad():
                model.classifier.bias.copy_(torch.tensor([0.0, 0.5, 0.2, 0.4, 0.1]))
        out = root / name
        model.save_pretrained(out)
        for file in ("vocab.json", "merges.txt"):
            (out / file).write_bytes((vocab_dir / file).read_bytes())
        made[name] = str(out)
    return Checkpoints(made["lm"], made["ner"], made["classify"], demo=False)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    from biogpt import catalog

    if all(catalog.demo_available(task) for task in catalog.DEMO_DIRS):
        return Checkpoints(catalog.DEMO, catalog.DEMO, catalog.DEMO, demo=True)
    return _tiny(tmp_path_factory.mktemp("tiny-checkpoints"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    demo: Any  # the launched gr.Blocks; `demo.workbench` holds the manager


@pytest.fixture(scope="session")
def paper_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the unpacked release of the paper's fine-tuned models (BIOGPT_FINETUNED_DIR): fairseq
    checkpoints in the released layout, "scripted" to write a known answer to the example inputs of
    tests/fairseq_fixtures.py (RE-BC5CDR-BioGPT, QA-PubMedQA-BioGPT, DC-HoC-BioGPT)."""
    import fairseq_fixtures as ff
    from biogpt.tasks.hoc import hoc_source
    from biogpt.tasks.pubmedqa import pubmedqa_source
    from biogpt.tasks.relations import title_abstract

    root = tmp_path_factory.mktemp("release")
    vocab = ff.task_vocab(tmp_path_factory.mktemp("release-bpe"))
    cdr = title_abstract(ff.BC5CDR["title"], ff.BC5CDR["abstract"]).lower()
    ff.scripted_task_checkpoint(root / "RE-BC5CDR-BioGPT", vocab, cdr, ff.BC5CDR["answer"], 9, "RE-BC5CDR-BioGPT")
    question = pubmedqa_source(ff.PUBMEDQA["question"], ff.PUBMEDQA["context"])
    ff.scripted_task_checkpoint(root / "QA-PubMedQA-BioGPT", vocab, question, ff.PUBMEDQA["answer"], 9,
                                "QA-PubMedQA-BioGPT")
    ff.scripted_task_checkpoint(root / "DC-HoC-BioGPT", vocab, hoc_source(ff.HOC["text"]), ff.HOC["answer"], 1,
                                "DC-HoC-BioGPT")
    return root


@pytest.fixture(scope="module")
def server(checkpoints: Checkpoints, paper_release: Path) -> Iterator[Server]:
    """The real app on 127.0.0.1 (a free port) with a fresh manager and the paper's (scripted) task models;
    closed at the end of the module."""
    from app import build_app
    from biogpt.manager import ModelManager
    from biogpt.settings import Settings

    settings = Settings(model=checkpoints.lm, preload=False, concurrency=2, max_new_tokens=64,
                        finetuned_dir=paper_release)
    demo = build_app(manager=ModelManager(max_models=4, settings=settings), settings=settings)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield Server(f"http://127.0.0.1:{port}/", demo)
    finally:
        demo.close()
