"""Ingest benchmark: DCMTK storescu pushing to DCMTK storescp (the reference) and to
``ctnode serve``, alternately, in one run.

Datasets: the two real chest CTs of ../shared/testdata (348 files) and a synthetic 500-slice
512x512 series. Each case runs with 1 and 4 concurrent associations (4 storescu processes,
each sending a quarter of the files). Printed: instances/s, MB/s, the receiver's CPU time
per instance (user + system, all its processes: steadier than wall time on a shared
machine), the senders' CPU time per instance (all storescu processes), what the machine's
cores could carry if sender and receiver kept all of them busy ("CPU bound": cores x MB per
instance / CPU seconds per instance, both sides together; with 4 associations on 2 cores
the runs come close to it), its peak RSS, and the ratio ctnode/storescp. Every receiver
starts fresh for every run (new data dir).

    python benchmarks/ingest.py [--repeat 3] [--datasets real synthetic] [--processes 1 2]
                                [--associations 1 4] [--baseline DIR] [--bare] [--tls]

``--tls`` adds DICOM TLS rows: storescu ``+tla`` (verifying the receiver's certificate, none
of its own) pushing to ``storescp +tls`` and to ``ctnode serve`` with ``[scp.tls]`` on (its
default profile, BCP 195 Non-Downgrading; certificates made with ``openssl`` for the run);
their "vs storescp" column compares against storescp over TLS.

``--bare`` adds the issue's other reference, a bare pynetdicom SCP writing the raw received
bytes (``benchmarks/bare_scp.py``), without and with an fsync per instance: the issue set
its targets against such a receiver's speed on another machine. storescp writes without
fsync; ctnode runs with its defaults (fsync on). TCP_NODELAY=1 is set
for both DCMTK tools: Debian's DCMTK 3.6.7 leaves Nagle's algorithm on otherwise.

What each run received stays on disk until the benchmark ends, and the page cache is
written back (``os.sync``) between runs: on ext4 without a journal an inode freed less
than a minute ago is not reused, and every file creation scans past such inodes, so
deleting one run's hundreds of files made each file creation of the next run cost about
1 ms of CPU (measured in ``ctnode serve``: 1.15 ms against 0.13-0.22 ms). A receiving node
does not delete as it receives; neither does the benchmark now.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    TESTDATA,
    children,
    peak_rss_mb,
    process_tree,
    synthetic_series,
)
from tests.node_process import free_port, wait_for_port  # noqa: E402

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass(frozen=True)
class Result:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    sender_cpu_seconds: float


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    certificate: Path
    key: Path


def make_tls_files(folder: Path) -> TLSFiles:
    """A throwaway CA and a certificate for 127.0.0.1, made with ``openssl``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key = folder / "ca_key.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench CA",
            "-keyout", str(ca_key), "-out", str(files.ca))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(files.key), "-out", str(folder / "req.pem"))  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", str(folder / "req.pem"), "-CA", str(files.ca), "-CAkey",
            str(ca_key), "-CAcreateserial", "-days", "1", "-extfile", str(folder / "ext.cnf"),
            "-out", str(files.certificate))  # fmt: skip
    files.key.chmod(0o600)
    return files


def push(
    files: Sequence[Path],
    port: int,
    ae_title: str,
    associations: int,
    tls: TLSFiles | None = None,
) -> tuple[float, float]:
    """Wall seconds and the storescu processes' CPU seconds (the only children that end
    during the push)."""
    tls_args = ["+tla", "+cf", str(tls.ca)] if tls is not None else []
    groups = [list(files[i::associations]) for i in range(associations)]
    cpu = _children_cpu()
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                *("storescu", "-xs", *tls_args, "-aec", ae_title),
                *("127.0.0.1", str(port), *map(str, group)),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for group in groups
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - start, _children_cpu() - cpu


def run_storescp(
    files: Sequence[Path], associations: int, workdir: Path, tls: TLSFiles | None = None
) -> Result:
    tls_args = ["+tls", str(tls.key), str(tls.certificate), "-ic"] if tls is not None else []
    return _run_reference(
        lambda port, out: ["storescp", "+xa", *tls_args, "-od", str(out), str(port)],
        "STORESCP",
        files,
        associations,
        workdir,
        tls,
    )


