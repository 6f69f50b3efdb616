"""biogpt.annotate: every input format, rejects with reasons, results equal to the per-document task functions,
the output formats, a run killed with SIGKILL and restarted ending byte-identical to an uninterrupted one, and
Ctrl-C stopping after the current batch. Checkpoints: the bundled demo models and a tiny random NER model whose
short window forces several windows per document."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from biogpt.annotate import TASKS, RunConfig, annotate_texts, run_local
from biogpt.annotate.cli import main
from biogpt.annotate.models import load_for_task, model_info
from biogpt.annotate.readers import ReaderOptions, discover_inputs, iter_shards
from biogpt.catalog import demo_path
from biogpt.errors import ConfigError, InputError
from biogpt.generation import continuation_text
from biogpt.modeling import BioGptForCausalLM, BioGptForSequenceClassification, BioGptForTokenClassification
from biogpt.tasks.classify import classify
from biogpt.tasks.data import read_pubtator
from biogpt.tasks.entities import extract_entities, plan_windows
from biogpt.tokenization import BioGptTokenizer

REPO = Path(__file__).resolve().parent.parent

# (id, title, abstract): hand-written, in the style of the BC5CDR abstracts the demo NER model was trained on.
DOCS = [
    ("d1", "Lithium carbonate toxicity in a newborn infant.",
     "A newborn with massive tricuspid regurgitation, atrial flutter and congestive heart failure is described. "
     "Lithium may cause heart disease when taken during early pregnancy."),
    ("d2", "Cisplatin-induced nephrotoxicity in ovarian cancer.",
     "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer treated with cisplatin."),
    ("d3", "Aspirin and warfarin.",
     "Aspirin inhibits platelet aggregation and prevents myocardial infarction. Warfarin increases the risk of "
     "bleeding when combined with ibuprofen."),
]
TEXTS = {doc_id: f"{title} {abstract}" for doc_id, title, abstract in DOCS}


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ner_path() -> str:
    return str(demo_path("token-classification"))


@pytest.fixture(scope="module")
def ner(ner_path):
    """The demo NER model loaded as the engine loads it (same CPU kernels, so the same bits)."""
    return load_for_task(TASKS["ner"], ner_path)


@pytest.fixture(scope="module")
def tiny_ner_path(tmp_path_factory, ner_path) -> str:
    """A random NER model with 16 positions: every document above needs several windows, some sentences cut."""
    from biogpt import BioGptConfig

    torch.manual_seed(19)
    vocab = json.loads((Path(ner_path) / "vocab.json").read_text(encoding="utf-8"))
    config = BioGptConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=16,
                          id2label={0: "O", 1: "B-Chemical", 2: "I-Chemical", 3: "B-Disease", 4: "I-Disease"})
    model = BioGptForTokenClassification.from_config(config)
    with torch.no_grad():  # "O" likely but not certain, so that entities appear
        model.classifier.bias.copy_(torch.tensor([0.6, 0.5, 0.2, 0.4, 0.1]))
    out = tmp_path_factory.mktemp("tiny-ner")
    model.save_pretrained(out)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(ner_path) / name, out / name)
    return str(out)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _read(spec: Path | str, **options):
    """(id, text) of every document and (source, reason) of every reject, in order."""
    reader = ReaderOptions(**options)
    items = [item for shard in iter_shards(discover_inputs(spec, reader), reader, 2) for item in shard.items]
    documents = [(item.id, item.text) for item in items if hasattr(item, "text")]
    rejects = [(item.source, item.reason) for item in items if not hasattr(item, "text")]
    return documents, rejects


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of an output directory (its lock file aside), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _records(root: Path) -> list[dict]:
    """The JSONL records of a finished run, in the manifest's shard order."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["complete"] is True
    lines = []
    for shard in manifest["shards"]:
        lines += (root / "shards" / f"{shard['key']}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _corpus(path: Path, copies: int) -> Path:
    """`copies` × DOCS as JSONL (ids d1-0, d2-0, ...)."""
    return _write(path, _jsonl({"id": f"{doc_id}-{n}", "title": title, "abstract": abstract}
                               for n in range(copies) for doc_id, title, abstract in DOCS))


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
def test_every_input_format_gives_the_same_documents(tmp_path):
    expected = [(doc_id, TEXTS[doc_id]) for doc_id, _, _ in DOCS]
    jsonl_text = _jsonl({"id": doc_id, "text": TEXTS[doc_id]} for doc_id, _, _ in DOCS)
    out = io.StringIO()
    csv.writer(out).writerows([["id", "title", "abstract"], *DOCS])  # titles/abstracts hold commas: quoted
    pubtator = "".join(f"{doc_id}|t|{title}\n{doc_id}|a|{abstract}\n{doc_id}\t0\t7\t{title[:7]}\tChemical\n\n"
                       for doc_id, title, abstract in DOCS)
    inputs = {
        "a.jsonl": jsonl_text,
        "b.jsonl": _jsonl({"id": d, "title": t, "abstract": a} for d, t, a in DOCS),
        "c.csv": out.getvalue(),
        "d.tsv": "id\ttext\n" + "".join(f"{doc_id}\t{TEXTS[doc_id]}\n" for doc_id, _, _ in DOCS),
        "e.PubTator.txt": pubtator,
        "f.jsonl.gz": gzip.compress(jsonl_text.encode("utf-8")),
        "g.pubtator.gz": gzip.compress(pubtator.encode("utf-8")),
    }
    for name, content in inputs.items():
        assert _read(_write(tmp_path / name, content)) == (expected, []), name
    # Plain text: one document per line, the line number as its id.
    text_file = _write(tmp_path / "h.txt", "".join(TEXTS[doc_id] + "\n" for doc_id, _, _ in DOCS))
    assert _read(text_file) == ([("1", TEXTS["d1"]), ("2", TEXTS["d2"]), ("3", TEXTS["d3"])], [])
    # --format overrides the name; --id-field/--text-field pick other columns.
    other = _write(tmp_path / "i.data", "pmid,body\n7,Aspirin inhibits platelet aggregation.\n")
    assert _read(other, input_format="csv", id_field="pmid", text_field="body") == (
        [("7", "Aspirin inhibits platelet aggregation.")], [])


def test_directories_and_globs(tmp_path):
    corpus = tmp_path / "corpus"
    _write(corpus / "b" / "one.jsonl", _jsonl([{"id": "j1", "text": TEXTS["d1"]}]))
    _write(corpus / "a.txt", TEXTS["d2"] + "\n" + TEXTS["d3"] + "\n")
    _write(corpus / "notes.md", "not a corpus file")
    _write(corpus / ".hidden.jsonl", _jsonl([{"id": "h", "text": "hidden"}]))
    # Several files: path order, and text ids carry the file name so they stay distinct.
    assert _read(corpus)[0] == [("a.txt:1", TEXTS["d2"]), ("a.txt:2", TEXTS["d3"]), ("j1", TEXTS["d1"])]
    assert _read(str(corpus / "**" / "*.jsonl"))[0] == [("j1", TEXTS["d1"])]
    with pytest.raises(InputError, match="names no input file"):
        _read(str(corpus / "*.csv"))
    with pytest.raises(InputError, match="No such file"):
        _read(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="Cannot tell the format"):
        _read(corpus / "notes.md")


def test_spreadsheet_csv_and_broken_gzip(tmp_path):
    excel = _write(tmp_path / "excel.csv", "\ufeffid,text\r\nx1,Aspirin inhibits platelet aggregation.\r\n")
    assert _read(excel) == ([("x1", "Aspirin inhibits platelet aggregation.")], [])  # BOM and CRLF
    whole = gzip.compress(_jsonl({"id": n, "text": "aspirin"} for n in range(2000)).encode("utf-8"))
    cut = _write(tmp_path / "cut.jsonl.gz", whole[:len(whole) // 2])
    with pytest.raises(InputError, match="cut.jsonl.gz is not a complete gzip file"):
        _read(cut)


def test_bad_records_are_rejected_with_reasons_and_the_run_goes_on(tmp_path, ner_path):
    corpus = tmp_path / "in"
    _write(corpus / "a.jsonl", b"".join([
        json.dumps({"id": "good", "text": TEXTS["d2"]}).encode() + b"\n",
        b'{"id": "num", "text": 42}\n',
        b'{"id": "none"}\n',
        b'{"id": "blank", "text": "   "}\n',
        b'{"id": "broken", "text": \n',
        b'{"id": "bytes", "text": "caf\xff au lait"}\n',
        json.dumps({"id": "long", "text": "aspirin " * 100}).encode() + b"\n",
        b'[1, 2]\n',
        b'{"id": [1], "text": "aspirin"}\n',
    ]))
    _write(corpus / "b.csv", "id,text\nc1,Aspirin inhibits platelet aggregation.\nc2,too,many\n")
    _write(corpus / "c.pubtator", "p1|t|Aspirin.\np1|a|Warfarin and bleeding.\nstray line\n")
    _write(corpus / "d.txt", b"Ibuprofen is best used for pain.\n\xc3\x28 broken\n\n")
    out = tmp_path / "out"
    assert main([str(corpus), "--task", "ner", "--model", ner_path, "--output", str(out), "--max-chars", "500",
                 "--no-progress"]) == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["source"], r["reason"]) for r in rejects] == [
        ("num", "a.jsonl:2", "wrong type: 'text' is int, expected a string"),
        ("none", "a.jsonl:3", "no text: the record has no 'text', 'title' or 'abstract'"),
        ("blank", "a.jsonl:4", "no text (empty or only whitespace)"),
        (None, "a.jsonl:5", "invalid JSON (Expecting value at column 26)"),
        ("bytes", "a.jsonl:6", "undecodable bytes in the text at character 3 (not valid UTF-8)"),
        ("long", "a.jsonl:7", "text is 800 characters long, over the cap of 500 (--max-chars)"),
        (None, "a.jsonl:8", "wrong type: the line is a JSON list, expected an object"),
        (None, "a.jsonl:9", "wrong type: 'id' is list, expected a string or an integer"),
        (None, "b.csv:3", "malformed row: 3 fields where the header has 2"),
        (None, "c.pubtator:3", "malformed PubTator line: expected `id|t|title`, `id|a|abstract` or an annotation "
                               "line of the current document"),
        ("d.txt:2", "d.txt:2", "undecodable bytes in the text at character 0 (not valid UTF-8)"),
        ("d.txt:3", "d.txt:3", "no text (empty or only whitespace)"),
    ]
    assert [r["id"] for r in _records(out)] == ["good", "c1", "p1", "d.txt:1"]
    totals = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["totals"]
    assert (totals["documents"], totals["rejects"]) == (4, 12)


# ----------------------------------------------------------------------------------------------------------------
# Results: what the per-document task functions give
# ----------------------------------------------------------------------------------------------------------------
def _same_entities(got: list[dict], expected: list[dict]) -> None:
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in got] == \
        [(e["text"], e["label"], e["start"], e["end"]) for e in expected]
    # Batches mix windows of different documents (other padding): scores agree to float32 rounding.
    assert [e["score"] for e in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


@pytest.mark.parametrize("which", ["demo", "tiny"])
def test_ner_equals_extract_entities_per_document(tmp_path, which, ner_path, tiny_ner_path):
    path = ner_path if which == "demo" else tiny_ner_path
    model, tokenizer = BioGptForTokenClassification.from_pretrained(path).eval(), BioGptTokenizer.from_pretrained(path)
    corpus = _corpus(tmp_path / "in.jsonl", copies=2)
    out = tmp_path / "out"
    summary = run_local(RunConfig(str(corpus), "ner", path, out, batch_size=3, shard_size=4), progress=False)
    records = _records(out)
    assert [r["id"] for r in records] == [f"{d}-{n}" for n in range(2) for d, _, _ in DOCS]
    found = 0
    for record in records:
        text = TEXTS[record["id"].split("-")[0]]
        _same_entities(record["result"]["entities"], extract_entities(model, tokenizer, text))
        assert all(text[e["start"]:e["end"]] == e["text"] for e in record["result"]["entities"])
        found += len(record["result"]["entities"])
    assert found > 0
    assert record["task"] == "ner" and record["model"] == model_info(path)
    assert record["parameters"] == {"aggregation_strategy": "simple", "threshold": 0.0, "whole_words": False,
                                    "sentencizer": None}
    # The windows the Entities code cuts (16 positions for the tiny model: several per document, stitched back).
    windows = [len(plan_windows(tokenizer, TEXTS[r["id"].split("-")[0]], model.config.max_position_embeddings))
               for r in records]
    assert summary.windows == sum(windows)
    if which == "tiny":
        assert min(windows) >= 2
    # The PubTator file reads back (read_pubtator checks every mention against the text) to the same entities.
    pubtator = [doc for path_ in sorted((out / "shards").glob("*.pubtator")) for doc in read_pubtator(path_)]
    assert [(d.id, d.text) for d in pubtator] == [(r["id"], TEXTS[r["id"].split("-")[0]]) for r in records]
    assert [[(m.start, m.end, m.label) for m in d.entities] for d in pubtator] == \
        [[(e["start"], e["end"], e["label"]) for e in r["result"]["entities"]] for r in records]


def test_ner_options_reach_the_entities_code(tmp_path, ner, ner_path):
    model, tokenizer = ner
    corpus = _corpus(tmp_path / "in.jsonl", copies=1)
    assert main([str(corpus), "--task", "ner", "--model", ner_path, "--output", str(tmp_path / "out"),
                 "--aggregation", "first", "--threshold", "0.9", "--whole-words", "yes", "--no-progress"]) == 0
    for record in _records(tmp_path / "out"):
        expected = extract_entities(model, tokenizer, TEXTS[record["id"].split("-")[0]], "first", 0.9, words=True)
        _same_entities(record["result"]["entities"], expected)
        assert record["parameters"]["aggregation_strategy"] == "first"
        assert record["parameters"]["whole_words"] is True


def test_classify_equals_classify_and_writes_csv(tmp_path):
    path = str(demo_path("sequence-classification"))
    model = BioGptForSequenceClassification.from_pretrained(path).eval()
    tokenizer = BioGptTokenizer.from_pretrained(path)
    corpus = _corpus(tmp_path / "in.jsonl", copies=1)
    assert main([str(corpus), "--task", "classify", "--model", path, "--output", str(tmp_path / "out"),
                 "--batch-size", "2", "--no-progress"]) == 0
    records = _records(tmp_path / "out")
    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out/shards/00000-000000.csv").read_text(encoding="utf-8"))))
    assert [row["id"] for row in rows] == [r["id"] for r in records] == ["d1-0", "d2-0", "d3-0"]
    for record, row in zip(records, rows):
        expected = classify(model, tokenizer, TEXTS[record["id"].split("-")[0]])
        got = record["result"]["labels"]
        assert list(got) == list(expected) and list(got.values()) == pytest.approx(list(expected.values()), abs=1e-6)
        assert row["label"] == next(iter(expected))
        assert [float(row[label]) for label in labels] == pytest.approx([expected[label] for label in labels],
                                                                       abs=1e-6)


def test_generate_equals_greedy_generation_one_prompt_at_a_time(tmp_path):
    path = str(demo_path("causal-lm"))
    model, tokenizer = BioGptForCausalLM.from_pretrained(path).eval(), BioGptTokenizer.from_pretrained(path)
    prompts = ["Aspirin is used to treat", "Cisplatin", "Warfarin increases the risk of",
               "lithium " * 300]  # the last one is longer than the model's 256 positions
    results = list(annotate_texts(model, tokenizer, iter(prompts), task="generate", batch_size=3, max_new_tokens=8))
    assert len(results) == len(prompts)
    for prompt, result in zip(prompts[:3], results):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
        assert result == {"continuation": continuation_text(tokenizer, ids[0].tolist(), generated),
                          "prompt_truncated": False}
    assert results[0]["continuation"].strip()
    assert results[3]["prompt_truncated"] is True
    with pytest.raises(ConfigError, match="max_new_tokens must be a whole number between 1 and 128"):
        next(annotate_texts(model, tokenizer, ["x"], task="generate", max_new_tokens=500))


def test_annotate_texts_streams_results_in_order(ner):
    model, tokenizer = ner
    texts = [TEXTS[doc_id] for doc_id, _, _ in DOCS] * 2 + [""]
    pulled = []

    def source():
        for text in texts:
            pulled.append(text)
            yield text

    results = annotate_texts(model, tokenizer, source(), chunk_size=2, batch_size=4)
    first = next(results)
    assert len(pulled) == 2  # one chunk read, not the whole iterable
    _same_entities(first["entities"], extract_entities(model, tokenizer, texts[0]))
    rest = list(results)
    for text, result in zip(texts[1:], rest):
        _same_entities(result["entities"], extract_entities(model, tokenizer, text))
    assert rest[-1] == {"entities": []}
    with pytest.raises(InputError, match="Text 1 is a int"):
        list(annotate_texts(model, tokenizer, ["aspirin", 7]))
    with pytest.raises(ConfigError, match="needs a BioGptForSequenceClassification"):
        list(annotate_texts(model, tokenizer, ["aspirin"], task="classify"))


def test_model_revision_follows_the_checkpoint(tmp_path, ner_path):
    copy = tmp_path / "model"
    shutil.copytree(ner_path, copy)
    before = model_info(copy)
    assert before == {"id": str(copy.resolve()), "revision": model_info(ner_path)["revision"]}
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    (copy / "config.json").write_text(json.dumps({**config, "id2label": {**config["id2label"], "0": "Other"}}))
    assert model_info(copy)["revision"] != before["revision"]


# ----------------------------------------------------------------------------------------------------------------
# Resumption, refusals, Ctrl-C
# ----------------------------------------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "biogpt.annotate.cli", *args, "--no-progress"]


def _markers(out: Path) -> int:
    shards = out / "shards"
    return len(list(shards.glob("*.done.json"))) if shards.is_dir() else 0


@pytest.mark.slow
def test_killed_runs_resume_to_the_bytes_of_an_uninterrupted_run(tmp_path, ner, ner_path):
    corpus = _corpus(tmp_path / "in.jsonl", copies=12)  # 36 documents, 12 shards of 3
    options = ["--batch-size", "2", "--shard-size", "3"]
    reference = tmp_path / "reference"
    run_local(RunConfig(str(corpus), "ner", ner_path, reference, batch_size=2, shard_size=3), progress=False,
              model=ner[0], tokenizer=ner[1])
    out = tmp_path / "killed"
    command = _cli(str(corpus), "--task", "ner", "--model", ner_path, "--output", str(out), *options)
    rng = random.Random(19)
    kills, target = 0, 0
    for _ in range(3):
        target += rng.randint(1, 3)
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _markers(out) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))  # anywhere: mid-batch, mid-write, between shards
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 2
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["complete"] is False
    assert 0 < _markers(out) < 12
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "shards were already done" in finished.stderr
    assert _tree(out) == _tree(reference)
    ids = [record["id"] for record in _records(out)]
    assert sorted(ids) == sorted(f"{d}-{n}" for n in range(12) for d, _, _ in DOCS) and len(set(ids)) == 36


