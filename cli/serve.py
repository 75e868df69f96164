"""``ctnode serve``: the node as a long-running service (``node.serve.Node``), with the
process around it: logging, signals, the extra receiving processes.

On SIGTERM or SIGINT the node stops (see ``node.serve``) and the process exits 0. With
``scp.processes`` above 1 this process starts that many minus one receiving processes
(``serve --receiver``) that listen on the same port (SO_REUSEPORT); each dies with it.

``--role`` runs one part of the node (``receiver``, ``worker``, ``sender``, ``api``; default
``all``) so that several processes, on one host over SQLite or on several hosts over
PostgreSQL (``[database] url``), share the work; ``--node-id`` names the process (default:
the host name, with the role when it is not ``all``). README, "Several hosts".

Exit codes: 0 stopped on a signal; 1 the node could not start (e.g. the port is taken); 2 the
configuration, or the configured fusion model, cannot be used.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from types import FrameType

from cli.common import add_config_argument, load_settings
from node import logs
from node.serve import ROLES, Node
from scp import tuning

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--receiver", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="the part of the node this process runs (default: all of them)",
    )
    parser.add_argument(
        "--node-id",
        default="",
        help="this process's name in the index, unique per process "
        "(default: [cluster] node_id, else the host name and the role)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if args.node_id:
        settings = replace(settings, cluster=replace(settings.cluster, node_id=args.node_id))
    logs.configure(settings.logging)
    tuning.quiet_pydicom_validation()
    receiver = args.receiver is not None
    if receiver:
        _die_with_parent()
    pipeline = None
    try:
        if not receiver and settings.worker.count > 0 and args.role in ("all", "worker"):
            # receiving processes never analyse: only the main process loads the analysis stack
            from node.pipeline import AnalysisPipeline  # noqa: PLC0415

            pipeline = AnalysisPipeline(settings)  # refuses an unusable [fusion] model
        node = Node(
            settings,
            role=args.role,
            receiver_only=receiver,
            pipeline=pipeline,
            analyzers=pipeline.ensemble.states if pipeline else None,
        )
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except Exception as exc:  # the index cannot be opened (a database down or refusing)
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        return 1
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    receiving = not receiver and args.role in ("all", "receiver")
    receivers = _start_receivers(args, settings.scp.processes - 1) if receiving else []
    try:
        node.start()
    except (OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        for child in receivers:
            child.terminate()
        return 1
    if receiver:
        os.write(args.receiver, b"1")
        os.close(args.receiver)
    stop.wait()
    for child in receivers:
        child.terminate()
    node.stop()
    for child in receivers:
        child.wait()
    log.info("stopped")
    return 0


def _start_receivers(args: argparse.Namespace, count: int) -> list[subprocess.Popen[bytes]]:
    """Start the extra receiving processes and wait until each listens, so that the port
    is served by all of them from the first connection on."""
    children = []
    for _ in range(count):
        ready, done = os.pipe()
        command = [sys.executable, "-m", "cli", "serve", "--receiver", str(done)]
        if args.config:
            command += ["--config", args.config]
        children.append((subprocess.Popen(command, pass_fds=(done,)), ready))
        os.close(done)
    for child, ready in children:
        if os.read(ready, 1) != b"1":
            log.error("a receiving process failed to start (exit %s)", child.wait())
        os.close(ready)
    return [child for child, _ in children]


def _die_with_parent() -> None:
    """A receiving process must not outlive the main one (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot tie this receiver's life to the main process")