def run_bare(files: Sequence[Path], associations: int, workdir: Path, fsync: bool) -> Result:
    """The bare pynetdicom SCP of ``benchmarks/bare_scp.py``, with or without fsync."""
    script = str(REPO / "benchmarks" / "bare_scp.py")
    return _run_reference(
        lambda port, out: [sys.executable, script, str(port), str(out)] + ["--fsync"] * fsync,
        "BARESCP",
        files,
        associations,
        workdir,
    )


def _run_reference(
    command: Callable[[int, Path], list[str]],
    ae_title: str,
    files: Sequence[Path],
    associations: int,
    workdir: Path,
    tls: TLSFiles | None = None,
) -> Result:
    """A reference receiver that writes one file per instance into a folder of its own."""
    out = Path(tempfile.mkdtemp(prefix="reference-", dir=workdir))
    port = free_port()
    proc = subprocess.Popen(
        command(port, out), env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, timeout=30.0)
        cpu = cpu_seconds([proc.pid])
        seconds, sender = push(files, port, ae_title, associations, tls)
        cpu = cpu_seconds([proc.pid]) - cpu
        rss = peak_rss_mb([proc.pid])
    finally:
        proc.terminate()
        proc.wait()
    received = sum(1 for _ in out.iterdir())
    if received != len(files):
        raise RuntimeError(f"{ae_title} stored {received} of {len(files)} files")
    os.sync()
    return Result(seconds, rss, cpu, sender)


