"""Converting Microsoft's fine-tuned fairseq BioGPT checkpoints (biogpt.fairseq) and running them as fairseq did.

The references are independent of our code: a forward pass written here from fairseq's math, transformers'
BioGptForCausalLM (loading our output, and loading the fairseq weights through transformers' own key rename), a
fairseq-style dictionary rebuilt here, and fairseq itself (`fairseq-fixed`, when installed): a model built and
saved by its trainer, and its SequenceGenerator.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fairseq_fixtures as ff
from biogpt.errors import CheckpointError
from biogpt.fairseq import (convert_fairseq_checkpoint, convert_into_cache, converted_cache_path, detect_task,
                            is_fairseq_checkpoint_dir, load_fairseq_checkpoint)
from biogpt.modeling import BioGptForCausalLM
from biogpt.tasks.evaluate import convert_main
from biogpt.tasks.prompted import PromptSettings, build_input_ids, generate_answers
from biogpt.tokenization import BioGptTokenizer

transformers = pytest.importorskip("transformers")
ROWS_3 = 4 + len(ff.DICT_LINES) + 3  # 27, the spec's V for 3 prompts


# ----------------------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------------------
def fairseq_dictionary(lines: list[str], prompt_symbols: list[str]) -> dict[str, int]:
    """fairseq's Dictionary: <s> <pad> </s> <unk>, dict.txt lines in order, then add_symbol for each prompt word."""
    symbols = ["<s>", "<pad>", "</s>", "<unk>"]
    index = {s: i for i, s in enumerate(symbols)}
    for line in lines:
        index.setdefault(line, len(index))
    for symbol in prompt_symbols:
        index.setdefault(symbol, len(index))
    return index


def reference_logits(state: dict[str, torch.Tensor], heads: int, tokens: torch.Tensor) -> torch.Tensor:
    """fairseq's TransformerDecoder (pre-LN, learned positions, shared or separate projection) on left-padded rows."""
    pad = 1
    mask = tokens.ne(pad)
    positions = torch.cumsum(mask, dim=1) * mask + pad  # fairseq.utils.make_positions
    embed = state["decoder.embed_tokens.weight"]
    hidden = embed.shape[1]
    x = math.sqrt(hidden) * embed[tokens] + state["decoder.embed_positions.weight"][positions]
    batch, length, _ = x.shape
    head_dim = hidden // heads
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None, None] & mask[:, None, None, :]
    layers = len({k.split(".")[2] for k in state if k.startswith("decoder.layers.")})

    def linear(name: str, value: torch.Tensor) -> torch.Tensor:
        return F.linear(value, state[name + ".weight"], state[name + ".bias"])

    def layer_norm(name: str, value: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(value, (hidden,), state[name + ".weight"], state[name + ".bias"])  # eps 1e-5

    def split(value: torch.Tensor) -> torch.Tensor:
        return value.view(batch, length, heads, head_dim).transpose(1, 2)

    for n in range(layers):
        p = f"decoder.layers.{n}."
        h = layer_norm(p + "self_attn_layer_norm", x)
        q = split(linear(p + "self_attn.q_proj", h) * head_dim ** -0.5)
        k, v = split(linear(p + "self_attn.k_proj", h)), split(linear(p + "self_attn.v_proj", h))
        scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1))  # a padding query sees no key: zeros, not NaN
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, hidden)
        x = x + linear(p + "self_attn.out_proj", attended)
        x = x + linear(p + "fc2", F.gelu(linear(p + "fc1", layer_norm(p + "final_layer_norm", x))))
    return layer_norm("decoder.layer_norm", x) @ state["decoder.output_projection.weight"].T


def reference_greedy(state: dict[str, torch.Tensor], heads: int, prefix: list[int], max_len: int) -> list[int]:
    """fairseq's beam-1 search: argmax with pad banned, </s> forced after max_len tokens following the first."""
    tokens = list(prefix)
    while True:
        if len(tokens) - 1 >= max_len:
            return tokens[len(prefix):]
        logits = reference_logits(state, heads, torch.tensor([tokens]))[0, -1]
        logits[1] = float("-inf")
        token = int(logits.argmax())
        if token == 2:
            return tokens[len(prefix):]
        tokens.append(token)


