"""Classify: label probabilities from a fine-tuned classifier, from one of the paper's task models (Hallmarks of
Cancer; PubMedQA yes / no / maybe), or zero-shot over the language model. The labels are shown before a run, and
labels that are each true or not (multi-label) are shown as independent probabilities against a threshold."""

from __future__ import annotations

import gradio as gr

from biogpt.tasks.classify import (
    HOC_LABELS,
    HOC_TEMPLATE,
    PUBMEDQA_LABELS,
    PUBMEDQA_TEMPLATE,
)
from biogpt.tasks.hoc import EMPTY, HOC_CLASSES
from biogpt.validation import clean_text

from .components import CheckedSlider
from .errors import shown_to_user
from .fairness import limited
from .formatting import multi_label_summary, scores_html, single_label_summary
from .handlers import Workbench
from .model_panel import ModelPanel
from .uploads import build_upload_section

MODES = (("Fine-tuned classifier", "classifier"), ("Hallmarks of Cancer (paper model)", "hoc"),
         ("PubMedQA question (paper model)", "pubmedqa"), ("Zero-shot (the language model)", "zero-shot"))
# Ready-made zero-shot tasks: name -> (comma-separated labels, prompt template).
PRESETS = {"PubMedQA (yes / no / maybe)": (", ".join(PUBMEDQA_LABELS), PUBMEDQA_TEMPLATE),
           "Hallmarks of Cancer": (", ".join(HOC_LABELS), HOC_TEMPLATE)}
TEMPLATE_HELP = ("Write {text} where the text goes, or {question} and {context} (then the question and context "
                 "boxes are used); each label is scored as the answer that follows.")


def _uses_question(template: str) -> bool:
    return "{question}" in (template or "") or "{context}" in (template or "")


