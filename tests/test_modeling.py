"""The model against transformers (the reference oracle) on random tiny checkpoints in the Hub layout."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import biogpt
from biogpt import BioGptConfig, CheckpointError, ConfigError, DeviceError

transformers = pytest.importorskip("transformers")

CLASSES = ["BioGptModel", "BioGptForCausalLM", "BioGptForTokenClassification", "BioGptForSequenceClassification"]
CONFIGS = [
    dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    dict(vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=64,
         scale_embedding=False, hidden_act="gelu_new"),
    dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
         hidden_act="relu"),
]


def reference(cls_name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = transformers.BioGptConfig(max_position_embeddings=64, num_labels=3, **overrides)
    return getattr(transformers, cls_name)(cfg).eval()


def padded_batch(vocab: int, seed: int = 1):
    """Three rows of lengths 9, 6 and 3, right-padded with pad id 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    ids[:, 0] = 2  # BioGPT's </s> prefix
    mask = torch.ones_like(ids)
    for row, length in ((1, 6), (2, 3)):
        mask[row, length:] = 0
        ids[row, length:] = 1
    return ids, mask


def real_positions_close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, tol: float) -> float:
    if a.dim() == 2:  # pooled logits
        return (a - b).abs().max().item()
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


@pytest.mark.parametrize("cfg", CONFIGS, ids=["base", "noscale-gelunew", "one-head-relu"])
@pytest.mark.parametrize("cls_name", CLASSES)
def test_logits_match_transformers_both_ways(tmp_path, cfg, cls_name):
    ref = reference(cls_name, **cfg)
    ref.save_pretrained(tmp_path / "ref")
    ours = getattr(biogpt, cls_name).from_pretrained(tmp_path / "ref")
    ids, mask = padded_batch(cfg["vocab_size"])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask)[0]
        got = ours(input_ids=ids, attention_mask=mask)[0]
    assert got.shape == expected.shape
    assert real_positions_close(got, expected, mask, 1e-5) <= 1e-5

    ours.save_pretrained(tmp_path / "ours")
    back = getattr(transformers, cls_name).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask)[0]
    assert real_positions_close(again, expected, mask, 1e-5) <= 1e-5


def test_saved_files_are_what_transformers_writes(tmp_path):
    ours = biogpt.BioGptForCausalLM.from_config(BioGptConfig(**CONFIGS[0]))
    ours.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "output_projection.weight" not in keys  # tied to the embeddings, omitted as transformers does
    assert {"biogpt.embed_tokens.weight", "biogpt.embed_positions.weight", "biogpt.layer_norm.weight",
            "biogpt.layers.1.self_attn.q_proj.weight", "biogpt.layers.0.fc2.bias",
            "biogpt.layers.0.final_layer_norm.weight", "biogpt.layers.0.self_attn_layer_norm.bias"} <= keys
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert tuple(f.get_tensor("biogpt.embed_positions.weight").shape) == (1024 + 2, 32)  # the +2 offset rows
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "biogpt" and saved["architectures"] == ["BioGptForCausalLM"]


def test_losses_match_transformers(tmp_path):
    ids, mask = padded_batch(99)
    cases = {
        "BioGptForCausalLM": ids.masked_fill(mask == 0, -100),
        "BioGptForTokenClassification": torch.randint(0, 3, ids.shape),
        "BioGptForSequenceClassification": torch.tensor([0, 2, 1]),
    }
    for name, labels in cases.items():
        ref = reference(name, **CONFIGS[0])
        ref.save_pretrained(tmp_path / name)
        ours = getattr(biogpt, name).from_pretrained(tmp_path / name)
        with torch.no_grad():
            a = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
            b = ours(input_ids=ids, attention_mask=mask, labels=labels).loss
        assert abs(a.item() - b.item()) <= 1e-5, name


