"""The CPU kernel choice: a probe measured once per machine and cached, overridable by BIOGPT_CPU_KERNELS, never
picking a kernel that loses to plain ATen; and every kernel computing what `F.linear` computes.

The probe's measurements are replaced by a fake (`measure=`) wherever the choice logic is under test, so nothing
here depends on the speed of the machine running it.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biogpt import BioGptConfig, BioGptForCausalLM, ConfigError, kernels


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """The machine's load average decides whether a cached probe is redone: pin it (a shared CI host varies). The
    models here are tiny, below the size the real loader bothers to probe: probe them anyway."""
    monkeypatch.setattr(kernels, "load_per_core", lambda: 0.1)
    monkeypatch.setattr(kernels, "PROBE_MIN_BYTES", 0)


def _tiny(dtype: torch.dtype = torch.float32) -> BioGptForCausalLM:
    torch.manual_seed(0)
    config = BioGptConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, scale_embedding=False)
    return BioGptForCausalLM.from_config(config, dtype=dtype).eval()


class FakeProbe:
    """Seconds per candidate from a table (ATen 1.0 unless listed, any other candidate not listed 10); records what
    it was asked to measure."""

    def __init__(self, table: dict[str, float]):
        self.table = table
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    def __call__(self, fmt, layers, regime, names):
        self.calls.append((fmt, regime, tuple(names)))
        assert names[0] == "aten" and layers  # ATen is always a candidate, measured on real layers
        return {name: self.table.get(name, 1.0 if name == "aten" else 10.0) for name in names}


def _never(*args):
    raise AssertionError("the probe ran although the choice was cached or forced")


def _classes(model) -> set[type]:
    return {type(m) for m in model.biogpt.layers.modules() if isinstance(m, nn.Linear)} | {
        type(model.output_projection)}


def test_probe_picks_the_fastest_writes_the_cache_and_reuses_it(tmp_path):
    cache = tmp_path / "kernels.json"
    probe = FakeProbe({"aten": 1.0, "gemv": 0.5, "onednn": 0.7})
    model = _tiny()
    plan = kernels.apply_cpu_kernels(model, "auto", cache_file=cache, measure=probe)
    expected_batch = "onednn" if kernels.onednn_available() else "aten"
    assert plan == {"float32": {"decode": "gemv", "batch_decode": expected_batch, "batch": expected_batch,
                                 "medium": expected_batch, "prefill": expected_batch}}
    assert _classes(model) == {kernels.CpuLinear}
    assert model.biogpt.layers[0].fc1.kernels == plan["float32"]
    assert {regime for _, regime, _ in probe.calls} == (set(kernels.REGIMES) if kernels.onednn_available()
                                                        else {"decode"})
    entries = json.loads(cache.read_text())["entries"]
    (key, entry), = entries.items()
    assert json.loads(key)["format"] == "float32" and json.loads(key)["torch"] == torch.__version__
    assert entry["kernels"] == plan["float32"] and entry["timings"]["decode"]["gemv"] == 0.5

    again = _tiny()  # same machine, torch, threads and shapes: read from the cache, not measured
    assert kernels.apply_cpu_kernels(again, "auto", cache_file=cache, measure=_never) == plan


def test_aten_is_kept_when_it_wins_or_when_the_gain_is_within_the_noise(tmp_path):
    assert kernels.pick({"aten": 1.0, "gemv": 1.2, "onednn": 1.5}, "decode") == "aten"
    assert kernels.pick({"aten": 1.0, "gemv": 1 - kernels.MARGIN / 2}, "decode") == "aten"
    assert kernels.pick({"aten": 1.0, "gemv": 1 - 2 * kernels.MARGIN}, "decode") == "gemv"
    model = _tiny()
    plan = kernels.apply_cpu_kernels(model, "auto", cache_file=tmp_path / "k.json",
                                     measure=FakeProbe({"aten": 1.0, "gemv": 1.5, "onednn": 2.0}))
    assert plan == {"float32": dict.fromkeys(kernels.REGIMES, "aten")}
    assert _classes(model) == {nn.Linear}  # all-ATen: nothing swapped, the model is plain PyTorch


def test_probe_setting_measures_again_and_a_changed_machine_is_a_new_entry(tmp_path, monkeypatch):
    cache = tmp_path / "kernels.json"
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=FakeProbe({"gemv": 0.5}))
    second = FakeProbe({"gemv": 2.0})
    plan = kernels.apply_cpu_kernels(_tiny(), "probe", cache_file=cache, measure=second)
    assert second.calls and plan["float32"]["decode"] == "aten"
    assert json.loads(cache.read_text())["entries"].popitem()[1]["kernels"]["decode"] == "aten"  # overwritten

    monkeypatch.setattr(kernels, "machine_key", lambda: {"cpu": "another CPU", "flags": [], "torch": "x",
                                                         "capability": "DEFAULT", "threads": 1})
    third = FakeProbe({"gemv": 0.5})
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=third)
    assert third.calls and len(json.loads(cache.read_text())["entries"]) == 2


def test_a_choice_measured_on_a_busy_machine_is_measured_again_when_it_is_quiet(tmp_path, monkeypatch):
    cache = tmp_path / "kernels.json"
    monkeypatch.setattr(kernels, "load_per_core", lambda: 1.5)  # other work holds the cores during the probe
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=FakeProbe({"onednn": 0.5}))
    assert json.loads(cache.read_text())["entries"].popitem()[1]["load_per_core"] == 1.5
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=_never)  # still busy: the cache holds
    monkeypatch.setattr(kernels, "load_per_core", lambda: 0.2)
    again = FakeProbe({"gemv": 0.5})
    plan = kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=again)
    assert again.calls and plan["float32"]["decode"] == "gemv"
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=_never)  # measured quiet: kept from now on
    monkeypatch.setattr(kernels, "load_per_core", lambda: 1.5)
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=_never)


def test_a_corrupt_cache_is_measured_again_and_rewritten(tmp_path):
    cache = tmp_path / "kernels.json"
    cache.write_text("{not json")
    probe = FakeProbe({"gemv": 0.5})
    kernels.apply_cpu_kernels(_tiny(), "auto", cache_file=cache, measure=probe)
    assert probe.calls and json.loads(cache.read_text())["version"] == kernels.CACHE_VERSION


def test_forced_choices_skip_the_probe(tmp_path, monkeypatch):
    cache = tmp_path / "kernels.json"
    model = _tiny()
    assert kernels.apply_cpu_kernels(model, "aten", cache_file=cache, measure=_never) == {
        "float32": dict.fromkeys(kernels.REGIMES, "aten")}
    assert _classes(model) == {nn.Linear} and not cache.exists()
    plan = kernels.apply_cpu_kernels(model, "gemv", cache_file=cache, measure=_never)
    # gemv only has one row
    assert plan == {"float32": {"decode": "gemv", "batch_decode": "aten", "batch": "aten", "medium": "aten",
                                 "prefill": "aten"}}
    assert _classes(model) == {kernels.CpuLinear}
    kernels.remove_cpu_kernels(model)
    assert _classes(model) == {nn.Linear}

    # None reads BIOGPT_CPU_KERNELS; True is "auto", False is "aten"; anything else is refused.
    monkeypatch.setenv("BIOGPT_CPU_KERNELS", "gemv")
    assert kernels.resolve_choice(None) == "gemv"
    assert (kernels.resolve_choice(True), kernels.resolve_choice(False)) == ("auto", "aten")
    with pytest.raises(ConfigError, match="cpu_kernels='fastest'"):
        kernels.resolve_choice("fastest")
    monkeypatch.setenv("BIOGPT_CPU_KERNELS", "fastest")
    with pytest.raises(ConfigError, match="BIOGPT_CPU_KERNELS='fastest'"):
        kernels.resolve_choice(None)


def test_tiny_models_are_not_probed(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "PROBE_MIN_BYTES", 4 * 2**20)
    model = _tiny()  # ~30 KB of linear weights: nothing a measurement could tell apart
    assert kernels.apply_cpu_kernels(model, "auto", cache_file=tmp_path / "k.json", measure=_never) == {
        "float32": dict.fromkeys(kernels.REGIMES, "aten")}
    assert _classes(model) == {nn.Linear} and not (tmp_path / "k.json").exists()


def test_from_pretrained_applies_the_setting(tmp_path, monkeypatch):
    _tiny().save_pretrained(tmp_path / "m")
    monkeypatch.setenv("BIOGPT_CPU_KERNELS", "gemv")
    model = BioGptForCausalLM.from_pretrained(tmp_path / "m")
    assert model.cpu_kernel_plan == {"float32": {"decode": "gemv", "batch_decode": "aten", "batch": "aten",
                                                 "medium": "aten", "prefill": "aten"}}
    plain = BioGptForCausalLM.from_pretrained(tmp_path / "m", cpu_kernels=False)
    assert _classes(plain) == {nn.Linear}


def test_a_products_rows_decide_its_regime():
    """One row decodes; a short prompt (2-31 rows) and a mid-length one (32-127: the kernels cross over there) are
    probed apart; 128 rows and more are a prefill. A batch's decode steps follow batch_decode up to 127 rows."""
    rows = (1, 2, 31, 32, 127, 128, 512)
    assert [kernels.regime(r) for r in rows] == ["decode", "batch", "batch", "medium", "medium", "prefill", "prefill"]
    assert [kernels.decode_regime(r) for r in rows] == ["decode"] + ["batch_decode"] * 4 + [None, None]


