"""Entities: highlight chemicals, diseases and other entities in place, with a table and downloads; or, in
Relations mode, what one of the paper's relation-extraction models finds (pairs, and the entities in them)."""

from __future__ import annotations

import gradio as gr

from .components import CheckedSlider
from .fairness import limited
from .handlers import AGGREGATIONS, Workbench
from .model_panel import ModelPanel
from .uploads import build_upload_section

# Fixed colours for the usual biomedical types; others get Gradio's palette.
COLORS = {"Chemical": "#0ea5e9", "Disease": "#f97316", "Drug": "#0ea5e9", "Target": "#a855f7", "Gene": "#a855f7",
          "Species": "#22c55e"}
MODES = (("Entities (an NER model)", "entities"), ("Relations (one of the paper's relation models)", "relations"))


def build_entities_tab(bench: Workbench, panel: ModelPanel, examples: list[str]) -> None:
    backends = bench.entity_backends(panel.state.value)
    relation_models = bench.relation_models()
    with gr.Row():
        with gr.Column(scale=3):
            mode = gr.Radio(list(MODES), value="entities", label="Find", elem_id="ent-mode")
            text = gr.Textbox(label="Text", lines=7, elem_id="ent-text", max_length=bench.settings.max_input_chars,
                              placeholder="Paste a sentence or a whole abstract "
                                          f"(up to {bench.settings.max_input_chars:,} characters).")
            run = gr.Button("Find entities", variant="primary", elem_id="ent-run")
            gr.Examples(examples, inputs=text, label="Example texts")
        with gr.Column(scale=2, min_width=280):
            with gr.Group() as entity_options:
                backend = gr.Dropdown(backends, value=backends[0][1], allow_custom_value=True, label="NER model",
                                      elem_id="ent-backend",
                                      info="A token-classification checkpoint (Hub id or path), or spacy:<pipeline>.")
                threshold = CheckedSlider(0.0, 1.0, value=0.0, step=0.01, label="Score threshold",
                                          info="Hide entities the model is less sure of.")
                aggregation = gr.Radio(list(AGGREGATIONS), value="simple", label="Aggregation",
                                       info="How word pieces are merged into entities (as in transformers "
                                            "pipelines); entities always cover whole words.")
            with gr.Group(visible=False) as relation_options:
                relation_model = gr.Dropdown(relation_models, value=relation_models[0][1], allow_custom_value=True,
                                             label="Relation model", elem_id="rel-model",
                                             info="One of Microsoft's fine-tuned models (BIOGPT_FINETUNED_DIR), or "
                                                  "the directory of a converted one.")
    # No legend: it would list every colour of the map, found or not; the table and the summary name the types.
    highlighted = gr.HighlightedText(label="Entities in the text", color_map=COLORS, show_legend=False,
                                     combine_adjacent=False, elem_id="ent-highlighted")
    summary = gr.Markdown(elem_classes="wb-stats", elem_id="ent-summary")
    with gr.Group(visible=False) as relation_view:
        relations = gr.Dataframe(headers=["head", "relation", "tail"], label="Relations", interactive=False,
                                 wrap=True, elem_id="rel-table")
        generated = gr.Textbox(label="What the model wrote (its raw answer)", interactive=False, lines=2,
                               elem_id="rel-generated")
    table = gr.Dataframe(headers=["text", "type", "score", "start", "end"], label="Entity table",
                         interactive=False, wrap=True, elem_id="ent-table")
    files = gr.File(label="Download (JSON, CSV)", file_count="multiple", interactive=False, elem_id="ent-files")
    batch = build_upload_section("ent", "Many texts at once: annotate a file",
                                 "one JSON record per text and PubTator", "Annotate the file",
                                 bench.settings.max_upload_rows)

    def show_mode(choice: str):
        entities = choice == "entities"
        return (gr.update(visible=entities), gr.update(visible=not entities), gr.update(visible=not entities),
                gr.update(value="Find entities" if entities else "Find relations"),
                gr.update(headers=["text", "type", "score", "start", "end"] if entities
                          else ["text", "type", "start", "end"]))

    mode.change(show_mode, mode, [entity_options, relation_options, relation_view, run, table],
                api_visibility="private", queue=False)

    @limited
    def annotate_file(choice: str, file: str, backend_value: str, threshold_value: float, aggregation_value: str,
                      relation_value: str, state: dict, progress: gr.Progress = gr.Progress()):
        if choice == "relations":
            return bench.relations_file(file, relation_value, state, progress)
        return bench.entities_file(file, backend_value, threshold_value, aggregation_value, state, progress)

    batch.run.click(annotate_file,
                    [mode, batch.file, backend, threshold, aggregation, relation_model, panel.state],
                    [batch.annotated, batch.summary], api_visibility="private")

    @limited
    def find(choice: str, text_value: str, backend_value: str, threshold_value: float, aggregation_value: str,
             relation_value: str, state: dict):
        if choice == "relations":
            shown, pairs, rows, paths, line, raw = bench.relations(text_value, relation_value, state)
            return shown, rows, paths, line, pairs, raw
        shown, rows, paths, line = bench.entities(text_value, backend_value, threshold_value, aggregation_value,
                                                  state)
        return shown, rows, paths, line, [], ""

    gr.on([run.click, text.submit], find,
          [mode, text, backend, threshold, aggregation, relation_model, panel.state],
          [highlighted, table, files, summary, relations, generated], api_visibility="private")
    # The API: one endpoint per task (the page's button above picks between them).
    entities_api, relations_api, entities_file_api, relations_file_api = (gr.Button(visible=False) for _ in range(4))
    entities_api.click(bench.entities, [text, backend, threshold, aggregation, panel.state],
                       [highlighted, table, files, summary], api_name="entities")
    relations_api.click(bench.relations, [text, relation_model, panel.state],
                        [highlighted, relations, table, files, summary, generated], api_name="relations")
    entities_file_api.click(bench.entities_file, [batch.file, backend, threshold, aggregation, panel.state],
                            [batch.annotated, batch.summary], api_name="entities_file")
    relations_file_api.click(bench.relations_file, [batch.file, relation_model, panel.state],
                             [batch.annotated, batch.summary], api_name="relations_file")