@pytest.mark.slow
def test_ctrl_c_stops_the_cli_and_the_same_command_continues(tmp_path, ner, ner_path):
    corpus = tmp_path / "in"
    _corpus(corpus / "a.jsonl", copies=1)  # shard 1: three documents
    _corpus(corpus / "b.jsonl", copies=20)  # shard 2: sixty documents, one window per forward pass
    options = ["--batch-size", "1", "--shard-size", "100"]
    reference = tmp_path / "reference"
    run_local(RunConfig(str(corpus), "ner", ner_path, reference, batch_size=1, shard_size=100), progress=False,
              model=ner[0], tokenizer=ner[1])
    out = tmp_path / "out"
    command = _cli(str(corpus), "--task", "ner", "--model", ner_path, "--output", str(out), *options)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _markers(out) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Stopping after the current batch" in stderr and "Run the same command to continue" in stderr
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "00000-000000.done.json", "00000-000000.jsonl", "00000-000000.pubtator"]  # no half-written shard
    assert main([str(corpus), "--task", "ner", "--model", ner_path, "--output", str(out), *options,
                 "--no-progress"]) == 0
    assert _tree(out) == _tree(reference)


def test_ctrl_c_finishes_the_current_batch_then_stops(tmp_path, ner, ner_path):
    model, tokenizer = ner
    forwards = []

    def on_forward(module, args, output):
        forwards.append(1)
        if len(forwards) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the second batch runs

    corpus = _corpus(tmp_path / "in.jsonl", copies=3)
    handle = model.register_forward_hook(on_forward)
    try:
        summary = run_local(RunConfig(str(corpus), "ner", ner_path, tmp_path / "out", batch_size=2, shard_size=100),
                            progress=False, model=model, tokenizer=tokenizer)
    finally:
        handle.remove()
    assert summary.interrupted and len(forwards) == 2 and summary.shards == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual Ctrl-C again afterwards
    assert list((tmp_path / "out" / "shards").iterdir()) == []
    assert "Run the same command to continue" in str(summary)


