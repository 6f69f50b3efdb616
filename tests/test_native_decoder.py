"""Whole decoder layers of a batch-1 decode step in one native call (`kernels.NativeDecoder`, `native.c`): the same
logits and the same key/value cache as the module code (itself checked against transformers elsewhere), for every
weight format, and the module code wherever a step is not one it computes."""

from __future__ import annotations

import contextlib
import copy
import gc

import pytest
import torch

from biogpt import BioGptConfig, BioGptForCausalLM, devices, kernels, native
from biogpt.cache import KVCache, StaticKVCache
from biogpt.quantization import TorchAoConfig
from native_paths import PATHS, build_path


@pytest.fixture(autouse=True)
def native_kernels():
    if not native.available():
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")


FORMATS = [
    pytest.param(torch.float32, None, id="fp32"), pytest.param(torch.bfloat16, None, id="bf16"),
    pytest.param(torch.bfloat16, TorchAoConfig("int8_weight_only"), id="int8"),
    pytest.param(torch.bfloat16, TorchAoConfig("int4_weight_only", group_size=32), id="int4", marks=pytest.mark.skipif(
        kernels.int4_layout() not in kernels.NATIVE_INT4_LAYOUTS, reason="torch packs int4 in pairs here"))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random BioGPT (head_dim 32: whole vectors and, with 96 columns of LayerNorm, no tails hidden)."""
    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=96, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=256, max_position_embeddings=128)
    model = BioGptForCausalLM.from_config(config).eval()
    with torch.no_grad():  # LayerNorms away from the identity, so a mistake in them shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    path = tmp_path_factory.mktemp("native-decoder") / "model"
    model.save_pretrained(path)
    return path


def _load(path, dtype, config, kernels_choice="native"):
    return BioGptForCausalLM.from_pretrained(path, torch_dtype=dtype, quantization_config=config,
                                             cpu_kernels=kernels_choice)


@contextlib.contextmanager
def _native_decoder(model, on: bool):
    """The model's native decoder as loaded (on), or the module code for every step (off)."""
    decoder = model.biogpt.native_decoder
    model.biogpt.native_decoder = decoder if on else None
    try:
        with torch.inference_mode():
            yield
    finally:
        model.biogpt.native_decoder = decoder


def _decode(model, prompt, steps, fused=True):
    """(logits of every decode step, the cache): greedy steps after `prompt`, the native decoder on or off."""
    with _native_decoder(model, fused):
        cache = KVCache.for_model(model, 1, prompt.shape[1] + steps)
        token = model(prompt, past_key_values=cache).logits[:, -1:].argmax(-1)
        logits = []
        for _ in range(steps):
            logits.append(model(token, past_key_values=cache).logits[0, -1].float())
            token = logits[-1].argmax().view(1, 1)
    return torch.stack(logits), cache


PROMPT = torch.tensor([[2, 17, 40, 5, 63, 8, 91, 33]])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype, config", FORMATS)
def test_decode_steps_give_the_module_codes_logits_and_cache(checkpoint, dtype, config, threads):
    model = _load(checkpoint, dtype, config)
    assert isinstance(model.biogpt.native_decoder, kernels.NativeDecoder)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused, fused_cache = _decode(model, PROMPT, 24)
        modules, module_cache = _decode(model, PROMPT, 24, fused=False)
    finally:
        torch.set_num_threads(previous)
    # float32: the same sums in another order; bfloat16: the same roundings, so one bf16 step (2^-8) at most
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}[dtype]
    scale = modules.abs().max()
    assert (fused - modules).abs().max() <= tolerance * scale
    assert torch.equal(fused.argmax(-1), modules.argmax(-1))
    assert fused_cache.length == module_cache.length == PROMPT.shape[1] + 24
    for mine, theirs in zip(fused_cache.keys + fused_cache.values, module_cache.keys + module_cache.values):
        assert (mine.float() - theirs.float()).abs().max() <= tolerance * 8 * theirs.float().abs().max()


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory):
    """Sizes off every vector width: 72 columns (LayerNorms and residuals end in a partial vector), head_dim 18 (the
    attention's dot products too), 204 inner rows (GELU: 12 outputs past the last whole 16, 4 past the last 8)."""
    torch.manual_seed(1)
    config = BioGptConfig(vocab_size=96, hidden_size=72, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=204, max_position_embeddings=128)
    model = BioGptForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger pre-GELU values than the initialization's, so its whole curve is exercised
        for layer in model.biogpt.layers:
            layer.fc1.weight.mul_(8)
    path = tmp_path_factory.mktemp("native-decoder-odd") / "model"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def path_libraries(tmp_path_factory):
    """native.c built for a code path of native_paths.PATHS, once per path for this module's tests."""
    built = {}
    folder = tmp_path_factory.mktemp("native-paths")
    return lambda path: built[path] if path in built else built.setdefault(path, build_path(path, folder))


