"""The Generate tab's handlers for exploring a run: the clickable token view, "why this word" (the model's
alternatives at that step), "where it came from" (which prompt words influenced it), branching ("continue with
this token instead", keeping every version), and the run records the History tab keeps.

A run lives in the session's `gr.State` (`Run`, as a dict): the prompt ids and, per version, the generated ids;
explanations are computed on demand by the model's `ModelServer`. Every run also becomes a `record`: a plain dict
with everything needed to reproduce it (model, revision, precision, backend, every decoding parameter, the seed
actually used, prompt, output, timings), appended to the browser-side history.
"""

from __future__ import annotations

import datetime as _dt
import html
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import gradio as gr

from biogpt import __version__, catalog
from biogpt.devices import available_devices
from biogpt.errors import InputError
from biogpt.generation import continuation_text
from biogpt.validation import check_generation_params, clean_text, generation_params

from . import gpu
from .errors import handler
from .fairness import limited
from .formatting import FINISHED, scores_html
from .handlers import LoadedModel, Progress, Workbench
from .theme import confidence_color

HISTORY_LIMIT = 200  # runs kept in the browser (the oldest go first)
ALTERNATIVES = 8


# ----------------------------------------------------------------------------------------------------------------
# What the page shows
# ----------------------------------------------------------------------------------------------------------------
def view_value(prompt: str, pieces: list[dict], colored: bool, note: str = "") -> dict:
    """The token view's value: the prompt, then the generated pieces (`i` is the token index a click explains,
    -1 while the text is still streaming), each tinted by its probability when `colored`."""
    return {"prompt": prompt, "pieces": pieces, "colored": colored, "note": note}


def streaming_pieces(progress: Progress) -> list[dict]:
    return [{"text": text, "i": -1, "color": confidence_color(p), "title": f"p = {p:.3f}"}
            for text, p in progress.pieces]


def token_pieces(text: str, spans: list[tuple[int, int]], probs: list[float], selected: Optional[int] = None,
                 branched_at: Optional[int] = None) -> list[dict]:
    """One clickable piece per generated token with text (the spans tile `text`)."""
    pieces = []
    for i, ((start, end), p) in enumerate(zip(spans, probs)):
        if end > start:
            pieces.append({"text": text[start:end], "i": i, "color": confidence_color(p), "title": f"p = {p:.3f}",
                           "sel": i == selected, "branch": i == branched_at})
    return pieces


TOKEN_VIEW = (
    '<div class="wb-view{{#if value.colored}} wb-colored{{/if}}">'
    '<span class="wb-prompt">{{value.prompt}}</span>'
    '{{#each value.pieces}}<span class="wb-tok{{#if this.sel}} wb-sel{{/if}}{{#if this.branch}} wb-branched{{/if}}'
    '{{#if this.clickable}} wb-click{{/if}}" data-i="{{this.i}}" style="--wb-p:{{this.color}}" '
    'title="{{this.title}}">{{this.text}}</span>{{/each}}</div>'
    '{{#if value.note}}<div class="wb-legend">{{value.note}}</div>{{/if}}')
# A click on a generated token asks the server to explain it (the streamed pieces, -1, are not clickable yet).
TOKEN_CLICK = ("element.addEventListener('click', (event) => { const piece = event.target.closest('[data-i]');"
               " if (piece && piece.dataset.i !== '-1') trigger('click', {token: Number(piece.dataset.i)}); });")
CLICK_NOTE = "Click a word to see what else the model considered there, and which prompt words led to it."


# ----------------------------------------------------------------------------------------------------------------
# Runs and records
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Version:
    """One continuation of a run's prompt: the first generation, or one branched from a picked token."""

    token_ids: list[int]
    probs: list[float]
    text: str
    spans: list[tuple[int, int]]
    label: str
    record_id: str
    branched_at: Optional[int] = None


def revision(loaded: LoadedModel) -> str:
    """Which weights ran: the Hub commit when known, else where they came from."""
    commit = getattr(loaded.model, "commit_hash", None)
    if commit:
        return commit
    if loaded.spec.source == catalog.DEMO:
        return f"bundled with biogpt {__version__}"
    return "local files"


