"""BatchingEngine: concurrent streams decode exactly like solo `stream_generate` runs, requests join and leave
between steps, cancellation frees the slot, and a bad request never kills the worker. No timing asserts."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import biogpt
from biogpt.batching import BatchingEngine
from biogpt.bpe import learn_bpe
from biogpt.errors import GenerationParameterError
from biogpt.generation import StreamRequest, stream_generate

TEXTS = ["Ibuprofen is best used for the treatment of pain and fever.",
         "Aspirin inhibits COX-1 and COX-2 enzymes in patients with arthritis.",
         "The protein p53 regulates the cell cycle; mutations are common in cancer.",
         "Metformin lowers blood glucose (e.g. in type 2 diabetes), see Table 3."]
PROMPTS = ["Ibuprofen is", "Aspirin inhibits COX-1 and", "The protein", "Metformin lowers blood glucose in",
           "pain", "Mutations in p53 are common in"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-vocab")
    learn_bpe(TEXTS * 3, 60, out)
    return biogpt.BioGptTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = biogpt.BioGptConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=48, max_position_embeddings=128,
                                 initializer_range=0.3)
    return biogpt.BioGptForCausalLM.from_config(config).eval()


@pytest.fixture()
def engine(model, tokenizer):
    eng = BatchingEngine(model, tokenizer, max_batch_size=8)
    yield eng
    eng.close()


def solo(model, tokenizer, prompt, **params):
    deltas = list(stream_generate(model, tokenizer, prompt, **params))
    return deltas


def summary(deltas):
    return ([t for d in deltas for t in d.token_ids], "".join(d.text for d in deltas), deltas[-1].finish_reason,
            [d.text for d in deltas])


def test_concurrent_greedy_streams_equal_solo_runs(model, tokenizer, engine):
    params = [dict(max_new_tokens=12 + 3 * i, eos_token_id=[]) for i in range(len(PROMPTS))]
    expected = [summary(solo(model, tokenizer, p, **kw)) for p, kw in zip(PROMPTS, params)]
    streams = [engine.stream(p, **kw) for p, kw in zip(PROMPTS, params)]
    got = [summary(list(s)) for s in streams]
    for want, have, kw in zip(expected, got, params):
        assert have == want
        assert len(have[0]) == kw["max_new_tokens"]  # per-request max_new_tokens respected
    assert engine.forward_count < sum(kw["max_new_tokens"] for kw in params)  # the rows really were batched


def test_consumers_in_threads_and_per_request_parameters(model, tokenizer, engine):
    params = [dict(max_new_tokens=10, repetition_penalty=1.3),
              dict(max_new_tokens=7, no_repeat_ngram_size=2),
              dict(max_new_tokens=9, do_sample=True, seed=3, top_k=20, temperature=0.8),
              dict(max_new_tokens=8, do_sample=True, seed=11, top_p=0.9),
              dict(max_new_tokens=6, min_new_tokens=6)]
    prompts = PROMPTS[:len(params)]
    expected = [summary(solo(model, tokenizer, p, **kw)) for p, kw in zip(prompts, params)]
    results = [None] * len(params)
    barrier = threading.Barrier(len(params))

    def user(i):
        barrier.wait()
        results[i] = summary(list(engine.stream(prompts[i], **params[i])))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(params))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == expected  # seeded sampling in the engine == solo sampling with the same seed


def test_requests_join_and_leave_mid_generation(model, tokenizer, engine):
    first = engine.stream(PROMPTS[0], max_new_tokens=40, eos_token_id=[])
    head = [next(first) for _ in range(4)]  # it runs alone for a few steps
    others = [engine.stream(p, max_new_tokens=15, eos_token_id=[]) for p in PROMPTS[1:4]]
    doomed = engine.stream(PROMPTS[4], max_new_tokens=40, eos_token_id=[])
    for _ in range(3):
        next(doomed)
    doomed.close()
    rest = list(first)
    got_first = summary(head + rest)
    assert got_first == summary(solo(model, tokenizer, PROMPTS[0], max_new_tokens=40, eos_token_id=[]))
    for p, s in zip(PROMPTS[1:4], others):
        assert summary(list(s)) == summary(solo(model, tokenizer, p, max_new_tokens=15, eos_token_id=[]))
    # a later request joins after everything has left and still matches
    late = summary(list(engine.stream(PROMPTS[5], max_new_tokens=9)))
    assert late == summary(solo(model, tokenizer, PROMPTS[5], max_new_tokens=9))


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_cancelled_stream_frees_its_slot(model, tokenizer, engine):
    keep = engine.stream(PROMPTS[0], max_new_tokens=100, eos_token_id=[])
    stop = threading.Event()
    cancel = engine.stream(PROMPTS[1], max_new_tokens=100, eos_token_id=[], stop_event=stop)
    closed = engine.stream(PROMPTS[2], max_new_tokens=100, eos_token_id=[])
    next(keep), next(cancel), next(closed)
    assert _wait(lambda: engine.active_count == 3)
    closed.close()
    stop.set()
    deltas = list(cancel)
    assert deltas[-1].finished and deltas[-1].finish_reason == "cancelled"
    assert _wait(lambda: engine.active_count == 1)
    frozen = (cancel.forwards, closed.forwards)
    before = keep.forwards
    for _ in range(5):
        next(keep)
    assert _wait(lambda: keep.forwards >= before + 3)
    assert (cancel.forwards, closed.forwards) == frozen  # no more forwards for them
    keep.close()
    assert _wait(lambda: engine.active_count == 0)


def test_max_batch_size_queues_the_rest(model, tokenizer):
    with BatchingEngine(model, tokenizer, max_batch_size=2) as eng:
        streams = [eng.stream(p, max_new_tokens=6, eos_token_id=[]) for p in PROMPTS[:5]]
        seen = []
        for s in streams:
            seen.append(summary(list(s)))
        assert seen == [summary(solo(model, tokenizer, p, max_new_tokens=6, eos_token_id=[])) for p in PROMPTS[:5]]


def test_stop_strings_eos_and_beam_search(model, tokenizer, engine):
    base = solo(model, tokenizer, PROMPTS[0], max_new_tokens=20, eos_token_id=[])
    text = "".join(d.text for d in base)
    stop = text.strip()[:3] if text.strip() else None
    if stop:
        got = summary(list(engine.stream(PROMPTS[0], max_new_tokens=20, eos_token_id=[], stop_strings=[stop])))
        want = summary(solo(model, tokenizer, PROMPTS[0], max_new_tokens=20, eos_token_id=[], stop_strings=[stop]))
        assert got == want and got[2] == "stop_string"
    # eos: make the first greedy token the eos
    first = base[0].token_ids[0]
    got = summary(list(engine.stream(PROMPTS[0], max_new_tokens=20, eos_token_id=first)))
    assert got == summary(solo(model, tokenizer, PROMPTS[0], max_new_tokens=20, eos_token_id=first))
    assert got[2] == "eos"
    got = summary(list(engine.stream(PROMPTS[1], max_new_tokens=5, num_beams=3)))
    assert got == summary(solo(model, tokenizer, PROMPTS[1], max_new_tokens=5, num_beams=3))


def test_bad_requests_never_kill_the_worker(model, tokenizer, engine):
    with pytest.raises(GenerationParameterError):
        engine.stream(PROMPTS[0], temperature=-1)  # validated eagerly, as stream_generate does
    with pytest.raises(GenerationParameterError):
        engine.stream(PROMPTS[0], not_a_parameter=3)
    bad = engine.stream(input_ids=torch.tensor([[2, 10 ** 6]]), max_new_tokens=3)  # id outside the vocabulary
    good = engine.stream(PROMPTS[0], max_new_tokens=5)
    with pytest.raises(Exception):
        list(bad)
    assert summary(list(good)) == summary(solo(model, tokenizer, PROMPTS[0], max_new_tokens=5))
    assert _wait(lambda: engine.active_count == 0)


def test_a_request_failing_mid_batch_ends_alone(model, tokenizer, engine, monkeypatch):
    """Its logits processors raise at its 4th token: its stream ends with that error after 3 deltas, and the rows
    decoding beside it (greedy, penalised, sampled) still equal their solo runs."""
    failing = tokenizer(PROMPTS[3], return_tensors="pt")["input_ids"]
    process = StreamRequest.process

    def fail_at_fourth_token(processors, ids, logits):
        if ids.shape[1] == failing.shape[1] + 3 and torch.equal(ids[:, :failing.shape[1]], failing):
            raise RuntimeError("processor failed")
        return process(processors, ids, logits)

    monkeypatch.setattr(StreamRequest, "process", staticmethod(fail_at_fourth_token))
    params = [dict(max_new_tokens=10, eos_token_id=[]), dict(max_new_tokens=8, repetition_penalty=1.3),
              dict(max_new_tokens=9, do_sample=True, seed=5, top_k=20)]
    expected = [summary(solo(model, tokenizer, p, **kw)) for p, kw in zip(PROMPTS[:3], params)]
    bad = engine.stream(PROMPTS[3], max_new_tokens=10, repetition_penalty=1.2, eos_token_id=[])
    streams = [engine.stream(p, **kw) for p, kw in zip(PROMPTS[:3], params)]
    got = []
    with pytest.raises(RuntimeError, match="processor failed"):
        for delta in bad:
            got.append(delta)
    assert len(got) == 3
    assert [summary(list(s)) for s in streams] == expected
    assert _wait(lambda: engine.active_count == 0)


def test_submit_takes_text_or_ids(model, tokenizer, engine):
    ids = tokenizer(PROMPTS[3])["input_ids"]
    a = summary(list(engine.submit(ids, max_new_tokens=7)))
    b = summary(list(engine.submit(PROMPTS[3], max_new_tokens=7)))
    assert a == b == summary(solo(model, tokenizer, PROMPTS[3], max_new_tokens=7))
