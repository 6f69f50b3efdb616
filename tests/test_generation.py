"""generate(): token-identical to transformers' generate on tiny random checkpoints, plus sampling statistics,
left padding, length safety and parameter errors."""

from __future__ import annotations


import pytest
import torch

import biogpt
from biogpt.errors import GenerationParameterError
from biogpt.generation import GenerationConfig, generate
from biogpt.generation.processors import build_processors

transformers = pytest.importorskip("transformers")

VOCAB = 40
NUM_PROMPTS = 20


def _tiny_checkpoint(directory, vocab_size: int = VOCAB, max_positions: int = 64, seed: int = 0,
                     eos_boost: float = 2.0):
    """A tiny random model that does not just repeat itself (large init, unscaled embeddings) and that often
    ends (a longer eos embedding row, tied to the output layer)."""
    torch.manual_seed(seed)
    config = transformers.BioGptConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=37,
                                       max_position_embeddings=max_positions, initializer_range=0.5,
                                       scale_embedding=False)
    reference = transformers.BioGptForCausalLM(config).eval()
    with torch.no_grad():
        reference.biogpt.embed_tokens.weight[2].mul_(eos_boost)
    reference.save_pretrained(directory)
    return reference


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-gen")
    reference = _tiny_checkpoint(directory)
    ours = biogpt.BioGptForCausalLM.from_pretrained(directory)
    return reference, ours


def _prompts(count: int = NUM_PROMPTS, seed: int = 1, vocab: int = VOCAB) -> list[torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(count):
        length = int(torch.randint(1, 8, (1,), generator=rng))
        body = torch.randint(4, vocab, (length,), generator=rng)
        prompts.append(torch.cat([torch.tensor([2]), body]).unsqueeze(0))
    return prompts


def _reference_generate(reference, prompt: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return reference.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)


def _assert_identical(models, **kwargs) -> list[torch.Tensor]:
    reference, ours = models
    outputs = []
    for prompt in _prompts():
        expected = _reference_generate(reference, prompt, **kwargs)
        actual = generate(ours, prompt, **kwargs)
        assert actual.tolist() == expected.tolist(), (prompt.tolist(), kwargs)
        outputs.append(actual)
    return outputs


def test_greedy_matches_transformers_and_some_rows_end_early(models):
    outputs = _assert_identical(models, max_new_tokens=12)
    # The fixture is only interesting if eos actually ends some sequences before the limit.
    assert sum(2 in out[0, 1:].tolist() for out in outputs) >= 2


def test_default_length_is_twenty_new_tokens(models):
    _, ours = models
    prompt = _prompts(1)[0]
    assert generate(ours, prompt, eos_token_id=[]).shape[1] == prompt.shape[1] + 20


@pytest.mark.parametrize("kwargs", [
    dict(max_new_tokens=10, repetition_penalty=1.7),
    dict(max_new_tokens=10, repetition_penalty=0.6),
    dict(max_new_tokens=12, no_repeat_ngram_size=2),
    dict(max_new_tokens=10, min_new_tokens=6),
    dict(max_length=14, min_length=12),
    dict(max_new_tokens=10, bad_words_ids=[[5], [7, 8], [2]]),
    dict(max_new_tokens=10, eos_token_id=[2, 9]),
    dict(max_length=9),
])
def test_processors_match_transformers(models, kwargs):
    _assert_identical(models, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(num_beams=3, max_new_tokens=10),
    dict(num_beams=3, max_new_tokens=10, early_stopping=True),
    dict(num_beams=5, max_new_tokens=10, early_stopping=False, length_penalty=0.4),
    dict(num_beams=5, max_new_tokens=10, early_stopping="never", length_penalty=2.0),
    dict(num_beams=5, max_new_tokens=8, early_stopping=True, length_penalty=-1.0),
    dict(num_beams=4, max_new_tokens=9, num_return_sequences=3),
    dict(num_beams=3, max_new_tokens=9, no_repeat_ngram_size=2, repetition_penalty=1.3),
    dict(num_beams=3, max_new_tokens=9, bad_words_ids=[[6], [4, 5]], min_new_tokens=4),
])
def test_beam_search_matches_transformers(models, kwargs):
    _assert_identical(models, **kwargs)


def test_beams_diverge_from_greedy(models):
    _, ours = models
    differing = sum(generate(ours, p, max_new_tokens=10).tolist() != generate(ours, p, max_new_tokens=10,
                                                                              num_beams=3).tolist()
                    for p in _prompts())
    assert differing > 0