def record(kind: str, loaded: LoadedModel, mode: str, params: dict, prompt: str, progress: Progress,
           **extra: Any) -> dict:
    """A run as the History tab keeps it: everything needed to reproduce it, and what it produced."""
    spec = loaded.spec
    return {
        "id": uuid.uuid4().hex[:12], "kind": kind,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": spec.source, "revision": revision(loaded), "dtype": spec.dtype,
                  "attn_implementation": spec.attn_implementation, "quantization": spec.quantization,
                  "device": spec.device},
        "mode": mode, "params": params, "prompt": prompt, "output": progress.text,
        "tokens": len(progress.token_ids), "seconds": round(progress.seconds, 3),
        "finish": FINISHED.get(progress.reason, progress.reason), **extra}


def remember(history: Optional[list], entry: dict) -> list:
    return ([*(history or []), entry])[-HISTORY_LIMIT:]


def controls(mode: str, max_new_tokens: Any, temperature: Any, top_p: Any, top_k: Any, repetition_penalty: Any,
             no_repeat_ngram_size: Any, num_beams: Any, seed: Any) -> dict:
    return dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                num_beams=num_beams, seed=seed)


def with_seed(mode: str, params: dict) -> dict:
    """A sampled run gets a seed of its own when none was set, so that its record reproduces it."""
    if mode == "sampling" and params.get("seed") is None:
        return {**params, "seed": secrets.randbelow(2**31)}
    return params


def _spans(loaded: LoadedModel, prompt_ids: list[int], token_ids: list[int]) -> list[tuple[int, int]]:
    return loaded.server.token_spans(prompt_ids, token_ids)  # tokenizer work only: no GPU


@gpu
def _alternatives(loaded: LoadedModel, prompt_ids: list[int], token_ids: list[int], position: int) -> Any:
    return loaded.server.alternatives(prompt_ids, token_ids, position, ALTERNATIVES)


@gpu
def _attribution(loaded: LoadedModel, prompt_ids: list[int], token_ids: list[int], position: int,
                 prompt: str) -> Any:
    return loaded.server.attribution(prompt_ids, token_ids, position, prompt)


def heat_map(attributed: Any) -> str:
    """The prompt as typed, each word tinted by its share of the influence (a text legend says how to read it)."""
    text, cursor, parts = attributed.prompt_text, 0, []
    top = max((w.score for w in attributed.words), default=0.0) or 1.0
    for word in attributed.words:
        parts.append(html.escape(text[cursor:word.start]))
        share = word.score / top
        parts.append(f'<span class="wb-heat" style="background:rgba(234,88,12,{0.08 + 0.6 * share:.2f})" '
                     f'title="{100 * word.score:.1f}% of the influence">{html.escape(word.text)}</span>')
        cursor = word.end
    parts.append(html.escape(text[cursor:]))
    return f'<div class="wb-heatmap">{"".join(parts)}</div>'


METHOD_NOTE = ("**How to read this.** The darker a prompt word, the more the model's choice of this word depended on "
               "it (gradient × input: how much the probability moves when that word's vector changes). It is a "
               "share of sensitivity within this one prediction, not a reason or a source: the model cites nothing, "
               "grammar words can score high, and the start of the text often does.")