def build_classify_tab(bench: Workbench, panel: ModelPanel, examples: list[str]) -> dict:
    first = next(iter(PRESETS))
    classifiers = bench.classifiers(panel.state.value)
    hoc_models, qa_models = bench.paper_models("hoc"), bench.paper_models("pubmedqa")
    with gr.Row():
        with gr.Column(scale=3):
            mode = gr.Radio(list(MODES), value="classifier", label="Classify with", elem_id="cls-mode")
            text = gr.Textbox(label="Text", lines=6, elem_id="cls-text", max_length=bench.settings.max_input_chars,
                              placeholder="An abstract or a sentence.")
            with gr.Group(visible=False) as qa_boxes:
                question = gr.Textbox(label="Question", lines=2, elem_id="cls-question",
                                      max_length=bench.settings.max_prompt_chars,
                                      placeholder="e.g. Do statins reduce mortality in sepsis?")
                context = gr.Textbox(label="Context", lines=5, elem_id="cls-context",
                                     max_length=bench.settings.max_input_chars,
                                     placeholder="The abstract that holds the answer.")
            run = gr.Button("Classify", variant="primary", elem_id="cls-run")
            gr.Examples(examples, inputs=text, label="Example texts")
        with gr.Column(scale=2, min_width=280):
            with gr.Group() as classifier_group:
                classifier = gr.Dropdown(classifiers, value=classifiers[0][1], allow_custom_value=True,
                                         label="Classifier", elem_id="cls-classifier",
                                         info="A sequence-classification checkpoint (Hub id or path).")
                classifier_labels = gr.Markdown(elem_id="cls-labels")
            hoc_model = gr.Dropdown(hoc_models, value=hoc_models[0][1], allow_custom_value=True, label="HoC model",
                                    visible=False, elem_id="cls-hoc-model",
                                    info="Labels: " + " · ".join(HOC_CLASSES) + f" ({EMPTY} = none).")
            qa_model = gr.Dropdown(qa_models, value=qa_models[0][1], allow_custom_value=True,
                                   label="PubMedQA model", visible=False, elem_id="cls-qa-model",
                                   info="Answers: " + " · ".join(PUBMEDQA_LABELS) + ".")
            with gr.Group(visible=False) as zero_shot:
                preset = gr.Dropdown(list(PRESETS) + ["Custom"], value=first, label="Task")
                labels = gr.Textbox(PRESETS[first][0], label="Labels (comma-separated)", lines=2,
                                    elem_id="cls-zs-labels")
                template = gr.Textbox(PRESETS[first][1], label="Prompt template", lines=3, info=TEMPLATE_HELP,
                                      elem_id="cls-template")
            threshold = CheckedSlider(0.05, 0.95, value=0.5, step=0.05, label="Threshold", elem_id="cls-threshold",
                                      info="For labels that are each true or not: those at or above it are shown "
                                           "as the answer.")
    result = gr.HTML(elem_id="cls-result")
    summary = gr.Markdown(elem_id="cls-summary")
    raw = gr.Textbox(label="What the model wrote (its raw answer)", interactive=False, visible=False,
                     elem_id="cls-generated")
    batch = build_upload_section("cls", "Many texts at once: classify a file with the classifier",
                                 "one JSON record per text and a CSV of labels and probabilities", "Classify the file",
                                 bench.settings.max_upload_rows)
    batch.run.click(bench.classify_file, [batch.file, classifier, panel.state],
                    [batch.annotated, batch.summary], api_name="classify_file")

    def show_mode(choice: str, template_value: str):
        qa = choice == "pubmedqa" or (choice == "zero-shot" and _uses_question(template_value))
        return (gr.update(visible=choice == "classifier"), gr.update(visible=choice == "hoc"),
                gr.update(visible=choice == "pubmedqa"), gr.update(visible=choice == "zero-shot"),
                gr.update(visible=not qa), gr.update(visible=qa), gr.update(visible=choice in ("hoc", "pubmedqa")))

    toggled = [classifier_group, hoc_model, qa_model, zero_shot, text, qa_boxes, raw]
    mode.change(show_mode, [mode, template], toggled, api_visibility="private", queue=False)
    template.change(show_mode, [mode, template], toggled, api_visibility="private", queue=False)
    preset.change(lambda p: PRESETS.get(p, (gr.skip(), gr.skip())), preset, [labels, template],
                  api_visibility="private", queue=False)
    label_list = dict(fn=bench.classifier_labels, inputs=[classifier, panel.state], outputs=classifier_labels,
                      api_visibility="private", show_progress="hidden")
    gr.on([classifier.change, panel.state.change], **label_list)

    @limited
    def classify(choice: str, text_value: str, question_value: str, context_value: str, classifier_value: str,
                 hoc_value: str, qa_value: str, labels_value: str, template_value: str, threshold_value: float,
                 state: dict):
        if choice == "hoc":
            found = bench.hallmarks(text_value, hoc_value, state)
            return (scores_html(found["probabilities"], threshold_value),
                    "The model answered: **" + (", ".join(found["labels"]) or found["answer"]) + "**.  \n"
                    + multi_label_summary(found["probabilities"], threshold_value, EMPTY), found["generated"])
        if choice == "pubmedqa":
            found = bench.answer_question(question_value, context_value, qa_value, state)
            return (scores_html(found["probabilities"]), f"The model answered: **{found['answer']}**.  \n"
                    + single_label_summary(found["probabilities"]), found["generated"])
        if choice == "zero-shot" and _uses_question(template_value):
            with shown_to_user():
                question_value = clean_text(question_value, "question", bench.settings.max_prompt_chars)
                context_value = clean_text(context_value, "context", bench.settings.max_input_chars)
            text_value = f"Question: {question_value} Context: {context_value}"
        scores = bench.classify(text_value, choice, classifier_value, labels_value, template_value, state)
        multi = choice == "classifier" and bench.classifier_is_multi_label(classifier_value, state)
        if multi:
            return scores_html(scores, threshold_value), multi_label_summary(scores, threshold_value), ""
        return scores_html(scores), single_label_summary(scores), ""

    gr.on([run.click, text.submit], classify,
          [mode, text, question, context, classifier, hoc_model, qa_model, labels, template, threshold, panel.state],
          [result, summary, raw], api_name="classify_page", api_visibility="private")
    # The API: one endpoint per kind of model (the page's button above picks between them).
    classify_api, hallmarks_api, answer_api = (gr.Button(visible=False) for _ in range(3))
    classify_api.click(bench.classify, [text, mode, classifier, labels, template, panel.state],
                       gr.Label(visible=False), api_name="classify")
    hallmarks_api.click(bench.hallmarks, [text, hoc_model, panel.state], gr.JSON(visible=False),
                        api_name="hallmarks")
    answer_api.click(bench.answer_question, [question, context, qa_model, panel.state], gr.JSON(visible=False),
                     api_name="pubmedqa")
    return label_list  # the page also shows the classifier's labels when it opens (see app.py)
