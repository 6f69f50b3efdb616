"""Entities: highlight chemicals, diseases and other entities in place, with a table and downloads."""

from __future__ import annotations

import gradio as gr

from .components import CheckedSlider
from .handlers import AGGREGATIONS, Workbench
from .model_panel import ModelPanel

# Fixed colours for the usual biomedical types; others get Gradio's palette.
COLORS = {"Chemical": "#0ea5e9", "CHEMICAL": "#0ea5e9", "Disease": "#f97316", "DISEASE": "#f97316",
          "Gene": "#a855f7", "GENE": "#a855f7", "Species": "#22c55e", "SPECIES": "#22c55e"}


def build_entities_tab(bench: Workbench, panel: ModelPanel, examples: list[str]) -> None:
    backends = bench.entity_backends(panel.state.value)
    with gr.Row():
        with gr.Column(scale=3):
            text = gr.Textbox(label="Text", lines=7, elem_id="ent-text", max_length=bench.settings.max_input_chars,
                              placeholder="Paste a sentence or a whole abstract "
                                          f"(up to {bench.settings.max_input_chars:,} characters).")
            run = gr.Button("Find entities", variant="primary", elem_id="ent-run")
            gr.Examples(examples, inputs=text, label="Example texts")
        with gr.Column(scale=2, min_width=280):
            backend = gr.Dropdown(backends, value=backends[0][1], allow_custom_value=True, label="Backend",
                                  elem_id="ent-backend",
                                  info="A token-classification checkpoint (Hub id or path), or spacy:<pipeline>.")
            threshold = CheckedSlider(0.0, 1.0, value=0.0, step=0.01, label="Score threshold",
                                  info="Hide entities the model is less sure of.")
            aggregation = gr.Radio(list(AGGREGATIONS), value="simple", label="Aggregation",
                                   info="How word pieces are merged into entities (as in transformers pipelines).")
    highlighted = gr.HighlightedText(label="Entities in the text", color_map=COLORS, show_legend=False,
                                     combine_adjacent=False, elem_id="ent-highlighted")
    summary = gr.Markdown(elem_classes="wb-stats")
    with gr.Row():
        table = gr.Dataframe(headers=["text", "type", "score", "start", "end"], label="Entity table",
                             interactive=False, wrap=True, scale=3)
        files = gr.File(label="Download (JSON, CSV)", file_count="multiple", interactive=False, scale=1)
    gr.on([run.click, text.submit], bench.entities, [text, backend, threshold, aggregation, panel.state],
          [highlighted, table, files, summary], api_name="entities")
