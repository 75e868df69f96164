"""DICOM TLS (PS3.15 B.9/B.10, BCP 195) against a real node, with Python's ``ssl`` as the
peer: the profile's protocols and suites and nothing else, the files it loads, the reasons a
refused certificate is recorded with."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import config
from cli import echo as cli_echo
from config import AllowedCaller
from node.outbox import destinations_from
from node.serve import Node
from scp import pem, tls_native
from scp import tls as tls_contexts
from tests.test_scp_network import associate, make_settings

TLS12 = ssl.TLSVersion.TLSv1_2


@pytest.fixture
def tls_node(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[Any]:
    nodes: list[Node] = []

    def start(scp: dict[str, Any] | None = None, **tls: Any) -> Node:
        files = {"certificate": str(tls_files["cert"]), "private_key": str(tls_files["key"])}
        settings = config.TLSSettings(enabled=True, **{**files, **tls})
        node = Node(make_settings(tmp_path / f"node{len(nodes)}", tls=settings, **(scp or {})))
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def handshake(
    port: int,
    ca: Path,
    *,
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> tuple[str, str] | None:
    """(protocol, suite) the node agreed to, or None when the handshake was refused."""
    context = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as conn:
                protocol, suite = conn.version(), conn.cipher()
                assert protocol is not None and suite is not None
                return protocol, suite[0]
        except (ssl.SSLError, ConnectionError):
            return None


def tls12_suites() -> list[str]:
    """Every TLS 1.2 (and older) suite this OpenSSL can offer as a client."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]


