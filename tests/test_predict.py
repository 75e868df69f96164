"""``POST /predict`` on a real node (SCP, index, worker with the real pipeline, HTTP on a
real port): real chest CTs zipped on the fly come back as the legacy JSON, through the same
store, selection, analysis and reporting as the DICOM path; bad uploads get a 4xx with the
legacy failure JSON and a reason."""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import UID

import config
from node.serve import Node
from tests.conftest import testdata
from tests.factory import ct_series, write_series
from tests.http_node import TOKEN, make_node
from tests.node_process import Pacs

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = make_node(tmp_path)
    yield running
    running.stop()


def zip_files(paths: list[Path], names: list[str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i, path in enumerate(paths):
            archive.write(path, names[i] if names else f"study/{i:04d}")
    return buffer.getvalue()


def post(
    node: Node, body: bytes, *, query: str = "", token: str | None = TOKEN, field: str = "file"
) -> tuple[int, dict[str, Any]]:
    """A multipart upload, as the legacy clients send it."""
    assert node.api is not None
    boundary = uuid.uuid4().hex
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="study.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.api.port}/predict{query}",
        data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(node: Node, path: str) -> tuple[int, bytes]:
    assert node.api is not None
    request = urllib.request.Request(f"http://127.0.0.1:{node.api.port}{path}")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_real_ct_comes_back_as_the_legacy_json(node: Node, tmp_path: Path) -> None:
    sources = sorted(testdata("chest-ct-100-lung").glob("*.dcm"))
    archive = zip_files(sources)
    status, body = post(node, archive)
    assert status == 200, body
    source = pydicom.dcmread(sources[0], stop_before_pixels=True)
    assert body["processing_status"] == "Success" and body["error"] is None
    assert body["study_uid"] == source.StudyInstanceUID
    assert body["series_uid"] == source.SeriesInstanceUID
    assert 0.0 <= body["probability_of_pathology"] <= 1.0
    assert body["pathology"] in (0, 1) and body["most_dangerous_pathology_type"]
    assert body["report_sop_instance_uids"]["sr"]
    # The same objects as the DICOM path: stored, indexed, reported; nothing sent unasked.
    assert node.index.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == len(sources)
    assert node.index.query("SELECT COUNT(*) AS n FROM outbox")[0]["n"] == 0
    status, sr_bytes = get(node, f"/studies/{body['study_uid']}/report")
    assert status == 200
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert (
        sr.SOPClassUID == SR_CLASS and sr.SOPInstanceUID == body["report_sop_instance_uids"]["sr"]
    )
    status, png = get(node, f"/studies/{body['study_uid']}/summary.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert min(Image.open(io.BytesIO(png)).size) >= 256
    # The metrics moved: the job's stages were timed, the upload's series counted.
    _, text = get(node, "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    assert samples[("ctnode_job_stage_seconds_count", (("stage", "analyse"),))] == 1
    assert samples[("ctnode_instances_stored_total", ())] == len(sources)
    assert samples[("ctnode_series", (("state", "REPORTED"),))] == 1
    # Uploading the same study again: identical instances are kept once, same answer.
    again_status, again = post(node, archive)
    assert again_status == 200
    assert again["report_sop_instance_uids"] == body["report_sop_instance_uids"]
    assert node.index.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 1


def test_send_true_also_delivers_to_the_pacs(tmp_path: Path) -> None:
    pacs = Pacs(tmp_path / "pacs").start()
    node = make_node(
        tmp_path, (config.DestinationSettings("pacs", "127.0.0.1", pacs.port, "PACS"),)
    )
    try:
        sources = sorted(testdata("chest-ct-248-pneumonia-jpegll").glob("*.dcm"))
        status, body = post(node, zip_files(sources), query="?send=true")
        assert status == 200, body
        assert body["pathology"] == 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and SR_CLASS not in pacs.received():
            time.sleep(0.5)
        (sr,) = pacs.received()[SR_CLASS]
        assert sr.SOPInstanceUID == body["report_sop_instance_uids"]["sr"]
        assert sr.StudyInstanceUID == body["study_uid"]
    finally:
        node.stop()
        pacs.stop()


def _bomb(tmp_path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros", b"\0" * (64 * 2**20))
    return buffer.getvalue()


def _traversal(tmp_path: Path) -> bytes:
    files = write_series(ct_series(20, 8, 8, seed="trav"), tmp_path / "trav")
    return zip_files(files[:1], ["../../etc/evil"])


def _no_dicom(tmp_path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not an image")
    return buffer.getvalue()


def _not_ct(tmp_path: Path) -> bytes:
    datasets = ct_series(3, 8, 8, seed="notct")
    for ds in datasets:  # Secondary Capture: accepted by policy, but no CT to analyse
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    return zip_files(write_series(datasets, tmp_path / "notct"))


def _bad_uids(tmp_path: Path) -> bytes:
    datasets = ct_series(20, 8, 8, seed="baduid")
    for ds in datasets:  # the SCP refuses these: a series UID that is not a UID
        ds.SeriesInstanceUID = "1.2.abc"
    return zip_files(write_series(datasets, tmp_path / "baduid"))


def _few_slices(tmp_path: Path) -> bytes:
    return zip_files(write_series(ct_series(10, 16, 16, seed="few"), tmp_path / "few"))


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda _: b"this is not a zip archive", 400, "not_zip"),
        (_no_dicom, 422, "no_dicom"),
        (_not_ct, 422, "no_ct"),
        (_bad_uids, 422, "20 invalid_hierarchy_uid"),
        (_few_slices, 422, "too_few_slices"),
        (_bomb, 413, "zip_bomb"),
        (_traversal, 400, "path_traversal"),
    ],
    ids=[
        "not-zip",
        "no-dicom",
        "not-ct",
        "rejected-uids",
        "too-few-slices",
        "zip-bomb",
        "path-traversal",
    ],
)
def test_bad_uploads_get_a_reason(
    node: Node, tmp_path: Path, make: Any, status: int, code: str
) -> None:
    got, body = post(node, make(tmp_path))
    assert got == status, body
    assert body["processing_status"] == "Failure" and body["probability_of_pathology"] is None
    assert code in body["error"]
    assert node.api is not None and get(node, "/health")[0] == 200  # still serving
    assert list((node.settings.storage.root / "uploads").iterdir()) == []


def test_size_cap_field_and_token(tmp_path: Path) -> None:
    node = make_node(tmp_path, max_upload_mb=1)
    try:
        status, body = post(node, b"\0" * (2 * 2**20))
        assert status == 413 and "too_large" in body["error"]
        status, body = post(node, b"PK", field="archive")
        assert status == 400 and "no_file" in body["error"]
        status, body = post(node, b"")
        assert status == 400 and "empty_file" in body["error"] and "empty" in body["error"]
        assert post(node, b"PK", token=None)[0] == 401
        assert post(node, b"PK", token="wrong")[0] == 401
    finally:
        node.stop()


def test_an_upload_that_never_arrives_is_cut_off(tmp_path: Path) -> None:
    node = make_node(tmp_path, upload_timeout=1.0)
    try:
        assert node.api is not None
        boundary = "b0undary"
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: 1000000\r\n\r\n--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK'
        )
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", node.api.port), timeout=10) as peer:
            peer.sendall(head.encode())
            answer = b""
            while chunk := peer.recv(65536):  # the node closes the connection after answering
                answer += chunk
        assert time.monotonic() - started < 5
        assert answer.startswith(b"HTTP/1.1 408") and b"upload_timeout" in answer
        assert list((node.settings.storage.root / "uploads").iterdir()) == []
        assert get(node, "/health")[0] == 200
    finally:
        node.stop()


def test_a_slow_analysis_answers_with_the_job_to_poll(tmp_path: Path) -> None:
    node = make_node(tmp_path, predict_timeout=0.0)
    try:
        series = ct_series(24, 32, 32, seed="poll")
        status, body = post(node, zip_files(write_series(series, tmp_path / "poll")))
        assert status == 202 and body["processing_status"] == "Pending"
        assert body["study_uid"] == series[0].StudyInstanceUID
        deadline = time.monotonic() + 60
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = json.loads(get(node, body["poll"])[1])
            if job["state"] in ("done", "superseded"):
                break
            time.sleep(0.2)
        # Air only: no lungs, so the series is invalid, and the study's result says why.
        assert job["state"] == "done" and job["result_state"] == "INVALID"
        status, text = get(node, body["result"])
        result = json.loads(text)
        assert status == 422 and result["processing_status"] == "Failure"
        assert result["error"] == job["reason"]
        assert get(node, "/studies/1.2.3/result")[0] == 404
    finally:
        node.stop()