@pytest.mark.parametrize("path", [None, *sorted(PATHS)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sizes_off_the_vector_width_give_the_module_codes_logits(odd_checkpoint, dtype, path, monkeypatch,
                                                                 path_libraries):
    if path is not None:  # the layers (GELU, softmax, LayerNorm, bf16 rounding) as each code path computes them
        library = path_libraries(path)
        monkeypatch.setattr(native, "_library", lambda: (library, None))
    model = _load(odd_checkpoint, dtype, None)
    assert isinstance(model.biogpt.native_decoder, kernels.NativeDecoder)
    prompt = PROMPT[:, :5]  # 5 + 21 keys: the softmax's exponentials in one whole vector and a partial one
    fused, _ = _decode(model, prompt, 21)
    modules, _ = _decode(model, prompt, 21, fused=False)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}[dtype]
    assert (fused - modules).abs().max() <= tolerance * modules.abs().max()
    assert torch.equal(fused.argmax(-1), modules.argmax(-1))


def _decode_padded(model, steps, fused=True):
    """Greedy steps of three left-padded prompts of 8, 5 and 3 tokens in one batch: (logits of every step, cache)."""
    ids = torch.tensor([[2, 17, 40, 5, 63, 8, 91, 33], [1, 1, 1, 2, 9, 70, 12, 4], [1, 1, 1, 1, 1, 2, 55, 81]])
    mask = (torch.arange(8) >= torch.tensor([[0], [3], [5]])).long()
    with _native_decoder(model, fused):
        cache = KVCache.for_model(model, 3, 8 + steps)
        token = model(ids, attention_mask=mask, past_key_values=cache).logits[:, -1:].argmax(-1)
        logits = []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
            logits.append(model(token, attention_mask=mask, past_key_values=cache).logits[:, -1].float())
            token = logits[-1].argmax(-1, keepdim=True)
    return torch.stack(logits), cache


@pytest.mark.parametrize("dtype, config", FORMATS)
def test_a_padded_batch_gives_the_module_codes_logits_and_cache(checkpoint, dtype, config):
    """Three sequences of different lengths, left-padded: every row attends only its own tokens."""
    model = _load(checkpoint, dtype, config)
    assert {plan["batch_decode"] for plan in model.cpu_kernel_plan.values()} == {"native"}
    fused, fused_cache = _decode_padded(model, 12)
    modules, module_cache = _decode_padded(model, 12, fused=False)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}[dtype]
    assert (fused - modules).abs().max() <= tolerance * modules.abs().max()
    assert torch.equal(fused.argmax(-1), modules.argmax(-1))
    for mine, theirs in zip(fused_cache.keys + fused_cache.values, module_cache.keys + module_cache.values):
        assert (mine.float() - theirs.float()).abs().max() <= tolerance * 8 * theirs.float().abs().max()


@pytest.mark.parametrize("rows", [1, 3])
def test_the_native_step_is_used_and_replaces_the_layer_loop(checkpoint, monkeypatch, rows):
    model = _load(checkpoint, torch.bfloat16, None)
    for _, module in kernels.cpu_linears(model):  # a batch's decode steps follow batch_decode, not the prompts' kernel
        module.kernels = {**module.kernels, "batch": "aten"}
    # the layers, the final LayerNorm and the output projection all in the one native call
    for module in [*model.biogpt.layers, model.biogpt.layer_norm, model.output_projection]:
        monkeypatch.setattr(module, "forward", lambda *a, **k: pytest.fail("a decode step ran the module code"))
    with torch.inference_mode():
        cache = KVCache.for_model(model, rows, 4)
        cache.length = 1  # one earlier token (zeros in the cache): this is a decode step, not a prompt
        logits = model(torch.tensor([[5]] * rows), past_key_values=cache).logits
    assert cache.length == 2
    assert logits.shape == (rows, 1, 96) and logits.dtype == torch.bfloat16


