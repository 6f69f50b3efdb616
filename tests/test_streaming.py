"""stream_generate(): deltas that concatenate to the decoded continuation on the real BioGPT vocabulary, are never
contradicted later, stop promptly (close, stop_event, stop strings) and free the cache."""

from __future__ import annotations

import gc
import random
import threading
import weakref

import pytest
import torch

import biogpt
from biogpt.errors import GenerationParameterError
from biogpt.generation import StreamDelta, continuation_text, generate, stream_generate
from biogpt.generation.streaming import _stable_prefix_end

WORDS = ["Ibuprofen", "is", "best", "used", "for", "the", "treatment", "of", "COVID-19", "anti-inflammatory",
         "patients", "(", ")", ".", ",", ";", ":", "\"", "'", "'s", "n't", "-", "--", "%", "5", "3.5", "IL-6", "p53",
         "[", "]", "mg/kg", "&", "<", "e.g.", "vs.", "Ibupro", "acetylsal", "“", "”", "α", "β-catenin", "?", "!"]


@pytest.fixture(scope="module")
def tokenizer(real_tokenizer):
    return real_tokenizer


@pytest.fixture(scope="module")
def model():
    """A tiny random model over the real 42,384-token vocabulary, initialised wide so that samples vary."""
    torch.manual_seed(0)
    config = biogpt.BioGptConfig(vocab_size=42384, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=24, max_position_embeddings=96, initializer_range=0.3)
    return biogpt.BioGptForCausalLM.from_config(config).eval()


def _random_prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))


def _collect(deltas) -> tuple[str, list[int], list[StreamDelta]]:
    deltas = list(deltas)
    return "".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids], deltas


def test_deltas_concatenate_to_the_decoded_continuation(model, tokenizer):
    rng = random.Random(0)
    for i in range(100):
        prompt = _random_prompt(rng)
        prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        kwargs = dict(max_new_tokens=rng.randint(1, 14), do_sample=True, temperature=1.5, seed=i)
        text, ids, deltas = _collect(stream_generate(model, tokenizer, prompt, **kwargs))
        expected_ids = generate(model, prompt_ids, **kwargs)[0, prompt_ids.shape[1]:].tolist()
        assert ids == expected_ids
        assert text == continuation_text(tokenizer, prompt_ids[0].tolist(), ids), (prompt, ids)
        assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
        assert deltas[-1].finish_reason in ("length", "eos")
        # No delta is contradicted by the text of any later (shorter or longer) state of the sequence.
        emitted = ""
        for j, delta in enumerate(deltas):
            emitted += delta.text
            later = continuation_text(tokenizer, prompt_ids[0].tolist(), ids[:j + 1])
            assert later.startswith(emitted), (prompt, ids[:j + 1], emitted, later)


def test_stable_prefix_is_never_contradicted_on_punctuation_heavy_text(tokenizer):
    """The hold-back rule on token sequences built from quotes, brackets, hyphens, contractions, numbers."""
    rng = random.Random(1)
    pool = tokenizer(" ".join(WORDS * 2))["input_ids"][1:]
    for _ in range(200):
        prompt_ids = tokenizer(_random_prompt(rng))["input_ids"]
        generated = [rng.choice(pool) for _ in range(rng.randint(1, 16))]
        stables = [continuation_text(tokenizer, prompt_ids, generated[:_stable_prefix_end(tokenizer, generated[:k])])
                   for k in range(1, len(generated) + 1)]
        for k, stable in enumerate(stables):
            for later_k in range(k, len(generated)):
                later = continuation_text(tokenizer, prompt_ids, generated[:later_k + 1])
                assert later.startswith(stable), (prompt_ids, generated[:later_k + 1], stable, later)


