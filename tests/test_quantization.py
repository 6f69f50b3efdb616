"""bitsandbytes 4-bit / 8-bit on the CPU, against transformers' own bitsandbytes path on the same checkpoint."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from torch import nn

import biogpt
from biogpt import BitsAndBytesConfig, CheckpointError, ConfigError, DeviceError
from biogpt import quantization

transformers = pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")

TINY = dict(vocab_size=120, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            max_position_embeddings=64, num_labels=3)
DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")
pytestmark = pytest.mark.filterwarnings("ignore:MatMul8bitLt")


def nf4(dtype: torch.dtype, ours: bool = True):
    cls = BitsAndBytesConfig if ours else transformers.BitsAndBytesConfig
    return cls(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
               bnb_4bit_use_double_quant=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random BioGptForCausalLM saved by transformers, and its full-precision reference."""
    torch.manual_seed(0)
    ref = transformers.BioGptForCausalLM(transformers.BioGptConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("tiny") / "lm"
    ref.save_pretrained(path)
    return ref, path


def prompt() -> torch.Tensor:
    ids = torch.randint(3, TINY["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 2
    return ids


def greedy(model, ids: torch.Tensor, steps: int = 8) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def relative_delta(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


# ----------------------------------------------------------------------------------------------------------------
# The config
# ----------------------------------------------------------------------------------------------------------------
def test_config_fields_validation_and_dict():
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                bnb_4bit_use_double_quant=True)
    data = config.to_dict()
    assert data["bnb_4bit_compute_dtype"] == "bfloat16" and data["bnb_4bit_quant_storage"] == "uint8"
    assert data["quant_method"] == "bitsandbytes" and json.dumps(data)
    # transformers' to_dict() has the same field names (plus a few we keep aside).
    again = BitsAndBytesConfig.from_dict(nf4(torch.bfloat16, ours=False).to_dict())
    assert again.bnb_4bit_compute_dtype == torch.bfloat16 and again.bnb_4bit_use_double_quant
    assert BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype="float16").bnb_4bit_compute_dtype == torch.float16
    with pytest.raises(ConfigError, match="mutually exclusive"):
        BitsAndBytesConfig(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ConfigError, match="set load_in_4bit=True or load_in_8bit=True"):
        BitsAndBytesConfig()
    with pytest.raises(ConfigError, match="bnb_4bit_quant_type must be 'nf4' or 'fp4'"):
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="int4")
    with pytest.raises(ConfigError, match="bnb_4bit_compute_dtype"):
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype="float64")
    with pytest.raises(ConfigError, match="llm_int8_skip_modules must be a list"):
        BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules="fc1")


# ----------------------------------------------------------------------------------------------------------------
# 4-bit against transformers
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_4bit_logits_and_greedy_continuations_match_transformers(tiny, dtype):
    ref, path = tiny
    theirs = transformers.BioGptForCausalLM.from_pretrained(path, quantization_config=nf4(dtype, ours=False),
                                                            device_map="cpu", dtype=dtype).eval()
    ours = biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=nf4(dtype), torch_dtype=dtype)
    assert ours.is_quantized and ours.dtype == dtype
    for name in DECODER_LINEARS:
        assert isinstance(ours.biogpt.layers[1].get_submodule(name), bnb.nn.Linear4bit), name
    # Embeddings, LayerNorms and the (tied) head stay in the compute dtype, as in transformers.
    assert type(ours.output_projection) is nn.Linear and ours.output_projection.weight.dtype == dtype
    assert ours.biogpt.embed_tokens.weight.dtype == dtype and ours.biogpt.layer_norm.weight.dtype == dtype
    assert ours.get_memory_footprint() == theirs.get_memory_footprint()

    ids = prompt()
    with torch.no_grad():
        expected, got, full = theirs(ids).logits, ours(input_ids=ids).logits, ref(ids).logits
    assert relative_delta(got, expected) <= 1e-3
    assert relative_delta(got, full) > 1e-3  # it really is quantized
    assert torch.equal(greedy(ours, ids), greedy(theirs, ids))


def test_weights_are_quantized_as_they_arrive(tiny, monkeypatch):
    """After each quantized weight lands, no decoder matrix is held in full precision: peak memory stays low."""
    _, path = tiny
    original = quantization.BnbQuantizer.load
    seen = []

    def checked_load(self, model, name, tensor, device):
        original(self, model, name, tensor, device)
        full = [n for n in self.quantized
                if model.get_submodule(n).weight.device.type != "meta"
                and model.get_submodule(n).weight.dtype.is_floating_point]
        seen.append((name, full))

    monkeypatch.setattr(quantization.BnbQuantizer, "load", checked_load)
    biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=nf4(torch.float32))
    assert len(seen) == TINY["num_hidden_layers"] * len(DECODER_LINEARS)
    assert all(not full for _, full in seen)


