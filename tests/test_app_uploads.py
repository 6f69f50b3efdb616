"""Many texts at once: a file uploaded in Entities or Classify comes back annotated, text by text the same as the
one-text handlers give, with the rows that could not be used and why; through the handlers and through the API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file

from app_fixtures import Checkpoints, Server, checkpoints, paper_release, server  # noqa: F401  (fixtures)
from biogpt.manager import ModelManager
from biogpt.settings import Settings
from ui.handlers import Workbench

TEXTS = ["Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer.",
         "Lithium may cause heart disease when taken during early pregnancy.",
         "Aspirin inhibits platelet aggregation and prevents myocardial infarction."]


@pytest.fixture(scope="module")
def bench(checkpoints: Checkpoints) -> Workbench:
    return Workbench(ModelManager(max_models=4), Settings(model=checkpoints.lm, max_input_chars=200,
                                                          max_upload_rows=5))


def _lines(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _by_suffix(paths: list[str]) -> dict[str, str]:
    return {Path(path).name.split(".", 1)[1]: path for path in paths}


def test_a_text_file_gets_the_entities_of_each_line(bench: Workbench, checkpoints: Checkpoints, tmp_path) -> None:
    too_long = "x" * 201  # over max_input_chars: skipped with the reason, the others go on
    upload = tmp_path / "abstracts.txt"
    upload.write_text("\n".join([TEXTS[0], too_long, TEXTS[1], TEXTS[2]]) + "\n", encoding="utf-8")
    paths, summary = bench.entities_file(str(upload), checkpoints.ner, 0.0, "simple", bench.default_state())
    files = _by_suffix(paths)
    assert list(files) == ["jsonl", "pubtator", "rejects.jsonl"]
    assert summary == "3 texts annotated · 1 row skipped (the reasons are in abstracts.rejects.jsonl)"
    records = _lines(files["jsonl"])
    assert [record["id"] for record in records] == ["1", "3", "4"]  # line numbers
    for record, text in zip(records, [TEXTS[0], TEXTS[1], TEXTS[2]]):
        # The same entities as the one-text Entities handler (whole words, same spans and labels).
        rows = bench.entities(text, checkpoints.ner, 0.0, "simple", bench.default_state())[1]
        assert [[e["text"], e["label"], e["start"], e["end"]] for e in record["result"]["entities"]] == \
            [[row[0], row[1], row[3], row[4]] for row in rows]
    [reject] = _lines(files["rejects.jsonl"])
    assert reject["id"] == "2" and "201" in reject["reason"] and "200" in reject["reason"]
    pubtator = Path(files["pubtator"]).read_text(encoding="utf-8")
    assert pubtator.startswith(f"1|t|{TEXTS[0]}\n1|a|\n")


def test_a_csv_file_is_classified_text_by_text(bench: Workbench, checkpoints: Checkpoints, tmp_path) -> None:
    upload = tmp_path / "sentences.csv"
    with upload.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([[f"s{number}", text] for number, text in enumerate(TEXTS)])
    paths, summary = bench.classify_file(str(upload), checkpoints.classify, bench.default_state())
    files = _by_suffix(paths)
    assert list(files) == ["jsonl", "csv"] and summary == "3 texts annotated"
    rows = list(csv.DictReader(open(files["csv"], encoding="utf-8")))
    assert [row["id"] for row in rows] == ["s0", "s1", "s2"]
    for row, text in zip(rows, TEXTS):
        scores = bench.classify(text, "classifier", checkpoints.classify, "", "", bench.default_state())
        assert row["label"] == max(scores, key=scores.get)
        assert {label: float(row[label]) for label in scores} == pytest.approx(scores, abs=1e-5)


def test_bad_uploads_are_refused_with_the_reason(bench: Workbench, checkpoints: Checkpoints, tmp_path) -> None:
    state = bench.default_state()
    with pytest.raises(gr.Error, match="Choose a file first"):
        bench.entities_file(None, checkpoints.ner, 0.0, "simple", state)
    many = tmp_path / "many.txt"
    many.write_text("\n".join(TEXTS * 2) + "\n", encoding="utf-8")  # 6 rows, the limit is 5
    with pytest.raises(gr.Error, match="more than 5 records; the limit is 5"):
        bench.entities_file(str(many), checkpoints.ner, 0.0, "simple", state)
    odd = tmp_path / "notes.docx"
    odd.write_bytes(b"PK\x03\x04")
    with pytest.raises(gr.Error, match="notes.docx"):
        bench.classify_file(str(odd), checkpoints.classify, state)
    with pytest.raises(gr.Error, match="not by spaCy"):
        bench.entities_file(str(many), "spacy:en_core_web_sm", 0.0, "simple", state)
    assert bench.entities(TEXTS[0], checkpoints.ner, 0.0, "simple", state)[1]  # the model still works


def test_the_api_annotates_an_uploaded_jsonl_file(server: Server, paper_release: Path, tmp_path) -> None:
    import fairseq_fixtures as ff

    client = Client(server.url, verbose=False)
    upload = tmp_path / "cdr.jsonl"
    upload.write_text(json.dumps({"id": "cdr1", "title": ff.BC5CDR["title"], "abstract": ff.BC5CDR["abstract"]})
                      + "\n", encoding="utf-8")
    paths, summary = client.predict(handle_file(str(upload)), "RE-BC5CDR-BioGPT", api_name="/relations_file")
    assert summary == "1 text annotated"
    files = _by_suffix(paths)
    [record] = _lines(files["jsonl"])
    assert record["id"] == "cdr1" and record["model"] == {"id": "RE-BC5CDR-BioGPT"}
    assert [(r["head"], r["relation"], r["tail"]) for r in record["result"]["relations"]] == \
        [("lithium carbonate", "CID", "cyanosis")]
    assert Path(files["pubtator"]).read_text(encoding="utf-8").splitlines()[-2] == \
        "cdr1\tCID\tlithium carbonate\tcyanosis"
