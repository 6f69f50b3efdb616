"""The model panel above the tabs: which checkpoint, how it runs, and what is loaded now."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from biogpt.catalog import CATALOG
from biogpt.devices import ATTENTION_BACKENDS, attention_unavailable_reason, available_devices
from biogpt.quantization import quantization_unavailable_reason

from .handlers import Workbench, is_demo

DEMO_NOTICE = ("**Demo models.** These are tiny demo models trained on generated sentences — not BioGPT; "
               "outputs are illustrative only.")
PRECISIONS = (("auto", "auto"), ("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))  # (label, value)


@dataclass
class ModelPanel:
    state: gr.State
    source: gr.Dropdown
    attention: gr.Dropdown
    precision: gr.Radio
    four_bit: gr.Checkbox
    device: gr.Dropdown
    load: gr.Button
    status: gr.Markdown
    notice: gr.Markdown


def _unavailable() -> tuple[str | None, str | None]:
    """Why flash attention and 4-bit cannot run on the best device here (None when they can)."""
    return (attention_unavailable_reason("flash_attention_2", "auto", "bfloat16"),
            quantization_unavailable_reason("auto", 4))


def build_model_panel(bench: Workbench) -> ModelPanel:
    initial = bench.default_state()
    flash_reason, quant_reason = _unavailable()
    attention_info = f"Unavailable here: {flash_reason}." if flash_reason else "sdpa is the fast default."
    with gr.Group():
        with gr.Row(equal_height=True):
            source = gr.Dropdown(
                choices=[(f"{name} ({entry.size})", name) for name, entry in CATALOG.items()],
                value=initial["source"], allow_custom_value=True, scale=4, label="Model",
                info="A catalog entry, a Hugging Face Hub id (owner/name) or a local directory. "
                     f"Started with {bench.initial_reason}.",
            )
            attention = gr.Dropdown(list(ATTENTION_BACKENDS), value=initial["attn_implementation"], label="Attention",
                                    info=attention_info, scale=2)
            precision = gr.Radio(list(PRECISIONS), value=initial["dtype"], label="Precision", scale=2,
                                 info="auto: the checkpoint's dtype (fp32 on CPU).")
            with gr.Column(scale=2, min_width=160):
                four_bit = gr.Checkbox(value=False, label="4-bit (bitsandbytes)", interactive=quant_reason is None,
                                       info=quant_reason or "Quantize the linear layers to NF4 on load.")
                device = gr.Dropdown(available_devices(), value=initial["device"], label="Device",
                                     allow_custom_value=True)
        with gr.Row(equal_height=True):
            status = gr.Markdown(bench.status(initial), elem_id="wb-status")
            load = gr.Button("Load model", variant="secondary", size="sm", scale=0, min_width=130)
    notice = gr.Markdown(DEMO_NOTICE, elem_id="wb-notice", visible=is_demo(initial["source"]))
    return ModelPanel(gr.State(initial), source, attention, precision, four_bit, device, load, status, notice)


def catalog_defaults(source: str) -> tuple[dict, dict]:
    """The options a catalog entry recommends (e.g. 4-bit for BioGPT-Large where bitsandbytes runs): updates for
    the 4-bit box and the precision radio; other sources keep what the user chose."""
    entry = CATALOG.get(source)
    if entry is None:
        return gr.update(), gr.update()
    four_bit = entry.defaults.get("quantization") == "4bit" and quantization_unavailable_reason("auto", 4) is None
    return gr.update(value=four_bit), gr.update(value=entry.defaults.get("dtype", "auto"))


def wire_model_panel(bench: Workbench, panel: ModelPanel) -> None:
    inputs = [panel.source, panel.attention, panel.precision, panel.four_bit, panel.device, panel.state]
    outputs = [panel.state, panel.status, panel.notice]
    panel.load.click(bench.load_model, inputs, outputs, api_name="load_model")
    # Picking from the list applies the entry's recommended options, then loads; changing an option loads at once
    # (typing a custom id waits for the button or Enter).
    panel.source.select(catalog_defaults, panel.source, [panel.four_bit, panel.precision], queue=False,
                        api_visibility="private").then(bench.load_model, inputs, outputs, api_visibility="private")
    gr.on([panel.attention.input, panel.precision.input, panel.four_bit.input, panel.device.input],
          bench.load_model, inputs, outputs, api_visibility="private")
