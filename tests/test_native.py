"""Our own CPU kernels (`biogpt/native.c`): built on this machine, cached, exact to float32 accumulation, and absent
(with the reason said) wherever they cannot be built; the kernel choice then simply does without them."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from biogpt import BioGptForCausalLM, BioGptTokenizer, catalog, kernels, native
from biogpt.quantization import TorchAoConfig
from native_paths import PATHS, build_path


@pytest.fixture
def native_kernels():
    """Skip where the kernels cannot be built. A fixture, not a collection-time mark: the first build must happen
    after the session fixture has pointed the kernel cache (where the library is built) at a temporary folder."""
    if not native.available():
        pytest.skip(f"no native kernels here: {native.unavailable_reason()}")


needs_native = pytest.mark.usefixtures("native_kernels")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A cold start: nothing compiled yet, the kernel cache (and so the build folder) under tmp_path."""
    monkeypatch.setenv("BIOGPT_KERNEL_CACHE", str(tmp_path / "cache" / "cpu-kernels.json"))
    native._library.cache_clear()
    yield tmp_path / "cache"
    native._library.cache_clear()


def _bound(x: torch.Tensor, weight: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 accumulation error (K ulps of the absolute products) plus, in bf16, the output's own rounding."""
    accumulate = x.shape[-1] * 2.0 ** -23 * (x.abs() @ weight.abs().t())
    output = exact.abs() * 2.0 ** -8 if dtype == torch.bfloat16 else 0
    return accumulate + output + 1e-6


# Sizes that exercise every path: one row and several (the chunks of four; multiples of eight in blocks of three
# output rows), output rows not a multiple of the block, input columns not a multiple of the vector width (the
# scalar tail).
SHAPES = [(1, 13, 70), (1, 64, 256), (3, 9, 37), (5, 16, 128), (8, 33, 1000), (16, 20, 100)]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, out_features, in_features", SHAPES)
def test_int8_products_equal_the_dequantized_float64_product(dtype, rows, out_features, in_features):
    generator = torch.Generator().manual_seed(rows * out_features)
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    scales = (torch.rand(out_features, generator=generator) * 0.02).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype)
    dequantized = weight.double() * scales.double()[:, None]
    exact = x.double() @ dequantized.t() + bias.double()
    got = native.int8_linear(x, weight, scales, bias)
    assert got.dtype == dtype and got.shape == (rows, out_features)
    assert bool(((got.double() - exact).abs() <= _bound(x.double(), dequantized, exact, dtype)).all())
    no_bias = native.int8_linear(x, weight, scales, None)
    assert bool(((no_bias.double() - (exact - bias.double())).abs()
                 <= _bound(x.double(), dequantized, exact - bias.double(), dtype)).all())