def _left_pad(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), 1)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - p.shape[1]:] = p[0]
        mask[i, width - p.shape[1]:] = 1
    return ids, mask


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=10, repetition_penalty=1.5, no_repeat_ngram_size=3),
                                    dict(max_new_tokens=8, num_beams=3, num_return_sequences=2)])
def test_left_padded_batch_equals_rows_one_by_one(models, kwargs):
    _, ours = models
    prompts = _prompts(6, seed=5)
    ids, mask = _left_pad(prompts)
    batch = generate(ours, ids, attention_mask=mask, **kwargs)
    per_row = kwargs.get("num_return_sequences", 1)
    width = ids.shape[1]
    for i, prompt in enumerate(prompts):
        alone = generate(ours, prompt, **kwargs)
        for r in range(per_row):
            row = batch[i * per_row + r, width - prompt.shape[1]:].tolist()
            expected = alone[r].tolist()
            row = row[:len(expected)]
            assert row == expected
            # Anything after the row's own end is padding.
            assert set(batch[i * per_row + r, width - prompt.shape[1] + len(expected):].tolist()) <= {1}


def test_mask_inferred_from_pad_tokens(models):
    _, ours = models
    ids, mask = _left_pad(_prompts(4, seed=9))
    assert generate(ours, ids, max_new_tokens=6).tolist() == generate(ours, ids, attention_mask=mask,
                                                                       max_new_tokens=6).tolist()


# -- sampling ----------------------------------------------------------------------------------------------------
def test_top_k_one_is_greedy_and_seed_is_reproducible(models):
    _, ours = models
    for prompt in _prompts(8):
        greedy = generate(ours, prompt, max_new_tokens=10)
        assert generate(ours, prompt, max_new_tokens=10, do_sample=True, top_k=1, seed=3).tolist() == greedy.tolist()
        first = generate(ours, prompt, max_new_tokens=10, do_sample=True, temperature=1.5, seed=11)
        again = generate(ours, prompt, max_new_tokens=10, do_sample=True, temperature=1.5,
                         generator=torch.Generator().manual_seed(11))
        assert first.tolist() == again.tolist()


def test_num_return_sequences_with_sampling(models):
    _, ours = models
    out = generate(ours, _prompts(1)[0], max_new_tokens=6, do_sample=True, num_return_sequences=4, seed=0,
                   eos_token_id=[])
    assert out.shape == (4, _prompts(1)[0].shape[1] + 6)


# Upper 0.1% points of the chi-square distribution (scipy is not a dependency).
_CHI2_999 = {5: 20.515, 7: 24.322, 9: 27.877, 15: 37.697, 20: 45.315, 30: 59.703, 39: 72.055}


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    expected = probs * counts.sum()
    # Merge the rare tokens into one cell so that every expected count is >= 5.
    rare = expected < 5
    cells_obs = torch.cat([counts[~rare], counts[rare].sum().view(1)]) if rare.any() else counts
    cells_exp = torch.cat([expected[~rare], expected[rare].sum().view(1)]) if rare.any() else expected
    keep = cells_exp > 0
    stat = float(((cells_obs[keep] - cells_exp[keep]) ** 2 / cells_exp[keep]).sum())
    return stat, int(keep.sum()) - 1


def test_first_sampled_token_follows_softmax_over_temperature(models):
    _, ours = models
    prompt = torch.tensor([[2, 11, 17]])
    temperature = 2.0
    with torch.no_grad():
        logits = ours(prompt).logits[0, -1].float()
    probs = torch.softmax(logits / temperature, dim=-1)
    draws = 4000
    first = generate(ours, prompt.repeat(draws, 1), max_new_tokens=1, do_sample=True, temperature=temperature,
                     top_k=0, seed=1234)[:, -1]
    counts = torch.bincount(first, minlength=VOCAB).float()
    stat, dof = _chi_square(counts, probs)
    critical = _CHI2_999[min(_CHI2_999, key=lambda d: abs(d - dof) if d >= dof else 1e9)]
    assert stat < critical, (stat, dof)


def test_top_k_and_top_p_filtering_by_hand():
    """On a hand-made distribution: top_k keeps the k best, top_p the smallest set reaching p (ties kept)."""
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    scores = probs.log()
    config = GenerationConfig(do_sample=True, top_k=3, top_p=1.0)
    plan_stub = type("P", (), {"prompt_length": 1, "min_length": 0})()
    (top_k,) = build_processors(config, plan_stub, None, 5, beam=False)
    assert torch.isinf(top_k(None, scores)).tolist() == [[False, False, False, True, True]]
    config = GenerationConfig(do_sample=True, top_k=0, top_p=0.8)
    (top_p,) = build_processors(config, plan_stub, None, 5, beam=False)
    # 0.5 + 0.2 = 0.7 < 0.8, so 0.15 is needed too; 0.1 and 0.05 (cumulative 0.15 <= 0.2) go.
    kept = ~torch.isinf(top_p(None, scores))
    assert kept.tolist() == [[True, True, True, False, False]]
    renormalised = torch.softmax(top_p(None, scores), dim=-1)
    assert torch.allclose(renormalised, torch.tensor([[0.5, 0.2, 0.15, 0, 0]]) / 0.85)