@dataclass
class Explorer:
    """The Generate tab's handlers (see the module docstring)."""

    bench: Workbench

    def _finish(self, loaded: LoadedModel, progress: Progress) -> tuple[list[tuple[int, int]], list[float]]:
        return _spans(loaded, progress.prompt_ids, progress.token_ids), progress.probs

    @limited
    @handler
    def generate(self, prompt: str, mode: str, max_new_tokens: float, temperature: float, top_p: float,
                 top_k: float, repetition_penalty: float, no_repeat_ngram_size: float, num_beams: float,
                 seed: float, colored: bool, state: Optional[dict], history: Optional[list],
                 request: gr.Request) -> Iterator[tuple]:
        """Stream (view, plain text, stats) while the model writes; at the end, the run (for explanations and
        branches), the history with this run's record, and the versions list."""
        prompt = clean_text(prompt, "prompt", self.bench.settings.max_prompt_chars)
        params = with_seed(mode, generation_params(mode, controls(
            mode, max_new_tokens, temperature, top_p, top_k, repetition_penalty, no_repeat_ngram_size, num_beams,
            seed), self.bench.settings))
        progress = None
        for progress in self.bench.decode(self.bench.spec(state), prompt, params, request):
            yield (view_value(prompt, streaming_pieces(progress), colored), prompt + progress.text, progress.stats(),
                   gr.skip(), gr.skip(), gr.skip(), gr.skip())
        spans, probs = self._finish(progress.loaded, progress)
        entry = record("generate", progress.loaded, mode, params, prompt, progress)
        version = Version(progress.token_ids, probs, progress.text, spans, "1 · the model's own", entry["id"])
        run = {"prompt": prompt, "prompt_ids": progress.prompt_ids, "state": state or self.bench.default_state(),
               "mode": mode, "params": params, "versions": [vars(version)], "current": 0}
        yield (view_value(prompt, token_pieces(progress.text, spans, probs), colored, CLICK_NOTE),
               prompt + progress.text, progress.stats(), run, remember(history, entry),
               gr.update(choices=[version.label], value=version.label, visible=False), gr.update(visible=False))

    @limited
    @handler
    def explain(self, run: Optional[dict], colored: bool, evt: gr.EventData) -> tuple:
        """What the model considered at the clicked token, and which prompt words influenced it."""
        if not run:
            raise InputError("Generate some text first, then click one of its words.")
        version = run["versions"][run["current"]]
        position = int(evt.token)
        if not 0 <= position < len(version["token_ids"]):
            raise InputError(f"There is no generated token {position} in this version.")
        with self.bench.manager.use(self.bench.spec(run["state"])) as loaded:
            step = _alternatives(loaded, run["prompt_ids"], version["token_ids"], position)
            attributed = _attribution(loaded, run["prompt_ids"], version["token_ids"], position, run["prompt"])
        chosen = version["text"][step.start:step.end] or step.token
        scores = {(alt.text if alt.text.strip() else ("(end of text)" if alt.special else repr(alt.text))):
                  alt.probability for alt in step.alternatives}
        choices = [(f"{(alt.text.strip() or ('end of text' if alt.special else alt.token))} "
                    f"({100 * alt.probability:.1f}%)", alt.token_id)
                   for alt in step.alternatives if alt.token_id != step.token_id]
        note = (f"**At this point the model wrote “{chosen.strip()}”** with probability {100 * step.probability:.1f}% "
                f"(rank {step.rank}). Its {len(step.alternatives)} most likely tokens there, before any sampling "
                "settings:")
        run = {**run, "selected": position,
               "picked": {str(alt.token_id): alt.probability for alt in step.alternatives}}
        pieces = token_pieces(version["text"], [tuple(s) for s in version["spans"]], version["probs"], position,
                              version.get("branched_at"))
        return (view_value(run["prompt"], pieces, colored, CLICK_NOTE), run, gr.update(visible=True), note,
                scores_html(scores), gr.update(choices=choices, value=choices[0][1] if choices else None),
                heat_map(attributed), METHOD_NOTE)

    @limited
    @handler
    def branch(self, run: Optional[dict], token_id: Optional[int], colored: bool, history: Optional[list],
               request: gr.Request) -> Iterator[tuple]:
        """Continue the selected version from the picked token instead of the one the model wrote; both stay."""
        if not run or run.get("selected") is None:
            raise InputError("Click a generated word first, then pick the token to continue with.")
        if token_id is None:
            raise InputError("Pick one of the alternatives first.")
        version = run["versions"][run["current"]]
        position = run["selected"]
        ids = run["prompt_ids"] + version["token_ids"][:position] + [int(token_id)]
        params = {**run["params"], "max_new_tokens": max(1, run["params"]["max_new_tokens"] - position - 1)}
        progress = None
        for progress in self.bench.decode(self.bench.spec(run["state"]), run["prompt"], params, request,
                                          prompt_ids=ids):
            yield (view_value(run["prompt"], streaming_pieces(progress), colored), gr.skip(), progress.stats(),
                   gr.skip(), gr.skip(), gr.skip(), gr.skip())
        token_ids = version["token_ids"][:position] + [int(token_id)] + progress.token_ids
        spans = _spans(progress.loaded, run["prompt_ids"], token_ids)
        text = continuation_text(progress.loaded.tokenizer, run["prompt_ids"], token_ids)
        # The picked token is coloured by the probability the model gave it there (its raw one).
        probs = version["probs"][:position] + [run.get("picked", {}).get(str(token_id), 0.0)] + progress.probs
        picked = text[spans[position][0]:spans[position][1]].strip()
        entry = record("branch", progress.loaded, run["mode"], params, run["prompt"], progress, input_ids=ids,
                       branch={"from": version["record_id"], "position": position, "token": picked},
                       text=text)
        label = f"{len(run['versions']) + 1} · “{picked}” at word {position + 1}"
        new = Version(token_ids, probs, text, spans, label, entry["id"], position)
        run = {**run, "versions": [*run["versions"], vars(new)], "current": len(run["versions"]), "selected": None}
        labels = [v["label"] for v in run["versions"]]
        yield (view_value(run["prompt"], token_pieces(text, spans, probs, branched_at=position), colored, CLICK_NOTE),
               run["prompt"] + text, progress.stats(), run, remember(history, entry),
               gr.update(choices=labels, value=label, visible=True), gr.update(visible=False))

    def show_version(self, run: Optional[dict], label: str, colored: bool) -> tuple:
        """Show another version of the run (the token view and the plain text)."""
        if not run:
            return gr.skip(), gr.skip(), gr.skip()
        index = next((i for i, v in enumerate(run["versions"]) if v["label"] == label), run["current"])
        version = run["versions"][index]
        run = {**run, "current": index, "selected": None}
        pieces = token_pieces(version["text"], [tuple(s) for s in version["spans"]], version["probs"],
                              branched_at=version.get("branched_at"))
        return view_value(run["prompt"], pieces, colored, CLICK_NOTE), run["prompt"] + version["text"], run

    def rerun(self, entry: dict, history: Optional[list], request: gr.Request) -> Iterator[tuple[str, list]]:
        """Run a History entry again with everything it recorded (model options, decoding parameters and seed;
        for a branched version, the ids it continued): yields (text so far, history), the last with a record of
        the re-run added. The entry comes from the browser, so every value is checked as a new request's is."""
        model = entry.get("model") or {}
        if not isinstance(model, dict) or not isinstance(entry.get("params"), dict):
            raise InputError("This history entry has no model or parameters to re-run.")
        device = model.get("device") if model.get("device") in available_devices() else "auto"
        state = {"source": model.get("source"), "attn_implementation": model.get("attn_implementation") or "sdpa",
                 "dtype": model.get("dtype") or "auto", "quantization": model.get("quantization"), "device": device}
        prompt = clean_text(entry.get("prompt"), "prompt", self.bench.settings.max_prompt_chars)
        params = check_generation_params(entry["params"], self.bench.settings)
        input_ids = entry.get("input_ids")
        if input_ids is not None and (not isinstance(input_ids, list) or len(input_ids) > 4096 or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in input_ids)):
            raise InputError("This history entry's token ids are not a list of token ids.")
        spec = self.bench.spec(state)
        progress = None
        for progress in self.bench.decode(spec, prompt, params, request, prompt_ids=input_ids):
            yield progress.text, history or []
        again = record("rerun", progress.loaded, entry.get("mode", ""), params, prompt, progress, of=entry.get("id"))
        if input_ids is not None:
            again["input_ids"] = input_ids
        yield progress.text, remember(history, again)
