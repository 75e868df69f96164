"""``ctnode echo``: a DICOM C-ECHO (verification, PS3.4 Annex A) against a node, by default
this one; exit 0 when it answers Success, 1 otherwise (2: settings unusable). The
container's health check uses it.

With ``[scp.tls]`` enabled it speaks TLS in the node's profile: by default it trusts exactly
the node's own certificate (pinned, so the name it is reached by on loopback need not be in
it), or the CAs of ``--ca`` (the host name then checked); when the node requires client
certificates it presents the node's own certificate and key.
"""

from __future__ import annotations

import argparse
import ssl
import sys

from pynetdicom import AE

from cli.common import add_config_argument, load_settings
from config import ConfigError, TLSSettings
from scp.requestor import request
from scp.tls import client_context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--host", help="address (default: this node, on loopback)")
    parser.add_argument("--port", type=int, help="port (default: scp.port)")
    parser.add_argument("--aec", help="called AE title (default: scp.ae_title)")
    parser.add_argument("--aet", default="CTNODE-ECHO", help="calling AE title")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--ca", help="with TLS, verify the peer against these CAs (default: pin scp.tls's own)"
    )


def tls_context(tls: TLSSettings, ca: str | None) -> ssl.SSLContext:
    """A requestor context for the node's own TLS settings (see the module docstring)."""
    own = tls.require_client_certificate
    context = client_context(
        ca_certificates=ca or tls.certificate,
        certificate=tls.certificate if own else "",
        private_key=tls.private_key if own else "",
        passphrase_file=tls.private_key_passphrase_file if own else "",
        profile=tls.profile,
        min_version=tls.min_version,
        section="scp.tls",
    )
    if not ca:  # the node's own certificate is the trust anchor, whatever its issuer
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
    return context


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    host = args.host or (
        "127.0.0.1" if settings.scp.host in ("0.0.0.0", "::") else settings.scp.host
    )
    port = args.port or settings.scp.port
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    tls_args = None
    if settings.scp.tls.enabled:
        try:
            tls_args = (tls_context(settings.scp.tls, args.ca), host)
        except ConfigError as exc:
            print(f"ctnode echo: {exc}", file=sys.stderr)
            return 1
    called = args.aec or settings.scp.ae_title
    assoc = request(ae, host, port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        why = ""
        if assoc.rejection is not None:
            r = assoc.rejection
            why = f": rejected (result {r.result}, source {r.source}, reason {r.reason})"
        print(f"no association with {host}:{port}{why}", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = int(getattr(status, "Status", -1))
    if code != 0:
        print(
            f"C-ECHO answered 0x{code:04X}" if code >= 0 else "no C-ECHO response", file=sys.stderr
        )
        return 1
    print(f"{host}:{port} answered C-ECHO")
    return 0