def test_sampling_matches_hand_filtered_distribution(models):
    _, ours = models
    prompt = torch.tensor([[2, 7, 30, 12]])
    with torch.no_grad():
        logits = ours(prompt).logits[0, -1].float() / 1.3
    probs = torch.softmax(logits, dim=-1)
    order = probs.argsort(descending=True)
    kept = order[:6]  # top_k=6, then top_p on what remains
    renorm = torch.zeros_like(probs)
    renorm[kept] = probs[kept] / probs[kept].sum()
    cumulative, chosen = 0.0, []
    for token in kept.tolist():
        if cumulative >= 0.9:
            break
        chosen.append(token)
        cumulative += float(renorm[token])
    expected = torch.zeros_like(probs)
    expected[chosen] = renorm[chosen] / renorm[chosen].sum()
    draws = 3000
    first = generate(ours, prompt.repeat(draws, 1), max_new_tokens=1, do_sample=True, temperature=1.3, top_k=6,
                     top_p=0.9, seed=99)[:, -1]
    counts = torch.bincount(first, minlength=VOCAB).float()
    assert counts[expected == 0].sum() == 0
    stat, dof = _chi_square(counts[expected > 0], expected[expected > 0])
    assert stat < _CHI2_999[5] if dof <= 5 else stat < _CHI2_999[9]


# -- lengths and parameters --------------------------------------------------------------------------------------
def test_empty_prompt_starts_from_separator(models):
    _, ours = models
    for empty in (None, torch.zeros((1, 0), dtype=torch.long)):
        out = generate(ours, empty, max_new_tokens=5, eos_token_id=[])
        assert out[0, 0].item() == 2 and out.shape == (1, 6)
        assert out.tolist() == generate(ours, torch.tensor([[2]]), max_new_tokens=5, eos_token_id=[]).tolist()


def test_length_safety(models):
    _, ours = models  # 64 positions
    long_prompt = torch.cat([torch.tensor([[2]]), torch.randint(4, VOCAB, (1, 70))], dim=1)
    with pytest.raises(GenerationParameterError, match="max_position_embeddings"):
        generate(ours, long_prompt, max_new_tokens=5)
    with pytest.raises(GenerationParameterError, match="no room"):
        generate(ours, long_prompt[:, :64], max_new_tokens=5)
    result = generate(ours, long_prompt, max_new_tokens=5, truncate_prompt=True, return_dict_in_generate=True,
                      eos_token_id=[])
    assert result.prompt_truncated and result.sequences.shape[1] == 64
    assert result.sequences[0, 0].item() == 2
    assert result.sequences[0, 1:result.prompt_length].tolist() == long_prompt[0, -(result.prompt_length - 1):].tolist()
    # Too many new tokens: clamped to the room left, never an IndexError.
    for kwargs in (dict(max_new_tokens=500), dict(max_length=500), dict(max_new_tokens=500, num_beams=3)):
        out = generate(ours, long_prompt[:, :60], eos_token_id=[], **kwargs)
        assert out.shape[1] == 64


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=0.0, do_sample=True), "temperature"),
    (dict(top_p=1.5, do_sample=True), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(early_stopping="sometimes", num_beams=2), "early_stopping"),
    (dict(bad_words_ids=[[]]), "bad_words_ids"),
    (dict(bad_words_ids=[[VOCAB + 5]]), "bad_words_ids"),
    (dict(typical_p=0.5), "typical_p"),
    (dict(output_scores=True), "output_scores"),
])
def test_bad_parameters_raise_named_errors(models, kwargs, name):
    _, ours = models
    with pytest.raises(GenerationParameterError, match=name):
        generate(ours, torch.tensor([[2, 5]]), **kwargs)


