"""CI-sized soak: 50 concurrent gradio_client users against one app on 127.0.0.1 (`python -m bench.soak --clients 50
--minutes 10` is the full run).

Every request must succeed (or be a documented "busy" rejection), and every result must equal the one a solo
request with the same input returned: greedy decoding and the classifiers are deterministic, so cross-talk
between sessions or streams would show as a mismatch.
"""

from __future__ import annotations

import pytest

from app_fixtures import Checkpoints, Server, checkpoints, paper_release, server  # noqa: F401  (fixtures)
from bench.soak import MIX, Requests, run_soak

USERS, REQUESTS = 50, 150
pytestmark = pytest.mark.soak


def test_fifty_concurrent_users_get_their_own_results(server: Server, checkpoints: Checkpoints) -> None:
    requests = Requests(checkpoints.lm, checkpoints.ner, checkpoints.classify)
    reference = requests.solo(server.url)
    result = run_soak(server.url, requests, USERS, REQUESTS, reference, timeout_s=120)
    summary = result.summary()
    assert summary["requests"] == REQUESTS, summary
    assert set(summary["errors"]) <= {"busy"}, summary["errors"]
    assert result.mismatches == [], result.mismatches[:5]
    assert set(MIX) == set(summary["by_endpoint"])  # every endpoint of the mix was exercised
    assert all(row["in_use"] == 0 for row in server.demo.workbench.manager.status())