@pytest.mark.parametrize("hooked", ["output_projection", "biogpt.layer_norm", "biogpt.layers.1.fc2"])
def test_forward_hooks_run_at_every_decode_step(checkpoint, hooked):
    """A forward hook on a module the native call stands in for (registered before a sequence starts) sees every
    step, as in the module code, which then runs those steps (the same logits, bit for bit); a hook on the decoder
    itself sees every forward."""
    model = _load(checkpoint, torch.bfloat16, None)
    expected, _ = _decode(model, PROMPT, 6, fused=False)
    seen, calls = [], []
    model.get_submodule(hooked).register_forward_hook(lambda module, args, output: seen.append(output.shape))
    model.biogpt.register_forward_hook(lambda module, args, output: calls.append(output.last_hidden_state.shape))
    got, _ = _decode(model, PROMPT, 6)
    assert len(seen) == len(calls) == 7  # the prompt and six steps
    assert torch.equal(got, expected)


def test_a_projection_without_the_native_kernel_is_the_modules_after_the_native_layers(checkpoint):
    """The layers and the final LayerNorm natively, the output projection by its own (ATen) kernel: the same logits
    as the module code."""
    model = _load(checkpoint, torch.bfloat16, None)
    model.output_projection.kernels = {**model.output_projection.kernels, "decode": "aten"}
    original, results = model.biogpt.native_decoder, []
    model.biogpt.native_decoder = lambda *args: results.append(original(*args)) or results[-1]
    fused, _ = _decode(model, PROMPT, 6)
    modules, _ = _decode(model, PROMPT, 6, fused=False)
    steps = [r for r in results if r is not None]  # (the prompt is not a decode step: None)
    assert len(steps) == 6 and all(logits is None for _, logits in steps)
    assert (fused - modules).abs().max() <= 2 ** -7 * modules.abs().max()
    assert torch.equal(fused.argmax(-1), modules.argmax(-1))


def _step(model, cache, token=7):
    with torch.inference_mode():
        return model(torch.tensor([[token]] * cache.batch_size), past_key_values=cache).logits[:, -1].float()


@pytest.mark.parametrize("case", ["batch of two, batch_decode not native", "autograd", "cache full",
                                  "static cache slot", "aten kernels"])
def test_steps_it_does_not_compute_take_the_module_code(checkpoint, case, monkeypatch):
    model = _load(checkpoint, torch.float32, None, "aten" if case == "aten kernels" else "native")
    if case.startswith("batch"):  # the probe gave a batch's decode steps to another kernel
        for _, module in kernels.cpu_linears(model):
            module.kernels = {**module.kernels, "batch_decode": "aten"}
    calls = []
    if model.biogpt.native_decoder is not None:
        original = model.biogpt.native_decoder
        model.biogpt.native_decoder = lambda *args: calls.append(original(*args)) or calls[-1]
    batch = 2 if case.startswith("batch") else 1
    cache_type = StaticKVCache if case == "static cache slot" else KVCache
    cache = cache_type.for_model(model, batch, 8 if case == "cache full" else 12)
    with torch.inference_mode():
        model(PROMPT.expand(batch, -1), past_key_values=cache)
    if case == "static cache slot":
        cache.index = torch.tensor([cache.length])
    reference = copy.deepcopy(cache)
    plain = copy.deepcopy(model)
    kernels.remove_cpu_kernels(plain)
    if case == "autograd":
        with torch.enable_grad():
            logits = model(torch.tensor([[7]]), past_key_values=cache).logits[:, -1]
        assert logits.requires_grad
        logits = logits.detach()
    else:
        logits = _step(model, cache)
    expected = _step(plain, reference)
    assert case == "aten kernels" and model.biogpt.native_decoder is None or calls and all(c is None for c in calls)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_a_model_converted_after_loading_is_computed_from_its_new_weights(checkpoint):
    """Pointers are read at every step: after `.float()` the step runs on the float32 copies, never the old ones."""
    model = _load(checkpoint, torch.bfloat16, None)
    _decode(model, PROMPT, 2)  # the native layer array is built for the bfloat16 weights
    model.float()
    fused, _ = _decode(model, PROMPT, 6)
    modules, _ = _decode(model, PROMPT, 6, fused=False)
    torch.testing.assert_close(fused, modules, rtol=1e-5, atol=1e-5)


