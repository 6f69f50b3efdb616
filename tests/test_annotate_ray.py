"""biogpt.annotate on Ray Data: a local Ray (two CPUs, two actors) writes the same output as the local engine, byte
for byte, and resumes a run the local engine left unfinished. Needs the `ray` extra (`pip install biogpt[ray]`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from biogpt.annotate import RunConfig, run_local
from biogpt.annotate.ray_engine import run_ray
from biogpt.catalog import demo_path

ray = pytest.importorskip("ray", reason="the Ray engine needs `pip install biogpt[ray]`")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data (`pip install biogpt[ray]`)")

pytestmark = pytest.mark.slow

SENTENCES = [
    "Lithium carbonate toxicity in a newborn infant with congestive heart failure.",
    "Cisplatin-induced nephrotoxicity was observed in patients with ovarian cancer.",
    "Aspirin inhibits platelet aggregation and prevents myocardial infarction.",
    "Warfarin increases the risk of bleeding when combined with ibuprofen.",
]


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray runtime with two CPUs (not the deprecated local mode), shut down afterwards."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two files, with rejects, cut into several shards."""
    root = tmp_path_factory.mktemp("corpus")
    rows = [{"id": f"j{i}", "text": " ".join(SENTENCES[i % 4:] + SENTENCES[:i % 4])} for i in range(10)]
    rows.insert(4, {"id": "bad", "text": None})
    (root / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (root / "b.txt").write_text("\n".join(SENTENCES) + "\n\n", encoding="utf-8")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _records_by_id(root: Path) -> list[bytes]:
    lines = [line for path in sorted((root / "shards").glob("*.jsonl")) if not path.name.endswith(".rejects.jsonl")
             for line in path.read_bytes().splitlines()]
    return sorted(lines, key=lambda line: json.loads(line)["id"])


def test_ray_writes_the_local_engines_bytes_and_resumes_its_runs(local_ray, corpus, tmp_path):
    model = str(demo_path("token-classification"))

    def config(out: Path) -> RunConfig:
        return RunConfig(str(corpus), "ner", model, out, batch_size=3, shard_size=3)

    local = tmp_path / "local"
    run_local(config(local), progress=False)
    on_ray = tmp_path / "ray"
    summary = run_ray(config(on_ray), workers=2, progress=False)
    assert (summary.documents, summary.rejects, summary.shards) == (14, 2, 6)
    assert _records_by_id(on_ray) == _records_by_id(local)
    assert _tree(on_ray) == _tree(local)  # shards, PubTator, rejects and manifest alike

    # A local run that stopped after some shards is finished by Ray, to the same bytes.
    resumed = tmp_path / "resumed"
    shutil.copytree(local, resumed)
    manifest = json.loads((resumed / "manifest.json").read_text(encoding="utf-8"))
    (resumed / "manifest.json").write_text(json.dumps({"format": manifest["format"], "run": manifest["run"],
                                                       "complete": False}, indent=1) + "\n", encoding="utf-8")
    (resumed / "rejects.jsonl").unlink()
    for key in ("00000-000001", "00001-000000"):
        (resumed / "shards" / f"{key}.done.json").unlink()
    summary = run_ray(config(resumed), workers=1, progress=False)
    assert (summary.shards, summary.shards_resumed) == (2, 4)
    assert _tree(resumed) == _tree(local)
