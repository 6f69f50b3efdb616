"""`python -m bench.run --tiny` runs end to end and writes the JSON rows and fields it promises. Never a speed test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("transformers")


@pytest.mark.slow
def test_tiny_benchmark_writes_expected_rows_and_fields(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["shape"] == "tiny"
    for key in ("cpu", "cores", "ram_gib", "torch", "transformers"):
        assert key in data["machine"]
    assert data["memory_bandwidth"]["read_gbs"] > 0
    rows = data["rows"]
    assert {"cpu-fp32", "cpu-bf16", "cpu-int8", "cpu-int4", "concurrency-fp32"} <= set(rows)
    for name in ("cpu-fp32", "cpu-bf16", "cpu-int8", "cpu-int4"):
        row = rows[name]
        assert "error" not in row, row.get("error")
        for field in ("decode_b1_tok_s", "decode_b8_tok_s", "decode_b1_after_prompt_tok_s", "prefill_32_s", "ttft_s"):
            assert set(row[field]) == {"ours", "transformers"}, field
            assert all(v > 0 for v in row[field].values()), field
        assert set(row["load_s"]) == ({"ours"} if name in ("cpu-int8", "cpu-int4") else {"ours", "transformers"})
        assert row["bandwidth_ceiling_tok_s"] > 0
        assert row["ratio_decode_b1"] > 0 and "fraction_of_ceiling_b1" in row
        assert set(row["kernels"]) and all(set(plan) == {"decode", "batch_decode", "batch", "medium", "prefill"}
                                           for plan in row["kernels"].values())
        assert "skipped" in row["ggml"]  # the anchor runs the microsoft/biogpt shape only, and says so
    assert rows["cpu-int8"]["transformers_dtype"] == "bf16"  # transformers needs torchao for int8/int4
    assert rows["cpu-fp32"]["same_greedy_tokens_b1"] is True
    first = rows["cpu-fp32"]["load_to_first_token"]
    for lib in ("ours", "transformers"):
        assert {"import_s", "load_s", "first_token_s", "total_s", "peak_rss_bytes"} <= set(first[lib])
    margins = rows["cpu-bf16"]["bf16_vs_fp32_margins"]
    assert 0 <= margins["fraction_margin_below_max_logit_error"] <= 1 and margins["positions"] > 0
    assert "ours_vs_transformers_fp32_b1" in rows["cpu-bf16"]
    conc = rows["concurrency-fp32"]
    assert "error" not in conc, conc.get("error")
    assert conc["one_stream_tok_s"] > 0 and conc["concurrent_aggregate_tok_s"] > 0 and conc["speedup"] > 0
    for text in ("Concurrency", "cpu-fp32", "biogpt.cpp tok/s", "int4"):  # the printed tables
        assert text in proc.stdout, text
    markdown = subprocess.run([sys.executable, "-m", "bench.run", "--markdown", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert markdown.returncode == 0 and "| int8 |" in markdown.stdout and "biogpt.cpp skipped" in markdown.stdout


def test_the_limit_counts_the_bytes_each_format_streams_per_token():
    """microsoft/biogpt: 24 layers of 4 x 1024^2 + 2 x 1024 x 4096 = 301,989,888 matrix weights, and the output
    projection's 42,384 x 1024; ours keeps that projection in bf16 when it quantizes, biogpt.cpp quantizes it too."""
    from bench.run import token_bytes

    head = 42384 * 1024
    assert token_bytes("biogpt", "bf16") == (301_989_888 + head) * 2 == 690_782_208
    assert token_bytes("biogpt", "int8") == 301_989_888 * (1 + 2 / 1024) + head * 2 == 389_382_144
    assert token_bytes("biogpt", "int4") == 301_989_888 * (0.5 + 4 / 64) + head * 2 == 256_671_744
    assert token_bytes("biogpt", "q8_0") == (301_989_888 + head) * 8.5 / 8