def test_tokens_stream_one_by_one_with_their_probabilities(model, tokenizer):
    deltas = list(stream_generate(model, tokenizer, "Ibuprofen is best used for", max_new_tokens=6,
                                  repetition_penalty=1.3))
    assert [len(d.token_ids) for d in deltas] == [1] * 6
    prompt_ids = tokenizer("Ibuprofen is best used for")["input_ids"]
    ids = prompt_ids + [d.token_ids[0] for d in deltas]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    for k, delta in enumerate(deltas):
        scores = logits[len(prompt_ids) - 1 + k].clone()
        seen = torch.tensor(sorted(set(ids[:len(prompt_ids) + k])))
        picked = scores[seen]
        scores[seen] = torch.where(picked < 0, picked * 1.3, picked / 1.3)
        assert delta.probs[0] == pytest.approx(float(scores.softmax(-1)[delta.token_ids[0]]), rel=1e-4)


def _count_forwards(model, monkeypatch) -> list[int]:
    calls = []
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def _track_caches(monkeypatch) -> list:
    from biogpt.cache import KVCache

    refs = []
    original = KVCache.for_model

    def tracked(cls, m, batch, capacity):
        cache = original(m, batch, capacity)
        refs.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(KVCache, "for_model", classmethod(tracked))
    return refs


def test_closing_the_stream_stops_decoding_and_frees_the_cache(model, tokenizer, monkeypatch):
    calls = _count_forwards(model, monkeypatch)
    caches = _track_caches(monkeypatch)
    stream = stream_generate(model, tokenizer, "Ibuprofen is", max_new_tokens=50, eos_token_id=[])
    assert calls == []  # nothing runs before the first delta is asked for
    for count, _ in enumerate(stream, start=1):
        if count == 3:
            break
    stream.close()
    assert len(calls) == 3  # prefill + 2 single-token steps: no step after the consumer stopped
    gc.collect()
    assert len(caches) == 1 and caches[0]() is None


def test_stop_event_cancels_within_one_step(model, tokenizer, monkeypatch):
    calls = _count_forwards(model, monkeypatch)
    caches = _track_caches(monkeypatch)
    stop = threading.Event()
    deltas = []
    prompt = "Ibuprofen is"
    for delta in stream_generate(model, tokenizer, prompt, stop_event=stop, max_new_tokens=50, eos_token_id=[]):
        deltas.append(delta)
        if len(deltas) == 4:
            stop.set()
    assert len(deltas) == 5 and deltas[-1].finished and deltas[-1].finish_reason == "cancelled"
    assert deltas[-1].token_ids == [] and len(calls) == 4
    ids = [t for d in deltas for t in d.token_ids]
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert "".join(d.text for d in deltas) == continuation_text(tokenizer, prompt_ids, ids)
    gc.collect()
    assert caches[0]() is None


def test_stop_strings_end_generation_after_the_first_occurrence(model, tokenizer):
    prompt = "The patients were"
    full, ids, _ = _collect(stream_generate(model, tokenizer, prompt, max_new_tokens=20, do_sample=True, seed=7,
                                            eos_token_id=[]))
    words = full.split()
    stop = words[min(3, len(words) - 1)][:3]
    cut = full.find(stop) + len(stop)
    text, stopped_ids, deltas = _collect(stream_generate(model, tokenizer, prompt, max_new_tokens=20, do_sample=True,
                                                         seed=7, eos_token_id=[], stop_strings=["@@never@@", stop]))
    assert text == full[:cut] and text.endswith(stop)
    assert deltas[-1].finish_reason == "stop_string"
    assert stopped_ids == ids[:len(stopped_ids)] and len(stopped_ids) < len(ids)


def test_finish_reasons_eos_and_length(model, tokenizer):
    _, ids, deltas = _collect(stream_generate(model, tokenizer, "Aspirin", max_new_tokens=5))
    assert deltas[-1].finish_reason == "length" and len(ids) == 5
    _, ids2, deltas2 = _collect(stream_generate(model, tokenizer, "Aspirin", max_new_tokens=5,
                                                eos_token_id=[ids[2]]))
    assert deltas2[-1].finish_reason == "eos" and ids2 == ids[:ids.index(ids[2]) + 1]