def _swap_data(layer):
    layer.fc2.weight.data = -layer.fc2.weight.data


def _new_parameter(layer):
    layer.fc2.weight = torch.nn.Parameter(-layer.fc2.weight.detach(), requires_grad=False)


def _new_module(layer):
    replacement = copy.deepcopy(layer.fc2)
    with torch.no_grad():
        replacement.weight.mul_(-1)
    layer.fc2 = replacement


def _new_layer(model):
    replacement = copy.deepcopy(model.biogpt.layers[1])
    with torch.no_grad():
        replacement.fc2.weight.mul_(-1)
    model.biogpt.layers[1] = replacement


@pytest.mark.parametrize("change", [
    pytest.param(lambda model: _swap_data(model.biogpt.layers[1]), id="weight.data swapped"),
    pytest.param(lambda model: _new_parameter(model.biogpt.layers[1]), id="parameter replaced"),
    pytest.param(lambda model: _new_module(model.biogpt.layers[1]), id="linear replaced"),
    pytest.param(_new_layer, id="decoder layer replaced")])
def test_weights_changed_after_a_step_are_the_ones_the_next_step_reads(checkpoint, change):
    """Between two decodes the array built for the first must not be reused for what replaced its tensors."""
    model = _load(checkpoint, torch.float32, None)
    before, _ = _decode(model, PROMPT, 3)
    change(model)
    mine, _ = _decode(model, PROMPT, 3)
    expected, _ = _decode(model, PROMPT, 3, fused=False)
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mine, before, atol=1e-3)  # the change mattered


def test_weights_replaced_in_the_middle_of_a_sequence_finish_it(checkpoint):
    """The steps after a sequence's first reuse its layer array, which keeps the weights' memory alive: a weight
    replaced mid-sequence (its cache computed with the old one) neither crashes nor mixes in freed memory; the
    sequence finishes on the weights it started with, and the next sequence reads the new ones."""
    model = _load(checkpoint, torch.float32, None)
    for layer in model.biogpt.layers[1:]:  # weights in memory of their own (not the checkpoint's mapping)
        layer.fc2.weight = torch.nn.Parameter(layer.fc2.weight.detach().clone(), requires_grad=False)
    original = copy.deepcopy(model)
    with _native_decoder(model, True):
        cache = KVCache.for_model(model, 1, PROMPT.shape[1] + 4)
        token = model(PROMPT, past_key_values=cache).logits[:, -1:].argmax(-1)
        steps = [model(token, past_key_values=cache).logits[0, -1].float()]
        _new_parameter(model.biogpt.layers[1])  # the old weight is now referenced by the array alone
        _new_parameter(model.biogpt.layers[2])
        gc.collect()
        reused = [torch.full_like(original.biogpt.layers[1].fc2.weight, float("nan")) for _ in range(16)]  # freed
        # memory would now hold these
        for _ in range(2):
            steps.append(model(steps[-1].argmax().view(1, 1), past_key_values=cache).logits[0, -1].float())
    del reused
    expected, _ = _decode(original, PROMPT, 3, fused=False)
    torch.testing.assert_close(torch.stack(steps), expected, rtol=1e-5, atol=1e-5)
    mine, _ = _decode(model, PROMPT, 3)
    torch.testing.assert_close(mine, _decode(model, PROMPT, 3, fused=False)[0], rtol=1e-5, atol=1e-5)


def test_a_deep_copy_computes_with_its_own_weights(checkpoint):
    model = _load(checkpoint, torch.float32, None)
    _decode(model, PROMPT, 2)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.biogpt.layers[1].fc2.weight.mul_(-1)
    mine, _ = _decode(twin, PROMPT, 4)
    expected, _ = _decode(twin, PROMPT, 4, fused=False)
    original, _ = _decode(model, PROMPT, 4)
    torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mine, original, atol=1e-3)