def test_harmless_transformers_kwargs_are_accepted(models):
    _, ours = models
    prompt = torch.tensor([[2, 5, 9]])
    plain = generate(ours, prompt, max_new_tokens=4)
    assert generate(ours, prompt, max_new_tokens=4, use_cache=True, return_dict_in_generate=False,
                    output_scores=False).tolist() == plain.tolist()
    assert ours.generate(prompt, max_new_tokens=4).tolist() == plain.tolist()
    # A transformers GenerationConfig (unset fields are None there) is read field by field.
    foreign = transformers.GenerationConfig(max_new_tokens=4)
    assert generate(ours, prompt, generation_config=foreign).tolist() == plain.tolist()


def test_generation_config_round_trip_and_loading(tmp_path, models):
    reference, _ = models
    config = GenerationConfig(max_new_tokens=7, num_beams=2, eos_token_id=[2, 3])
    config.extra["custom_field"] = 1
    config.save_pretrained(tmp_path)
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded == config and loaded.to_dict()["custom_field"] == 1
    # A checkpoint's generation_config.json is honoured by generate().
    reference.save_pretrained(tmp_path / "ckpt")
    GenerationConfig(max_new_tokens=3, eos_token_id=[]).save_pretrained(tmp_path / "ckpt")
    model = biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert model.generation_config.max_new_tokens == 3
    assert generate(model, torch.tensor([[2, 5]])).shape == (1, 5)


def test_cache_allocated_once(models, monkeypatch):
    """One KVCache of exactly prompt + new tokens, one prefill with logits_to_keep=1, one token per step after."""
    _, ours = models
    from biogpt.cache import KVCache

    allocations, calls = [], []
    original_for_model = KVCache.for_model
    monkeypatch.setattr(KVCache, "for_model",
                        classmethod(lambda cls, m, b, c: allocations.append((b, c)) or original_for_model(m, b, c)))
    original_forward = ours.forward

    def counting_forward(*args, **kwargs):
        calls.append((args[0].shape[1], kwargs.get("logits_to_keep", 0)))
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(ours, "forward", counting_forward)
    generate(ours, torch.tensor([[2, 5, 9, 11]]), max_new_tokens=6, eos_token_id=[])
    assert allocations == [(1, 10)]
    assert calls == [(4, 1)] + [(1, 0)] * 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("nan")), "temperature must be a finite number; got nan."),
    (dict(temperature=float("inf")), "temperature must be a finite number; got inf."),
    (dict(top_p=float("nan")), "top_p must be a finite number; got nan."),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number; got inf."),
    (dict(length_penalty=float("-inf")), "length_penalty must be a finite number; got -inf."),
    (dict(num_beams=65), "num_beams must be at most 64 (each beam holds a full key/value cache); got 65."),
    (dict(num_beams=10**9), "num_beams must be at most 64 (each beam holds a full key/value cache); got 1000000000."),
    (dict(eos_token_id=2.0), "eos_token_id must be a token id (an integer >= 0), a list of them or None; got 2.0."),
    (dict(eos_token_id=[2, 3.0]), "eos_token_id must be a token id (an integer >= 0), a list of them or None; "
                                  "got [2, 3.0]."),
    (dict(pad_token_id=1.0), "pad_token_id must be a token id (an integer >= 0) or None; got 1.0."),
    (dict(num_beams=True), "num_beams must be an integer >= 1; got True."),
    (dict(temperature="hot"), "temperature must be a number > 0 (use do_sample=False for greedy decoding); "
                              "got 'hot'."),
    (dict(bad_words_ids=[["x" * 100]]), "bad_words_ids must be a list of non-empty lists of token ids; "
                                        "got [['" + "x" * 36 + "…."),
])
def test_generation_config_refuses_non_finite_and_mistyped_values(kwargs, message):
    with pytest.raises(GenerationParameterError) as excinfo:
        GenerationConfig(**kwargs).validate()
    assert str(excinfo.value) == message


def test_bad_values_from_generate_and_from_a_file_get_the_same_messages(models, tmp_path):
    _, ours = models
    with pytest.raises(GenerationParameterError, match=r"^eos_token_id must be a token id"):
        generate(ours, torch.tensor([[2, 5]]), max_new_tokens=2, eos_token_id=2.0)
    with pytest.raises(GenerationParameterError, match=r"^temperature must be a finite number; got nan\.$"):
        generate(ours, torch.tensor([[2, 5]]), max_new_tokens=2, do_sample=True, temperature=float("nan"))
    (tmp_path / "generation_config.json").write_text('{"top_p": NaN, "num_beams": 4}')  # json.load reads NaN
    with pytest.raises(GenerationParameterError, match=r"^top_p must be a finite number; got nan\.$"):
        GenerationConfig.from_pretrained(tmp_path)
    assert GenerationConfig(num_beams=64, eos_token_id=[2, 3], length_penalty=-2.0).validate() is None