def test_beam_search_streams_once(model, tokenizer):
    prompt_ids = tokenizer("Aspirin is", return_tensors="pt")["input_ids"]
    deltas = list(stream_generate(model, tokenizer, input_ids=prompt_ids, num_beams=3, max_new_tokens=6))
    assert len(deltas) == 1 and deltas[0].finished
    expected = generate(model, prompt_ids, num_beams=3, max_new_tokens=6)[0, prompt_ids.shape[1]:].tolist()
    assert deltas[0].token_ids == expected and len(deltas[0].probs) == len(expected)
    assert deltas[0].text == continuation_text(tokenizer, prompt_ids[0].tolist(), expected)


def test_empty_prompt_and_truncation(model, tokenizer):
    _, ids, deltas = _collect(stream_generate(model, tokenizer, "", max_new_tokens=3))
    assert ids == generate(model, torch.tensor([[2]]), max_new_tokens=3)[0, 1:].tolist()
    long_prompt = " ".join(["Ibuprofen"] * 120)
    with pytest.raises(GenerationParameterError, match="max_position_embeddings"):
        stream_generate(model, tokenizer, long_prompt, max_new_tokens=3)
    deltas = list(stream_generate(model, tokenizer, long_prompt, max_new_tokens=200, truncate=True,
                                  eos_token_id=[]))
    assert all(d.prompt_truncated for d in deltas)
    assert sum(len(d.token_ids) for d in deltas) == 48  # half of the 96 positions kept for the continuation
    assert not any(d.prompt_truncated for d in stream_generate(model, tokenizer, "Aspirin", max_new_tokens=2))


def test_bad_stream_arguments(model, tokenizer):
    with pytest.raises(GenerationParameterError, match="tokenizer"):
        stream_generate(model, None, "x")
    with pytest.raises(GenerationParameterError, match="num_return_sequences"):
        stream_generate(model, tokenizer, "x", do_sample=True, num_return_sequences=2)
    with pytest.raises(GenerationParameterError, match="stop_strings"):
        stream_generate(model, tokenizer, "x", stop_strings="done")
    with pytest.raises(GenerationParameterError, match="top_p"):
        stream_generate(model, tokenizer, "x", do_sample=True, top_p=0)


def test_model_stream_method_delegates(model, tokenizer):
    prompt_ids = tokenizer("Aspirin", return_tensors="pt")["input_ids"]
    text, ids, _ = _collect(model.stream(prompt_ids, tokenizer=tokenizer, max_new_tokens=4))
    assert ids == generate(model, prompt_ids, max_new_tokens=4)[0, prompt_ids.shape[1]:].tolist()


def test_stream_accepts_the_tokenizer_output_unpacked(model, tokenizer):
    """`model.stream(**tokenizer(text, return_tensors="pt"), ...)`, as the README writes it."""
    inputs = tokenizer("Ibuprofen is best used for", return_tensors="pt")
    streamed = "".join(d.text for d in model.stream(**inputs, tokenizer=tokenizer, max_new_tokens=6))
    ids = model.generate(**inputs, max_new_tokens=6)
    assert streamed == continuation_text(tokenizer, inputs["input_ids"][0].tolist(), ids[0, inputs["input_ids"].shape[1]:].tolist())