def profile_suites(profile: str) -> set[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers(tls_contexts.PROFILES[profile])
    return {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("profile", ["bcp195-nd", "bcp195"])
def test_only_the_profiles_suites_are_agreed(
    tls_node: Any, tls_files: dict[str, Path], profile: str
) -> None:
    node = tls_node(profile=profile)
    port, ca = node.scp.port, tls_files["ca"]
    allowed = profile_suites(profile)
    agreed = {
        suite
        for suite in tls12_suites()
        if handshake(port, ca, version=TLS12, ciphers=f"{suite}:@SECLEVEL=0") is not None
    }
    # every suite outside the profile refused; every one the RSA certificate can serve agreed
    assert agreed <= allowed
    assert {s for s in allowed if "ECDHE-RSA" in s} <= agreed
    tls13 = handshake(port, ca, version=ssl.TLSVersion.TLSv1_3)
    assert tls13 is not None and tls13[0] == "TLSv1.3"
    assert tls13[1] in {
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    }
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        assert handshake(port, ca, version=old, ciphers="ALL:@SECLEVEL=0") is None
    for aead in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"):
        assert aead in agreed
    cbc = {"ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA384"}
    assert (cbc <= agreed) == (profile == "bcp195")
    assert not any(s.startswith(("AES", "DES", "RC4")) or s.endswith("-SHA") for s in agreed)


def test_min_version_13_refuses_tls12(tls_node: Any, tls_files: dict[str, Path]) -> None:
    node = tls_node(min_version="1.3")
    assert handshake(node.scp.port, tls_files["ca"], version=TLS12) is None
    assert handshake(node.scp.port, tls_files["ca"]) is not None


def test_a_refused_handshake_is_logged_with_the_peer_and_the_reason(
    tls_node: Any, tls_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    node = tls_node(min_version="1.3")
    with caplog.at_level(logging.INFO, logger="scp.server"):
        assert handshake(node.scp.port, tls_files["ca"], version=TLS12) is None
        deadline = time.monotonic() + 5
        while "refused" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "TLS handshake from 127.0.0.1 refused: TLS: UNSUPPORTED_PROTOCOL" in caplog.text
    assert "connection lost" not in caplog.text


def s_client(port: int, ca: Path, version: str) -> str:
    """What DCMTK's and most peers' TLS library sees of the node's handshake: ``openssl
    s_client``'s report (the chain the node sent, the CA names it asked for)."""
    done = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}"),
            *("-CAfile", str(ca), "-showcerts", "-verify_return_error"),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
    )
    return done.stdout


@pytest.mark.parametrize("with_root", [False, True], ids=["leaf-only", "leaf-and-root"])
def test_the_request_names_the_cas_and_the_chain_leaves_the_root_out(
    tls_node: Any, tls_files: dict[str, Path], tmp_path: Path, with_root: bool
) -> None:
    certificate = tls_files["cert"]
    if with_root:  # an operator's file that carries the root after the certificate
        certificate = tmp_path / "cert_and_root.pem"
        certificate.write_bytes(tls_files["cert"].read_bytes() + tls_files["ca"].read_bytes())
    node = tls_node(certificate=str(certificate), ca_certificates=str(tls_files["ca"]))
    for version in ("tls1_2", "tls1_3"):
        report = s_client(node.scp.port, tls_files["ca"], version)
        assert "Verify return code: 0 (ok)" in report, report
        chain = re.findall(r"^ *(\d+) s:(.*)$", report, re.MULTILINE)
        assert [subject for _, subject in chain] == ["CN = localhost"], report
        names = report.split("Acceptable client certificate CA names", 1)
        assert len(names) == 2, report
        assert names[1].lstrip().startswith("CN = ctnode test ca"), report


def test_the_sender_never_completes_its_chain_from_the_trust_store(
    tls_files: dict[str, Path],
) -> None:
    context = tls_contexts.client_context(
        ca_certificates=str(tls_files["ca"]),
        certificate=str(tls_files["client"]),
        private_key=str(tls_files["client_key"]),
    )
    pointer = tls_native._ssl_ctx(context)
    mode = tls_native._libssl().SSL_CTX_ctrl(pointer, tls_native.SSL_CTRL_MODE, 0, None)
    assert mode & tls_native.SSL_MODE_NO_AUTO_CHAIN


def test_roots_are_told_from_issued_certificates(tls_files: dict[str, Path]) -> None:
    assert pem.self_issued(tls_files["ca"].read_bytes())
    assert not pem.self_issued(tls_files["cert"].read_bytes())
    both = tls_files["cert"].read_bytes() + b"\n" + tls_files["ca"].read_bytes()
    assert len(pem.certificates(both)) == 2


def fingerprint(pem: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem.read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_allowed_callers_bind_a_title_to_a_client_certificate(
    tls_node: Any, tls_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    callers = (
        AllowedCaller("MODALITY1", certificate="MODALITY1"),
        AllowedCaller("BYPRINT", certificate=fingerprint(tls_files["client"])),
        AllowedCaller("SOMEONE", certificate="SOMEONE-ELSE"),
    )
    node = tls_node(
        scp={"allowed_callers": callers},
        ca_certificates=str(tls_files["ca"]),
        require_client_certificate=True,
    )
    client = tls_contexts.client_context(
        ca_certificates=str(tls_files["ca"]),
        certificate=str(tls_files["client"]),
        private_key=str(tls_files["client_key"]),
    )
    with caplog.at_level(logging.INFO, logger="scp.server"):
        for calling, accepted in (("MODALITY1", True), ("BYPRINT", True), ("SOMEONE", False)):
            assoc = associate(node, calling=calling, tls_args=(client, "localhost"))
            assert assoc.is_established == accepted, calling
            if accepted:
                assoc.release()
        stranger = tls_contexts.client_context(
            ca_certificates=str(tls_files["ca"]),
            certificate=str(tls_files["stranger"]),
            private_key=str(tls_files["stranger_key"]),
        )
        assert not associate(
            node, calling="MODALITY1", tls_args=(stranger, "localhost")
        ).is_established
        deadline = time.monotonic() + 5
        while "handshake from" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "TLS handshake from 127.0.0.1 refused: TLS: certificate refused: " in caplog.text
    assert "client certificate CN='MODALITY1' sha256=" in caplog.text
    assert "calling AE title SOMEONE not allowed from 127.0.0.1 with client certificate" in (
        caplog.text
    )


def server_context(tls_files: dict[str, Path], **kwargs: str) -> ssl.SSLContext:
    files = {"certificate": str(tls_files["cert"]), "private_key": str(tls_files["key"])}
    return tls_contexts.server_context(**{**files, **kwargs})  # type: ignore[arg-type]


def test_unusable_files_fail_at_start_naming_the_file(
    tls_files: dict[str, Path], tmp_path: Path
) -> None:
    missing = str(tmp_path / "nowhere.pem")
    for key in ("certificate", "private_key", "ca_certificates", "passphrase_file"):
        with pytest.raises(config.ConfigError, match=f"{missing}: no such file"):
            server_context(tls_files, **{key: missing})
    with pytest.raises(config.ConfigError, match="not a regular file"):
        server_context(tls_files, ca_certificates=str(tmp_path))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(config.ConfigError, match=f"ca_certificates {not_pem}: no PEM"):
        server_context(tls_files, ca_certificates=str(not_pem))
    with pytest.raises(config.ConfigError, match="does not match the certificate"):
        server_context(tls_files, private_key=str(tls_files["client_key"]))


def test_an_encrypted_key_needs_its_passphrase_file(
    tls_files: dict[str, Path], tmp_path: Path
) -> None:
    encrypted = tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "pkey", "-in", str(tls_files["key"]), "-aes256"),
            *("-passout", "pass:s3cret", "-out", str(encrypted)),
        ],
        check=True,
    )
    encrypted.chmod(0o600)
    passphrase, wrong = tmp_path / "passphrase", tmp_path / "wrong"
    passphrase.write_text("s3cret\n")
    wrong.write_text("guess\n")
    server_context(tls_files, private_key=str(encrypted), passphrase_file=str(passphrase))
    with pytest.raises(config.ConfigError, match="is encrypted: set private_key_passphrase_file"):
        server_context(tls_files, private_key=str(encrypted))  # and no prompt on the terminal
    with pytest.raises(config.ConfigError, match="wrong passphrase"):
        server_context(tls_files, private_key=str(encrypted), passphrase_file=str(wrong))