def test_the_real_probe_returns_a_choice_for_every_regime(tmp_path):
    """The measuring code itself runs (on a tiny model: the numbers mean nothing, the shape of the answer does)."""
    model = _tiny(torch.bfloat16)
    plan = kernels.apply_cpu_kernels(model, "probe", cache_file=tmp_path / "k.json")
    assert set(plan) == {"bfloat16"} and set(plan["bfloat16"]) == set(kernels.REGIMES)
    for regime, name in plan["bfloat16"].items():
        assert name in kernels.candidates("bfloat16", regime)
    entry = json.loads((tmp_path / "k.json").read_text())["entries"].popitem()[1]
    assert all(seconds > 0 for timings in entry["timings"].values() for seconds in timings.values())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_every_float_kernel_computes_f_linear(dtype, tolerance, rows):
    torch.manual_seed(0)
    reference = nn.Linear(64, 48).to(dtype)
    x = torch.randn(1, rows, 64).to(dtype)
    with torch.no_grad():
        expected = F.linear(x.double(), reference.weight.double(), reference.bias.double())
        for name in kernels.candidates(str(dtype).replace("torch.", ""), kernels.regime(rows)):
            layer = nn.Linear(64, 48).to(dtype)
            layer.load_state_dict(reference.state_dict())
            layer.__class__ = kernels.CpuLinear
            layer.kernels = dict.fromkeys(kernels.REGIMES, name)
            got = layer(x)
            assert got.shape == (1, rows, 48) and got.dtype == dtype, name
            torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance, msg=name)


