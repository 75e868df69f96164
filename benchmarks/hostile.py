"""The storage SCP's memory under hostile peers: peak RSS of ``ctnode serve`` during each
attack, against a normal push of a real CT in the same run.

Each row resets the node's peak (``/proc/PID/clear_refs``), runs one attack at the scale
the SCP's issue describes (400 MB of command fragments, 16 associations at once, floods of
idle connections) and reads the peak back. The limits make every attack cost about what an
ordinary association costs; the table shows by how much.

    python benchmarks/hostile.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from scp import upper_layer as ul
from tests import hostile_peer as peer
from tests.conftest import TESTDATA
from tests.factory import ct_series
from tests.node_process import NodeProcess


def _in_parallel(count: int, attack: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=attack, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)


def command_flood(port: int) -> None:
    """16 associations, each sending 400 MB of command fragments that never end."""

    def one(k: int) -> None:
        sock, _ = peer.associate(port, source=f"127.0.1.{k % 2 + 1}")
        fragment = peer.p_data(peer.pdv(1, 0x01, b"\0" * 1_000_000))
        try:
            for _ in range(400):
                sock.sendall(fragment)
        except OSError:
            pass
        sock.close()

    _in_parallel(16, one)


def oversized_data_sets(port: int) -> None:
    """16 associations, each sending a 200 MB data set (over max_instance_mb = 64)."""
    ds = ct_series(1, 64, 64, seed="oversize")[0]

    def one(k: int) -> None:
        sock, _ = peer.associate(port, source=f"127.0.2.{k % 2 + 1}")
        sock.sendall(peer.p_data(peer.pdv(1, 0x03, peer.store_command(str(ds.SOPInstanceUID)))))
        chunk = b"\0" * 1_000_000
        try:
            for m in range(200):
                sock.sendall(peer.p_data(peer.pdv(1, 0x02 if m == 199 else 0x00, chunk)))
            assert peer.read_answer(sock).status == 0xA700
        except OSError:
            pass
        sock.close()

    _in_parallel(16, one)


def idle_connections(port: int) -> None:
    """500 connections from 50 addresses that never send a byte, held for 3 s."""
    held = []
    for k in range(500):
        with contextlib.suppress(OSError):
            held.append(peer.connect(port, source=f"127.0.3.{k % 50 + 1}"))
    time.sleep(3)
    for sock in held:
        sock.close()


def trickled_requests(port: int) -> None:
    """16 A-ASSOCIATE-RQs trickled a byte every 0.5 s until the node gives up."""

    def one(k: int) -> None:
        sock = peer.connect(port, source=f"127.0.4.{k % 8 + 1}")
        peer.trickle(sock, peer.associate_rq(), interval=0.5, limit=30)
        sock.close()

    _in_parallel(16, one)


def huge_pdu_headers(port: int) -> None:
    """16 associations announcing a P-DATA-TF of 4 GB."""

    def one(k: int) -> None:
        sock, _ = peer.associate(port, source=f"127.0.5.{k % 2 + 1}")
        sock.sendall(ul.pdu(ul.P_DATA_TF, b"")[:2] + b"\xff\xff\xff\xf0" + b"\0" * 65536)
        peer.read_answer(sock)
        sock.close()

    _in_parallel(16, one)


def normal_push(node: NodeProcess, files: list[Path]) -> Callable[[int], None]:
    def push(_port: int) -> None:
        node.storescu(files)

    return push


def peak_mib(pid: int) -> float:
    return peer.rss_mib(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    with tempfile.TemporaryDirectory() as folder:
        node = NodeProcess(
            Path(folder) / "data",
            scp__max_instance_mb="64",
            worker__count="0",
            api__enabled="false",
        ).start()
        assert node.proc is not None
        pid = node.proc.pid
        real = TESTDATA / "chest-ct-100-lung"
        files = sorted(real.glob("*.dcm")) if real.is_dir() else []
        if not files:
            files = []
            for k, ds in enumerate(ct_series(100, 512, 512, seed="bench")):
                files.append(Path(folder) / f"{k}.dcm")
                ds.save_as(files[-1], enforce_file_format=True)
        rows: list[tuple[str, float, float, float]] = []
        attacks: list[tuple[str, Callable[[int], None]]] = [
            ("normal push: 100-slice CT, storescu", normal_push(node, files)),
            ("16 assoc x 400 MB command fragments", command_flood),
            ("16 assoc x 200 MB data set, limit 64 MB", oversized_data_sets),
            ("500 idle connections, 50 addresses", idle_connections),
            ("16 trickled A-ASSOCIATE-RQs", trickled_requests),
            ("16 assoc x PDU header of 4 GB", huge_pdu_headers),
        ]
        for name, attack in attacks:
            time.sleep(1)
            before = peer.rss_mib(pid)
            reset_peak(pid)
            started = time.monotonic()
            attack(node.port)
            rows.append((name, before, peak_mib(pid), time.monotonic() - started))
        node.storescu(files[:5])  # and the node still serves
        node.stop()
    baseline = rows[0][2]
    print(f"{'attack':44} {'RSS before':>11} {'peak RSS':>9} {'vs push':>8} {'seconds':>8}")
    for name, before, peak, seconds in rows:
        print(f"{name:44} {before:9.0f} MB {peak:6.0f} MB {peak / baseline:7.2f}x {seconds:8.1f}")


if __name__ == "__main__":
    main()