def test_delta_streamer_is_the_text_rule_of_stream_generate(model, tokenizer):
    """`DeltaStreamer` (shared by `stream_generate` and the batching engine) fed a stream's tokens gives its deltas."""
    from biogpt.generation import DeltaStreamer, prepare_stream

    rng = random.Random(7)
    for i in range(15):
        prompt = _random_prompt(rng)
        params = dict(max_new_tokens=rng.randint(1, 25), do_sample=True, seed=i, eos_token_id=[],
                      stop_strings=["e"] if i % 3 == 0 else None)
        deltas = list(stream_generate(model, tokenizer, prompt, **params))
        request = prepare_stream(model, tokenizer, prompt, **params)
        streamer = request.streamer()
        replay = [streamer.push(d.token_ids[0], d.probs[0]) for d in deltas]
        assert replay == deltas and streamer.finished
        with pytest.raises(RuntimeError):
            streamer.push(5, 0.5)

    # finish(): the text held back so far, then nothing more; before any token, an empty text.
    prompt_ids = tokenizer("The", return_tensors="pt")["input_ids"][0].tolist()
    generated = tokenizer("protein p53 regulates the", add_special_tokens=False)["input_ids"]
    streamer = DeltaStreamer(tokenizer, prompt_ids, eos_token_ids=[2], max_new_tokens=50, prompt_truncated=True)
    shown = "".join(streamer.push(token, 0.5).text for token in generated)
    last = streamer.finish("cancelled")
    assert last.finished and last.finish_reason == "cancelled" and last.token_ids == [] and last.prompt_truncated
    assert shown + last.text == continuation_text(tokenizer, prompt_ids, generated)
    empty = DeltaStreamer(tokenizer, prompt_ids).finish("cancelled")
    assert (empty.text, empty.finished, empty.finish_reason) == ("", True, "cancelled")
    # max_new_tokens and eos end the stream on the token itself.
    ending = DeltaStreamer(tokenizer, prompt_ids, eos_token_ids=[2], max_new_tokens=2)
    assert not ending.push(generated[0], 0.1).finished and ending.push(generated[1], 0.1).finish_reason == "length"
    assert DeltaStreamer(tokenizer, prompt_ids, eos_token_ids=[2]).push(2, 0.9).finish_reason == "eos"


def test_streaming_decodes_the_prompt_once_per_request(model, tokenizer, monkeypatch):
    """Each streamed token costs one decode of prompt + continuation; the prompt alone is decoded once."""
    calls = []
    original = type(tokenizer).decode

    def counting_decode(self, ids, *args, **kwargs):
        calls.append(len(ids))
        return original(self, ids, *args, **kwargs)

    prompt = tokenizer("Ibuprofen is best used for", return_tensors="pt")["input_ids"]
    monkeypatch.setattr(type(tokenizer), "decode", counting_decode)
    deltas = list(stream_generate(model, tokenizer, input_ids=prompt, max_new_tokens=8, min_new_tokens=8))
    monkeypatch.undo()
    assert len(deltas) == 8
    # the prompt alone once, then at most one decode per token (it was two); none where no text became stable
    assert 1 < len(calls) <= 1 + len(deltas)
    assert "".join(d.text for d in deltas) == continuation_text(tokenizer, prompt[0].tolist(),
                                                                [t for d in deltas for t in d.token_ids])


def test_a_token_that_leaves_the_stable_text_unchanged_costs_no_decode(tokenizer, monkeypatch):
    """Pieces inside a word, and the word held back after them, change no emitted text: nothing is decoded for
    them; the first push that makes text stable decodes once and emits it."""
    from biogpt.generation.streaming import DeltaStreamer

    pieces = tokenizer("Ibuprofenxyzqu is zz")["input_ids"][1:]  # I bu prof en xy z q u</w> is</w> z z</w>
    assert tokenizer.convert_ids_to_tokens(pieces)[7:] == ["u</w>", "is</w>", "z", "z</w>"]
    streamer = DeltaStreamer(tokenizer, [2, 25254])  # "Aspirin"
    calls = []
    original = type(tokenizer).decode
    monkeypatch.setattr(type(tokenizer), "decode", lambda self, ids, *a, **k: calls.append(len(ids)) or original(
        self, ids, *a, **k))
    texts = []
    for count, token in enumerate(pieces, 1):
        texts.append(streamer.push(token, 0.5).text)
        # decodes only where a word became stable: "is" made "Ibuprofenxyzqu" stable, "z</w>" made "is" stable
        assert len(calls) == (0 if count <= 8 else 1 if count <= 10 else 2), count
    texts.append(streamer.finish("cancelled").text)
    monkeypatch.undo()
    assert texts == [""] * 8 + [" Ibuprofenxyzqu", "", " is", " zz"]
    assert "".join(texts) == continuation_text(tokenizer, [2, 25254], pieces)
