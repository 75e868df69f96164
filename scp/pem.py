"""The certificates of a PEM file, and which of them are roots, without a crypto library:
the node strips a root CA from the chain it sends (``scp.tls``), and needs to know no more
of a certificate than whether its issuer and subject are the same name.
"""

from __future__ import annotations

import re
import ssl

_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def certificates(pem: bytes) -> list[bytes]:
    """The PEM blocks of the certificates in ``pem`` (keys and other blocks left out), in
    file order: the node's own certificate first, then its intermediates."""
    return [m.group(0) for m in _BLOCK.finditer(pem)]


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, where the content starts, where the element ends) of the DER element at ``at``."""
    tag, length, start = der[at], der[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(der[start : start + count], "big"), start + count
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER element")
    return tag, start, end


def self_issued(block: bytes) -> bool:
    """Whether the certificate names itself as its issuer (a root CA, or a self-signed
    certificate): X.509's TBSCertificate is version [0] (optional), serial, signature
    algorithm, issuer, validity, subject."""
    der = ssl.PEM_cert_to_DER_cert(block.decode("ascii"))
    _, certificate, _ = _element(der, 0)
    _, at, _ = _element(der, certificate)  # into TBSCertificate
    tag, _, end = _element(der, at)
    if tag == 0xA0:  # explicit version
        at = end
    for _ in range(2):  # serial number, signature algorithm
        at = _element(der, at)[2]
    issuer_end = _element(der, at)[2]
    issuer = der[at:issuer_end]
    subject_at = _element(der, issuer_end)[2]  # past validity
    return der[subject_at : _element(der, subject_at)[2]] == issuer