@pytest.mark.parametrize("problem,labels", [
    ("multi_label_classification", torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 0]])),
    ("regression", torch.tensor([[0.5, 1.0, -1.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])),
])
def test_sequence_losses_by_problem_type(tmp_path, problem, labels):
    ref = reference("BioGptForSequenceClassification", problem_type=problem, **CONFIGS[0])
    ref.save_pretrained(tmp_path)
    ours = biogpt.BioGptForSequenceClassification.from_pretrained(tmp_path)
    assert ours.config.problem_type == problem
    ids, mask = padded_batch(99)
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
        b = ours(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(a.item() - b.item()) <= 1e-5


def test_hidden_states_and_attentions_match_on_eager(tmp_path):
    ref = reference("BioGptModel", **CONFIGS[0])
    ref.config._attn_implementation = "eager"
    ref.save_pretrained(tmp_path)
    ours = biogpt.BioGptModel.from_pretrained(tmp_path, attn_implementation="eager")
    ids = torch.randint(3, 99, (2, 7))
    with torch.no_grad():
        a = ref(input_ids=ids, output_hidden_states=True, output_attentions=True)
        b = ours(input_ids=ids, output_hidden_states=True, output_attentions=True)
    assert len(a.hidden_states) == len(b.hidden_states) == 3
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert (x - y).abs().max() <= 1e-5
    for x, y in zip(a.attentions, b.attentions):
        assert (x - y).abs().max() <= 1e-6


def test_left_padding_gives_the_logits_of_unpadded_rows():
    torch.manual_seed(0)
    model = biogpt.BioGptForCausalLM.from_config(BioGptConfig(**CONFIGS[0], max_position_embeddings=32)).eval()
    rows = [torch.randint(3, 99, (n,)) for n in (8, 5, 2)]
    batch = torch.ones(3, 8, dtype=torch.long)
    mask = torch.zeros(3, 8, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, 8 - len(row):] = row
        mask[i, 8 - len(row):] = 1
    for backend in ("sdpa", "eager"):
        model.set_attn_implementation(backend)
        with torch.no_grad():
            padded = model(input_ids=batch, attention_mask=mask).logits
            for i, row in enumerate(rows):
                alone = model(input_ids=row[None]).logits[0]
                assert (padded[i, 8 - len(row):] - alone).abs().max() <= 1e-5, (backend, i)
            assert torch.isfinite(padded).all()  # pad queries must not turn into NaN


def test_eager_and_sdpa_agree_and_head_mask_zeroes_a_head():
    torch.manual_seed(0)
    config = BioGptConfig(**CONFIGS[0], max_position_embeddings=32)
    model = biogpt.BioGptModel.from_config(config).eval()
    ids, mask = padded_batch(99)
    with torch.no_grad():
        sdpa = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (sdpa - eager)[mask.bool()].abs().max() <= 1e-5

        # Masking head 2 of layer 1 must equal removing that head's input columns of out_proj (hand derivation:
        # the head's attended values reach the output only through those columns).
        head_mask = torch.ones(2, 4)
        head_mask[1, 2] = 0.0
        masked = model(input_ids=ids, attention_mask=mask, head_mask=head_mask).last_hidden_state
        out_proj = model.layers[1].self_attn.out_proj
        saved = out_proj.weight.clone()
        out_proj.weight[:, 16:24] = 0.0
        by_hand = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out_proj.weight.copy_(saved)
        assert (masked - by_hand).abs().max() <= 1e-5
        assert (masked - eager).abs().max() > 1e-3  # the mask really changed something

        model.set_attn_implementation("sdpa")
        with pytest.raises(ConfigError, match="head_mask needs attn_implementation='eager'"):
            model(input_ids=ids, head_mask=head_mask)


def test_flash_attention_unavailable_is_a_clear_error(tmp_path):
    ref = reference("BioGptForCausalLM", **CONFIGS[0])
    ref.save_pretrained(tmp_path)
    with pytest.raises(DeviceError, match="flash_attention_2 needs"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_incremental_decoding_with_the_cache_equals_the_full_forward():
    torch.manual_seed(0)
    model = biogpt.BioGptForCausalLM.from_config(BioGptConfig(**CONFIGS[1], max_position_embeddings=40)).eval()
    ids = torch.randint(3, 120, (2, 12))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :5], use_cache=True)
        cache = out.past_key_values
        steps = [out.logits]
        for t in range(5, 12):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    assert cache.length == 12
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_preallocated_cache_is_written_in_place():
    torch.manual_seed(0)
    model = biogpt.BioGptForCausalLM.from_config(BioGptConfig(**CONFIGS[0], max_position_embeddings=40)).eval()
    cache = biogpt.KVCache.for_model(model, batch_size=1, capacity=20)
    buffers = [k.data_ptr() for k in cache.keys]
    with torch.no_grad():
        model(input_ids=torch.randint(3, 99, (1, 6)), past_key_values=cache)
        for _ in range(10):
            model(input_ids=torch.randint(3, 99, (1, 1)), past_key_values=cache)
    assert cache.length == 16 and [k.data_ptr() for k in cache.keys] == buffers