def test_other_settings_busy_or_foreign_directories_are_refused(tmp_path, ner_path):
    corpus = _corpus(tmp_path / "in.jsonl", copies=1)
    out = tmp_path / "out"
    base = [str(corpus), "--task", "ner", "--model", ner_path, "--output", str(out), "--no-progress"]
    assert main(base) == 0
    before = _tree(out)
    assert main(base) == 0 and _tree(out) == before  # a finished run, run again, changes nothing
    with pytest.raises(ConfigError, match=r"other settings \(parameters: .*threshold"):
        run_local(RunConfig(str(corpus), "ner", ner_path, out, params={"threshold": 0.5}), progress=False)
    with pytest.raises(ConfigError, match=r"other settings \(batch_size: 16 then, 4 now\)"):
        run_local(RunConfig(str(corpus), "ner", ner_path, out, batch_size=4), progress=False)
    foreign = _write(tmp_path / "foreign" / "notes.txt", "mine").parent
    with pytest.raises(ConfigError, match="not an annotate output directory"):
        run_local(RunConfig(str(corpus), "ner", ner_path, foreign), progress=False)
    from biogpt.annotate.shards import ShardStore

    with ShardStore(tmp_path / "busy", {"task": "ner"}):
        with pytest.raises(ConfigError, match="Another annotate run is writing"):
            run_local(RunConfig(str(corpus), "ner", ner_path, tmp_path / "busy"), progress=False)


