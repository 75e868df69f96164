"""Orthanc (Debian package ``orthanc``) as a real PACS for end-to-end tests: a generated
configuration on loopback ports, its own storage folder, driven through its REST API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.node_process import free_port


class Orthanc:
    """One Orthanc server; ``modalities`` maps names to (AE title, host, port)."""

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, str, int]]) -> None:
        if shutil.which("Orthanc") is None:
            pytest.skip("Orthanc is not installed (apt-get install orthanc)")
        self.folder = folder
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.ae_title = "ORTHANC"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ctnode-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": {k: list(v) for k, v in modalities.items()},
            "Plugins": [],
            "HttpTimeout": 120,
            "DicomScuTimeout": 60,
            "StableAge": 2,
        }
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Orthanc:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["Orthanc", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None:
                    raise RuntimeError("Orthanc exited at start") from None
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=body,
            method=method,
            headers={"Content-Type": content_type},
        )
        with urllib.request.urlopen(req, timeout=300) as response:
            data = response.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, files: list[Path]) -> set[str]:
        """Upload DICOM files over HTTP; returns the Orthanc study ids."""
        studies = set()
        for path in files:
            answer = self.request("POST", "/instances", path.read_bytes(), "application/dicom")
            studies.add(answer["ParentStudy"])
        return studies

    def send_study(self, study_id: str, modality: str) -> Any:
        return self.request(
            "POST",
            f"/modalities/{modality}/store",
            json.dumps({"Resources": [study_id], "Synchronous": True}).encode(),
        )
