"""``ctnode serve``: the node as a long-running service.

Start-up order matters: recover the data directory first, then listen, then assemble. On
SIGTERM or SIGINT the listener closes (in-flight stores finish their handler), the
scheduler stops between ticks, and the process exits 0.

With ``scp.processes`` above 1 the main process starts that many minus one receiving
processes (``serve --receiver``) that listen on the same port (SO_REUSEPORT) and write into
the same spool and index; pynetdicom's association threads share one GIL, so this is how
concurrent associations use more than one core. Only the main process recovers and
assembles.
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
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from config import Settings
from node import logs
from node.assembly import Assembly, schedule
from node.common import add_config_argument, load_settings
from node.index import Index
from node.recovery import recover
from scp import tuning
from scp.server import StorageSCP
from scp.spool import Spool

HELP = "run the node: storage SCP, series assembly"

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class Node:
    """The wired service; ``start``/``stop`` so tests can run it in-process too."""

    def __init__(self, settings: Settings, *, receiver_only: bool = False) -> None:
        self.settings = settings
        self.receiver_only = receiver_only
        root = settings.storage.root
        self.spool = Spool(root, fsync=settings.storage.fsync)
        self.index = Index(root)
        self.scp = StorageSCP(settings.scp, self.spool, self.index)
        self.assembly = Assembly(self.index, settings.assembly.stable_age)
        self._scheduler: BackgroundScheduler | None = None

    def start(self) -> None:
        if not self.receiver_only:
            recover(self.index, self.spool)
        self.scp.start()
        if not self.receiver_only:
            self._scheduler = schedule(self.assembly, self.settings.assembly.tick)

    def stop(self) -> None:
        self.scp.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.index.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--receiver", type=int, metavar="FD", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    logs.configure(settings.logging)
    tuning.quiet_pydicom_validation()
    receiver = args.receiver is not None
    if receiver:
        _die_with_parent()
    node = Node(settings, receiver_only=receiver)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    receivers = [] if receiver else _start_receivers(args, settings.scp.processes - 1)
    try:
        node.start()
    except OSError as exc:
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
        command = [sys.executable, "-m", "node", "serve", "--receiver", str(done)]
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