def run_ctnode(
    files: Sequence[Path],
    associations: int,
    workdir: Path,
    processes: int,
    tree: Path = REPO,
    tls: TLSFiles | None = None,
) -> Result:
    data = Path(tempfile.mkdtemp(prefix="ctnode-", dir=workdir))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "CTNODE_SCP__PORT": str(port),
        "CTNODE_SCP__HOST": "127.0.0.1",
        "CTNODE_SCP__PROCESSES": str(processes),
        "CTNODE_STORAGE__DATA_DIR": str(data),
        "CTNODE_ASSEMBLY__STABLE_AGE": "3600",
        "CTNODE_LOGGING__LEVEL": "WARNING",
        "CTNODE_API__ENABLED": "false",
    }
    if tls is not None:
        env["CTNODE_SCP__TLS__ENABLED"] = "true"
        env["CTNODE_SCP__TLS__CERTIFICATE"] = str(tls.certificate)
        env["CTNODE_SCP__TLS__PRIVATE_KEY"] = str(tls.key)
    proc = subprocess.Popen(
        # trees before the command line moved to cli/ (--baseline) run it as ``-m node``
        [sys.executable, "-m", "cli" if (tree / "cli").is_dir() else "node", "serve"],
        cwd=tree,  # ``-m`` puts the working directory first on the path
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=30.0)
        cpu = cpu_seconds(process_tree(proc.pid))
        seconds, sender = push(files, port, "CTNODE", associations, tls)
        cpu = cpu_seconds(process_tree(proc.pid)) - cpu
        rss = peak_rss_mb([proc.pid, *children(proc.pid)])
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    stored = sum(1 for p in (data / "store").rglob("*.dcm"))
    if stored != len(files):
        raise RuntimeError(
            f"ctnode stored {stored} of {len(files)} files: {err.decode(errors='replace')[-800:]}"
        )
    os.sync()
    return Result(seconds, rss, cpu, sender)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median shown)")
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=["real", "synthetic"],
        default=["real", "synthetic"],
        help="which datasets to push",
    )
    parser.add_argument("--skip-synthetic", action="store_true", help="same as --datasets real")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="ctnode receiving-process counts to compare",
    )
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the ctnode of this source tree (e.g. `git archive REV | tar -x -C DIR`)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also run the issue's reference receiver, a bare pynetdicom SCP "
        "(benchmarks/bare_scp.py), without and with fsync",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also push over DICOM TLS to storescp +tls and to ctnode with [scp.tls]",
    )
    args = parser.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install dcmtk", file=sys.stderr)
            return 2

    datasets: dict[str, list[Path]] = {}
    real = [TESTDATA / "chest-ct-100-lung", TESTDATA / "chest-ct-248-pneumonia-jpegll"]
    if "real" in args.datasets and all(p.is_dir() for p in real):
        datasets["2 real chest CTs"] = sorted(f for d in real for f in d.glob("*.dcm"))
    elif "real" in args.datasets:
        print("real test data absent: skipping the real chest CTs", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="ctnode-bench-") as tmp:
        workdir = Path(tmp)
        if "synthetic" in args.datasets and not args.skip_synthetic:
            datasets["synthetic 500x512x512"] = synthetic_series(workdir / "synthetic")
        tls = make_tls_files(workdir / "tls") if args.tls else None
        rows = []
        cores = os.cpu_count() or 1
        for name, files in datasets.items():
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            for associations in args.associations:
                trees = {"ctnode": REPO}
                if args.baseline is not None:
                    trees["ctnode (baseline)"] = args.baseline.resolve()
                receivers: dict[str, list[Result]] = {"storescp": []}
                if args.bare:
                    receivers["pynetdicom bare"] = []
                    receivers["pynetdicom bare, fsync"] = []
                for label in trees:
                    for processes in args.processes:
                        receivers[f"{label} p={processes}"] = []
                if tls is not None:
                    receivers["storescp TLS"] = []
                    for processes in args.processes:
                        receivers[f"ctnode TLS p={processes}"] = []
                for _ in range(args.repeat):
                    receivers["storescp"].append(run_storescp(files, associations, workdir))
                    if args.bare:
                        for fsync, label in ((False, "bare"), (True, "bare, fsync")):
                            receivers[f"pynetdicom {label}"].append(
                                run_bare(files, associations, workdir, fsync)
                            )
                    for label, tree in trees.items():
                        for processes in args.processes:
                            receivers[f"{label} p={processes}"].append(
                                run_ctnode(files, associations, workdir, processes, tree)
                            )
                    if tls is not None:
                        receivers["storescp TLS"].append(
                            run_storescp(files, associations, workdir, tls)
                        )
                        for processes in args.processes:
                            receivers[f"ctnode TLS p={processes}"].append(
                                run_ctnode(files, associations, workdir, processes, REPO, tls)
                            )
                for receiver, results in receivers.items():
                    against = "storescp TLS" if "TLS" in receiver else "storescp"
                    reference = statistics.median(r.seconds for r in receivers[against])
                    seconds = statistics.median(r.seconds for r in results)
                    rss = max(r.peak_rss_mb for r in results)
                    cpu = statistics.median(r.cpu_seconds for r in results)
                    sender = statistics.median(r.sender_cpu_seconds for r in results)
                    rows.append(
                        (
                            name,
                            len(files),
                            associations,
                            receiver,
                            len(files) / seconds,
                            megabytes / seconds,
                            1000 * cpu / len(files),
                            1000 * sender / len(files),
                            cores * megabytes / (cpu + sender),
                            rss,
                            reference / seconds,
                        )
                    )
                    print(_row(rows[-1]), file=sys.stderr, flush=True)
    print()
    header = (
        "dataset",
        "files",
        "assocs",
        "receiver",
        "inst/s",
        "MB/s",
        "CPU ms/inst",
        "sender CPU ms/inst",
        "CPU bound MB/s",
        "peak RSS MB",
        "vs storescp",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print(_row(row))
    return 0


def _row(row: tuple[object, ...]) -> str:
    name, files, assocs, receiver, ips, mbs, cpu, sender, bound, rss, ratio = row
    return (
        f"| {name} | {files} | {assocs} | {receiver} | {ips:.0f} | {mbs:.0f} | {cpu:.2f} | "
        f"{sender:.2f} | {bound:.0f} | {rss:.0f} | {ratio:.2f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