def test_a_cpu_without_bf16_onednn_never_gets_it(monkeypatch, tmp_path):
    """An AVX2-only CPU (such as a Zen 2/3 AMD EPYC) has oneDNN's fp32 linear but no bf16 one (it raises "could not
    create a primitive descriptor"): bf16 layers must never be given it, even when it is asked for by name."""
    monkeypatch.setattr(kernels, "onednn_available", lambda dtype=torch.float32: dtype == torch.float32)
    assert "onednn" in kernels.candidates("float32", "batch")
    assert "onednn" not in kernels.candidates("bfloat16", "batch")
    model = _tiny(torch.bfloat16)
    assert kernels.apply_cpu_kernels(model, "onednn", cache_file=tmp_path / "k.json") == {
        "bfloat16": dict.fromkeys(kernels.REGIMES, "aten")}
    assert _classes(model) == {nn.Linear}


def test_a_win_seen_only_in_a_disturbed_window_is_not_kept(tmp_path):
    """ATen measured slow once (another process took the cores during its rounds): the second window, taken after the
    other regimes, shows it is not, and the best time of both windows decides."""
    if not kernels.onednn_available():
        pytest.skip("oneDNN's fp32 linear is not a candidate here")
    answers = {"batch": [{"aten": 1.3, "onednn": 1.0}, {"aten": 0.9, "onednn": 1.0}],
               "prefill": [{"aten": 1.0, "onednn": 0.8}, {"aten": 1.1, "onednn": 0.8}]}
    asked: list[tuple[str, tuple[str, ...]]] = []

    def measure(fmt, layers, regime, names):
        asked.append((regime, tuple(names)))
        table = answers[regime].pop(0) if regime in answers else {}
        return {name: table.get(name, 1.0 if name == "aten" else 10.0) for name in names}

    entry = kernels.probe("float32", [module for _, module in kernels.cpu_linears(_tiny())], measure)
    assert entry["kernels"]["batch"] == "aten"
    assert {name: entry["timings"]["batch"][name] for name in ("aten", "onednn")} == {"aten": 0.9, "onednn": 1.0}
    assert entry["kernels"]["prefill"] == "onednn"  # a real win survives the second look
    assert [regime for regime, _ in asked] == ["decode", "batch_decode", "batch", "medium", "prefill", "batch",
                                                "prefill"]
    assert asked[-1] == ("prefill", ("aten", "onednn"))