def test_too_long_input_is_a_clear_error_not_an_index_error():
    model = biogpt.BioGptModel.from_config(BioGptConfig(**CONFIGS[0], max_position_embeddings=8))
    with pytest.raises(ValueError, match="only 8 positions"):
        model(input_ids=torch.randint(3, 99, (1, 9)))


# -- configuration ----------------------------------------------------------------------------------------------
def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"):
        BioGptConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="hidden_dropout_prob"):
        BioGptConfig(hidden_dropout_prob=1.5)
    with pytest.raises(ConfigError, match="hidden_act"):
        BioGptConfig(hidden_act="gelu_typo")


def test_config_round_trip_keeps_unknown_fields_and_labels(tmp_path):
    data = {"model_type": "biogpt", "hidden_size": 32, "num_attention_heads": 4, "my_field": [1, 2],
            "id2label": {"0": "O", "1": "B-Chemical", "2": "I-Chemical"}, "problem_type": None,
            "torch_dtype": "float16", "transformers_version": "4.27.0.dev0"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = BioGptConfig.from_pretrained(tmp_path)
    assert config.num_labels == 3 and config.label2id == {"O": 0, "B-Chemical": 1, "I-Chemical": 2}
    config.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["my_field"] == [1, 2] and saved["transformers_version"] == "4.27.0.dev0"
    assert saved["id2label"] == data["id2label"] and saved["torch_dtype"] == "float16"
    ref = transformers.BioGptConfig.from_pretrained(tmp_path / "out")
    assert ref.id2label == {0: "O", 1: "B-Chemical", 2: "I-Chemical"} and ref.hidden_size == 32


def test_other_model_types_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'.*BioGPT checkpoints only"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path)


# -- loading ----------------------------------------------------------------------------------------------------
@pytest.fixture
def ref_lm(tmp_path):
    ref = reference("BioGptForCausalLM", **CONFIGS[0])
    ref.save_pretrained(tmp_path / "ref")
    return ref, tmp_path / "ref"


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_sharded_safetensors_and_single_file(tmp_path, ref_lm):
    ref, path = ref_lm
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids = torch.randint(3, 99, (1, 6))
    expected = _logits(ref, ids)
    sharded = biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "sharded")
    single_file = biogpt.BioGptForCausalLM.from_pretrained(path / "model.safetensors")
    assert (_logits(sharded, ids) - expected).abs().max() <= 1e-5
    assert (_logits(single_file, ids) - expected).abs().max() <= 1e-5


def test_our_sharded_save_loads_in_transformers(tmp_path, ref_lm):
    ref, path = ref_lm
    ours = biogpt.BioGptForCausalLM.from_pretrained(path)
    ours.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert len(list((tmp_path / "shards").glob("model-*-of-*.safetensors"))) > 1
    back = transformers.BioGptForCausalLM.from_pretrained(tmp_path / "shards").eval()
    ids = torch.randint(3, 99, (1, 6))
    assert (_logits(back, ids) - _logits(ref, ids)).abs().max() <= 1e-5


def test_weights_only_pickle_loads_and_a_malicious_one_is_refused(tmp_path, ref_lm):
    ref, path = ref_lm
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((path / "config.json").read_text())
    torch.save(ref.state_dict(), bin_dir / "pytorch_model.bin")
    ids = torch.randint(3, 99, (1, 6))
    loaded = biogpt.BioGptForCausalLM.from_pretrained(bin_dir)
    assert (_logits(loaded, ids) - _logits(ref, ids)).abs().max() <= 1e-5

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"biogpt.embed_tokens.weight": Exploit()}, bin_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"Refusing to load pytorch_model.bin: .*it imports (builtins\.)?print\)\. .*"
                                              "arbitrary code"):
        biogpt.BioGptForCausalLM.from_pretrained(bin_dir)
    with open(bin_dir / "pytorch_model.bin", "wb") as f:  # the legacy (non-zip) pickle format too
        pickle.dump({"biogpt.embed_tokens.weight": Exploit()}, f)
    with pytest.raises(CheckpointError, match="Refusing to load pytorch_model.bin.*arbitrary code"):
        biogpt.BioGptForCausalLM.from_pretrained(bin_dir)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_a_checkpoint_error(ref_lm, damage):
    _, path = ref_lm
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        biogpt.BioGptForCausalLM.from_pretrained(path)