def test_cli_errors_are_one_line(tmp_path, ner_path, capsys, monkeypatch):
    corpus = _corpus(tmp_path / "in.jsonl", copies=1)
    base = [str(corpus), "--model", ner_path, "--no-progress"]
    assert main([*base, "--task", "ner", "--output", str(tmp_path / "a"), "--top-k", "2"]) == 1
    assert capsys.readouterr().err.strip() == ("biogpt annotate: error: task ner takes the parameters "
                                               "aggregation_strategy, threshold, whole_words, sentencizer; top_k "
                                               "does not apply to it.")
    assert main([*base, "--task", "classify", "--output", str(tmp_path / "b")]) == 1
    assert "needs a BioGptForSequenceClassification checkpoint" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main([*base, "--task", "ner", "--output", str(tmp_path / "c"), "--engine", "ray"]) == 1
    assert "pip install 'biogpt[ray]'" in capsys.readouterr().err


def test_relations_from_a_fine_tuned_fairseq_checkpoint(tmp_path):
    """`--task relations` on a released fairseq checkpoint directory (converted on first use): the model's relation
    sentence becomes relations with the character spans of their entities, in JSONL and PubTator."""
    import fairseq_fixtures as ff
    from biogpt.tasks.relations import title_abstract

    vocab = ff.task_vocab(tmp_path / "bpe")
    text = title_abstract(ff.BC5CDR["title"], ff.BC5CDR["abstract"])
    checkpoint = ff.scripted_task_checkpoint(tmp_path / "RE-BC5CDR-BioGPT", vocab, text.lower(),
                                             ff.BC5CDR["answer"], 9, "RE-BC5CDR-BioGPT")
    corpus = _write(tmp_path / "cdr.jsonl", _jsonl([{"id": "cdr1", "title": ff.BC5CDR["title"],
                                                     "abstract": ff.BC5CDR["abstract"]}, {"id": "empty", "text": ""}]))
    assert main([str(corpus), "--task", "relations", "--model", str(checkpoint), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    [record] = _records(tmp_path / "out")
    # "Lithium carbonate toxicity in a newborn. Cyanosis was seen after lithium carbonate exposure."
    assert text[0:17] == "Lithium carbonate" and text[65:82] == "lithium carbonate" and text[41:49] == "Cyanosis"
    assert record["id"] == "cdr1" and record["result"]["relations"] == [
        {"head": "lithium carbonate", "relation": "CID", "tail": "cyanosis", "head_type": "Chemical",
         "tail_type": "Disease", "head_spans": [[0, 17], [65, 82]], "tail_spans": [[41, 49]]}]
    assert record["result"]["generated"] == ff.BC5CDR["answer"] and record["result"]["failed"] is False
    [pubtator] = (tmp_path / "out" / "shards").glob("*.pubtator")
    assert pubtator.read_text().splitlines() == [
        f"cdr1|t|{ff.BC5CDR['title']}", f"cdr1|a|{ff.BC5CDR['abstract']}",
        "cdr1\t0\t17\tLithium carbonate\tChemical", "cdr1\t41\t49\tCyanosis\tDisease",
        "cdr1\t65\t82\tlithium carbonate\tChemical", "cdr1\tCID\tlithium carbonate\tcyanosis", ""]
    [reject] = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "empty" and "text" in reject["reason"]