def test_a_key_others_can_read_is_warned_about(
    tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exposed = tmp_path / "key.pem"
    exposed.write_bytes(tls_files["key"].read_bytes())
    exposed.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="scp.tls"):
        server_context(tls_files, private_key=str(exposed))
    assert f"private_key {exposed} is readable by group or others (mode 644)" in caplog.text
    caplog.clear()
    exposed.chmod(0o600)
    server_context(tls_files, private_key=str(exposed))
    assert "readable" not in caplog.text


def test_a_node_with_a_missing_file_does_not_start(
    tls_files: dict[str, Path], tmp_path: Path
) -> None:
    tls = config.TLSSettings(
        enabled=True,
        certificate=str(tls_files["cert"]),
        private_key=str(tls_files["key"]),
        ca_certificates=str(tmp_path / "ca.pem"),
    )
    with pytest.raises(config.ConfigError, match=f"scp.tls ca_certificates {tmp_path}"):
        Node(make_settings(tmp_path / "node", tls=tls))


def test_ctnode_echo_speaks_tls_with_the_nodes_settings(
    tls_node: Any, tls_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, cert, key = (str(tls_files[name]) for name in ("ca", "cert", "key"))
    node = tls_node(ca_certificates=ca, require_client_certificate=True)
    settings = tmp_path / "node.toml"
    settings.write_text(
        f"[scp.tls]\nenabled = true\ncertificate = {cert!r}\nprivate_key = {key!r}\n"
        f"ca_certificates = {ca!r}\nrequire_client_certificate = true\n"
    )
    plain = tmp_path / "plain.toml"
    plain.write_text("")

    def echo(config_file: Path, ca: str | None = None) -> int:
        args = argparse.Namespace(
            config=str(config_file), host=None, port=node.scp.port, aec=None,
            aet="CTNODE-ECHO", timeout=5.0, ca=ca,
        )  # fmt: skip
        return cli_echo.run(args)

    assert echo(settings) == 0  # the node's own certificate pinned and presented
    assert echo(settings, ca=ca) == 0  # or verified against a CA, host name checked
    assert echo(plain) == 1
    assert "answered C-ECHO" in capsys.readouterr().out


def test_a_destination_with_a_missing_file_does_not_start(tmp_path: Path) -> None:
    destination = config.DestinationSettings(
        "pacs", "pacs.example.org", 2762, "PACS", tls=True,
        tls_ca_certificates=str(tmp_path / "pacs-ca.pem"),
    )  # fmt: skip
    with pytest.raises(config.ConfigError, match=f"destination pacs ca_certificates {tmp_path}"):
        destinations_from([destination], [], "CTNODE", 5.0)
