"""``ctnode serve`` as a subprocess, for black-box tests (Orthanc's test-suite style)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import ctnode_command, subprocess_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install dcmtk dicom3tools)")


class NodeProcess:
    """A running ``ctnode serve`` with its own data directory and port."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.api_port = free_port()
        self.env = subprocess_env(
            CTNODE_SCP__HOST="127.0.0.1",
            CTNODE_SCP__PORT=str(self.port),
            CTNODE_API__PORT=str(self.api_port),
            CTNODE_STORAGE__DATA_DIR=str(data_dir),
            **{f"CTNODE_{k.upper()}": v for k, v in settings.items()},
        )
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ctnode_command("serve"), env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ctnode serve exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("ctnode serve did not start listening")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def ctnode(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ctnode_command(*args), env=self.env, capture_output=True, text=True, timeout=60
        )

    def status(self) -> dict[str, Any]:
        result = self.ctnode("status", "--json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def storescu(
        self, files: list[Path], *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "storescu",
                "-xs",
                *extra,
                "-aec",
                "CTNODE",
                "127.0.0.1",
                str(self.port),
                *map(str, files),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=600,
            check=check,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def storescp_capture(files: list[Path], out_dir: Path) -> dict[str, Path]:
    """What storescu actually sends for ``files``, captured bit-preserving (``+B``) by DCMTK's
    storescp: storescu re-encodes some elements (undefined-length sequences become defined
    length), so the wire bytes, not the source files, are the reference for "as received".
    Returns ``{SOP Instance UID: captured file}`` (storescp names files by modality.UID)."""
    require("storescu", "storescp")
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    receiver = subprocess.Popen(
        ["storescp", "+B", "+xa", "-od", str(out_dir), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        subprocess.run(
            ["storescu", "-xs", "-aec", "CAPTURE", "127.0.0.1", str(port), *map(str, files)],
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
    finally:
        receiver.terminate()
        receiver.wait()
    return {p.name.split(".", 1)[1]: p for p in out_dir.iterdir()}


class Pacs:
    """DCMTK ``storescp`` as the PACS results go to: it writes every object it receives into
    ``folder`` (named by modality and SOP Instance UID, so a re-sent object replaces its
    copy, as a PACS keeps one instance per UID). ``sleep_after`` holds each response back
    that many seconds, so a test can kill the node in the middle of a delivery."""

    def __init__(self, folder: Path, ae_title: str = "PACS", sleep_after: int = 0) -> None:
        require("storescp")
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        self.sleep_after = sleep_after
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def destination(self) -> dict[str, object]:
        return {"name": "pacs", "host": "127.0.0.1", "port": self.port, "ae_title": self.ae_title}

    def start(self) -> Pacs:
        slow = ["--sleep-after", str(self.sleep_after)] if self.sleep_after else []
        command = ["storescp", "+B", *slow, "-aet", self.ae_title, "-od", str(self.folder)]
        self.proc = subprocess.Popen(
            [*command, str(self.port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def received(self) -> dict[str, list[Any]]:
        """Headers of what the PACS holds, by SOP Class UID."""
        result: dict[str, list[Any]] = {}
        for path in self.folder.iterdir():
            if path.is_file() and not path.name.startswith("."):
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                except Exception:  # a file storescp is still writing
                    continue
                result.setdefault(str(ds.SOPClassUID), []).append(ds)
        return result