def _int4_case(rows: int, out_features: int, in_features: int, group_size: int, dtype: torch.dtype, seed: int):
    """x, PyTorch's packed int4 weight, its (groups, out, 2) scales and zeros, and the float64 weight they mean."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_features, in_features), generator=generator, dtype=torch.int32)
    scales = (torch.rand(in_features // group_size, out_features, generator=generator) * 0.1).to(dtype)
    zeros = (torch.randn(in_features // group_size, out_features, generator=generator) * 0.1).to(dtype)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    expand = {"repeats": group_size, "dim": 1}
    weight = ((q.double() - 8) * scales.double().t().repeat_interleave(**expand)
              + zeros.double().t().repeat_interleave(**expand))
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    return x, packed, torch.stack([scales, zeros], dim=2).contiguous(), weight


# Output rows: whole blocks of 64 and the tail block (80 = 64 + 16, 16 = a tail alone); groups of 32 and 64.
INT4_SHAPES = [(1, 64, 128, 32), (1, 80, 256, 64), (3, 16, 64, 32), (5, 144, 128, 64)]


@needs_native
@pytest.mark.skipif(kernels.int4_layout() not in kernels.NATIVE_INT4_LAYOUTS, reason="torch packs int4 in pairs here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, out_features, in_features, group_size", INT4_SHAPES)
def test_int4_products_equal_the_dequantized_float64_product(dtype, rows, out_features, in_features, group_size):
    x, packed, scales_and_zeros, weight = _int4_case(rows, out_features, in_features, group_size, dtype, rows)
    bias = torch.randn(out_features, generator=torch.Generator().manual_seed(9)).to(dtype)
    exact = x.double() @ weight.t() + bias.double()
    got = native.int4_linear(x, packed, scales_and_zeros, bias, group_size, kernels.int4_layout()[0])
    assert got.dtype == dtype and got.shape == (rows, out_features)
    assert bool(((got.double() - exact).abs() <= _bound(x.double(), weight, exact, dtype)).all())


def _pack_split(q: torch.Tensor, block: int) -> torch.Tensor:
    """The "split" int4 layout written by hand from its description (torch packs AVX2's with block 32, AVX-512's
    with 64; this machine can only run one of them): per block of rows, per input column, byte j = row j (low
    nibble) | row j + block/2 (high); the last rows in pairs, row 2j low and 2j + 1 high."""
    out_features, in_features = q.shape
    whole = out_features - out_features % block
    data = []
    for b in range(0, whole, block):
        for k in range(in_features):
            data += [int(q[b + j, k]) | int(q[b + block // 2 + j, k]) << 4 for j in range(block // 2)]
    for k in range(in_features):
        data += [int(q[r, k]) | int(q[r + 1, k]) << 4 for r in range(whole, out_features, 2)]
    return torch.tensor(data, dtype=torch.uint8)


@needs_native
@pytest.mark.parametrize("block", [64, 32])
def test_int4_products_in_both_split_layouts(block):
    generator = torch.Generator().manual_seed(block)
    q = torch.randint(0, 16, (80, 64), generator=generator, dtype=torch.int32)
    packed = _pack_split(q, block)
    assert torch.equal(kernels.unpack_int4_t(packed, 80, 64, (block, True)).int(), q.t())
    scales = torch.rand(2, 80, generator=generator).bfloat16()
    zeros = torch.randn(2, 80, generator=generator).bfloat16()
    weight = (q.double() - 8) * scales.double().t().repeat_interleave(32, 1) + zeros.double().t().repeat_interleave(32, 1)
    x = torch.randn(3, 64, generator=generator).bfloat16()
    exact = x.double() @ weight.t()
    got = native.int4_linear(x, packed, torch.stack([scales, zeros], dim=2).contiguous(), None, 32, block).double()
    assert bool(((got - exact).abs() <= _bound(x.double(), weight, exact, torch.bfloat16)).all())
    with pytest.raises(ValueError, match="blocks of 32 or 64 rows"):
        native.int4_linear(x, packed, torch.stack([scales, zeros], dim=2).contiguous(), None, 32, 16)


@pytest.fixture
def tiles_kernel(native_kernels):
    if not native.tiles_available():
        pytest.skip("the tiled product needs AVX-512 BF16")


# Rows: under a tile of 14, one and a bit, several tiles with a part left; output columns past a multiple of 16 and
# of 32 (a strip alone, masked stores); input columns past a multiple of 32 (the scalar tail of the expansion).
TILE_SHAPES = [(1, 16, 64), (13, 33, 70), (15, 64, 1000), (29, 100, 256), (200, 48, 96)]


@pytest.mark.usefixtures("tiles_kernel")
@pytest.mark.parametrize("rows, out_features, in_features", TILE_SHAPES)
def test_tiled_int8_products_equal_the_float64_product(rows, out_features, in_features):
    """int8 values are exact in bfloat16 and the scale multiplies the sums: only float32 sums and the output round."""
    generator = torch.Generator().manual_seed(rows + out_features)
    x = torch.randn(rows, in_features, generator=generator).bfloat16()
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    scales = (torch.rand(out_features, generator=generator) * 0.02).bfloat16()
    bias = torch.randn(out_features, generator=generator).bfloat16()
    dequantized = weight.double() * scales.double()[:, None]
    for with_bias in (bias, None):
        exact = x.double() @ dequantized.t() + (with_bias.double() if with_bias is not None else 0)
        got = native.tiles_linear(x, native.int8_spec(weight, scales, with_bias))
        assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
        assert bool(((got.double() - exact).abs() <= _bound(x.double(), dequantized, exact, torch.bfloat16)).all())


# Whole blocks of 64 rows (one, two, three), groups of 32 to 256 input columns.
TILE_INT4_SHAPES = [(1, 64, 128, 32), (13, 128, 256, 64), (29, 192, 512, 128), (15, 64, 256, 256)]


@pytest.mark.usefixtures("tiles_kernel")
@pytest.mark.skipif(kernels.int4_layout() not in kernels.NATIVE_INT4_LAYOUTS, reason="torch packs int4 in pairs here")
@pytest.mark.parametrize("rows, out_features, in_features, group_size", TILE_INT4_SHAPES)
def test_tiled_int4_products_equal_the_float64_product(rows, out_features, in_features, group_size):
    """int4 weights are expanded to bfloat16 (each rounded once: at most 2^-9 of it) before the product."""
    x, packed, scales_and_zeros, weight = _int4_case(rows, out_features, in_features, group_size, torch.bfloat16,
                                                     rows + group_size)
    bias = torch.randn(out_features, generator=torch.Generator().manual_seed(5)).bfloat16()
    exact = x.double() @ weight.t() + bias.double()
    spec = native.int4_spec(packed, scales_and_zeros, bias, in_features, group_size, kernels.int4_layout()[0])
    got = native.tiles_linear(x, spec).double()
    rounded_weights = (x.double().abs() @ weight.abs().t()) * 2.0 ** -9
    assert bool(((got - exact).abs() <= _bound(x.double(), weight, exact, torch.bfloat16) + rounded_weights).all())


@pytest.mark.usefixtures("tiles_kernel")
def test_the_tiled_product_declines_what_it_does_not_compute():
    """An int4 tail block (80 rows = 64 + 16) and an odd number of input columns: None, the caller expands instead."""
    x, packed, scales_and_zeros, _ = _int4_case(3, 80, 128, 64, torch.bfloat16, 1)
    assert native.tiles_linear(x, native.int4_spec(packed, scales_and_zeros, None, 128, 64,
                                                   kernels.int4_layout()[0])) is None
    odd, scales = torch.ones(4, 7, dtype=torch.int8), torch.ones(4).bfloat16()
    assert native.tiles_linear(torch.ones(2, 7).bfloat16(), native.int8_spec(odd, scales, None)) is None


@needs_native
def test_forcing_tiles_gives_it_to_many_row_products_of_low_bit_weights_only(tmp_path):
    layer = kernels.Int8Linear.from_float(torch.randn(64, 64), None, torch.bfloat16)
    plan = kernels.plan_kernels([layer], "tiles", tmp_path / "k.json")
    expected = "tiles" if native.tiles_available() else "aten"
    assert plan == {"int8-bfloat16": {"decode": "aten", "batch_decode": "aten", "batch": expected, "medium": expected,
                                      "prefill": expected}}
    assert kernels.plan_kernels([layer.float()], "tiles", tmp_path / "k.json")["int8-float32"]["prefill"] == "aten"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_code_path_computes_the_same_products(path, tmp_path):
    library = build_path(path, tmp_path)
    generator = torch.Generator().manual_seed(3)
    for rows, out_features, in_features in SHAPES:
        x = torch.randn(rows, in_features, generator=generator).bfloat16()
        weight = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
        scales = torch.rand(out_features, generator=generator).bfloat16()
        exact = x.double() @ (weight.double() * scales.double()[:, None]).t()
        got = native._int8(library, x, weight, scales, None).double()
        bound = _bound(x.double(), weight.double() * scales.double()[:, None], exact, torch.bfloat16)
        assert bool(((got - exact).abs() <= bound).all()), (path, rows, out_features, in_features)
        for dtype in (torch.float32, torch.bfloat16):  # the dequant kernel's W: each q * scale rounded once
            dtype_scales = scales.to(dtype)
            assert torch.equal(native._int8_dequantized(library, weight, dtype_scales), weight * dtype_scales[:, None])
        tiled = native._tiles(library, x, native.int8_spec(weight, scales, None))
        if "bf16" in path and in_features % 2 == 0:
            assert bool(((tiled.double() - exact).abs() <= bound).all()), (path, rows, out_features, in_features)
        else:  # no BF16 pairs, or an odd number of input columns: the caller takes the dequant kernel
            assert tiled is None
        got16 = native._dense(library, x, weight.bfloat16(), None).double()
        exact16 = x.double() @ weight.double().t()
        assert bool(((got16 - exact16).abs() <= _bound(x.double(), weight.double(), exact16, torch.bfloat16)).all())
    if kernels.int4_layout() in kernels.NATIVE_INT4_LAYOUTS:
        for rows, out_features, in_features, group_size in INT4_SHAPES:
            x, packed, scales_and_zeros, weight = _int4_case(rows, out_features, in_features, group_size,
                                                             torch.bfloat16, out_features)
            exact = x.double() @ weight.t()
            got = native._int4(library, x, packed, scales_and_zeros, None, group_size,
                               kernels.int4_layout()[0]).double()
            assert bool(((got - exact).abs() <= _bound(x.double(), weight, exact, torch.bfloat16)).all()), (
                path, rows, out_features)
            # the dequant kernel's W^T: each value (q - 8) * scale + zero rounded once to bfloat16
            unpacked = native._int4_dequantized_t(library, packed, scales_and_zeros, in_features, group_size,
                                                  kernels.int4_layout()[0])
            assert unpacked.dtype == torch.bfloat16 and unpacked.shape == (in_features, out_features)
            assert bool(((unpacked.double() - weight.t()).abs() <= weight.t().abs() * 2 ** -8).all()), path


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, out_features, in_features", SHAPES)
def test_dense_products_equal_the_float64_product(dtype, rows, out_features, in_features):
    generator = torch.Generator().manual_seed(rows + in_features)
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    bias = torch.randn(out_features, generator=generator).to(dtype)
    exact = x.double() @ weight.double().t() + bias.double()
    got = native.dense_linear(x, weight, bias)
    assert got.dtype == dtype and got.shape == (rows, out_features)
    assert bool(((got.double() - exact).abs() <= _bound(x.double(), weight.double(), exact, dtype)).all())


@needs_native
def test_the_library_is_built_once_into_the_cache_folder_and_reused(fresh_build):
    assert native.available() and native.unavailable_reason() is None
    built = list(fresh_build.glob("biogpt-native-*.so"))
    assert len(built) == 1 and not list(fresh_build.glob(".*.tmp"))  # renamed into place, nothing half-written
    stamp = built[0].stat().st_mtime_ns
    native._library.cache_clear()
    assert native.available() and built[0].stat().st_mtime_ns == stamp  # loaded again, not rebuilt


def test_without_a_compiler_there_is_no_native_candidate_and_the_reason_is_said(fresh_build, monkeypatch, caplog):
    monkeypatch.setattr(native, "COMPILERS", ("no-such-compiler-here",))
    with caplog.at_level("INFO", logger="biogpt.native"):
        assert native.unavailable_reason() == "no C compiler (no-such-compiler-here) on this machine"
    assert caplog.messages == ["No native CPU kernels (PyTorch's are used): no C compiler (no-such-compiler-here) "
                               "on this machine"]
    assert not native.available()
    assert "native" not in kernels.candidates("bfloat16", "decode")
    assert "native" not in kernels.candidates("int8-bfloat16", "decode")
    plan = kernels.plan_kernels([torch.nn.Linear(8, 8).bfloat16()], "native", fresh_build / "k.json")
    assert plan == {"bfloat16": dict.fromkeys(kernels.REGIMES, "aten")}  # forced, but it cannot run here


def test_a_failing_compiler_leaves_no_file_behind(fresh_build, monkeypatch, tmp_path):
    broken = tmp_path / "bin" / "cc"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken-cc 1.0; exit 0; fi\n"
                      "echo 'native.c:1: error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(native, "COMPILERS", (str(broken),))
    reason = native.unavailable_reason()
    assert reason.startswith("cc -O3 -march=native") and reason.endswith("native.c:1: error: this compiler is broken")
    assert not native.available()
    assert not fresh_build.exists() or not any(fresh_build.iterdir())


@needs_native
def test_an_unwritable_cache_folder_builds_in_the_temporary_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"  # the cache "folder" is a file: no one, root included, can create it
    blocker.write_text("")
    monkeypatch.setenv("BIOGPT_KERNEL_CACHE", str(blocker / "cpu-kernels.json"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    native._library.cache_clear()
    try:
        assert native.available()
        assert len(list((tmp_path / "tmp").glob("biogpt-*/biogpt-native-*.so"))) == 1
    finally:
        native._library.cache_clear()


@needs_native
def test_forcing_native_gives_it_to_one_and_few_row_products_only(tmp_path):
    plan = kernels.plan_kernels([torch.nn.Linear(8, 8).bfloat16()], "native", tmp_path / "k.json")
    assert plan == {"bfloat16": {"decode": "native", "batch_decode": "native", "batch": "native", "medium": "native",
                                 "prefill": "aten"}}
    plan = kernels.plan_kernels([torch.nn.Linear(8, 8)], "native", tmp_path / "k.json")
    assert plan == {"float32": {"decode": "native", "batch_decode": "native", "batch": "native", "medium": "native",
                                "prefill": "aten"}}


PROMPTS = ["Aspirin is used to treat", "The patient presented with acute"]


@needs_native
@pytest.mark.parametrize("dtype, config", [
    (torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, TorchAoConfig("int8_weight_only")),
    pytest.param(torch.bfloat16, TorchAoConfig("int4_weight_only", group_size=32), marks=pytest.mark.skipif(
        kernels.int4_layout() not in kernels.NATIVE_INT4_LAYOUTS, reason="torch packs int4 in pairs here"))],
    ids=["fp32", "bf16", "int8", "int4"])
def test_greedy_output_of_the_demo_lm_is_plain_pytorchs(dtype, config):
    """Products and whole decode steps (`kernels.NativeDecoder`) native: the same text as plain PyTorch."""
    path = catalog.demo_path("causal-lm")
    tokenizer = BioGptTokenizer.from_pretrained(path)
    reference = BioGptForCausalLM.from_pretrained(path, torch_dtype=dtype, quantization_config=config,
                                                  cpu_kernels="aten")
    model = BioGptForCausalLM.from_pretrained(path, torch_dtype=dtype, quantization_config=config,
                                              cpu_kernels="native")
    assert {plan["decode"] for plan in model.cpu_kernel_plan.values()} == {"native"}
    assert model.biogpt.native_decoder is not None
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference.generate(ids, max_new_tokens=16, do_sample=False)
        assert torch.equal(model.generate(ids, max_new_tokens=16, do_sample=False), expected), prompt


@pytest.mark.usefixtures("tiles_kernel")
@pytest.mark.parametrize("config", [
    TorchAoConfig("int8_weight_only"),
    pytest.param(TorchAoConfig("int4_weight_only", group_size=32), marks=pytest.mark.skipif(
        kernels.int4_layout() not in kernels.NATIVE_INT4_LAYOUTS, reason="torch packs int4 in pairs here"))],
    ids=["int8", "int4"])
def test_prompts_through_the_tiled_product_continue_as_plain_pytorch(config):
    """Short prompts (the batch regime) and long ones (prefill) through `tiles`: the same text as plain PyTorch."""
    path = catalog.demo_path("causal-lm")
    tokenizer = BioGptTokenizer.from_pretrained(path)
    reference = BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, quantization_config=config,
                                                  cpu_kernels="aten")
    model = BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, quantization_config=config,
                                              cpu_kernels="tiles")
    plan = next(iter(model.cpu_kernel_plan.values()))
    assert (plan["batch"], plan["prefill"]) == ("tiles", "tiles")
    long_prompt = " ".join(PROMPTS * 12)
    for prompt in (*PROMPTS, long_prompt):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference.generate(ids, max_new_tokens=8, do_sample=False)
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), expected), ids.shape


def _threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    return previous


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_results_do_not_depend_on_the_number_of_threads(dtype):
    """Each output row is summed by one thread in one order: 1, 2, 3 or 5 threads give the same bits (one row of x
    too, whose rows each thread reads in two streams: which rows pair up, and which is left alone, depends on the
    thread's share)."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, 300, generator=generator).to(dtype)
    weight = torch.randn(77, 300, generator=generator).to(dtype)
    quantized = torch.randint(-127, 128, (77, 300), generator=generator, dtype=torch.int8)
    scales = torch.rand(77, generator=generator).to(dtype)
    for rows in (x, x[:1]):
        results = []
        for count in (1, 2, 3, 5):
            previous = _threads(count)
            try:
                results.append((native.dense_linear(rows, weight, None),
                                native.int8_linear(rows, quantized, scales, None)))
            finally:
                torch.set_num_threads(previous)
        assert all(torch.equal(a, results[0][0]) and torch.equal(b, results[0][1]) for a, b in results)


@needs_native
def test_concurrent_callers_get_exactly_their_own_results():
    """The app calls the kernels from several threads at once (the batching engine, the beam worker): each call's
    result is bit-for-bit the one it gets alone (each output row is summed in one fixed order, whatever the team)."""
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(256, 512, generator=generator).bfloat16()
    inputs = [torch.randn(1 + i % 3, 512, generator=generator).bfloat16() for i in range(12)]
    alone = [native.dense_linear(x, weight, None) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda x: native.dense_linear(x, weight, None), inputs * 5))
    assert all(torch.equal(got, alone[i % len(inputs)]) for i, got in enumerate(together))


@needs_native
def test_no_rows_give_an_empty_result():
    """An empty batch reaches the kernels too (a batch regime product with 0 rows)."""
    x = torch.zeros(0, 64).bfloat16()
    assert native.dense_linear(x, torch.ones(8, 64).bfloat16(), None).shape == (0, 8)
    assert native.int8_linear(x, torch.ones(8, 64, dtype=torch.int8), torch.ones(8).bfloat16(), None).shape == (0, 8)


@needs_native
def test_a_non_contiguous_row_is_computed_like_a_contiguous_one():
    layer = torch.nn.Linear(64, 48).bfloat16()
    layer.__class__ = kernels.CpuLinear
    layer.kernels = dict.fromkeys(kernels.REGIMES, "native")
    x = torch.randn(3, 7, 64).bfloat16()[:, -1:]  # the last position of a batch, as logits_to_keep makes
    with torch.inference_mode():
        assert torch.equal(layer(x), layer(x.contiguous()))
        torch.testing.assert_close(layer(x).float(), F.linear(x.float(), layer.weight.float(), layer.bias.float()),
                                   rtol=2e-2, atol=2e-2)
