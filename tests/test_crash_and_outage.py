"""Black box: nothing is lost or duplicated when the node dies or the PACS is away.

One run of the real chest CT through ``ctnode serve`` (subprocess) and DCMTK storescp as the
PACS: the PACS is down when the node starts; the node is killed (-9) while it analyses the
series, restarted, and finishes the analysis while the PACS is still down (deliveries are
retried, not failed); then the PACS comes up, slowed down so that the node can be killed
again in the middle of the delivery; after the second restart the PACS holds exactly the
node's output objects, one per SOP Instance UID, and the series is SENT.

A second test stops the node with SIGTERM during an analysis: it exits 0 within the grace
period, the job goes back to the queue, and the next start finishes it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import wait_until
from tests.conftest import testdata
from tests.node_process import NodeProcess, Pacs, require

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def series_state(node: NodeProcess) -> str | None:
    series = node.status()["series"]
    return str(series[0]["state"]) if series else None


def outbox(node: NodeProcess) -> list[dict[str, Any]]:
    with sqlite3.connect(node.data_dir / "index.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY id")]


def test_kill_during_analysis_and_sending_with_the_pacs_down_for_a_while(
    tmp_path: Path,
) -> None:
    require("storescu", "storescp")
    pacs = Pacs(tmp_path / "pacs", sleep_after=1)
    node = NodeProcess(
        tmp_path / "var",
        ASSEMBLY__STABLE_AGE="1",
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        OUTBOX__TICK="0.5",
        OUTBOX__BACKOFF_INITIAL="0.5",
        OUTBOX__BACKOFF_MAX="1",
        OUTBOX__MAX_ATTEMPTS="1000",
        DESTINATIONS=json.dumps([pacs.destination]),
    )
    try:
        node.start()
        node.storescu(sorted(testdata("chest-ct-100-lung").glob("*.dcm")))
        wait_until("the analysis to start", lambda: series_state(node) == "PROCESSING", 60)
        node.kill()  # during the analysis

        node.start()
        wait_until("the analysis to finish", lambda: series_state(node) == "REPORTED", 180)
        rows = wait_until(
            "deliveries to be retried",
            lambda: (r := outbox(node)) and all(x["attempts"] >= 2 for x in r) and r,
            60,
        )
        assert {r["state"] for r in rows} == {"PENDING"}  # refused connections are retried
        assert len({r["job_id"] for r in rows}) == 1  # one analysis recorded, not two
        expected = {r["sop_instance_uid"] for r in rows}

        pacs.start()
        wait_until("the first object at the PACS", lambda: any(pacs.received().values()), 60)
        node.kill()  # in the middle of the delivery (each store takes a second)
        assert len([x for v in pacs.received().values() for x in v]) < len(expected)

        node.start()
        wait_until("the series to be SENT", lambda: series_state(node) == "SENT", 120)
        received = pacs.received()
        uids = [str(ds.SOPInstanceUID) for v in received.values() for ds in v]
        assert sorted(uids) == sorted(expected)  # each object once, with the same UIDs
        assert len(received[SR_CLASS]) == 1
        assert {r["state"] for r in outbox(node)} == {"DONE"}
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()
        pacs.stop()


def test_sigterm_during_analysis_exits_cleanly_and_the_next_start_resumes(
    tmp_path: Path,
) -> None:
    require("storescu")
    node = NodeProcess(
        tmp_path / "var",
        ASSEMBLY__STABLE_AGE="1",
        ASSEMBLY__TICK="0.25",
        WORKER__POLL="0.25",
        WORKER__GRACE="20",
    )
    node.start()
    node.storescu(sorted(testdata("chest-ct-100-lung").glob("*.dcm")))
    wait_until("the analysis to start", lambda: series_state(node) == "PROCESSING", 60)
    started = time.monotonic()
    assert node.stop(timeout=60) == 0
    assert time.monotonic() - started < 20 + 5
    log = node.log_text()
    assert "job queued again" in log or "a worker was still in a stage" in log
    assert series_state(node) in ("STABLE", "PROCESSING", "REPORTED")

    node.start()
    try:
        wait_until("the resumed analysis", lambda: series_state(node) == "REPORTED", 180)
        jobs = node.status()["jobs"]
        assert jobs.get("done") == 1
    finally:
        node.stop()