def test_missing_files_shape_mismatch_and_unknown_ids(tmp_path, ref_lm):
    _, path = ref_lm
    with pytest.raises(CheckpointError, match="config.json is missing from"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No weights found"):
        biogpt.BioGptForCausalLM.from_pretrained(path)

    ref = reference("BioGptForCausalLM", **CONFIGS[0])
    ref.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["intermediate_size"] = 40
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"Shape mismatch for biogpt.layers.0.fc1.bias: the checkpoint has "
                                              r"\(37,\) but the config makes \(40,\)"):
        biogpt.BioGptForCausalLM.from_pretrained(tmp_path / "m")


def test_hub_ids_offline_give_an_actionable_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        biogpt.BioGptForCausalLM.from_pretrained("someone/not-cached-biogpt", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="neither an existing local path nor a valid"):
        biogpt.BioGptForCausalLM.from_pretrained("bad id with spaces")


def test_dtype_and_device_options(ref_lm):
    _, path = ref_lm
    assert biogpt.BioGptForCausalLM.from_pretrained(path).dtype == torch.float32
    bf16 = biogpt.BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.output_projection.weight.dtype == torch.bfloat16
    assert biogpt.BioGptForCausalLM.from_pretrained(path, torch_dtype="auto").dtype == torch.float32
    with pytest.warns(UserWarning, match="float16 is slow or unsupported on the CPU"):
        fp16 = biogpt.BioGptForCausalLM.from_pretrained(path, torch_dtype=torch.float16, device_map="auto")
    assert fp16.dtype == torch.float32 and fp16.device.type == "cpu"
    assert biogpt.BioGptForCausalLM.from_pretrained(path, device="cpu").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA was requested .* no usable CUDA GPU"):
            biogpt.BioGptForCausalLM.from_pretrained(path, device_map="cuda:1")
        with pytest.raises(DeviceError, match="CUDA was requested"):
            biogpt.BioGptForCausalLM.from_pretrained(path, device=0)


def test_base_checkpoint_into_a_head_model_initialises_the_head(ref_lm):
    _, path = ref_lm
    with pytest.warns(UserWarning, match="classifier.weight, classifier.bias newly initialised"):
        model = biogpt.BioGptForTokenClassification.from_pretrained(path, num_labels=5)
    assert model.classifier.weight.shape == (5, 32) and model.classifier.weight.std() > 0
    assert model.config.num_labels == 5


def test_loading_does_not_initialise_random_weights_first(monkeypatch, ref_lm):
    _, path = ref_lm
    calls = []
    monkeypatch.setattr(torch.nn.init, "normal_", lambda tensor, *a, **k: calls.append(tensor.device.type))
    biogpt.BioGptForCausalLM.from_pretrained(path)
    assert set(calls) <= {"meta"}  # module constructors may "initialise" meta tensors: no memory, no work


def test_use_safetensors_chooses_the_weights_format(tmp_path, ref_lm):
    """As in transformers: use_safetensors=False loads pytorch_model.bin, True refuses a pickle-only checkpoint."""
    ref, path = ref_lm
    both = tmp_path / "both"
    both.mkdir()
    (both / "config.json").write_text((path / "config.json").read_text())
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    torch.save({k: v * 0 for k, v in state.items()}, both / "pytorch_model.bin")  # distinguishable weights
    (both / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    ids = torch.randint(3, 99, (1, 6))
    from_safe = biogpt.BioGptForCausalLM.from_pretrained(both)
    from_pickle = biogpt.BioGptForCausalLM.from_pretrained(both, use_safetensors=False)
    assert (_logits(from_safe, ids) - _logits(ref, ids)).abs().max() <= 1e-5
    assert _logits(from_pickle, ids).abs().max() == 0.0  # the zeroed pickle was the one loaded
    (both / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"expected model.safetensors or model.safetensors.index.json "
                                              r"\(use_safetensors=True\)"):
        biogpt.BioGptForCausalLM.from_pretrained(both, use_safetensors=True)
    assert from_safe.hf_device_map == {"": "cpu"}
