"""History: every run of this browser (kept in the browser's own storage, so it survives a reload and stays on this
machine), with a re-run that reproduces an entry, and exports to keep: Markdown for a lab notebook, JSON to import
again here or elsewhere."""

from __future__ import annotations

import json
from typing import Iterator, Optional

import gradio as gr

from biogpt.errors import InputError

from .downloads import entity_folder
from .errors import handler
from .explore import HISTORY_LIMIT, Explorer, remember
from .fairness import limited
from .handlers import Workbench

FORMAT = "biogpt-workbench-history"
MAX_IMPORT_BYTES = 5 * 2**20
COLUMNS = ["#", "time (UTC)", "kind", "model", "prompt", "output"]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def table(history: Optional[list]) -> list[list]:
    """One row per run, newest first."""
    rows = []
    for number, entry in reversed(list(enumerate(history or [], start=1))):
        rows.append([number, entry.get("time", "").replace("T", " ").replace("+00:00", ""), entry.get("kind", ""),
                     entry.get("model", {}).get("source", ""), _short(entry.get("prompt", "")),
                     _short(entry.get("output", ""))])
    return rows


def markdown(history: Optional[list]) -> str:
    """The session as a readable record for a lab notebook."""
    lines = ["# BioGPT workbench session", "", f"{len(history or [])} runs. Outputs are machine-generated and not "
             "medical advice.", ""]
    for number, entry in enumerate(history or [], start=1):
        model, params = entry.get("model", {}), entry.get("params", {})
        lines += [f"## Run {number} · {entry.get('time', '')} · {entry.get('kind', '')}", "",
                  f"- Model: `{model.get('source')}` (revision {model.get('revision')}), {model.get('dtype')}, "
                  f"{model.get('attn_implementation')} attention, quantization {model.get('quantization') or 'none'}, "
                  f"on {model.get('device')}",
                  f"- Decoding: {entry.get('mode')}; " + ", ".join(f"{k} = {v}" for k, v in sorted(params.items())),
                  f"- Result: {entry.get('tokens')} tokens in {entry.get('seconds')} s; {entry.get('finish')}"]
        if entry.get("branch"):
            branch = entry["branch"]
            lines.append(f"- Branched from run `{branch.get('from')}` at word {branch.get('position', 0) + 1}, "
                         f"continuing with “{branch.get('token')}”")
        lines += ["", "Prompt:", "", "> " + str(entry.get("prompt", "")).replace("\n", "\n> "), "", "Output:", "",
                  "> " + str(entry.get("text") or entry.get("output", "")).replace("\n", "\n> "), ""]
    return "\n".join(lines)


def exports(history: Optional[list]) -> tuple[str, str]:
    """session.md and session.json of `history`, in a fresh bounded download folder."""
    folder = entity_folder()
    as_md, as_json = folder / "biogpt-session.md", folder / "biogpt-session.json"
    as_md.write_text(markdown(history), encoding="utf-8")
    as_json.write_text(json.dumps({"format": FORMAT, "version": 1, "runs": history or []}, indent=2,
                                  ensure_ascii=False), encoding="utf-8")
    return str(as_md), str(as_json)


def imported(path: Optional[str], history: Optional[list]) -> list:
    """`history` plus the runs of an exported JSON file (runs already present, by id, are not added twice)."""
    if not path:
        raise InputError("Choose a session JSON file exported by this workbench.")
    with open(path, "rb") as handle:
        data = handle.read(MAX_IMPORT_BYTES + 1)
    if len(data) > MAX_IMPORT_BYTES:
        raise InputError(f"The file is over {MAX_IMPORT_BYTES // 2**20} MiB: not a session export.")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"The file is not a session export (not JSON: {exc}).") from None
    runs = document.get("runs") if isinstance(document, dict) and document.get("format") == FORMAT else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in runs):
        raise InputError(f"The file is not a session export of this workbench (expected format {FORMAT!r}).")
    merged = list(history or [])
    known = {entry.get("id") for entry in merged}
    for run in runs:
        if run["id"] not in known:
            merged = remember(merged, run)
            known.add(run["id"])
    return merged[-HISTORY_LIMIT:]


def build_history_tab(bench: Workbench, history: gr.BrowserState) -> dict:
    explorer = Explorer(bench)
    gr.Markdown("Every run of this browser, newest first. It is kept in this browser only (it survives a reload); "
                "export it to keep it.")
    rows = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="hist-table")
    with gr.Row():
        rerun = gr.Button("Re-run the selected run", variant="primary", elem_id="hist-rerun")
        export_md = gr.DownloadButton("Export Markdown", elem_id="hist-md")
        export_json = gr.DownloadButton("Export JSON", elem_id="hist-json")
        upload = gr.UploadButton("Import JSON", file_types=[".json"], elem_id="hist-import")
        clear = gr.Button("Clear", variant="stop", elem_id="hist-clear")
    selected = gr.State(None)
    details = gr.JSON(label="The selected run", elem_id="hist-details")
    again = gr.Textbox(label="Re-run output", interactive=False, lines=3, elem_id="hist-again")
    verdict = gr.Markdown(elem_id="hist-verdict")

    def show(history_value: Optional[list]) -> tuple:
        md, js = exports(history_value)
        return table(history_value), md, js

    refresh = dict(fn=show, inputs=history, outputs=[rows, export_md, export_json], api_visibility="private")
    history.change(**refresh)

    def pick(history_value: Optional[list], evt: gr.SelectData) -> tuple:
        number = (history_value and len(history_value) - evt.index[0]) or 0
        if not 1 <= number <= len(history_value or []):
            return None, None
        return number - 1, history_value[number - 1]

    rows.select(pick, history, [selected, details], api_visibility="private", queue=False)

    @limited
    @handler
    def run_again(history_value: Optional[list], index: Optional[int], request: gr.Request) -> Iterator[tuple]:
        if index is None or not history_value or not 0 <= index < len(history_value):
            raise InputError("Select a run in the table first.")
        entry = history_value[index]
        text = ""
        for text, new_history in explorer.rerun(entry, history_value, request):
            yield text, gr.skip(), gr.skip()
        same = text == (entry.get("output") or "")
        yield (text, new_history,
               "**Reproduced**: the same output, token for token." if same else
               "**Different output.** A greedy or seeded run reproduces on the same model, revision, precision and "
               "settings; this one differs in at least one of those (or the machine computes differently).")

    rerun.click(run_again, [history, selected], [again, history, verdict], api_visibility="private")
    upload.upload(handler(imported), [upload, history], history, api_visibility="private")
    clear.click(lambda: [], None, history, api_visibility="private", queue=False)
    return refresh  # the page also shows the stored history when it opens (see app.py)

