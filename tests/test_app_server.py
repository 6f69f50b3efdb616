"""The app launched for real on 127.0.0.1 and driven through `gradio_client`, as an API user would."""

from __future__ import annotations

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app_fixtures import Checkpoints, Server, checkpoints, paper_release, server  # noqa: F401  (fixtures)

GREEDY = ("greedy", 24, 0.8, 0.95, 50, 1.0, 0, 4, -1)  # mode, max new tokens, temperature, top-p, top-k, ...


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    return Client(server.url, verbose=False)


def test_status_and_load_model(client: Client, checkpoints: Checkpoints) -> None:
    before = client.predict(api_name="/status")
    assert before["source"] == checkpoints.lm and before["attn_implementation"] == "sdpa"
    status, notice = client.predict(checkpoints.lm, "eager", "auto", "none", "auto", api_name="/load_model")
    assert "eager" in status and "loaded in" in status
    assert notice["visible"] is checkpoints.demo
    after = client.predict(api_name="/status")  # the session remembers its choice, reported as data
    assert after["attn_implementation"] == "eager" and after["loaded"] is True and after["bytes"] > 0


def test_generate_streams_incrementally(client: Client) -> None:
    job = client.submit("COVID-19 is", *GREEDY, api_name="/generate")
    texts = [update[0] for update in job]
    assert len(texts) > 2 and len(set(texts)) > 2, "several different partial outputs must arrive"
    assert texts[-1].startswith("COVID-19 is") and len(texts[-1]) > len("COVID-19 is")
    text, html_view, stats = job.result()
    assert text == texts[-1] and "tokens/s" in stats and "wb-conf" in html_view


def test_entities_and_classify(client: Client, checkpoints: Checkpoints) -> None:
    text = "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer."
    highlighted, table, files, summary = client.predict(text, checkpoints.ner, 0.0, "simple", api_name="/entities")
    rows = table["data"]
    assert rows and summary.startswith(f"{len(rows)} entities")
    assert all(text[start:end] == span for span, _, _, start, end in rows)
    assert "".join(piece["token"] for piece in highlighted) == text
    assert [p.rsplit("/", 1)[-1] for p in files] == ["entities.json", "entities.csv"]

    label = client.predict("VEGF drives angiogenesis in tumours.", "classifier", checkpoints.classify, "", "",
                           api_name="/classify")
    assert label["label"] and abs(sum(c["confidence"] for c in label["confidences"]) - 1) < 1e-4


def test_errors_are_reported_and_the_server_keeps_working(client: Client, checkpoints: Checkpoints) -> None:
    with pytest.raises(AppError, match="Could not load not-a-real-owner/not-a-real-model"):
        client.predict("not-a-real-owner/not-a-real-model", "sdpa", "auto", "none", "auto", api_name="/load_model")
    with pytest.raises(AppError, match="The prompt is empty"):
        client.predict("   ", *GREEDY, api_name="/generate")
    assert checkpoints.lm in client.predict(api_name="/status")
    text = client.predict("Aspirin inhibits", *GREEDY, api_name="/generate")[0]
    assert text.startswith("Aspirin inhibits")
