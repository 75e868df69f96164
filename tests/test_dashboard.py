"""The dashboard at ``/`` in a real headless browser (Debian's Chromium): a study sent with
``POST /predict?send=true`` to a PACS that is down shows its result, its failed deliveries
with a retry button that queues them again, and its summary image; with a token, a browser
signs in through the form (HttpOnly cookie)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import config
from node.serve import Node
from tests.conftest import testdata
from tests.http_node import TOKEN, make_node
from tests.node_process import free_port
from tests.test_predict import post, zip_files

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no headless browser: install Debian's chromium to run the dashboard test")


def headless(url: str, *args: str) -> str:
    command = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=3000",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dashboard_in_a_browser(tmp_path: Path) -> None:
    dead = config.DestinationSettings("pacs", "127.0.0.1", free_port(), "PACS")
    node = make_node(
        tmp_path,
        (dead,),
        outbox={"max_attempts": 1, "backoff_initial": 0.1, "timeout": 2.0},
        token="",
    )
    try:
        assert node.api is not None
        base = f"http://127.0.0.1:{node.api.port}"
        status, result = post(
            node,
            zip_files(sorted(testdata("chest-ct-100-lung").glob("*.dcm"))),
            query="?send=true",
            token=None,
        )
        assert status == 200, result
        study = result["study_uid"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _failed(node):
            time.sleep(0.3)
        failed = _failed(node)
        assert failed, "the deliveries to the dead PACS never failed"

        dom = headless(f"{base}/?study={urllib.parse.quote(study, safe='')}", "--dump-dom")
        assert study in dom and "REPORTED" in dom
        assert result["most_dangerous_pathology_type"] in dom
        assert f"{result['probability_of_pathology']:.2f}" in dom
        assert dom.count(">Retry</button>") == len(failed)
        assert 'src="/studies/' in dom and "summary.png" in dom
        assert "CMB-CRC" not in dom  # no patient attributes
        shot = tmp_path / "dashboard.png"
        headless(
            f"{base}/?study={urllib.parse.quote(study, safe='')}",
            f"--screenshot={shot}",
            "--window-size=1400,2200",
        )
        assert shot.stat().st_size > 10_000
        keep = Path("/tmp/ctnode-dashboard.png")  # for a person to look at
        shutil.copy(shot, keep)

        # The retry button: a form post, answered with a redirect back to the page.
        retry = urllib.request.Request(
            f"{base}/deliveries/{failed[0]}/retry", method="POST", headers={"Accept": "text/html"}
        )
        with urllib.request.urlopen(retry, timeout=10) as response:
            assert response.status == 200 and response.url.rstrip("/") == base
        (row,) = node.index.query("SELECT state, reason FROM outbox WHERE id = ?", (failed[0],))
        assert row["state"] in ("PENDING", "SENDING", "FAILED") and row["reason"] != ""
        assert node.index.query("SELECT attempts FROM outbox WHERE id = ?", (failed[0],))
    finally:
        node.stop()


def _failed(node: Node) -> list[int]:
    rows = node.index.query("SELECT id FROM outbox WHERE state = 'FAILED' ORDER BY id")
    return [r["id"] for r in rows]


def test_sign_in_with_the_token(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    try:
        assert node.api is not None
        base = f"http://127.0.0.1:{node.api.port}"
        page = headless(f"{base}/", "--dump-dom")
        assert 'name="token"' in page and "Recent studies" not in page
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        wrong = urllib.parse.urlencode({"token": "nope"}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(f"{base}/login", data=wrong, timeout=10)
        assert refused.value.code == 401
        right = urllib.parse.urlencode({"token": TOKEN}).encode()
        with pytest.raises(urllib.error.HTTPError) as throttled:  # a wrong token: wait 1 s
            opener.open(f"{base}/login", data=right, timeout=10)
        assert throttled.value.code == 429
        time.sleep(1.1)
        with opener.open(f"{base}/login", data=right, timeout=10) as response:
            body = response.read().decode()
        assert "Recent studies" in body and re.search(r"No studies received yet", body)
        with opener.open(f"{base}/jobs", timeout=10) as response:  # the cookie works for the API
            assert response.status == 200
    finally:
        node.stop()
