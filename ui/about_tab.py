"""About: what the model is, what it is not, how to read the tabs, and how to run and call the app."""

from __future__ import annotations

import gradio as gr

# Runs offline against a local app (tests/test_docs.py runs it against a real server); online, use
# "microsoft/biogpt" instead of "demo".
CLIENT_EXAMPLE = '''from gradio_client import Client

client = Client("http://127.0.0.1:7860/")
client.predict("demo", "sdpa", "auto", "none", "auto", api_name="/load_model")  # online: "microsoft/biogpt"
text, _, stats = client.predict("COVID-19 is", "greedy", 40, 0.8, 0.95, 50, 1.0, 0, 4, -1,
                                api_name="/generate")
print(text, "|", stats)
for update in client.submit("Ibuprofen is best used for", "greedy", 40, 0.8, 0.95, 50, 1.0, 0, 4, -1,
                            api_name="/generate"):
    print(update[0])  # the text so far, as it streams
highlighted, table, files, summary = client.predict(
    "Cisplatin caused nephrotoxicity.", "demo", 0.0, "simple", api_name="/entities")
print(summary, table)
labels = client.predict("VEGF drives angiogenesis.", "classifier", "demo", "", "", api_name="/classify")
print(labels["label"], labels["confidences"])
print(client.predict(api_name="/status"))  # the session's model, as data
'''

ABOUT = f"""
### What this is
**BioGPT** is a generative language model for biomedical text from Microsoft Research
([Luo et al., 2022](https://doi.org/10.1093/bib/bbac409)), pre-trained on 15 million PubMed abstracts. The 347M
`microsoft/biogpt` model and the 1.5B `microsoft/BioGPT-Large` are on the Hugging Face Hub under the **MIT licence**.
This workbench runs them with an independent, weight-compatible PyTorch implementation (`biogpt/`).

- **Generate** continues a prompt, streaming words as they are written. Click any generated word to see what else
  the model considered at that point (with probabilities), which prompt words led to it, and to continue the text
  from another word; every version is kept.
- **Compare** runs two models, precisions or decoding settings on the same prompt side by side.
- **Entities** marks chemicals, diseases and other entities with a token-classification model (or a spaCy
  pipeline); **Relations** runs one of the paper's relation-extraction models (chemical-disease, drug-drug,
  drug-target).
- **Classify** gives label probabilities: a fine-tuned classifier, the paper's Hallmarks of Cancer and PubMedQA
  models, or zero-shot over the language model (your own labels).
- **History** keeps every run of this browser, re-runs any of them (a greedy or seeded run gives the same words
  again), and exports the session as Markdown (for a lab notebook) or JSON (to import again). The share link under
  the output restores the prompt and settings on another browser.

> **Not medical advice.** The model writes fluent text that can be wrong, outdated or invented, including
> citations and dosages. Never use its output for diagnosis or treatment decisions.

When the Hub is unreachable the app falls back to **tiny demo models** trained on generated sentences: they show
how the tools work, but their outputs mean nothing.

### Run it locally
```bash
make run                       # http://127.0.0.1:7860 (installs into .venv on first use)
python app.py --model microsoft/BioGPT-Large --preload --port 7860
BIOGPT_CONCURRENCY=4 BIOGPT_MAX_QUEUE=64 python app.py --host 0.0.0.0
```

### Call it from Python
```python
{CLIENT_EXAMPLE}```
Each client keeps its own session, so a model it loads is the one its later calls use. The full list of
endpoints and parameters is under **Use via API** at the bottom of the page.
"""


def build_about_tab() -> None:
    gr.Markdown(ABOUT)
