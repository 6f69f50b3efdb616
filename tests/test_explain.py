"""biogpt.explain: a generated token's alternatives, its span in the streamed text, and what in the prompt influenced
it, each checked against an independent computation (per-step forwards, the stream's own numbers, finite
differences)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

import biogpt
from biogpt import explain
from biogpt.catalog import demo_path
from biogpt.errors import ConfigError, GenerationParameterError, InputError
from biogpt.generation import continuation_text, prepare_stream

PROMPTS = ["Ibuprofen is used for", "The anti-cancer drug (cisplatin) at 5 mg/kg", "COVID-19 patients (n = 12) had",
           "Aspirin 81 mg/day reduced IL-6 levels by 3.5-fold in", "", "Non-small-cell lung cancer (NSCLC) is"]
WORDS = ["Ibuprofen", "is", "used", "for", "the", "anti-inflammatory", "(", ")", ".", ",", ";", "\"", "'s", "-",
         "%", "5", "3.5", "IL-6", "mg/kg", "&", "<", "e.g.", "[", "]", "β-catenin", "?"]


@pytest.fixture(scope="module")
def tokenizer():
    return biogpt.BioGptTokenizer.from_pretrained(demo_path("causal-lm"))


@pytest.fixture(scope="module")
def demo():
    """The bundled demo LM: realistic biomedical text over a small vocabulary."""
    return biogpt.BioGptForCausalLM.from_pretrained(demo_path("causal-lm")).eval()


def tiny(tokenizer, seed: int = 0, **overrides) -> biogpt.BioGptForCausalLM:
    """A random 2-layer model over the demo vocabulary (so that ids have text), fast enough for finite differences."""
    torch.manual_seed(seed)
    config = biogpt.BioGptConfig(**{**dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                           initializer_range=0.3), **overrides})
    return biogpt.BioGptForCausalLM.from_config(config).eval()


def greedy_run(model, tokenizer, prompt: str, new_tokens: int = 20) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt)["input_ids"]
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new_tokens)
    return prompt_ids, out[0, len(prompt_ids):].tolist()


# ----------------------------------------------------------------------------------------------------------------
# Alternatives
# ----------------------------------------------------------------------------------------------------------------
def test_alternatives_are_each_steps_own_distribution_and_greedy_choices_rank_first(demo, tokenizer):
    for prompt in PROMPTS:
        prompt_ids, generated = greedy_run(demo, tokenizer, prompt)
        steps = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=5)
        assert [s.position for s in steps] == list(range(len(generated)))
        assert [s.token_id for s in steps] == generated
        for i, step in enumerate(steps):
            # One full forward per step, independent of the teacher-forced one.
            with torch.no_grad():
                expected = demo(torch.tensor([prompt_ids + generated[:i]])).logits[0, -1].float().softmax(-1)
            # (compared by value, so that two near-equal tokens in either order still pass)
            assert [a.probability for a in step.alternatives] == pytest.approx(expected.topk(5).values.tolist(),
                                                                               abs=1e-5)
            assert [a.probability for a in step.alternatives] == pytest.approx(
                [float(expected[a.token_id]) for a in step.alternatives], abs=1e-5)
            assert step.probability == pytest.approx(float(expected[generated[i]]), abs=1e-5)
            assert step.rank == 1 and step.alternatives[0].token_id == generated[i]
            assert sum(a.probability for a in step.alternatives) <= 1 + 1e-6
            assert step.distribution == "raw"


def test_processed_probabilities_are_the_ones_the_sampler_drew_from(demo, tokenizer):
    settings = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3,
                    no_repeat_ngram_size=3, min_new_tokens=8, max_new_tokens=25)
    for seed, prompt in enumerate(PROMPTS):
        request = prepare_stream(demo, tokenizer, prompt=prompt, seed=seed, **settings)
        deltas = list(request.run(demo))
        generated = [t for d in deltas for t in d.token_ids]
        streamed = [p for d in deltas for p in d.probs]  # computed step by step with the KV cache
        steps = explain.token_alternatives(demo, tokenizer, request.prompt_ids, generated, k=30,
                                           distribution="processed", seed=seed, **settings)
        assert [s.probability for s in steps] == pytest.approx(streamed, abs=1e-4)
        for step in steps:
            assert step.distribution == "processed" and step.probability > 0
            # top_k=20 leaves at most 20 tokens any probability; together they hold all of it
            assert sum(a.probability > 0 for a in step.alternatives) <= 20
            assert sum(a.probability for a in step.alternatives) == pytest.approx(1, abs=1e-4)
        # Eos is banned for the first min_new_tokens steps.
        assert all(a.probability == 0 for s in steps[:8] for a in s.alternatives if a.token_id == 2)


def test_processed_greedy_choices_rank_first_even_where_the_penalty_changed_the_winner(demo, tokenizer):
    settings = dict(repetition_penalty=3.0, no_repeat_ngram_size=2, max_new_tokens=30)
    demoted = 0
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt)["input_ids"]
        generated = demo.generate(torch.tensor([prompt_ids]), **settings)[0, len(prompt_ids):].tolist()
        processed = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=1, distribution="processed",
                                               **settings)
        raw = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=1, **settings)
        assert all(step.rank == 1 for step in processed)
        demoted += sum(step.rank > 1 for step in raw)
    assert demoted > 0  # the raw distribution says what the model preferred before the penalties


def test_raw_probabilities_ignore_decoding_settings_and_k_zero_keeps_ranks(demo, tokenizer):
    prompt_ids, generated = greedy_run(demo, tokenizer, PROMPTS[1])
    plain = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=0)
    tuned = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=0, do_sample=True, temperature=0.3)
    assert plain == tuned
    assert all(step.alternatives == [] and step.rank == 1 for step in plain)
    only = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=3, positions=[4, 1, 4])
    everything = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=3)
    assert only == [everything[1], everything[4]]
    assert explain.token_alternatives(demo, tokenizer, prompt_ids, [], k=3) == []


def test_an_alternative_reads_as_the_text_it_would_have_appended(demo, tokenizer):
    prompt_ids = tokenizer("Patients received")["input_ids"]
    generated = tokenizer("the drug at 5 mg/kg", add_special_tokens=False)["input_ids"] + [2]
    pieces = tokenizer.convert_ids_to_tokens(generated)
    assert pieces[4:6] == ["m", "g</w>"]  # "mg" is two pieces in the demo vocabulary
    steps = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=10)
    assert [s.text for s in steps] == [" the", " drug", " at", " 5", " m", "g", " /", " k", "g", ""]
    ids = {tokenizer.convert_tokens_to_ids(piece): piece for piece in ("is</w>", ".</w>", "</s>")}
    for position in (3, 5):  # after a whole word, and inside one (after the piece "m")
        before = continuation_text(tokenizer, prompt_ids, generated[:position])
        for alternative in steps[position].alternatives:
            assert alternative.token == tokenizer.convert_ids_to_tokens(alternative.token_id)
            if alternative.token_id in ids:
                expected = {"is</w>": " is" if position == 3 else "is", ".</w>": ".", "</s>": ""}
                assert alternative.text == expected[ids[alternative.token_id]]
                assert alternative.special == (alternative.token == "</s>")
            after = continuation_text(tokenizer, prompt_ids, generated[:position] + [alternative.token_id])
            assert after == before + alternative.text
    assert steps[-1].token == "</s>" and steps[-1].text == "" and steps[-1].start == steps[-1].end


def test_bad_arguments_are_named(demo, tokenizer):
    prompt_ids, generated = greedy_run(demo, tokenizer, PROMPTS[0], new_tokens=5)
    with pytest.raises(ConfigError, match="distribution must be one of raw, processed"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated, distribution="sampled")
    with pytest.raises(ConfigError, match="beam search .* use distribution='raw'"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated, distribution="processed", num_beams=3)
    with pytest.raises(ConfigError, match="k .* integer >= 0"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=-1)
    with pytest.raises(GenerationParameterError, match="temprature"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated, temprature=0.5)
    with pytest.raises(InputError, match="position must be the index of a generated token"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated, positions=[len(generated)])
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated + [demo.config.vocab_size])
    with pytest.raises(InputError, match="256 positions"):
        explain.token_alternatives(demo, tokenizer, prompt_ids, generated * 60)
    with pytest.raises(InputError, match="prompt_ids is empty"):
        explain.token_alternatives(demo, tokenizer, [], generated)


# ----------------------------------------------------------------------------------------------------------------
# Spans over the streamed text
# ----------------------------------------------------------------------------------------------------------------
def test_spans_of_a_hand_checked_sentence(tokenizer):
    prompt_ids = tokenizer("Patients received")["input_ids"]
    generated = tokenizer("the anti-cancer drug (cisplatin) at 5 mg/kg.", add_special_tokens=False)["input_ids"] + [2]
    spans = explain.token_spans(tokenizer, prompt_ids, generated)
    assert [s.text for s in spans] == [" the", " anti", "-", "cancer", " drug", " (", "cisplatin", ")", " at", " 5",
                                       " m", "g", " /", " k", "g", ".", ""]
    # Moses tokens are words here; the pieces of "mg" and "kg" share theirs
    assert [s.word for s in spans] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 11, 12, 12, 13, 14]
    text = continuation_text(tokenizer, prompt_ids, generated)
    assert text == " the anti-cancer drug (cisplatin) at 5 mg / kg."
    assert all(text[s.start:s.end] == s.text for s in spans)


def _assert_tiles(spans, text: str) -> None:
    assert spans[0].start == 0 and spans[-1].end == len(text)
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))
    assert "".join(s.text for s in spans) == text
    assert all(text[s.start:s.end] == s.text for s in spans)
    assert all(0 <= b.word - a.word <= 1 for a, b in zip(spans, spans[1:]))


def test_spans_tile_the_streamed_text_exactly(demo, tokenizer):
    wild = tiny(tokenizer)  # wide random weights: punctuation, escapes and word pieces in every order
    rng = random.Random(0)
    prompts = PROMPTS + [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(30)]
    for i, prompt in enumerate(prompts):
        for model in (demo, wild):
            request = prepare_stream(model, tokenizer, prompt=prompt, do_sample=True, temperature=1.3, seed=i,
                                     max_new_tokens=rng.randint(1, 40))
            deltas = list(request.run(model))
            streamed = "".join(d.text for d in deltas)
            generated = [t for d in deltas for t in d.token_ids]
            spans = explain.token_spans(tokenizer, request.prompt_ids, generated)
            assert len(spans) == len(generated)
            _assert_tiles(spans, streamed)
            steps = explain.token_alternatives(model, tokenizer, request.prompt_ids, generated, k=0)
            assert [(s.start, s.end, s.word) for s in steps] == [(s.start, s.end, s.word) for s in spans]


def test_spans_tile_text_that_later_tokens_re_render(tokenizer):
    prompt_ids = tokenizer("He")["input_ids"]
    for sentence in ('said "no" & left (p < 0.05).', "thromboembolism, 12.5% (n = 3) vs. [IL-6]'s"):
        generated = tokenizer(sentence, add_special_tokens=False)["input_ids"]
        text = continuation_text(tokenizer, prompt_ids, generated)
        _assert_tiles(explain.token_spans(tokenizer, prompt_ids, generated), text)


# ----------------------------------------------------------------------------------------------------------------
# Branching
# ----------------------------------------------------------------------------------------------------------------
def test_branch_continues_from_the_picked_token(demo, tokenizer):
    prompt_ids, generated = greedy_run(demo, tokenizer, PROMPTS[0])
    step = explain.token_alternatives(demo, tokenizer, prompt_ids, generated, k=3, positions=[2])[0]
    picked = step.alternatives[1].token_id
    branch = explain.branch_prompt_ids(prompt_ids, generated, 2, picked)
    assert branch == prompt_ids + generated[:2] + [picked]
    continued = demo.generate(torch.tensor([branch]), max_new_tokens=5)[0].tolist()
    assert continued[:len(branch)] == branch
    text = continuation_text(tokenizer, prompt_ids, continued[len(prompt_ids):])
    assert text.startswith(continuation_text(tokenizer, prompt_ids, generated[:2]) + step.alternatives[1].text)
    assert explain.branch_prompt_ids(torch.tensor(prompt_ids), torch.tensor(generated), 0, 7) == prompt_ids + [7]
    for position in (-1, len(generated), 1.0):
        with pytest.raises(InputError, match="position must be the index of a generated token"):
            explain.branch_prompt_ids(prompt_ids, generated, position, picked)


# ----------------------------------------------------------------------------------------------------------------
# Attribution
# ----------------------------------------------------------------------------------------------------------------
def finite_difference_shares(model, ids: list[int], target: int, eps: float = 1e-6) -> list[float]:
    """Gradient × input by central differences in float64, one embedding coordinate at a time."""
    model = copy.deepcopy(model).double()
    base = model.biogpt
    with torch.no_grad():
        embeds = base.embed_tokens(torch.tensor([ids])) * base.embed_scale

        def log_prob(x: torch.Tensor) -> float:
            return float(model(inputs_embeds=x, use_cache=False).logits[0, -1].log_softmax(-1)[target])

        grad = torch.zeros_like(embeds)
        for j in range(len(ids)):
            for d in range(embeds.shape[-1]):
                step = torch.zeros_like(embeds)
                step[0, j, d] = eps
                grad[0, j, d] = (log_prob(embeds + step) - log_prob(embeds - step)) / (2 * eps)
    norms = (grad * embeds).norm(dim=-1)[0]
    return (norms / norms.sum()).tolist()


def test_gradient_times_input_equals_finite_differences(tokenizer):
    model = tiny(tokenizer)
    prompt = "Aspirin (81 mg) reduced"
    prompt_ids = tokenizer(prompt)["input_ids"]
    generated = torch.randint(3, tokenizer.vocab_size, (4,), generator=torch.Generator().manual_seed(0)).tolist()
    for position in (0, 3):
        result = explain.attribution(model, tokenizer, prompt_ids, generated, position, prompt_text=prompt)
        expected = finite_difference_shares(model, prompt_ids + generated[:position], generated[position])
        assert result.prompt_scores + result.generated_scores == pytest.approx(expected, abs=2e-5)
        assert len(result.prompt_scores) == len(prompt_ids) and len(result.generated_scores) == position
        assert sum(result.prompt_scores) + sum(result.generated_scores) == pytest.approx(1, abs=1e-6)
        assert result.method == "grad_x_input" and result.token_id == generated[position]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + generated[:position]])).logits[0, -1]
        assert result.probability == pytest.approx(float(logits.softmax(-1)[generated[position]]), rel=1e-5)


def test_attribution_leaves_the_model_as_it_was(tokenizer):
    model = tiny(tokenizer)
    model.biogpt.layers[0].requires_grad_(False)  # a partly frozen model stays partly frozen
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    prompt_ids = tokenizer("IL-6 levels in COVID-19")["input_ids"]
    generated = [5, 9, 11]
    first = explain.attribution(model, tokenizer, prompt_ids, generated, 2)
    with torch.inference_mode():  # as a caller that generates under inference mode would call it
        assert explain.attribution(model, tokenizer, prompt_ids, generated, 2) == first
    with torch.no_grad():
        assert explain.attribution(model, tokenizer, prompt_ids, generated, 2) == first
    assert all(p.grad is None for p in model.parameters())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert not model.training
    model.train()  # dropout would make it random: it is explained in eval mode and handed back in training mode
    model.config.hidden_dropout_prob = 0.5
    assert explain.attribution(model, tokenizer, prompt_ids, generated, 2) == first
    assert model.training


def test_bfloat16_attribution_is_close_to_float32(tokenizer):
    model = tiny(tokenizer, initializer_range=0.05)
    half = copy.deepcopy(model).to(torch.bfloat16)
    prompt_ids = tokenizer("Cisplatin-induced nephrotoxicity (AKI) in 12 patients")["input_ids"]
    generated = [40, 41, 42]
    full = explain.attribution(model, tokenizer, prompt_ids, generated, 2)
    approx = explain.attribution(half, tokenizer, prompt_ids, generated, 2)
    assert approx.prompt_scores + approx.generated_scores == pytest.approx(
        full.prompt_scores + full.generated_scores, abs=0.03)
    assert sum(approx.prompt_scores) + sum(approx.generated_scores) == pytest.approx(1, abs=1e-5)
    assert all(p.dtype == torch.bfloat16 and p.grad is None for p in half.parameters())


def test_words_sum_their_pieces_with_spans_over_the_prompt_as_typed(demo, tokenizer):
    prompt = "The  anti-cancer drug (cisplatin) at 5 mg/kg"  # two spaces: spans are over the text as typed
    prompt_ids, generated = greedy_run(demo, tokenizer, prompt, new_tokens=6)
    result = explain.attribution(demo, tokenizer, prompt_ids, generated, 5, prompt_text=prompt)
    assert [w.text for w in result.words] == ["The", "anti", "-", "cancer", "drug", "(", "cisplatin", ")", "at", "5",
                                              "mg", "/", "kg"]
    assert all(prompt[w.start:w.end] == w.text for w in result.words)
    scores = result.prompt_scores  # [</s>, The, anti, @-@, cancer, drug, (, cisplatin, ), at, 5, m, g, /, k, g]
    assert result.words[10].score == pytest.approx(scores[11] + scores[12])
    assert result.words[0].score == pytest.approx(scores[1])
    assert sum(w.score for w in result.words) == pytest.approx(1 - scores[0] - sum(result.generated_scores))
    assert result.prompt_text == prompt
    decoded = explain.attribution(demo, tokenizer, prompt_ids, generated, 5)  # without the text: the decoded prompt
    assert decoded.prompt_text == "The anti-cancer drug (cisplatin) at 5 mg / kg"
    assert [w.text for w in decoded.words][-3:] == ["mg", "/", "kg"]


def test_a_truncated_prompt_maps_onto_the_end_of_the_text_and_a_wrong_one_is_refused(demo, tokenizer):
    prompt = "Aspirin reduced the risk of stroke in patients with atrial fibrillation"
    full = tokenizer(prompt)["input_ids"]
    prompt_ids = [full[0]] + full[-4:]  # generation's truncation keeps `</s>` and the last tokens
    generated = greedy_run(demo, tokenizer, prompt, new_tokens=3)[1]
    result = explain.attribution(demo, tokenizer, prompt_ids, generated, 1, prompt_text=prompt)
    assert [w.text for w in result.words] == ["patients", "with", "atrial", "fibrillation"]
    assert all(prompt[w.start:w.end] == w.text for w in result.words)
    with pytest.raises(InputError, match="prompt_text does not tokenize to prompt_ids"):
        explain.attribution(demo, tokenizer, prompt_ids, generated, 1, prompt_text="Something else entirely")
    empty = explain.attribution(demo, tokenizer, [2], generated, 0, prompt_text="")  # only `</s>` to attribute to
    assert empty.prompt_scores == [1.0] and empty.words == [] and empty.generated_scores == []


def attention_rollout(model, ids: list[int]) -> list[float]:
    """Abnar & Zuidema's rollout written out: per layer 0.5·mean-head attention + 0.5·identity, multiplied upwards."""
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    n = len(ids)
    flow = [[float(i == j) for j in range(n)] for i in range(n)]
    for layer in attentions:
        mean = layer[0].double().mean(0).tolist()
        mixed = [[0.5 * mean[i][j] + 0.5 * (i == j) for j in range(n)] for i in range(n)]
        mixed = [[v / sum(row) for v in row] for row in mixed]
        flow = [[sum(mixed[i][m] * flow[m][j] for m in range(n)) for j in range(n)] for i in range(n)]
    return flow[-1]


