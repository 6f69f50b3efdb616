""""Many texts at once": the file upload section the Entities and Classify tabs share."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

UPLOAD_TYPES = [".txt", ".csv", ".tsv", ".jsonl", ".pubtator", ".gz"]


@dataclass
class UploadSection:
    file: gr.File  # the texts
    annotated: gr.File  # what comes back
    run: gr.Button
    summary: gr.Markdown


def build_upload_section(prefix: str, title: str, outputs: str, button: str, max_rows: int) -> UploadSection:
    """A closed accordion: what the file may hold, the file, the annotated files, a button and a summary line.
    Element ids are `<prefix>-upload`, `<prefix>-batch`, `<prefix>-batch-files`, `-batch-run`, `-batch-summary`."""
    with gr.Accordion(title, open=False, elem_id=f"{prefix}-batch"):
        gr.Markdown(f"A file of up to {max_rows:,} texts: TXT (one per line), CSV or TSV (a `text` column, and `id` "
                    "if you have one), JSONL (`text`, or `title` and `abstract`) or PubTator; `.gz` too. They run "
                    f"with the model and settings above; you get {outputs}, and the rows that were skipped with the "
                    "reason.")
        with gr.Row():
            file = gr.File(label="Texts", file_types=UPLOAD_TYPES, type="filepath", elem_id=f"{prefix}-upload")
            annotated = gr.File(label="Annotated", file_count="multiple", interactive=False,
                                elem_id=f"{prefix}-batch-files")
        run = gr.Button(button, elem_id=f"{prefix}-batch-run")
        summary = gr.Markdown(elem_classes="wb-stats", elem_id=f"{prefix}-batch-summary")
    return UploadSection(file, annotated, run, summary)
