"""``ctnode echo``: a DICOM C-ECHO (verification, PS3.4 Annex A) against a node, by default
this one; exit 0 when it answers Success. The container's health check uses it."""

from __future__ import annotations

import argparse
import sys

from pynetdicom import AE

from cli.common import add_config_argument, load_settings
from scp.requestor import Requestor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--host", help="address (default: this node, on loopback)")
    parser.add_argument("--port", type=int, help="port (default: scp.port)")
    parser.add_argument("--aec", help="called AE title (default: scp.ae_title)")
    parser.add_argument("--aet", default="CTNODE-ECHO", help="calling AE title")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    host = args.host or (
        "127.0.0.1" if settings.scp.host in ("0.0.0.0", "::") else settings.scp.host
    )
    port = args.port or settings.scp.port
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = Requestor(ae.associate(host, port, ae_title=args.aec or settings.scp.ae_title))
    if not assoc.is_established:
        print(f"no association with {host}:{port}", file=sys.stderr)
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