def test_it_is_set_only_where_the_decode_products_are_native(checkpoint):
    model = _load(checkpoint, torch.bfloat16, None)
    assert model.cpu_kernel_plan["bfloat16"]["decode"] == "native"
    assert isinstance(model.biogpt.native_decoder, kernels.NativeDecoder)
    kernels.remove_cpu_kernels(model)
    assert model.biogpt.native_decoder is None
    assert _load(checkpoint, torch.bfloat16, None, "onednn" if kernels.onednn_available(torch.bfloat16)
                 else "aten").biogpt.native_decoder is None


def test_the_probe_gives_decoding_to_native_unless_another_kernel_is_much_faster():
    close = {"aten": 1.0, "onednn": 0.50, "native": 0.50 * (1 + kernels.NATIVE_DECODE_ALLOWANCE) - 0.01}
    # it also fuses the layers of a decode step, of one row or of a batch, which the probe does not time
    assert kernels.pick(close, "decode") == "native"
    assert kernels.pick(close, "batch_decode") == "native"
    assert kernels.pick(close, "batch") == "onednn"  # prompts run layer by layer: products only
    far = {"aten": 1.0, "onednn": 0.50, "native": 0.50 * (1 + kernels.NATIVE_DECODE_ALLOWANCE) + 0.01}
    assert kernels.pick(far, "decode") == "onednn"
    assert kernels.pick(far, "batch_decode") == "onednn"


def _mapping_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:
            start, end = (int(part, 16) for part in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "VmFlags:":
            return fields[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(devices.transparent_huge_pages() not in ("always", "madvise"),
                    reason="this kernel gives no transparent huge pages")
@pytest.mark.parametrize("dtype, config", FORMATS)
def test_streamed_bf16_and_quantized_weights_move_to_memory_advised_for_huge_pages(checkpoint, dtype, config):
    model = _load(checkpoint, dtype, config)
    plain = _load(checkpoint, dtype, config, kernels_choice="aten")  # nothing native: nothing moved
    layers = [module for name, module in kernels.cpu_linears(model)]
    moved = dtype != torch.float32  # float32 weights stay where loading put them (no measurable gain)
    for module in layers:
        for tensor in kernels._streamed_tensors(module):
            assert ("hg" in _mapping_flags(tensor.data_ptr())) == moved  # madvise(MADV_HUGEPAGE) on its mapping
    assert "hg" not in _mapping_flags(model.biogpt.layers[0].self_attn_layer_norm.weight.data_ptr())
    assert "hg" not in _mapping_flags(kernels.cpu_linears(plain)[0][1].weight.data_ptr())
    assert model.biogpt.embed_tokens.weight is model.output_projection.weight or config is not None  # still tied
    logits, _ = _decode(model, PROMPT, 6)
    reference, _ = _decode(plain, PROMPT, 6, fused=False)
    tolerance = 1e-5 if dtype == torch.float32 and config is None else 2 ** -7
    torch.testing.assert_close(logits, reference, rtol=tolerance, atol=tolerance)


def test_only_whole_cpu_tensors_move_and_nothing_when_the_kernel_has_no_huge_pages(tmp_path, monkeypatch):
    whole, other = torch.randn(300, 7), torch.arange(12, dtype=torch.int8)
    base = torch.randn(10, 10)
    view = base[2:5]  # a part of another tensor's storage: moving it would cut it off
    values = [t.clone() for t in (whole, other, view)]
    addresses = [t.data_ptr() for t in (whole, other, view)]
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(devices, "TRANSPARENT_HUGE_PAGES", setting)
    assert devices.place_on_huge_pages([whole, other, view]) == 0
    assert [t.data_ptr() for t in (whole, other, view)] == addresses
    setting.write_text("always [madvise] never\n")
    assert devices.place_on_huge_pages([whole, other, view, whole]) == 300 * 7 * 4 + 12  # each tensor once
    # on a 2 MiB boundary, the next tensor on the next 64-byte line (8400 bytes -> 8448)
    assert whole.data_ptr() % devices.HUGE_PAGE_BYTES == 0 and other.data_ptr() == whole.data_ptr() + 8448
    assert view.data_ptr() == addresses[2] and view.data_ptr() == base[2:].data_ptr()
    for tensor, value in zip((whole, other, view), values):
        assert torch.equal(tensor, value)
    whole.add_(1)  # the new memory is writable and the tensor's own
    assert torch.equal(whole, values[0] + 1) and torch.equal(other, values[1])
