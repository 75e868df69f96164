"""DICOM TLS contexts for the SCP, the sender and ``ctnode echo``: PS3.15 Annex B.9 (the BCP 195
profile) and B.10 (BCP 195 Non-Downgrading), with the files they load checked first.

Non-Downgrading (``bcp195-nd``, the default) allows TLS 1.2 only with AEAD suites that have
forward secrecy (ECDHE or DHE key exchange, AES-GCM or ChaCha20-Poly1305) and TLS 1.3, whose
suites are all of that kind. ``bcp195`` adds the TLS 1.2 CBC suites with SHA-2 MACs, still
with forward secrecy, for peers too old for AEAD. Neither allows TLS 1.0 or 1.1, nor RC4,
3DES, static RSA key exchange, or SHA-1 MACs. The suites are named here, not left to the
host's OpenSSL defaults, so the node offers the same ones wherever it runs.

A certificate, key or CA file that cannot be used fails here, at start, with the file and
what is wrong with it; a key file that group or others can read is logged as a warning. A
passphrase-protected key is decrypted with the passphrase read from a file: OpenSSL never
prompts on the terminal (a password callback is always given).
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from config import ConfigError
from scp import pem, tls_native

log = logging.getLogger(__name__)

Profile = Literal["bcp195-nd", "bcp195"]
MinVersion = Literal["1.2", "1.3"]

PROFILES: dict[str, str] = {
    "bcp195-nd": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!DSS",
    "bcp195": (
        "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
        ":ECDHE+AES+SHA384:ECDHE+AES+SHA256:DHE+AES+SHA256:!aNULL:!DSS:!CCM8"
    ),
}
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(
    *,
    certificate: str,
    private_key: str,
    passphrase_file: str = "",
    ca_certificates: str = "",
    require_client_certificate: bool = False,
    profile: str = "bcp195-nd",
    min_version: str = "1.2",
    section: str = "scp.tls",
) -> ssl.SSLContext:
    """The SCP's context: its certificate, and client certificates verified against
    ``ca_certificates`` (required or optional), within the profile."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    apply_profile(context, profile, min_version)
    if not certificate or not private_key:
        raise ConfigError(f"{section} needs certificate and private_key")
    load_chain(context, certificate, private_key, passphrase_file, section)
    if ca_certificates:
        load_cas(context, ca_certificates, section)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise ConfigError(f"{section}.require_client_certificate needs ca_certificates")
    tls_native.apply(context, section, ca_certificates)
    return context


def client_context(
    *,
    ca_certificates: str = "",
    certificate: str = "",
    private_key: str = "",
    passphrase_file: str = "",
    profile: str = "bcp195-nd",
    min_version: str = "1.2",
    section: str = "destination",
) -> ssl.SSLContext:
    """A requestor's context: the peer verified against ``ca_certificates`` (or the system's
    CAs) and its host name checked; our certificate presented when one is given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    apply_profile(context, profile, min_version)
    if ca_certificates:
        load_cas(context, ca_certificates, section)
    if certificate:
        load_chain(context, certificate, private_key or certificate, passphrase_file, section)
        tls_native.apply(context, section)
    return context


def apply_profile(context: ssl.SSLContext, profile: str, min_version: str) -> None:
    if profile not in PROFILES:
        raise ConfigError(f"TLS profile must be one of {sorted(PROFILES)}, not {profile!r}")
    if min_version not in VERSIONS:
        raise ConfigError(f"TLS min_version must be one of {sorted(VERSIONS)}, not {min_version!r}")
    context.minimum_version = VERSIONS[min_version]
    context.set_ciphers(PROFILES[profile])


def load_chain(
    context: ssl.SSLContext, certificate: str, private_key: str, passphrase_file: str, section: str
) -> None:
    """Load the certificate (and any intermediates after it in the file) and the key; a
    root CA the file also holds is left out of the chain the node sends."""
    _readable(certificate, f"{section} certificate")
    _readable(private_key, f"{section} private_key")
    _warn_if_exposed(private_key, section)
    passphrase = b""
    if passphrase_file:
        _readable(passphrase_file, f"{section} private_key_passphrase_file")
        passphrase = Path(passphrase_file).read_bytes().rstrip(b"\r\n")
    try:
        with _without_roots(certificate, section) as chain:
            context.load_cert_chain(chain, private_key, password=lambda: passphrase)
    except ssl.SSLError as exc:
        what = "an unusable key or a key that does not match the certificate"
        if not passphrase and _encrypted(private_key):
            what = "is encrypted: set private_key_passphrase_file"
        elif passphrase and _encrypted(private_key):
            what = "wrong passphrase, or a key that does not match the certificate"
        raise ConfigError(
            f"{section}: cannot load certificate {certificate} with key {private_key}: "
            f"{what} ({exc.reason or exc})"
        ) from exc


@contextmanager
def _without_roots(certificate: str, section: str) -> Iterator[str]:
    """``certificate``, or where it holds a self-issued CA after its first certificate, a
    temporary copy without it: the peer has the root as its trust anchor already."""
    blocks = pem.certificates(Path(certificate).read_bytes())
    try:
        roots = [b for b in blocks[1:] if pem.self_issued(b)]
    except (ValueError, IndexError) as exc:
        what = f"{section} certificate {certificate}"
        raise ConfigError(f"{what}: a certificate in it cannot be read ({exc})") from exc
    if not roots:
        yield certificate
        return
    log.info("%s certificate %s holds its root CA: not sent to peers", section, certificate)
    with tempfile.TemporaryDirectory(prefix="ctnode-chain-") as folder:
        chain = Path(folder) / "chain.pem"
        chain.write_bytes(b"\n".join(b for b in blocks if b not in roots) + b"\n")
        yield str(chain)


def load_cas(context: ssl.SSLContext, ca_certificates: str, section: str) -> None:
    _readable(ca_certificates, f"{section} ca_certificates")
    try:
        context.load_verify_locations(cafile=ca_certificates)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{section} ca_certificates {ca_certificates}: no PEM certificate in it "
            f"({exc.reason or exc})"
        ) from exc


def _readable(path: str, what: str) -> None:
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{what} {path}: no such file")
    if not file.is_file():
        raise ConfigError(f"{what} {path}: not a regular file")
    if not os.access(file, os.R_OK):
        raise ConfigError(f"{what} {path}: not readable by this user")


def _warn_if_exposed(private_key: str, section: str) -> None:
    mode = Path(private_key).stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s private_key %s is readable by group or others (mode %o): chmod 600 it",
            section,
            private_key,
            stat.S_IMODE(mode),
        )


def _encrypted(private_key: str) -> bool:
    text = Path(private_key).read_bytes()
    return b"ENCRYPTED" in text


def peer_identity(conn: ssl.SSLSocket) -> tuple[str, str] | None:
    """The verified peer certificate's subject common name and SHA-256 fingerprint (hex,
    lower case), or None without a client certificate."""
    der = conn.getpeercert(binary_form=True)
    if not der:
        return None
    cert: dict[str, Any] = dict(conn.getpeercert() or {})
    cn = ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = str(value)
    return cn, hashlib.sha256(der).hexdigest()


def failure_reason(exc: BaseException) -> str:
    """A TLS failure in words: the verification message of a refused certificate (unknown
    CA, host name mismatch, expired), else OpenSSL's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate refused: {exc.verify_message} (code {exc.verify_code})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return f"TLS: {exc}"
