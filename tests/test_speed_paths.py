"""The speed paths: CPU kernels swapped in at load (oneDNN fp32 exact, bf16 prepacked and invalidated; the plain
class back when every choice is ATen), the static-shape decode step (token-identical to the default path) and a cold
`from_pretrained` that does not import torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biogpt import BioGptConfig, BioGptForCausalLM, kernels
from biogpt.generation import generate


def _tiny(seed: int = 0, dtype: torch.dtype = torch.float32) -> BioGptForCausalLM:
    torch.manual_seed(seed)
    config = BioGptConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=48, max_position_embeddings=64, initializer_range=0.5,
                          scale_embedding=False)
    return BioGptForCausalLM.from_config(config, dtype=dtype).eval()


onednn = pytest.mark.skipif(not kernels.onednn_available(), reason="this torch has no usable oneDNN linear")
onednn_bf16 = pytest.mark.skipif(not kernels.onednn_available(torch.bfloat16),
                                 reason="this CPU has no oneDNN bf16 linear (no AVX-512 BF16 or AMX)")


def _onednn(layer: nn.Linear) -> nn.Linear:
    layer.__class__ = kernels.CpuLinear
    layer.kernels = dict.fromkeys(kernels.REGIMES, "onednn")
    return layer


@onednn
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_fp32_linear_matches_f_linear(rows):
    torch.manual_seed(0)
    layer = _onednn(nn.Linear(64, 96))
    x = torch.randn(2, rows, 64)
    with torch.no_grad():
        ours = layer(x)
        reference = F.linear(x, layer.weight, layer.bias)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


@onednn_bf16
def test_bf16_packed_weight_follows_weight_changes():
    torch.manual_seed(0)
    layer = _onednn(nn.Linear(64, 96).to(torch.bfloat16))
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        first = layer(x)
        torch.testing.assert_close(first.float(), F.linear(x, layer.weight, layer.bias).float(), rtol=2e-2, atol=2e-2)
        layer.weight.mul_(-1)  # in place (as load_state_dict / an optimizer step): the packed copy must be rebuilt
        second = layer(x)
        torch.testing.assert_close(second.float(), F.linear(x, layer.weight, layer.bias).float(), rtol=2e-2,
                                   atol=2e-2)
        layer.weight = nn.Parameter(torch.randn(96, 64, dtype=torch.bfloat16))  # replaced: rebuilt too
        third = layer(x)
        torch.testing.assert_close(third.float(), F.linear(x, layer.weight, layer.bias).float(), rtol=2e-2,
                                   atol=2e-2)


def test_gradients_still_flow_through_the_plain_path():
    model = _tiny().train()
    kernels.apply_cpu_kernels(model, "onednn")
    ids = torch.randint(3, 50, (2, 8))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert model.biogpt.layers[0].fc1.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_leaves_state_dict_save_and_deepcopy_alone(tmp_path, dtype):
    model = _tiny(dtype=dtype)
    kernels.apply_cpu_kernels(model, "onednn")
    keys = list(model.state_dict())
    model.generate(torch.randint(3, 50, (1, 5)), max_new_tokens=3)
    assert list(model.state_dict()) == keys
    copy.deepcopy(model)
    model.save_pretrained(tmp_path)
    loaded = BioGptForCausalLM.from_pretrained(tmp_path, dtype=dtype, cpu_kernels="onednn")
    assert list(loaded.state_dict()) == keys
    swapped = {type(m) for m in loaded.biogpt.layers.modules() if isinstance(m, nn.Linear)}
    assert swapped == ({kernels.CpuLinear} if kernels.onednn_available(dtype) else {nn.Linear})
    plain = BioGptForCausalLM.from_pretrained(tmp_path, dtype=dtype, cpu_kernels=False)
    assert {type(m) for m in plain.biogpt.layers.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    kernels.remove_cpu_kernels(loaded)
    assert {type(m) for m in loaded.biogpt.layers.modules() if isinstance(m, nn.Linear)} == {nn.Linear}


def test_no_grad_logits_equal_grad_enabled_logits():
    model = _tiny()
    kernels.apply_cpu_kernels(model, "onednn")
    ids = torch.randint(3, 50, (2, 9))
    with_grad = model(ids).logits  # weights require grad here: ATen's path
    with torch.no_grad():
        without = model(ids).logits  # the oneDNN path where available
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_cache_greedy_is_token_identical(dtype):
    model = _tiny(dtype=dtype)
    torch.manual_seed(1)
    for _ in range(4):
        ids = torch.randint(3, 50, (1, int(torch.randint(1, 9, ()))))
        default = generate(model, ids, max_new_tokens=20, eos_token_id=None)
        static = generate(model, ids, max_new_tokens=20, eos_token_id=None, static_cache=True)
        assert torch.equal(default, static)


def test_static_cache_left_padded_batch_and_eos():
    model = _tiny(seed=3)
    ids = torch.randint(3, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 1)
    default = generate(model, ids, attention_mask=mask, max_new_tokens=15)
    static = generate(model, ids, attention_mask=mask, max_new_tokens=15, static_cache=True)
    assert torch.equal(default, static)


def test_static_cache_sampling_with_seed_is_identical():
    model = _tiny(seed=5)
    ids = torch.randint(3, 50, (2, 4))
    default = generate(model, ids, max_new_tokens=12, do_sample=True, seed=7, num_return_sequences=2)
    static = generate(model, ids, max_new_tokens=12, do_sample=True, seed=7, num_return_sequences=2,
                      static_cache=True)
    assert torch.equal(default, static)


def test_generate_returns_an_ordinary_tensor():
    model = _tiny()
    out = generate(model, torch.randint(3, 50, (1, 4)), max_new_tokens=3)
    assert not out.is_inference()
    out[:, 0] = 2  # writable outside inference mode


def test_cold_load_does_not_import_dynamo(tmp_path):
    _tiny().save_pretrained(tmp_path)
    code = ("import sys, torch\nfrom biogpt import BioGptForCausalLM\n"
            f"m = BioGptForCausalLM.from_pretrained({str(tmp_path)!r})\n"
            "m.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=2)\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_compiled_static_step_is_token_identical():
    pytest.importorskip("torch._dynamo")
    model = _tiny()
    ids = torch.randint(3, 50, (1, 6))
    default = generate(model, ids, max_new_tokens=8, eos_token_id=None)
    try:
        compiled = generate(model, ids, max_new_tokens=8, eos_token_id=None, compile=True)
    except Exception as exc:  # no C++ compiler for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}: {exc}")
    assert torch.equal(default, compiled)
