"""Two OpenSSL settings Python's ``ssl`` does not expose, set on the ``SSL_CTX`` behind an
``ssl.SSLContext`` through the very libssl the ``_ssl`` module runs on:

- **acceptable CA names** (``SSL_CTX_set_client_CA_list``): the certificate request names
  the CAs the node trusts, so a client holding several certificates can choose the one the
  node will accept (without them it must guess, and DCMTK's and Java's clients then send
  none);
- **no chain completion** (``SSL_MODE_NO_AUTO_CHAIN``): left alone, OpenSSL completes a
  certificate file that holds no intermediates from the trust store, root included, and
  sends that root on every handshake. The peer must hold the root already (it is its trust
  anchor; RFC 8446 4.4.2 lets the sender omit it), so the node sends its certificate and the
  intermediates its file holds, nothing more.

The ``SSL_CTX`` pointer is the first field after the object header of CPython's
``PySSLContext`` (Modules/_ssl.c, unchanged since 3.x began); it is used only after
OpenSSL, asked through it, reports the same options and verify mode as the Python object:
a build where that does not hold (OpenSSL linked statically and hidden, another layout)
gets a warning naming what the node cannot do there, never a wrong pointer.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
from functools import cache

log = logging.getLogger(__name__)

SSL_CTRL_MODE = 33
SSL_MODE_NO_AUTO_CHAIN = 0x8
# ssl.CERT_* -> the SSL_VERIFY_* flags _ssl sets for it (PEER = 1, FAIL_IF_NO_PEER_CERT = 2)
_VERIFY_FLAGS = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}


class NativeUnavailable(RuntimeError):
    """The ``SSL_CTX`` behind a context cannot be reached safely on this build."""


@cache
def _libssl() -> ctypes.CDLL:
    """libssl as ``_ssl`` loaded it: symbols are looked up in ``_ssl`` and the libraries it
    links, so they are the same OpenSSL's whatever else is installed."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_load_client_CA_file.argtypes = [ctypes.c_char_p]
        lib.SSL_load_client_CA_file.restype = ctypes.c_void_p
        lib.SSL_CTX_set_client_CA_list.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.SSL_CTX_set_client_CA_list.restype = None
    except (OSError, AttributeError) as exc:
        raise NativeUnavailable(f"libssl's functions are not reachable from _ssl: {exc}") from exc
    return lib


def _ssl_ctx(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` behind ``context``, checked against what Python says of it."""
    lib = _libssl()
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise NativeUnavailable("no SSL_CTX pointer where CPython keeps it")
    options = lib.SSL_CTX_get_options(pointer)
    verify = lib.SSL_CTX_get_verify_mode(pointer)
    if options != int(context.options) or verify != _VERIFY_FLAGS[context.verify_mode]:
        raise NativeUnavailable("the SSL_CTX found does not match the Python context")
    return pointer


def send_no_root(context: ssl.SSLContext) -> None:
    """Send the certificate and its file's intermediates only: never complete the chain
    from the trust store (which would add the root)."""
    pointer = _ssl_ctx(context)
    _libssl().SSL_CTX_ctrl(pointer, SSL_CTRL_MODE, SSL_MODE_NO_AUTO_CHAIN, None)


def name_acceptable_cas(context: ssl.SSLContext, ca_certificates: str) -> None:
    """Name the subjects of ``ca_certificates`` in the certificate request."""
    pointer = _ssl_ctx(context)
    names = _libssl().SSL_load_client_CA_file(ca_certificates.encode())
    if not names:
        raise NativeUnavailable(f"OpenSSL read no CA names from {ca_certificates}")
    _libssl().SSL_CTX_set_client_CA_list(pointer, names)  # the context owns them now


def apply(context: ssl.SSLContext, what: str, ca_certificates: str = "") -> None:
    """Both settings where they apply (CA names only on a server asking for certificates);
    where this build cannot, a warning says what the peer will see instead."""
    try:
        send_no_root(context)
        if ca_certificates:
            name_acceptable_cas(context, ca_certificates)
    except NativeUnavailable as exc:
        log.warning(
            "%s: %s; OpenSSL's defaults stay: the chain sent may include the root CA%s",
            what,
            exc,
            " and the certificate request names no CAs" if ca_certificates else "",
        )
