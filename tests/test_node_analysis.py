"""Black box: the node analyses what it receives. A chest CT pushed with storescu ends
REPORTED with its result; a series that cannot be analysed ends INVALID with its reason,
and the node goes on serving."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import testdata
from tests.factory import ct_series, write_series
from tests.node_process import NodeProcess, require


def wait_for_states(node: NodeProcess, expected: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        series: list[dict[str, Any]] = node.status()["series"]
        done = [s for s in series if s["state"] in ("REPORTED", "INVALID", "FAILED")]
        if len(done) >= expected:
            return series
        time.sleep(0.5)
    raise AssertionError(f"series not analysed in time: {node.status()['series']}")


def test_node_analyses_a_chest_ct_and_rejects_a_short_series(tmp_path: Path) -> None:
    require("storescu")
    node = NodeProcess(
        tmp_path / "var", ASSEMBLY__STABLE_AGE="1", ASSEMBLY__TICK="0.25", WORKER__POLL="0.25"
    ).start()
    try:
        node.storescu(sorted(testdata("chest-ct-100-lung").glob("*.dcm")))
        short = write_series(ct_series(10, 32, 32, seed="short"), tmp_path / "short")
        node.storescu(short)
        series = wait_for_states(node, 2, timeout=180)
        states = sorted((s["state"], s["reason"].split(":")[0]) for s in series)
        assert states == [("INVALID", "too_few_slices"), ("REPORTED", "")]
        with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/jobs") as response:
            jobs = json.loads(response.read())
        reported = next(s for s in series if s["state"] == "REPORTED")
        job = next(j for j in jobs if j["series_uid"] == reported["series_uid"])
        with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/jobs/{job['id']}") as r:
            detail = json.loads(r.read())
        assert detail["result"]["processing_status"] == "Success"
        assert 0 <= detail["result"]["probability_of_pathology"] <= 1
        assert {"load", "analyse", "total"} <= set(detail["timings"])
        # and it keeps serving
        assert node.ctnode("echo").returncode == 0
    finally:
        assert node.stop() == 0
