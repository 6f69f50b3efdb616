"""A clinician's session in a real headless Chromium: the panel (Advanced folded, a failed load restored, a phone
width), "why this word" and "where it came from", branching, Compare, History (reload, re-run, export and
re-import), a share link, Relations mode, multi-label HoC and PubMedQA with the paper's (scripted) models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect

import fairseq_fixtures as ff
from app_fixtures import Checkpoints, Server, checkpoints, paper_release, server  # noqa: F401  (fixtures)
from biogpt.explain import token_alternatives
from browser import browser_page, shots  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser
ENDED = re.compile("the model ended the text|reached the token limit")
PROMPT = "Ibuprofen is best used for"


@pytest.fixture(scope="module")
def page(server: Server):
    with browser_page(server.url) as page:
        yield page


def _generate(page, prompt: str = PROMPT) -> None:
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-prompt textarea").fill(prompt)
    stats = page.locator("#gen-stats")
    before = stats.inner_text()  # a previous run's line (its timings differ from this run's)
    page.locator("#gen-run").click()
    expect(stats).not_to_have_text(before, timeout=60_000)
    expect(stats).to_contain_text(ENDED, timeout=60_000)
    page.locator("#gen-view .wb-tok[data-i='0']").wait_for(timeout=30_000)
    for _ in range(60):  # the view's last update may land just after the stats line's
        shown = _view_text(page)
        page.wait_for_timeout(1_000)
        if _view_text(page) == shown:
            break


def _view_text(page) -> str:
    return page.locator("#gen-view .wb-view").inner_text()


def test_the_panel_is_folded_and_fits_a_phone(server: Server, shots: Path) -> None:
    with browser_page(server.url, width=390, height=844) as phone:
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        phone.screenshot(path=str(shots / "app-phone.png"))
        expect(phone.locator("#wb-model")).to_be_visible()
        expect(phone.get_by_label("Attention")).to_be_hidden()  # folded under "Advanced" until opened
        phone.locator("#wb-advanced").get_by_text("Advanced").click()
        expect(phone.get_by_label("Attention")).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_failed_load_leaves_the_panel_on_the_loaded_model(page) -> None:
    box = page.locator("#wb-model input")
    before = box.input_value()
    box.fill("not-a-real-owner/not-a-real-model")
    page.locator("#wb-load").click()
    expect(page.locator("#wb-status")).to_contain_text("Could not load not-a-real-owner/not-a-real-model",
                                                       timeout=3_000)
    expect(box).to_have_value(before)  # the box shows the model that is really loaded
    assert page.locator("#wb-panel .error, #wb-notice .error").count() == 0, "no error badge on the panel"
    for close in page.locator(".toast-close").all():  # dismiss the warning, as a user would
        close.click()
    expect(page.locator(".toast-body")).to_have_count(0)


def test_clicking_a_word_shows_the_models_alternatives_and_its_sources(page, server: Server, shots: Path) -> None:
    _generate(page)
    bench = server.demo.workbench
    loaded = bench.manager.get(bench.spec(bench.default_state()))
    prompt_ids = loaded.tokenizer(PROMPT)["input_ids"]
    generated = loaded.model.generate(torch.tensor([prompt_ids]), max_new_tokens=64)[0, len(prompt_ids):].tolist()
    clickable = page.locator("#gen-view .wb-tok:not([data-i='-1'])")
    position = int(clickable.nth(min(1, clickable.count() - 1)).get_attribute("data-i"))
    clickable.nth(min(1, clickable.count() - 1)).click()
    expect(page.locator("#gen-alternatives .wb-score").first).to_be_visible(timeout=30_000)
    expect(page.locator("#gen-alternatives .wb-score").first).to_be_visible()
    step = token_alternatives(loaded.model, loaded.tokenizer, prompt_ids, generated, 8, positions=[position])[0]
    shown = page.locator("#gen-alternatives .wb-score-value").all_inner_texts()
    assert shown == [f"{100 * alt.probability:.1f}%" for alt in step.alternatives]
    expect(page.locator("#gen-step")).to_contain_text(f"{100 * step.probability:.1f}%")
    heat = page.locator("#gen-attribution .wb-heat")
    assert heat.count() >= 4 and "Ibuprofen" in page.locator("#gen-attribution").inner_text()
    page.screenshot(path=str(shots / "app-why-this-word.png"), full_page=True)


def test_continuing_with_another_token_keeps_both_versions(page, shots: Path) -> None:
    _generate(page)
    first = _view_text(page)
    page.locator("#gen-view .wb-tok[data-i='0']").click()
    expect(page.locator("#gen-alternatives .wb-score").first).to_be_visible(timeout=30_000)
    page.locator("#gen-branch").click()
    versions = page.locator("#gen-versions")
    expect(versions).to_be_visible(timeout=60_000)
    expect(versions.locator("label")).to_have_count(2)
    second = _view_text(page)
    assert second != first and second.startswith(PROMPT)
    page.screenshot(path=str(shots / "app-branch.png"), full_page=True)
    versions.locator("label").first.click()
    expect(page.locator("#gen-view .wb-view")).to_have_text(first)


def test_compare_streams_both_sides(page, shots: Path) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cmp-prompt textarea").fill("Aspirin inhibits")
    page.locator("#cmp-run").click()
    for side in ("a", "b"):
        expect(page.locator(f"#cmp-{side}-stats")).to_contain_text(ENDED, timeout=60_000)
        assert len(page.locator(f"#cmp-{side}-view .wb-view").inner_text()) > len("Aspirin inhibits")
        assert page.locator(f"#cmp-{side}-view .wb-tok").count() > 0  # tinted pieces: per-word confidence
    page.screenshot(path=str(shots / "app-compare.png"), full_page=True)


def test_history_survives_a_reload_reruns_and_round_trips(page, tmp_path: Path, shots: Path) -> None:
    stored = "localStorage.getItem('biogpt-workbench-history')"
    kept = page.evaluate(stored)
    _generate(page, "Metformin reduces blood glucose by")
    page.wait_for_function(f"{stored} !== {json.dumps(kept)}", timeout=10_000)  # the browser has stored the run
    page.reload()
    page.wait_for_selector("#gen-prompt textarea", timeout=60_000)
    page.get_by_role("tab", name="History").click()
    rows = page.locator("#hist-table .virtual-row")
    expect(rows.first).to_be_visible(timeout=10_000)
    before = rows.count()
    assert "Metformin reduces blood glucose by" in rows.first.inner_text()
    rows.first.locator(".body-cell").nth(4).click()
    expect(page.locator("#hist-details")).to_contain_text("Metformin")
    page.locator("#hist-rerun").click()
    expect(page.locator("#hist-verdict")).to_contain_text("Reproduced", timeout=60_000)
    expect(rows).to_have_count(before + 1)
    page.screenshot(path=str(shots / "app-history.png"), full_page=True)

    with page.expect_download() as download:
        page.locator("#hist-json").click()
    exported = tmp_path / "session.json"
    download.value.save_as(exported)
    runs = json.loads(exported.read_text(encoding="utf-8"))["runs"]
    assert len(runs) == before + 1 and {"model", "params", "prompt", "output", "seconds"} <= set(runs[-1])
    page.locator("#hist-clear").click()
    expect(rows).to_have_count(0)
    with page.expect_file_chooser() as chooser:
        page.locator("#hist-import").click()
    chooser.value.set_files(str(exported))
    expect(rows).to_have_count(before + 1, timeout=10_000)
    with page.expect_download() as download:
        page.locator("#hist-json").click()
    again = tmp_path / "again.json"
    download.value.save_as(again)
    assert json.loads(again.read_text(encoding="utf-8"))["runs"] == runs


def test_a_share_link_restores_the_inputs(page, server: Server) -> None:
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-prompt textarea").fill("Sepsis is a condition in which")
    page.locator("#gen-mode").get_by_text("sampling").click()
    page.locator("#gen-share").click()
    link = page.locator("#gen-link textarea")
    expect(link).to_have_value(re.compile(r"prompt=Sepsis"), timeout=10_000)
    url = link.input_value()
    assert url.startswith(server.url.rstrip("/")) and "mode=sampling" in url
    shared = page.context.new_page()  # another tab, as a colleague opening the link would
    shared.goto(url)
    expect(shared.locator("#gen-prompt textarea")).to_have_value("Sepsis is a condition in which", timeout=30_000)
    expect(shared.locator("#gen-mode input[value=sampling]")).to_be_checked()
    shared.close()


def test_relations_mode_with_a_relation_model(page, shots: Path) -> None:
    page.get_by_role("tab", name="Entities").click()
    page.locator("#ent-mode").get_by_text("Relations").click()
    expect(page.locator("#rel-model")).to_be_visible()
    page.locator("#ent-text textarea").fill(f"{ff.BC5CDR['title']} {ff.BC5CDR['abstract']}")
    page.locator("#ent-run").click()
    expect(page.locator("#rel-table")).to_contain_text("cyanosis", timeout=60_000)
    cells = page.locator("#rel-table .virtual-row").first.locator(".body-cell").all_inner_texts()
    assert [cell.strip() for cell in cells] == ["lithium carbonate", "CID", "cyanosis"]
    expect(page.locator("#rel-generated textarea")).to_have_value(ff.BC5CDR["answer"])
    expect(page.locator("#ent-summary")).to_have_text("1 relation · 3 entity mentions")
    marked = page.locator("#ent-highlighted .token.highlighted .text").all_inner_texts()
    assert [m.strip() for m in marked] == ["Lithium carbonate", "Cyanosis", "lithium carbonate"]
    page.screenshot(path=str(shots / "app-relations.png"), full_page=True)


def test_hallmarks_are_independent_probabilities_and_pubmedqa_has_two_boxes(page, shots: Path) -> None:
    page.get_by_role("tab", name="Classify").click()
    page.locator("#cls-mode").get_by_text("Hallmarks of Cancer").click()
    page.locator("#cls-text textarea").fill(ff.HOC["text"])
    page.locator("#cls-run").click()
    expect(page.locator("#cls-summary")).to_contain_text("cellular energetics, inducing angiogenesis",
                                                         timeout=60_000)
    expect(page.locator("#cls-summary")).to_contain_text("need not add up to 100%")
    assert page.locator("#cls-result .wb-score").count() == 11  # the ten hallmarks and "empty"
    page.screenshot(path=str(shots / "app-hallmarks.png"), full_page=True)

    page.locator("#cls-mode").get_by_text("PubMedQA").click()
    expect(page.locator("#cls-question")).to_be_visible()
    expect(page.locator("#cls-text")).to_be_hidden()
    page.locator("#cls-question textarea").fill(ff.PUBMEDQA["question"])
    page.locator("#cls-context textarea").fill(" ".join(ff.PUBMEDQA["context"]))
    page.locator("#cls-run").click()
    expect(page.locator("#cls-summary")).to_contain_text("The model answered: yes", timeout=60_000)
    assert sorted(page.locator("#cls-result .wb-score-label").all_inner_texts()) == ["maybe", "no", "yes"]


def test_a_classifiers_labels_are_shown_before_it_runs(page, checkpoints: Checkpoints) -> None:
    page.get_by_role("tab", name="Classify").click()
    page.locator("#cls-mode").get_by_text("Fine-tuned classifier").click()
    if not checkpoints.demo:
        box = page.locator("#cls-classifier input")
        box.fill(checkpoints.classify)
        box.press("Enter")
    expect(page.locator("#cls-labels")).to_contain_text("Labels", timeout=30_000)


def test_a_file_of_texts_comes_back_annotated(page, tmp_path: Path, shots: Path) -> None:
    page.get_by_role("tab", name="Entities").click()
    page.locator("#ent-mode").get_by_text("Entities (an NER model)").click()
    upload = tmp_path / "abstracts.txt"
    upload.write_text("Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer.\n\n"
                      "Lithium may cause heart disease when taken during early pregnancy.\n", encoding="utf-8")
    page.locator("#ent-batch").get_by_text("Many texts at once").click()
    page.locator("#ent-upload input[type=file]").set_input_files(str(upload))
    expect(page.locator("#ent-upload")).to_contain_text("abstracts.txt", timeout=30_000)
    page.locator("#ent-batch-run").click()
    expect(page.locator("#ent-batch-summary")).to_contain_text(
        "2 texts annotated · 1 row skipped (the reasons are in abstracts.rejects.jsonl)", timeout=60_000)
    links = page.locator("#ent-batch-files a")
    expect(links).to_have_count(3)
    with page.expect_download() as download:
        links.first.click()
    records = [json.loads(line) for line in Path(download.value.path()).read_text(encoding="utf-8").splitlines()]
    assert [record["id"] for record in records] == ["1", "3"]
    page.locator("#ent-batch").screenshot(path=str(shots / "app-many-texts.png"))