def h_rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' conversion rule: drop decoder.version; *output_projection.weight loses 'decoder.'; else
    'decoder' -> 'biogpt'."""
    out = {}
    for key, value in state.items():
        if key == "decoder.version":
            continue
        renamed = key.removeprefix("decoder.") if key.endswith("output_projection.weight") else \
            key.replace("decoder", "biogpt", 1)
        out[renamed] = value
    return out


def transformers_from_fairseq(state: dict[str, torch.Tensor], heads: int, tied: bool):
    """transformers' BioGptForCausalLM from hyperparameters known to the test and the H-renamed weights."""
    rows, hidden = state["decoder.embed_tokens.weight"].shape
    config = transformers.BioGptConfig(
        vocab_size=rows, hidden_size=hidden, num_hidden_layers=ff.LAYERS, num_attention_heads=heads,
        intermediate_size=ff.FFN, max_position_embeddings=ff.MAX_POSITIONS, hidden_act="gelu",
        scale_embedding=True, tie_word_embeddings=tied, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = transformers.BioGptForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(h_rename(state), strict=False)
    assert not unexpected
    assert set(missing) <= ({"output_projection.weight"} if tied else set())
    return model


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[1] * (width - len(r)) + r for r in rows])
    return ids, ids.ne(1).long()


# ----------------------------------------------------------------------------------------------------------------
# Layout, vocabulary, config
# ----------------------------------------------------------------------------------------------------------------
def test_converted_directory_layout_vocab_and_config(tmp_path):
    src = ff.write_checkpoint_dir(tmp_path / "RE-BC5CDR", prompts=3)
    out = convert_fairseq_checkpoint(src, tmp_path / "out")

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "merges.txt", "model.safetensors",
                                                     "tokenizer_config.json", "vocab.json"]
    assert (out / "merges.txt").read_bytes() == (src / "bpecodes").read_bytes()
    vocab = json.loads((out / "vocab.json").read_text())
    symbols = fairseq_dictionary(ff.DICT_LINES, ["learned1", "learned2", "learned3"])
    expected = {}  # transformers' rewrite_dict_keys: specials kept, "X@@" -> "X", any other "X" -> "X</w>"
    for symbol, index in symbols.items():
        if symbol in ("<s>", "<pad>", "</s>", "<unk>"):
            expected[symbol] = index
        elif symbol.endswith("@@"):
            expected[symbol[:-2]] = index
        else:
            expected[symbol + "</w>"] = index
    assert vocab == expected
    assert [vocab[f"learned{k}</w>"] for k in (1, 2, 3)] == [24, 25, 26]
    assert vocab["...</w>"] == ff.ELLIPSIS_ID == 18

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) == ROWS_3
    assert config["max_position_embeddings"] + 2 == ff.MAX_POSITIONS + 2
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"]) == (16, 2, 2, 32)
    assert config["tie_word_embeddings"] is True and config["scale_embedding"] is True
    assert config["hidden_act"] == "gelu" and config["pad_token_id"] == 1 and config["eos_token_id"] == 2
    prompt = config["biogpt_prompt"]
    assert prompt["task"] == "bc5cdr" and prompt["learned_prompt"] == 3
    assert prompt["prompt_token_ids"] == [24, 25, 26]
    assert prompt["prompt_tokens"] == ["learned1</w>", "learned2</w>", "learned3</w>"]
    assert prompt["max_source_positions"] == 12 and prompt["source_checkpoint"] == "checkpoint_avg.pt"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == ff.MAX_POSITIONS

    # Our tokenizer and transformers' read the same ids from it.
    ours = BioGptTokenizer.from_pretrained(out)
    theirs = transformers.BioGptTokenizer.from_pretrained(out)
    text = "the of and in to is a ... the"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"] == [2, 5, 6, 7, 8, 9, 10, 11, 18, 5]


def test_manual_prompt_words_reuse_dictionary_ids_and_add_new_ones(tmp_path):
    src = tmp_path / "src"
    ff.write_vocab(src)
    torch.save(ff.checkpoint_dict(ff.random_state(4 + len(ff.DICT_LINES) + 1), prompts=0,
                                  task_overrides={"manual_prompt": "of newword", "learned_prompt": None}),
               src / "checkpoint.pt")
    out = convert_fairseq_checkpoint(src, tmp_path / "out")
    expected = fairseq_dictionary(ff.DICT_LINES, ["of", "newword"])
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["newword</w>"] == expected["newword"] == 24 and len(vocab) == 25
    prompt = json.loads((out / "config.json").read_text())["biogpt_prompt"]
    assert prompt["prompt_token_ids"] == [expected["of"], expected["newword"]] == [6, 24]


