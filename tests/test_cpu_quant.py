"""Weight-only int8 / int4 on the CPU (`TorchAoConfig`, PyTorch's own kernels): the config with transformers' names,
correctness against a dequantized reference within the bound the quantization step allows, streaming quantization
at load, greedy output on the bundled demo LM, and what a quantized model refuses to do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biogpt import BioGptConfig, BioGptForCausalLM, BioGptTokenizer, CheckpointError, ConfigError, DeviceError
from biogpt import TorchAoConfig, catalog, kernels, native
from biogpt.manager import ModelSpec, ModelManager
from biogpt.quantization import TorchAoQuantizer, cpu_quantization_config

DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def _weight(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * 0.05
    weight[3, 17] = 0.9  # an outlier: its row (int8) or group (int4) gets a coarse step
    return weight


# ----------------------------------------------------------------------------------------------------------------
# Quantization and the kernels, against a dequantized reference
# ----------------------------------------------------------------------------------------------------------------
def test_int8_rounding_error_is_at_most_half_a_step():
    weight = _weight()
    q, scales = kernels.quantize_int8(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    step = weight.abs().amax(dim=1) / 127  # by hand: symmetric, max |w| of the row maps to 127
    torch.testing.assert_close(scales, step)
    assert bool(((q.float() * step[:, None] - weight).abs() <= step[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_rounding_error_is_at_most_half_a_step(group_size):
    weight = _weight()
    q, scales, zeros = kernels.quantize_int4(weight, group_size)
    assert int(q.min()) >= 0 and int(q.max()) <= 15
    groups = weight.view(64, -1, group_size)
    step = (groups.amax(dim=2) - groups.amin(dim=2)) / 15  # by hand: min..max of the group in 16 levels
    torch.testing.assert_close(scales, step)
    dequantized = ((q.view(64, -1, group_size) - 8) * scales[..., None] + zeros[..., None])
    assert bool(((dequantized - groups).abs() <= step[..., None] / 2 + 1e-6).all())


def _layers(dtype: torch.dtype, group_size: int = 32):
    weight, bias = _weight(), torch.randn(64, generator=torch.Generator().manual_seed(1)) * 0.1
    int8 = kernels.Int8Linear.from_float(weight, bias, dtype)
    int4 = kernels.Int4Linear.from_float(weight, bias, dtype, group_size)
    return weight, bias, int8, int4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 130])
def test_quantized_linears_are_within_the_bound_of_the_quantization_step(dtype, rows):
    """|y - x W^T| <= sum_k |x_k| * step / 2 (each weight moved by at most half its step), plus the rounding of
    the compute dtype; in every regime and with every kernel candidate."""
    weight, bias, int8, int4 = _layers(dtype)
    x = torch.randn(2, rows, 256, generator=torch.Generator().manual_seed(2))
    exact = F.linear(x.double(), weight.double(), bias.double())
    step8 = (weight.abs().amax(dim=1) / 127).double()
    bound8 = x.double().abs().sum(-1, keepdim=True) * step8 / 2
    groups = weight.view(64, -1, 32)
    step4 = ((groups.amax(dim=2) - groups.amin(dim=2)) / 15).double()  # (rows, groups)
    bound4 = torch.einsum("brg,ng->brn", x.double().abs().view(2, rows, -1, 32).sum(-1), step4) / 2
    compute = 2e-2 if dtype == torch.bfloat16 else 1e-5  # relative rounding of inputs, products and output
    slack = compute * (x.double().abs() @ weight.double().abs().t() + exact.abs()) + 1e-4
    for layer, bound in ((int8, bound8), (int4, bound4)):
        fmt = kernels.weight_format(layer)
        for name in kernels.candidates(fmt, kernels.regime(rows)):
            layer.kernels = dict.fromkeys(kernels.REGIMES, name)
            with torch.inference_mode():
                got = layer(x.to(dtype))
            assert got.shape == (2, rows, 64) and got.dtype == dtype
            error = (got.double() - exact).abs()
            assert bool((error <= bound + slack).all()), (fmt, name, float((error - bound - slack).max()))


def test_strided_inputs_work_like_contiguous_ones():
    """A slice of the hidden states (the last position of a batch, as logits_to_keep makes) is not contiguous."""
    _, _, int8, int4 = _layers(torch.bfloat16)
    x = torch.randn(3, 7, 256, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)[:, -1:]
    for layer in (int8, int4):
        with torch.inference_mode():
            assert torch.equal(layer(x), layer(x.contiguous()))


@pytest.mark.parametrize("unpacking", ["native", "tensor operations"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_unpacking_reads_the_kernels_layout(unpacking, dtype, monkeypatch):
    """The dequant kernel reads PyTorch's packed int4 layout back: its matrix is (q - 8) * scale + zero, whether
    native.c unpacks it or tensor operations do (where the native kernels cannot run)."""
    if not kernels.int4_layout_known():
        pytest.skip("this torch build packs int4 differently: the dequant candidate is disabled here")
    if unpacking == "native" and not kernels.native_int4_available():
        pytest.skip("no native int4 kernels here")
    if unpacking != "native":
        monkeypatch.setattr(native, "available", lambda: False)
    for rows in (64, 112, 208):  # whole 64-row blocks, and a tail
        weight = _weight(rows, 128, seed=rows)
        layer = kernels.Int4Linear.from_float(weight, None, dtype, 32)
        q, scales, zeros = kernels.quantize_int4(weight, 32)
        scales, zeros = scales.to(dtype).double(), zeros.to(dtype).double()  # what the layer keeps
        expected = ((q.view(rows, -1, 32).double() - 8) * scales[..., None] + zeros[..., None]).view(rows, 128)
        got = layer.dequantized().double()
        assert layer.dequantized().dtype == dtype and got.shape == (rows, 128)
        half_ulp = 2 ** -(24 if dtype == torch.float32 else 8)  # the unit roundoff: one rounding to the dtype
        bound = expected.abs() * half_ulp
        if unpacking != "native" and dtype == torch.bfloat16:  # zero - 8 * scale is rounded first, then the sum
            bound = bound + (zeros - 8 * scales).abs().repeat_interleave(32, dim=1) * half_ulp * 2
        assert bool(((got - expected).abs() <= bound).all()), float(((got - expected).abs() - bound).max())


def test_int4_shapes_the_kernel_cannot_take_are_refused_clearly():
    with pytest.raises(ConfigError, match="not a multiple of group_size 128"):
        kernels.Int4Linear(96, 64, group_size=128)
    with pytest.raises(ConfigError, match="multiples of 16"):
        kernels.Int4Linear(128, 40, group_size=32)


# ----------------------------------------------------------------------------------------------------------------
# The config
# ----------------------------------------------------------------------------------------------------------------
def test_config_has_transformers_names_and_round_trips():
    config = TorchAoConfig("int4_weight_only", group_size=32, modules_to_not_convert=["fc2"])
    assert (config.bits, config.group_size) == (4, 32)
    data = config.to_dict()
    assert data == {"quant_method": "torchao", "quant_type": "int4_weight_only", "quant_type_kwargs": {"group_size": 32},
                    "modules_to_not_convert": ["fc2"], "include_input_output_embeddings": False,
                    "untie_embedding_weights": False}
    assert TorchAoConfig.from_dict(data).to_dict() == data
    assert TorchAoConfig("int4_weight_only").group_size == 128  # torchao's default
    assert TorchAoConfig("int8_weight_only").bits == 8
    # transformers >= 5 passes torchao config objects, and serialises them like this
    five = {"quant_method": "torchao", "quant_type": {"default": {"_type": "Int4WeightOnlyConfig",
                                                                  "_data": {"group_size": 64}}}}
    assert TorchAoConfig.from_dict(five).group_size == 64

    class Int4WeightOnlyConfig:  # stands in for torchao's class (read by name and fields, torchao not imported)
        group_size = 256

    assert TorchAoConfig(Int4WeightOnlyConfig()).group_size == 256


@pytest.mark.parametrize("args, kwargs, message", [
    (("int3_weight_only",), {}, "quant_type must be one of int8_weight_only, int4_weight_only"),
    (("int4_weight_only",), {"group_size": 48}, "group_size must be one of 32, 64, 128, 256"),
    (("int8_weight_only",), {"group_size": 32}, "takes no group_size"),
    (("int8_weight_only",), {"layout": "tiled"}, "unsupported option"),
    (("int8_weight_only",), {"modules_to_not_convert": "fc2"}, "must be a list of module names"),
])
def test_bad_configs_say_what_is_wrong(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TorchAoConfig(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, max_position_embeddings=64, initializer_range=0.1)
    path = tmp_path_factory.mktemp("tiny") / "lm"
    BioGptForCausalLM.from_config(config).save_pretrained(path)
    return path


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits.float()


@pytest.mark.parametrize("config", [TorchAoConfig("int8_weight_only"), TorchAoConfig("int4_weight_only", group_size=32)])
def test_loading_quantizes_the_decoder_and_keeps_the_rest(tiny_path, config):
    full = BioGptForCausalLM.from_pretrained(tiny_path, torch_dtype=torch.bfloat16)
    model = BioGptForCausalLM.from_pretrained(tiny_path, torch_dtype=torch.bfloat16, quantization_config=config)
    expected = kernels.Int8Linear if config.bits == 8 else kernels.Int4Linear
    for layer in model.biogpt.layers:
        for name in DECODER_LINEARS:
            module = layer.get_submodule(name)
            assert type(module) is expected and module.weight.device.type == "cpu"
            assert not module.weight.is_meta and module.bias.dtype == torch.bfloat16
    assert type(model.output_projection) is not expected  # the head stays in bf16 by default, as transformers
    assert model.output_projection.weight is model.biogpt.embed_tokens.weight
    assert model.is_quantized and model.config.quantization_config["quant_type"] == config.quant_type
    assert model.get_memory_footprint() < full.get_memory_footprint()
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    # The quantized layers hold exactly what quantize_int8/int4 make of the bf16 weights: the same model built by
    # hand from the full-precision one's weights gives the same logits.
    by_hand = BioGptForCausalLM.from_pretrained(tiny_path, torch_dtype=torch.bfloat16, cpu_kernels=False)
    for layer in by_hand.biogpt.layers:
        for name in DECODER_LINEARS:
            old = layer.get_submodule(name)
            new = (kernels.Int8Linear.from_float(old.weight, old.bias, torch.bfloat16) if config.bits == 8 else
                   kernels.Int4Linear.from_float(old.weight, old.bias, torch.bfloat16, 32))
            layer.set_submodule(name, new)
    torch.testing.assert_close(_logits(model, ids), _logits(by_hand, ids), rtol=2e-2, atol=2e-2)
    assert (_logits(model, ids) - _logits(full, ids)).abs().max() < 0.5  # close to the unquantized model


def test_the_head_and_skipped_modules(tiny_path):
    model = BioGptForCausalLM.from_pretrained(
        tiny_path, torch_dtype=torch.bfloat16,
        quantization_config=TorchAoConfig("int8_weight_only", include_input_output_embeddings=True,
                                          modules_to_not_convert=["fc2"]))
    assert type(model.output_projection) is kernels.Int8Linear
    assert model.biogpt.embed_tokens.weight.dtype == torch.bfloat16  # the lookup table stays as it was
    assert all(type(layer.fc2) is nn.Linear or type(layer.fc2) is kernels.CpuLinear for layer in model.biogpt.layers)
    assert all(type(layer.fc1) is kernels.Int8Linear for layer in model.biogpt.layers)
    model.tie_weights()  # the quantized head is its own copy now: re-tying must not undo it
    assert type(model.output_projection) is kernels.Int8Linear
    full = BioGptForCausalLM.from_pretrained(tiny_path, torch_dtype=torch.bfloat16)
    ids = torch.randint(3, 96, (1, 10), generator=torch.Generator().manual_seed(4))
    assert (_logits(model, ids) - _logits(full, ids)).abs().max() < 0.5


def test_a_quantized_model_cannot_be_saved_and_runs_only_on_the_cpu(tiny_path, tmp_path):
    model = BioGptForCausalLM.from_pretrained(tiny_path, quantization_config=TorchAoConfig("int8_weight_only"))
    with pytest.raises(CheckpointError, match="quantized model is not supported"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    quantizer = TorchAoQuantizer(TorchAoConfig("int8_weight_only"), torch.bfloat16)
    with pytest.raises(DeviceError, match="runs on the CPU only"):
        quantizer.load(model, "biogpt.layers.0.fc1.weight", torch.zeros(128, 64), torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"cannot quantize biogpt\.layers\.0\.self_attn\.k_proj: its 64 input features are not a multiple"):
        BioGptForCausalLM.from_pretrained(tiny_path, quantization_config=TorchAoConfig("int4_weight_only",
                                                                                       group_size=256))


def test_dict_configs_load_too(tiny_path):
    model = BioGptForCausalLM.from_pretrained(tiny_path, torch_dtype=torch.bfloat16, quantization_config={
        "quant_method": "torchao", "quant_type": "int4_weight_only", "quant_type_kwargs": {"group_size": 64}})
    assert type(model.biogpt.layers[0].fc1) is kernels.Int4Linear and model.biogpt.layers[0].fc1.group_size == 64


# ----------------------------------------------------------------------------------------------------------------
# The demo LM and the manager
# ----------------------------------------------------------------------------------------------------------------
PROMPTS = ("Ibuprofen is used to treat", "The most common adverse effect of lisinopril is", "Metformin is a")


@pytest.mark.parametrize("config", [TorchAoConfig("int8_weight_only"),
                                    TorchAoConfig("int8_weight_only", include_input_output_embeddings=True),
                                    TorchAoConfig("int4_weight_only", group_size=32),
                                    TorchAoConfig("int4_weight_only", group_size=128)])
def test_greedy_output_of_the_demo_lm_matches_the_unquantized_model(config):
    path = catalog.demo_path("causal-lm")
    tokenizer = BioGptTokenizer.from_pretrained(path)
    reference = BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, cpu_kernels=False)
    model = BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, quantization_config=config)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference.generate(ids, max_new_tokens=16, do_sample=False)
        assert torch.equal(model.generate(ids, max_new_tokens=16, do_sample=False), expected), prompt


def test_model_spec_offers_int8_and_int4_on_the_cpu(tmp_path):
    spec = ModelSpec("demo", quantization="int4")
    assert (spec.device, spec.dtype) == ("cpu", "bfloat16")  # auto means CPU, bf16 (the kernels' fast dtype)
    assert ModelSpec("demo", quantization="int8", dtype="float32").dtype == "float32"
    assert cpu_quantization_config("int4").group_size == 64
    with pytest.raises(ConfigError, match="runs on the CPU"):
        ModelSpec("demo", quantization="int8", device="cuda")
    manager = ModelManager(max_models=1)
    loaded = manager.get(ModelSpec("demo", quantization="int8"))
    assert type(loaded.model.biogpt.layers[0].fc1) is kernels.Int8Linear
    assert type(loaded.model.output_projection) is kernels.Int8Linear
