"""Fixtures shared by every test layer: real-data locations and synthetic series."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"
MODELS = SHARED / "models"

# Hypothesis (the fuzz tests): a bounded run by default, the whole fuzz file well under a
# minute; ``CTNODE_FUZZ=1`` (``make fuzz``) runs many more examples, for local runs:
# CTNODE_FUZZ_EXAMPLES a test (10,000 unless set: some ten minutes on an idle machine).
settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("CTNODE_FUZZ_EXAMPLES", "10000")), deadline=None
)
settings.load_profile("fuzz" if os.environ.get("CTNODE_FUZZ") else "ci")


def testdata(name: str) -> Path:
    """A folder of ``../shared/testdata``, or skip the test saying what is missing."""
    path = TESTDATA / name
    if not path.is_dir():
        pytest.skip(f"real test data {path} is absent (see ../shared/testdata/README.md)")
    return path


testdata.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def ctnode_command(*args: str) -> list[str]:
    """Argv that runs this checkout's ``ctnode`` (``python -m cli``) in a subprocess."""
    return [sys.executable, "-m", "cli", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a ``ctnode`` subprocess that imports this checkout's packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTNODE_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for one test module (``tests.postgres_server``); the tests
    that use it skip, saying why, where Debian's package is not installed."""
    from tests.postgres_server import PostgresServer  # noqa: PLC0415  # it imports this module

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The server's database, emptied for each test."""
    postgres.reset()
    return postgres.url


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway PKI made with ``openssl``: a CA (``ca``), a server certificate for
    localhost/127.0.0.1 (``cert``, ``key``), a client certificate ``CN=MODALITY1``
    (``client``, ``client_key``), and bad server certificates: from another CA
    (``stranger``), for another host (``otherhost``), expired (``expired``); each ``<name>``
    with its key ``<name>_key``."""
    folder = tmp_path_factory.mktemp("tls")
    paths: dict[str, Path] = {}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def ca(name: str) -> None:
        paths[name], paths[f"{name}_key"] = folder / f"{name}.pem", folder / f"{name}_key.pem"
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=ctnode test {name}",
            "-keyout", str(paths[f"{name}_key"]), "-out", str(paths[name]),
        )  # fmt: skip

    def leaf(name: str, cn: str, san: str, issuer: str = "ca", days: str = "2") -> None:
        cert, key = folder / f"{name}.pem", folder / f"{name}_key.pem"
        paths[name], paths[f"{name}_key"] = cert, key
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", str(key), "-out", str(folder / "req.pem"),
        )  # fmt: skip
        (folder / "ext.cnf").write_text(f"subjectAltName={san}\n" if san else "\n")
        openssl(
            "x509", "-req", "-in", str(folder / "req.pem"), "-CA", str(paths[issuer]),
            "-CAkey", str(paths[f"{issuer}_key"]), "-CAcreateserial", "-days", days,
            "-extfile", str(folder / "ext.cnf"), "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)

    try:
        ca("ca")
        ca("other_ca")
        leaf("cert", "localhost", "DNS:localhost,IP:127.0.0.1")
        paths["key"] = paths["cert_key"]
        leaf("client", "MODALITY1", "")
        leaf("stranger", "localhost", "DNS:localhost,IP:127.0.0.1", issuer="other_ca")
        leaf("otherhost", "otherhost", "DNS:otherhost")
        leaf("expired", "localhost", "DNS:localhost,IP:127.0.0.1", days="0")
    except FileNotFoundError:
        pytest.skip("openssl is not installed: cannot make test certificates")
    return paths