@pytest.mark.filterwarnings("ignore:.*newly initialised")  # the LM checkpoint has no task heads
def test_heads_of_every_task_stay_unquantized_and_skip_modules(tiny):
    _, path = tiny
    tokens = biogpt.BioGptForTokenClassification.from_pretrained(path, quantization_config=nf4(torch.float32))
    sequences = biogpt.BioGptForSequenceClassification.from_pretrained(path, quantization_config=nf4(torch.float32))
    assert type(tokens.classifier) is nn.Linear and type(sequences.score) is nn.Linear
    assert isinstance(tokens.biogpt.layers[0].fc1, bnb.nn.Linear4bit)
    with torch.no_grad():
        assert torch.isfinite(tokens(input_ids=prompt()).logits).all()
    skipping = BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["fc2"])
    model = biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=skipping)
    assert type(model.biogpt.layers[0].fc2) is nn.Linear
    assert isinstance(model.biogpt.layers[0].fc1, bnb.nn.Linear4bit)


def test_8bit_loads_on_the_cpu_and_matches_transformers(tiny):
    ref, path = tiny
    theirs = transformers.BioGptForCausalLM.from_pretrained(
        path, quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True), device_map="cpu",
        dtype=torch.float32).eval()
    ours = biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    fc1 = ours.biogpt.layers[0].fc1
    assert isinstance(fc1, bnb.nn.Linear8bitLt) and fc1.weight.dtype == torch.int8
    ids = prompt()
    with torch.no_grad():
        expected, got = theirs(ids).logits, ours(input_ids=ids).logits
    assert relative_delta(got, expected) <= 1e-3
    assert ours.get_memory_footprint() == theirs.get_memory_footprint()


def test_saving_a_quantized_model_is_refused(tiny, tmp_path):
    _, path = tiny
    model = biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=nf4(torch.float32))
    with pytest.raises(CheckpointError, match="Saving a 4-bit/8-bit quantized model is not supported"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# When bitsandbytes cannot run
# ----------------------------------------------------------------------------------------------------------------
def test_missing_bitsandbytes_is_a_device_error(tiny, monkeypatch):
    _, path = tiny
    assert quantization.quantization_unavailable_reason("cpu") is None
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an uninstalled package looks like to import
    reason = quantization.quantization_unavailable_reason("cpu")
    assert reason and "bitsandbytes" in reason and "pip install" in reason
    with pytest.raises(DeviceError, match="needs the bitsandbytes package"):
        biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=nf4(torch.float32))


def test_unsupported_device_reason(tiny, monkeypatch):
    _, path = tiny
    assert quantization.quantization_unavailable_reason("auto") is None or torch.cuda.is_available()
    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda"})
    assert "does not support the cpu device" in quantization.quantization_unavailable_reason("cpu")
    with pytest.raises(DeviceError, match="Cannot quantize biogpt.layers.0.* does not support the cpu device"):
        biogpt.BioGptForCausalLM.from_pretrained(path, quantization_config=nf4(torch.float32))


# ----------------------------------------------------------------------------------------------------------------
# Footprint in the microsoft/biogpt shape
# ----------------------------------------------------------------------------------------------------------------
BIOGPT_SHAPE = dict(vocab_size=42384, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096, max_position_embeddings=1024)


def write_random_checkpoint(path, config: dict, dtype: torch.dtype = torch.float16) -> int:
    """A random checkpoint written tensor by tensor (no model is ever materialised); returns its parameter count."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    biogpt.BioGptConfig(**config).save_pretrained(path)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in biogpt.BioGptModel(biogpt.BioGptConfig(**config)).named_parameters()}
    g = torch.Generator().manual_seed(0)
    state = {name: (torch.randn(shape, generator=g) * 0.02).to(dtype) for name, shape in shapes.items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return sum(t.numel() for t in state.values())


@pytest.mark.slow
def test_4bit_footprint_is_at_most_40_percent_of_fp16(tmp_path):
    parameters = write_random_checkpoint(tmp_path / "biogpt-shape", BIOGPT_SHAPE)
    # fp16 footprint by exact arithmetic: every parameter (the LM head is tied to the embeddings) × 2 bytes.
    fp16_bytes = parameters * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base checkpoint has no separate head: it is tied, nothing to init
        model = biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "biogpt-shape",
                                                         quantization_config=nf4(torch.bfloat16),
                                                         torch_dtype=torch.bfloat16)
    ratio = model.get_memory_footprint() / fp16_bytes
    print(f"4-bit nf4 footprint {model.get_memory_footprint() / 2**20:.1f} MiB vs fp16 "
          f"{fp16_bytes / 2**20:.1f} MiB: {ratio:.3f}")
    assert 340e6 < parameters < 350e6  # really the microsoft/biogpt shape (347M)
    assert ratio <= 0.40
