"""The HTTP API on a real port: health, jobs, studies, metrics, token enforcement."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE

import config
from node.http.api import check_exposure
from node.serve import Node
from tests.factory import ct_series

TOKEN = "s3cret-token"


def start_node(tmp_path: Path, token: str = TOKEN, weights_dir: str = "weights") -> Node:
    """A receiving node (no worker) with the API on a free port."""
    base = config.load(None, {})
    settings = dataclasses.replace(
        base,
        scp=dataclasses.replace(base.scp, host="127.0.0.1", port=0),
        storage=dataclasses.replace(base.storage, data_dir=str(tmp_path / "var")),
        assembly=dataclasses.replace(base.assembly, stable_age=0.5, tick=0.1),
        api=dataclasses.replace(base.api, port=0, token=token),
        neural=dataclasses.replace(base.neural, weights_dir=weights_dir),
    )
    running = Node(settings)
    running.start()
    return running


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = start_node(tmp_path)
    yield running
    running.stop()


def get(node: Node, path: str, token: str | None = TOKEN) -> tuple[int, Any, str]:
    assert node.api is not None
    request = urllib.request.Request(f"http://127.0.0.1:{node.api.port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        body, status = error.read().decode(), error.code
    try:
        return status, json.loads(body), body
    except json.JSONDecodeError:
        return status, None, body


def push(node: Node, n: int = 4) -> str:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="CTNODE")
    series = ct_series(n, 8, 8, seed="api")
    assert all(assoc.send_c_store(ds).Status == 0 for ds in series)
    assoc.release()
    return str(series[0].StudyInstanceUID)


def test_health_needs_no_token_and_reports_failures(node: Node) -> None:
    status, body, _ = get(node, "/health", token=None)
    assert status == 200 and body["status"] == "healthy"
    assert body["analyzers"]["quantitative"] == {"enabled": True, "reason": "needs no weights"}
    assert body["analyzers"]["ctclip"]["enabled"] is False
    node.scp.stop()
    status, body, _ = get(node, "/health", token=None)
    assert status == 503 and body["status"] == "unhealthy" and "scp" in body["failing"]


def test_token_is_enforced(node: Node) -> None:
    for path in ("/jobs", "/studies", "/metrics"):
        assert get(node, path, token=None)[0] == 401
        assert get(node, path, token="wrong")[0] == 401
        assert get(node, path)[0] == 200
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert get(node, path, token=None)[0] == 401
        assert get(node, path, token="wrong")[0] == 401
        assert get(node, path)[0] == 200
    assert get(node, "/openapi.json")[1]["info"]["title"] == "ctnode"


def test_studies_and_jobs_follow_what_was_received(node: Node) -> None:
    study = push(node)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not get(node, "/jobs")[1]:
        time.sleep(0.1)
    _, jobs, _ = get(node, "/jobs")
    assert len(jobs) == 1 and jobs[0]["state"] == "queued"
    _, detail, _ = get(node, f"/jobs/{jobs[0]['id']}")
    assert detail["series_uid"] == jobs[0]["series_uid"] and detail["result"] is None
    _, studies, _ = get(node, "/studies")
    assert [s["study_uid"] for s in studies] == [study]
    _, one, text = get(node, f"/studies/{study}")
    assert one["series"][0]["state"] == "STABLE" and one["series"][0]["instance_count"] == 4
    assert "TEST^PATIENT" not in text and "TEST-0001" not in text
    assert get(node, "/studies/1.2.3")[0] == 404
    assert get(node, "/jobs/999")[0] == 404


def test_metrics_parse_and_move(node: Node) -> None:
    def values() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, text = get(node, "/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = values()
    assert before[("ctnode_instances_stored_total", ())] == 0
    push(node, 3)
    after = values()
    assert after[("ctnode_instances_stored_total", ())] == 3
    assert (
        after[("ctnode_series", (("state", "RECEIVING"),))]
        + after[("ctnode_series", (("state", "STABLE"),))]
        == 1
    )


def test_no_token_beyond_loopback_is_refused() -> None:
    check_exposure("127.0.0.1", "")
    check_exposure("0.0.0.0", "token")
    with pytest.raises(ValueError, match="token"):
        check_exposure("0.0.0.0", "")


def test_corrupt_registered_weights_make_the_node_unhealthy(tmp_path: Path) -> None:
    store = tmp_path / "weights"
    store.mkdir()
    (store / "model.pt").write_bytes(b"not the published checkpoint")
    (store / "manifest.toml").write_text(
        '[[models]]\nname = "ct-clip-v2"\nversion = "v2"\nfile = "model.pt"\n'
        f'sha256 = "{"0" * 64}"\nsize = 28\nlicence = "CC BY-NC-SA 4.0"\n'
        'source = "https://example.invalid/ct-clip"\nanalyzer = "ctclip"\n'
    )
    running = start_node(tmp_path, token="", weights_dir=str(store))
    try:
        status, body, _ = get(running, "/health", token=None)
        assert status == 503 and "analyzers" in body["failing"]
        assert "sha256" in body["failing"]["analyzers"]
        assert body["analyzers"]["ctclip"]["enabled"] is False
        assert body["analyzers"]["quantitative"]["enabled"] is True
    finally:
        running.stop()


def test_out_of_range_ids_are_refused_not_a_crash(node: Node) -> None:
    assert node.api is not None
    base = f"http://127.0.0.1:{node.api.port}"
    for bad in ("9223372036854775808", "-1", "0", "99999999999999999999999", "1e3"):
        assert get(node, f"/jobs/{bad}")[0] in (404, 422)
        request = urllib.request.Request(
            f"{base}/deliveries/{bad}/retry",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (404, 422)
    assert get(node, "/jobs/9223372036854775807")[0] == 404