CASES = [  # (id, options for write_checkpoint_dir, heads, tied)
    ("trainer-9-prompts", dict(prompts=9, layout="trainer"), 2, True),
    ("average-1-prompt-4-heads", dict(prompts=1, layout="average", heads=4), 4, True),
    ("legacy-args", dict(prompts=3, legacy_args=True), 2, True),
    ("untied-projection", dict(prompts=3, untied=True), 2, False),
]


@pytest.mark.parametrize("options,heads,tied", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_logits_match_fairseq_math_and_transformers(tmp_path, options, heads, tied):
    src = ff.write_checkpoint_dir(tmp_path / "src", **options)
    out = convert_fairseq_checkpoint(src, tmp_path / "out")
    state = load_fairseq_checkpoint(src / "checkpoint_avg.pt").state
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied

    ours = BioGptForCausalLM.from_pretrained(out)
    theirs, info = transformers.BioGptForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    renamed = transformers_from_fairseq(state, heads, tied)

    rows = config["vocab_size"]
    generator = torch.Generator().manual_seed(1)
    long_row = [2] + torch.randint(4, rows, (11,), generator=generator).tolist()
    short_row = [2] + torch.randint(4, rows, (6,), generator=generator).tolist()
    ids, mask = left_padded([long_row, short_row])
    reference = reference_logits(state, heads, ids)
    # transformers 5 derives positions from the mask only in generate(); a plain forward needs them passed.
    positions = {"position_ids": (torch.cumsum(mask, dim=1) * mask - 1).clamp(min=0)}
    with torch.no_grad():
        for model, extra in ((ours, {}), (theirs.eval(), positions), (renamed, positions)):
            logits = model(input_ids=ids, attention_mask=mask, **extra).logits
            for r in range(2):
                real = mask[r].bool()
                assert torch.allclose(logits[r, real], reference[r, real], atol=1e-5, rtol=0)
            alone = model(input_ids=torch.tensor([short_row])).logits[0]  # no padding at all
            assert torch.allclose(alone, reference[1, mask[1].bool()], atol=1e-5, rtol=0)


def test_input_ids_truncation_and_greedy_budget_match_fairseq(tmp_path):
    src = ff.write_checkpoint_dir(tmp_path / "src", prompts=9)
    out = convert_fairseq_checkpoint(src, tmp_path / "out")
    model, tokenizer = BioGptForCausalLM.from_pretrained(out), BioGptTokenizer.from_pretrained(out)
    settings = PromptSettings.from_config(model.config)
    prompt = list(range(24, 33))

    assert build_input_ids(tokenizer, "the of and", settings) == [2, 5, 6, 7] + prompt
    long_text = " ".join(["the", "of", "and", "in", "to", "is", "a"] * 2)  # 14 tokens > max_source 12
    truncated = build_input_ids(tokenizer, long_text, settings)
    assert truncated == [2, 5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, ff.ELLIPSIS_ID] + prompt
    assert settings.max_len == ff.MAX_POSITIONS - 1

    state = load_fairseq_checkpoint(src / "checkpoint_avg.pt").state
    prefixes = [truncated, [2, 5, 6, 7] + prompt, [2, 11] + prompt]
    expected = [reference_greedy(state, 2, prefix, settings.max_len) for prefix in prefixes]
    # The long prefix (22 tokens) leaves 31 - 21 = 10 tokens: the random model runs into the cap there.
    assert len(expected[0]) == 10
    outputs = generate_answers(model, tokenizer, prefixes, settings, batch_size=3)
    assert [o.new_ids for o in outputs] == expected
    assert [o.new_ids for o in generate_answers(model, tokenizer, prefixes, settings, batch_size=1)] == expected

    hf = transformers.BioGptForCausalLM.from_pretrained(out).eval()
    for prefix, want in zip(prefixes, expected):
        budget = settings.max_len - (len(prefix) - 1)
        generated = hf.generate(torch.tensor([prefix]), attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
                                max_new_tokens=budget, do_sample=False, num_beams=1, bad_words_ids=[[1]],
                                eos_token_id=2, pad_token_id=1)[0, len(prefix):].tolist()
        assert [t for t in generated if t not in (1, 2)] == want


# ----------------------------------------------------------------------------------------------------------------
# Safe loading and refusals
# ----------------------------------------------------------------------------------------------------------------
def assert_refused(tmp_path: Path, src: Path, *fragments: str, **kwargs) -> str:
    """Conversion fails with a CheckpointError naming `fragments` and leaves nothing beside the output."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError) as caught:
        convert_fairseq_checkpoint(src, tmp_path / "out", **kwargs)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no half-written or staging directory either
    return str(caught.value)


class _Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-format"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "PWNED"
    src = tmp_path / "src"
    ff.write_vocab(src)
    data = ff.checkpoint_dict(ff.random_state(ROWS_3))
    data["extra_state"]["hook"] = _Payload(marker)
    torch.save(data, src / "checkpoint_avg.pt", _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(src / "checkpoint_avg.pt") is zip_format
    message = assert_refused(tmp_path, src, "Refusing", "posix.system", "arbitrary code")
    assert "nothing was loaded" in message
    assert not marker.exists()


def test_omegaconf_config_is_refused(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    src = tmp_path / "src"
    ff.write_vocab(src)
    data = ff.checkpoint_dict(ff.random_state(ROWS_3))
    data["cfg"] = omegaconf.OmegaConf.create(data["cfg"])  # what re-saving after load_checkpoint_to_cpu writes
    torch.save(data, src / "checkpoint_avg.pt")
    assert_refused(tmp_path, src, "omegaconf.dictconfig.DictConfig", "original checkpoint file")


def test_numpy_values_and_legacy_namespace_load_only_through_the_allowlist(tmp_path):
    src = ff.write_checkpoint_dir(tmp_path / "src", numpy_val_loss=True, legacy_args=True)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(src / "checkpoint_avg.pt", weights_only=True)  # torch's defaults alone refuse this file
    checkpoint = load_fairseq_checkpoint(src / "checkpoint_avg.pt")
    assert checkpoint.architecture == "transformer_lm_prompt_biogpt"
    assert checkpoint.model_cfg["learned_prompt"] == 3
    assert convert_fairseq_checkpoint(src, tmp_path / "out").is_dir()


@pytest.mark.parametrize("version,shown", [(2.0, "decoder.version is 2"), (None, "decoder.version is missing")])
def test_old_decoder_version_is_refused(tmp_path, version, shown):
    src = tmp_path / "src"
    ff.write_vocab(src)
    torch.save(ff.checkpoint_dict(ff.random_state(ROWS_3, version=version)), src / "checkpoint_avg.pt")
    assert_refused(tmp_path, src, shown, "drops the final LayerNorm")


@pytest.mark.parametrize("setting,value", [
    ("layernorm_embedding", True), ("no_decoder_final_norm", True), ("decoder_normalize_before", False),
    ("decoder_learned_pos", False), ("adaptive_softmax_cutoff", "10,20"), ("adaptive_input", True),
    ("scale_attn", True), ("decoder_input_dim", 8), ("decoder_layers_to_keep", "0"), ("activation_fn", "linear"),
])
def test_unsupported_architecture_flags_are_refused(tmp_path, setting, value):
    src = ff.write_checkpoint_dir(tmp_path / "src", model_overrides={setting: value})
    message = assert_refused(tmp_path, src, f"{setting}={value!r}", "cannot express")
    assert "Refusing checkpoint_avg.pt" in message


def test_matrix_size_must_equal_dictionary_plus_prompts(tmp_path):
    src = tmp_path / "src"
    ff.write_vocab(src)
    torch.save(ff.checkpoint_dict(ff.random_state(ROWS_3 + 2), prompts=3), src / "checkpoint_avg.pt")
    assert_refused(tmp_path, src, "29 embedding rows", "has 24 tokens (4 specials + 20 lines)", "adds 3 prompt",
                   "27 in all")


def test_unexpected_weights_are_refused_by_name(tmp_path):
    src = tmp_path / "src"
    ff.write_vocab(src)
    state = ff.random_state(ROWS_3)
    state["decoder.layernorm_embedding.weight"] = torch.ones(16)
    torch.save(ff.checkpoint_dict(state), src / "checkpoint_avg.pt")
    assert_refused(tmp_path, src, "unexpected decoder.layernorm_embedding.weight")


def test_existing_output_is_never_overwritten(tmp_path):
    src = ff.write_checkpoint_dir(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        convert_fairseq_checkpoint(src, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    assert convert_fairseq_checkpoint(src, tmp_path / "empty") == tmp_path / "empty"


# ----------------------------------------------------------------------------------------------------------------
# Released vocabularies, cache, helpers, command line
# ----------------------------------------------------------------------------------------------------------------
def _checkpoint_without_vocab(directory: Path, rows: int, prompts: int) -> Path:
    directory.mkdir(parents=True)
    state = ff.random_state(rows, hidden=8, layers=1, ffn=8)
    torch.save(ff.checkpoint_dict(state, prompts=prompts, model_overrides={
        "decoder_embed_dim": 8, "decoder_input_dim": 8, "decoder_output_dim": 8, "decoder_ffn_embed_dim": 8,
        "decoder_layers": 1}, task_overrides={"data": "data-bin"}), directory / "checkpoint.pt")
    return directory


def test_released_vocabulary_is_chosen_by_size_from_the_vocab_dir(tmp_path, shared_dir, monkeypatch):
    monkeypatch.setenv("BIOGPT_FAIRSEQ_VOCAB_DIR", str(shared_dir / "data/biogpt-vocab"))
    base = _checkpoint_without_vocab(tmp_path / "QA-PubMedQA", 42384 + 9, prompts=9)
    out = convert_fairseq_checkpoint(base, tmp_path / "base-out")
    vocab = json.loads((out / "vocab.json").read_text())
    assert len(vocab) == 42393 and vocab["learned1</w>"] == 42384 and vocab["learned9</w>"] == 42392
    assert vocab["...</w>"] == 11475  # the spec's id of '...' in the base dictionary
    assert (out / "merges.txt").read_bytes() == (shared_dir / "data/biogpt-vocab/base/bpecodes").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["biogpt_prompt"]["task"] == "pubmedqa" and config["biogpt_prompt"]["vocabulary"] == "base"

    large = _checkpoint_without_vocab(tmp_path / "DC-HoC", 57717 + 1, prompts=1)
    vocab = json.loads((convert_fairseq_checkpoint(large, tmp_path / "large-out") / "vocab.json").read_text())
    assert len(vocab) == 57718 and vocab["learned1</w>"] == 57717 and vocab["...</w>"] == 11774

    # Forcing the wrong one says which would fit.
    assert_refused(tmp_path, large, "57718 embedding rows", "pass --vocab large", vocab="base")


def test_released_vocabulary_comes_from_the_hub_repo_without_the_vocab_dir(tmp_path, real_vocab_dir, monkeypatch):
    monkeypatch.delenv("BIOGPT_FAIRSEQ_VOCAB_DIR", raising=False)
    asked = []

    def fake_resolve(repo: str, filename: str, **_: object) -> Path:
        asked.append((repo, filename))
        return real_vocab_dir / filename  # the Hub's files are these: the base release in vocab.json form

    monkeypatch.setattr("biogpt.fairseq.resolve_file", fake_resolve)
    src = _checkpoint_without_vocab(tmp_path / "src", 42384 + 9, prompts=9)
    vocab = json.loads((convert_fairseq_checkpoint(src, tmp_path / "hub-out") / "vocab.json").read_text())
    assert asked == [("microsoft/biogpt", "vocab.json"), ("microsoft/biogpt", "merges.txt")]
    assert vocab["learned9</w>"] == 42392 and vocab["...</w>"] == 11475

    def offline(repo: str, filename: str, **_: object) -> Path:
        raise CheckpointError(f"{filename} of {repo} is not in the local cache.")

    monkeypatch.setattr("biogpt.fairseq.resolve_file", offline)
    assert_refused(tmp_path, src, "released base vocabulary", "BIOGPT_FAIRSEQ_VOCAB_DIR", "--dict and --bpecodes")


def test_unknown_dictionary_without_files_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOGPT_FAIRSEQ_VOCAB_DIR", raising=False)
    src = _checkpoint_without_vocab(tmp_path / "src", 100, prompts=9)
    assert_refused(tmp_path, src, "no dict.txt + bpecodes", "100 embedding rows", "match neither")


def test_cache_converts_once_and_again_when_the_file_changes(tmp_path):
    src = ff.write_checkpoint_dir(tmp_path / "RE-DDI", prompts=9, task_overrides={"data": "../../data/DDI/relis-bin"})
    root = tmp_path / "cache"
    path = converted_cache_path(src, root)
    assert path.parent == root and not path.exists()
    assert convert_into_cache(src, root) == path
    stamp = (path / "config.json").stat().st_mtime_ns
    assert convert_into_cache(src, root) == path and (path / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((path / "config.json").read_text())["biogpt_prompt"]["task"] == "ddi"
    os.utime(src / "checkpoint_avg.pt", ns=(1, 1))
    assert converted_cache_path(src, root) != path
    assert [p.name for p in root.iterdir()] == [path.name]  # no staging directories left behind


def test_checkpoint_directory_detection_and_task_names(tmp_path):
    src = ff.write_checkpoint_dir(tmp_path / "src")
    assert is_fairseq_checkpoint_dir(src)
    out = convert_fairseq_checkpoint(src, tmp_path / "out")
    assert not is_fairseq_checkpoint_dir(out)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "mixed" / "config.json").write_text("{}")
    assert not is_fairseq_checkpoint_dir(tmp_path / "mixed")
    assert not is_fairseq_checkpoint_dir(tmp_path / "missing")
    names = {"checkpoints/RE-BC5CDR-BioGPT": "bc5cdr", "../../data/DDI/relis-bin": "ddi", "RE-DTI-BioGPT": "kd-dti",
             "data/KD-DTI/relis-bin": "kd-dti", "QA-PubMedQA-BioGPT-Large": "pubmedqa", "DC-HoC-BioGPT": "hoc",
             "data/HoC/ansis-bin": "hoc", "checkpoints/mine": None}
    assert {name: detect_task(name) for name in names} == names


def test_convert_command(tmp_path, capsys):
    src = ff.write_checkpoint_dir(tmp_path / "anything", prompts=1)
    assert convert_main([str(src), str(tmp_path / "out"), "--task", "hoc"]) == 0
    assert "task hoc, 1 learned prompt tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["biogpt_prompt"]["task"] == "hoc"
    assert convert_main([str(src), str(tmp_path / "out")]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# fairseq itself
# ----------------------------------------------------------------------------------------------------------------
def _fairseq_trained_checkpoint(tmp_path: Path, prompts: int, heads: int):
    """A tiny BioGPT prompt model built, trained one step and saved by fairseq's own Trainer."""
    pytest.importorskip("fairseq", reason="fairseq-fixed==0.12.3.1 (the Makefile installs it) is not installed")
    import logging
    from dataclasses import field, make_dataclass
    from typing import Optional

    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.models import ARCH_MODEL_REGISTRY, register_model, register_model_architecture
    from fairseq.models.transformer_lm import (TransformerLanguageModel, TransformerLanguageModelConfig,
                                               transformer_lm_gpt2_small)
    from fairseq.tasks import TASK_REGISTRY, register_task
    from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
    from fairseq.trainer import Trainer

    logging.getLogger("fairseq").setLevel(logging.ERROR)
    if "transformer_lm_prompt_biogpt" not in ARCH_MODEL_REGISTRY:
        # BioGPT's user-dir (B src/): the model class, its architecture and its prompt task, reduced to what
        # changes the checkpoint (the dictionary gains learnedK symbols before the model is built).
        @register_model("transformer_lm_prompt", dataclass=TransformerLanguageModelConfig)
        class TransformerLanguageModelPrompt(TransformerLanguageModel):
            pass

        @register_model_architecture("transformer_lm_prompt", "transformer_lm_prompt_biogpt")
        def transformer_lm_prompt_biogpt(args):
            transformer_lm_gpt2_small(args)

    if "language_modeling_prompt" not in TASK_REGISTRY:
        # fairseq reads the field types, so they must be real types (this module's annotations are strings).
        prompt_config = make_dataclass("LanguageModelingPromptConfig", [
            ("source_lang", Optional[str], field(default=None)), ("target_lang", Optional[str], field(default=None)),
            ("max_source_positions", Optional[int], field(default=384)),
            ("manual_prompt", Optional[str], field(default=None)),
            ("learned_prompt", Optional[int], field(default=None)),
            ("learned_prompt_pattern", Optional[str], field(default="learned")),
            ("prefix", Optional[bool], field(default=False)),
            ("sep_token", Optional[str], field(default="<seqsep>"))], bases=(LanguageModelingConfig,))

        @register_task("language_modeling_prompt", dataclass=prompt_config)
        class LanguageModelingPromptTask(LanguageModelingTask):
            @classmethod
            def setup_task(cls, args, **kwargs):
                task = super().setup_task(args, **kwargs)
                words = "".join(f"{args.learned_prompt_pattern}{k + 1} " for k in range(args.learned_prompt))
                task.prompt = task.dictionary.encode_line(words, append_eos=False).long()
                return task

    data = tmp_path / "RE-BC5CDR-data"
    ff.write_vocab(data)
    save = tmp_path / "checkpoints"
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        str(data), "--task", "language_modeling_prompt", "--arch", "transformer_lm_prompt_biogpt",
        "--learned-prompt", str(prompts), "--max-source-positions", "12",
        "--tokens-per-sample", str(ff.MAX_POSITIONS),
        "--max-target-positions", str(ff.MAX_POSITIONS), "--decoder-layers", "2", "--decoder-embed-dim", "16",
        "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", str(heads), "--decoder-input-dim", "16",
        "--decoder-output-dim", "16", "--decoder-learned-pos", "--share-decoder-input-output-embed",
        "--optimizer", "adam", "--lr", "1e-2", "--cpu", "--seed", "3", "--save-dir", str(save),
        "--criterion", "cross_entropy", "--dropout", "0.0", "--attention-dropout", "0.0"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    trainer = Trainer(cfg, task, model, task.build_criterion(cfg.criterion))
    # A few steps on a counting language (each token is followed by the next id), so that greedy decoding
    # writes varied tokens rather than repeating the last one, as an untrained tied model does.
    rows = len(task.dictionary)
    starts = torch.randint(0, rows - 4, (8, 1), generator=torch.Generator().manual_seed(0))
    sequence = 4 + (starts + torch.arange(13)) % (rows - 4)
    batch = {"id": torch.arange(8), "nsentences": 8, "ntokens": 96, "target": sequence[:, 1:].contiguous(),
             "net_input": {"src_tokens": sequence[:, :-1].contiguous(), "src_lengths": torch.full((8,), 12)}}
    for _ in range(30):
        trainer.train_step([batch])
    trainer.consolidate_optimizer()  # fairseq_cli/train.py does this before every save
    save.mkdir()
    trainer.save_checkpoint(str(save / "checkpoint_last.pt"), {"val_loss": 1.5})
    (save / "dict.txt").write_bytes((data / "dict.txt").read_bytes())
    (save / "bpecodes").write_bytes((data / "bpecodes").read_bytes())
    model.eval()
    return task, model, save


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # hydra's and fairseq's own
@pytest.mark.parametrize("prompts,heads", [(9, 2), (1, 4)])
def test_fairseq_trained_model_converts_with_equal_logits_and_greedy_outputs(tmp_path, prompts, heads):
    task, fairseq_model, save = _fairseq_trained_checkpoint(tmp_path, prompts, heads)
    from fairseq.sequence_generator import SequenceGenerator

    out = convert_fairseq_checkpoint(save, tmp_path / "out")
    ours, tokenizer = BioGptForCausalLM.from_pretrained(out), BioGptTokenizer.from_pretrained(out)
    settings = PromptSettings.from_config(ours.config)
    assert list(settings.prompt_ids) == task.prompt.tolist()  # fairseq's own ids for learned1..N
    assert ours.config.biogpt_prompt["task"] == "bc5cdr"

    prefixes = [build_input_ids(tokenizer, text, settings) for text in
                ("the of and in to", "a is the of and in to is a the of and in to", "of")]
    with torch.no_grad():
        for prefix in prefixes:
            tokens = torch.tensor([prefix])
            expected = fairseq_model(tokens)[0]
            assert torch.allclose(ours(input_ids=tokens).logits, expected, atol=1e-5, rtol=0)

    generator = SequenceGenerator([fairseq_model], task.target_dictionary, beam_size=1, max_len_a=0,
                                  max_len_b=1024, min_len=1)
    outputs = generate_answers(ours, tokenizer, prefixes, settings)
    for prefix, output in zip(prefixes, outputs):
        sample = {"net_input": {"src_tokens": torch.tensor([prefix]), "src_lengths": torch.tensor([len(prefix)])}}
        # B's inference_step: the prefix without its leading </s> is forced, </s> starts the sequence
        hypothesis = generator.generate([fairseq_model], sample, prefix_tokens=torch.tensor([prefix[1:]]),
                                        bos_token=2)[0][0]["tokens"].tolist()
        assert hypothesis[:len(prefix) - 1] == prefix[1:]
        assert output.new_ids == [t for t in hypothesis[len(prefix) - 1:] if t != 2]
