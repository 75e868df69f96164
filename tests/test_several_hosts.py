"""Black box: the node as several processes, as on several hosts, with real parts: a real
PostgreSQL server (or, the same scenario, SQLite shared by the processes of one host), real
``ctnode serve`` processes (2 receivers, 2 workers, 2 senders, an API), a pynetdicom PACS
that records every C-STORE and answers 0x0111 to a duplicate, small synthetic chest CTs.

On the way: the same study arrives at both receivers at once; a receiver is killed (-9) in the
middle of an association and the modality sends the study again to the other one; a worker is
killed (-9) while it analyses and started again; a worker is killed (-9) after writing its
results and before committing them; another worker is stopped (SIGSTOP) past its lease while
an instance arrives late for the series it analyses, and resumed; the senders are killed (-9)
while the PACS holds an answer back; PostgreSQL restarts mid-run. Afterwards:
every acknowledged instance has its file and row, every series a final state, no job is
claimed, and the PACS holds exactly the SR and SC SOP Instance UIDs the index recorded for
delivery, one report per reported revision; ``ctnode status`` and ``/metrics`` show every
process with its role and heartbeat. ``CTNODE_SOAK_STUDIES`` (``make soak``) sends more
studies.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path

import pydicom
import pytest

from node.index import Index
from tests.cluster import Host, RecordingPacs, store, wait_until
from tests.conftest import ctnode_command, subprocess_env
from tests.node_process import free_port
from tests.phantoms import chest_phantom
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.slow

STUDIES = int(os.environ.get("CTNODE_SOAK_STUDIES", "20"))
LEASE = 4.0
FINAL = {"SENT", "INVALID", "NOT_SELECTED", "FAILED"}
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def late_slice(files: list[Path], folder: Path) -> Path:
    """One more slice past the end of the series (a new SOP Instance UID)."""
    ds = pydicom.dcmread(files[-1])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
        entropy_srcs=[str(ds.SOPInstanceUID), "late"]
    )
    position = [float(v) for v in ds.ImagePositionPatient]
    position[2] += float(ds.SliceThickness)
    ds.ImagePositionPatient = position
    ds.InstanceNumber = int(ds.InstanceNumber) + 1
    path = folder / "late.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def held_job(index: Index, hosts: dict[str, Host]) -> tuple[Host, str] | None:
    """A running job held by a worker that runs (not killed, not stopped): (it, its series)."""
    rows = index.query("SELECT owner, series_uid FROM jobs WHERE state = 'running'")
    for row in rows:
        host = hosts.get(row["owner"] or "")
        if host is not None and host.role == "worker" and host.running() and not host.paused:
            return host, str(row["series_uid"])
    return None


def kill_a_worker_before_commit(
    hosts: dict[str, Host], data: Path, index: Index, killed: list[str]
) -> None:
    """Kill (-9) the first worker seen with its result objects written (in its staging
    folder, ``<job id>-<claim>``) and its job not yet committed; start it again a second
    later."""
    staging = data / "results" / ".staging"
    deadline = time.monotonic() + 240
    while not killed and time.monotonic() < deadline:
        for folder in staging.glob("*-*") if staging.is_dir() else ():
            if not any(folder.glob("*.dcm")):
                continue
            job_id, claim = folder.name.split("-")
            rows = index.query(
                "SELECT owner FROM jobs WHERE id = ? AND claims = ? AND state = 'running'",
                (int(job_id), int(claim)),
            )
            host = hosts.get(rows[0]["owner"] or "") if rows else None
            if host is not None and host.running() and not host.paused:
                host.kill()
                killed.append(host.node_id)
                time.sleep(1.0)
                host.start()
                return
        time.sleep(0.01)


def running_job(index: Index, owners: set[str]) -> str | None:
    rows = index.query("SELECT owner FROM jobs WHERE state = 'running' AND owner IS NOT NULL")
    held = [r["owner"] for r in rows if r["owner"] in owners]
    return held[0] if held else None


def gave_up(worker: Host) -> bool:
    """Whether a worker whose lease ran out noticed: it stopped at its next stage, or its
    result was refused at commit."""
    log = worker.log_text()
    return "late result refused" in log or "job queued again" in log


def kill_senders_mid_answer(hosts: dict[str, Host], pacs: RecordingPacs, index: Index) -> None:
    """At the first delivery, kill (-9) the senders holding rows while the PACS holds its
    answer back; start them again half a lease later."""

    def sending() -> list[str]:
        if not pacs.storing.is_set():
            return []
        rows = index.query("SELECT DISTINCT owner FROM outbox WHERE state = 'PENDING'")
        return [r["owner"] for r in rows if r["owner"] in ("s1", "s2")]

    victims = wait_until("a delivery to wait for its answer", sending, 240)
    for name in victims:
        hosts[name].kill()
    time.sleep(LEASE / 2)
    for name in victims:
        hosts[name].start()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_receivers_workers_and_senders_survive_kills_and_restarts(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg: PostgresServer | None = None
    url = ""
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        pg.reset()
        url = pg.url
    data = tmp_path / "shared"
    pacs = RecordingPacs(delay=0.3)
    env = {
        "CTNODE_STORAGE__DATA_DIR": str(data),
        "CTNODE_STORAGE__FSYNC": "false",
        "CTNODE_CLUSTER__LEASE": str(LEASE),
        "CTNODE_CLUSTER__HEARTBEAT": "0.5",
        "CTNODE_ASSEMBLY__STABLE_AGE": "1",
        "CTNODE_ASSEMBLY__TICK": "0.25",
        "CTNODE_WORKER__POLL": "0.25",
        "CTNODE_WORKER__GRACE": "5",
        "CTNODE_OUTBOX__TICK": "0.5",
        "CTNODE_OUTBOX__BACKOFF_INITIAL": "0.5",
        "CTNODE_OUTBOX__BACKOFF_MAX": "1",
        "CTNODE_OUTBOX__MAX_ATTEMPTS": "1000",
        "CTNODE_OUTBOX__TIMEOUT": "10",
        "CTNODE_DESTINATIONS": json.dumps([pacs.destination]),
    }
    if url:
        env["CTNODE_DATABASE__URL"] = url
    data.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    hosts = {
        name: Host(role, name, env, logs)
        for name, role in [
            ("r1", "receiver"),
            ("r2", "receiver"),
            ("w1", "worker"),
            ("w2", "worker"),
            ("s1", "sender"),
            ("s2", "sender"),
        ]
    }
    api_port = free_port()
    api_env = {**env, "CTNODE_API__ENABLED": "true", "CTNODE_API__PORT": str(api_port)}
    hosts["a1"] = Host("api", "a1", api_env, logs)
    studies = [chest_phantom(tmp_path / f"study{k}", f"hosts{k}") for k in range(STUDIES)]
    by_series = {
        str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID): files
        for files in studies
    }
    acknowledged: set[str] = set()
    index: Index | None = None
    try:
        hosts["r1"].start()
        time.sleep(1.0)  # the first receiver creates or migrates the schema
        index = opened = Index(data, url=url, node_id="test")
        for host in hosts.values():
            if host.proc is None:
                host.start()
        for host in hosts.values():
            wait_until(f"{host.node_id} to start", partial(host.ready, opened), 90)
        r1, r2 = hosts["r1"], hosts["r2"]
        senders_killed = threading.Thread(
            target=kill_senders_mid_answer, args=(hosts, pacs, opened)
        )
        senders_killed.start()
        killed_before_commit: list[str] = []
        before_commit = threading.Thread(
            target=kill_a_worker_before_commit, args=(hosts, data, opened, killed_before_commit)
        )
        before_commit.start()

        # the same study at both receivers at once: stored once
        both = [threading.Thread(target=lambda p=p: acknowledged.update(store(p, studies[0])))
                for p in (r1.port, r2.port)]  # fmt: skip
        for t in both:
            t.start()
        for t in both:
            t.join()

        # a receiver killed in the middle of an association; the modality sends it again
        def kill_r1(count: int) -> None:
            if count == 10:
                r1.kill()

        if STUDIES > 1:
            acknowledged.update(store(r1.port, studies[1], on_ack=kill_r1))
            acknowledged.update(store(r2.port, studies[1]))
            r1.start()
            wait_until("r1 to restart", lambda: r1.ready(index), 60)
        for k in range(2, STUDIES):
            acknowledged.update(store((r1, r2)[k % 2].port, studies[k]))

        # a worker killed (-9) in the middle of an analysis
        victim = wait_until("a worker to analyse", partial(running_job, opened, {"w1", "w2"}), 120)
        hosts[victim].kill()

        # a late instance for a series another worker is analysing, and that worker stopped
        # past its lease while it holds the job, then resumed
        holder, late_series = wait_until(
            "a live worker to analyse", partial(held_job, opened, hosts), 120
        )
        holder.pause()
        late_files = by_series[late_series]
        acknowledged.update(store(r2.port, [late_slice(late_files, tmp_path)]))
        time.sleep(LEASE + 2.0)
        holder.resume()
        hosts[victim].start()

        if pg is not None:  # the database goes away for a moment
            pg.restart(down_for=1.0)

        senders_killed.join(240)
        assert not senders_killed.is_alive()

        def settled() -> bool:
            series = index.query("SELECT state FROM series")
            jobs = index.query("SELECT state FROM jobs WHERE state IN ('queued', 'running')")
            pending = index.query("SELECT id FROM outbox WHERE state != 'DONE'")
            return (
                len(series) == STUDIES
                and all(s["state"] in FINAL for s in series)
                and not (jobs or pending)
            )

        wait_until("every series to reach a final state", settled, 300)

        # every acknowledged instance has its row and its file
        rows = {r["sop_instance_uid"]: r["path"] for r in index.query(
            "SELECT sop_instance_uid, path FROM instances")}  # fmt: skip
        assert acknowledged <= set(rows)
        assert all((data / "store" / rows[uid]).is_file() for uid in acknowledged)
        counts = index.query("SELECT series_uid, instance_count FROM series")
        for row in counts:
            n = index.query(
                "SELECT COUNT(*) AS n FROM instances WHERE series_uid = ?", (row["series_uid"],)
            )[0]["n"]
            assert row["instance_count"] == n  # the instances both receivers got count once
        late = index.query("SELECT instance_count FROM series WHERE series_uid = ?", (late_series,))
        assert late[0]["instance_count"] == len(late_files) + 1

        # every series final (reported ones sent), no claim outlives its lease
        states = [s["state"] for s in index.query("SELECT state FROM series")]
        assert states == ["SENT"] * STUDIES, states
        assert not index.query("SELECT id FROM jobs WHERE owner IS NOT NULL")
        if pg is not None:  # every job went through procrastinate, and none of its tasks waits
            assert not index.query("SELECT id FROM jobs WHERE task_id IS NULL")
            left = index.query(
                "SELECT id FROM procrastinate_jobs WHERE queue_name = 'analysis' "
                "AND status IN ('todo', 'doing')"
            )
            assert not left, left

        # the stopped worker gave its job up (at its next stage) or had its result refused
        wait_until("the resumed worker to give up", partial(gave_up, holder), 60)
        # a worker killed after writing its results, before committing them
        before_commit.join(60)
        assert killed_before_commit, "no worker was caught between its results and its commit"
        # the object whose answer a killed sender never read was sent again: a duplicate
        assert 0x0111 in pacs.answered

        # the PACS holds exactly what the index recorded for delivery, one report per revision
        delivered = {r["sop_instance_uid"] for r in index.query(
            "SELECT DISTINCT sop_instance_uid FROM outbox")}  # fmt: skip
        assert set(pacs.received) == delivered
        reported = index.query(
            "SELECT series_uid, COUNT(*) AS n FROM results WHERE state = 'REPORTED' "
            "GROUP BY series_uid"
        )
        srs = index.query(
            "SELECT o.series_uid, COUNT(DISTINCT o.sop_instance_uid) AS n FROM outbox o "
            "WHERE o.kind = 'sr' GROUP BY o.series_uid"
        )
        assert {r["series_uid"]: r["n"] for r in srs} == {r["series_uid"]: r["n"] for r in reported}
        assert len(reported) == STUDIES

        # ctnode status and /metrics show every process: role, heartbeat, claims
        status = subprocess.run(
            ctnode_command("status", "--json"), env=subprocess_env(**env), capture_output=True,
            text=True, timeout=60, check=True,
        )  # fmt: skip
        nodes = {n["node_id"]: n for n in json.loads(status.stdout)["nodes"]}
        if pg is not None:  # the queue's tasks: only periodic ones, none for analysis left
            queue = json.loads(status.stdout)["queue_tasks"]
            assert all(t["queue"] in ("assembly", "maintenance") for t in queue), queue
        assert {k: n["role"] for k, n in nodes.items()} == {k: h.role for k, h in hosts.items()}
        assert all(n["state"] == "running" and n["heartbeat_age"] < LEASE for n in nodes.values())
        text = subprocess.run(
            ctnode_command("status"), env=subprocess_env(**env), capture_output=True, text=True,
            timeout=60, check=True,
        ).stdout  # fmt: skip
        assert "HEARTBEAT" in text and re.search(r"^w1 +worker +\S+ +running +\d+s ago", text, re.M)
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        for name, host in hosts.items():
            labels = f'host="[^"]+",node_id="{name}",role="{host.role}"'
            assert re.search(rf"^ctnode_node_heartbeat_age_seconds\{{{labels}\}} \d", metrics, re.M)
        assert 'ctnode_jobs{state="done"}' in metrics
        if pg is not None:  # the queue's own tasks: the periodic ones come and go
            assert "# TYPE ctnode_queue_tasks gauge" in metrics

        for host in hosts.values():
            assert host.stop() == 0, host.log_text()[-3000:]
        stopped = index.query("SELECT node_id, state FROM nodes ORDER BY node_id")
        assert [(n["node_id"], n["state"]) for n in stopped] == [
            (name, "stopped") for name in sorted(hosts)
        ]
    finally:
        for host in hosts.values():
            host.stop()
        pacs.stop()
        if index is not None:
            index.close()