def test_rollout_follows_the_attention_maps(tokenizer):
    eager = tiny(tokenizer, attn_implementation="eager")
    prompt_ids = tokenizer("Metformin lowers HbA1c in type 2 diabetes")["input_ids"]
    generated = [20, 21, 22]
    result = explain.attribution(eager, tokenizer, prompt_ids, generated, 2, method="rollout")
    expected = attention_rollout(eager, prompt_ids + generated[:2])
    assert result.prompt_scores + result.generated_scores == pytest.approx(expected, abs=1e-5)
    assert sum(expected) == pytest.approx(1)
    assert result.method == "rollout"
    with pytest.raises(ConfigError, match="rollout.*attn_implementation='eager'"):
        explain.attribution(tiny(tokenizer), tokenizer, prompt_ids, generated, 2, method="rollout")
    with pytest.raises(ConfigError, match="method must be one of grad_x_input, rollout"):
        explain.attribution(eager, tokenizer, prompt_ids, generated, 2, method="saliency")
    with pytest.raises(InputError, match="position must be the index"):
        explain.attribution(eager, tokenizer, prompt_ids, generated, 3)


@pytest.mark.filterwarnings("ignore:MatMul8bitLt")
def test_a_quantized_model_is_refused_gradients_but_gets_rollout(tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    tiny(tokenizer, hidden_size=64, num_attention_heads=2).save_pretrained(tmp_path / "lm")
    quantized = biogpt.BioGptForCausalLM.from_pretrained(
        tmp_path / "lm", quantization_config=biogpt.BitsAndBytesConfig(load_in_8bit=True), attn_implementation="eager")
    prompt_ids = tokenizer("Warfarin interacts with")["input_ids"]
    with pytest.raises(ConfigError, match="4-bit/8-bit quantized model"):
        explain.attribution(quantized, tokenizer, prompt_ids, [30, 31], 1)
    result = explain.attribution(quantized, tokenizer, prompt_ids, [30, 31], 1, method="rollout")
    assert sum(result.prompt_scores) + sum(result.generated_scores) == pytest.approx(1, abs=1e-5)
    steps = explain.token_alternatives(quantized, tokenizer, prompt_ids, [30, 31], k=2)  # no gradients needed
    assert [s.token_id for s in steps] == [30, 31]
