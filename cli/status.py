"""``ctnode status``: studies and series with their state, instance count and age.

Reads the index read-only, so it works while the node runs (WAL lets readers in beside the
writer). UIDs are shown as the same short hashes the logs use, so an operator can match a
line here to the log without the screen showing identifiers; ``--json`` gives full records.
With ``[database] url`` it reads the shared PostgreSQL index, and shows every serving
process of every host: its role, the seconds since its last heartbeat, what it holds, and
the job queue's (procrastinate's) tasks waiting and running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cli.common import add_config_argument, load_settings
from node.index import DB_NAME, Index
from scp.uids import uid_hash


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON records")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    url = settings.database.url
    if not url and not (settings.storage.root / DB_NAME).exists():
        print(f"no index in {settings.storage.root}: nothing received yet", file=sys.stderr)
        return 1
    try:
        index = Index(settings.storage.root, read_only=True, url=url, pool_size=1)
        series = index.query(
            "SELECT s.study_uid, s.series_uid, s.modality, s.series_number, s.description, "
            "s.state, s.reason, s.instance_count, s.last_received_epoch, s.revision "
            "FROM series s ORDER BY s.last_received_epoch DESC"
        )
        jobs = index.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        deliveries = index.query(
            "SELECT id, destination, kind, series_uid, attempts, reason, updated FROM outbox "
            "WHERE state = 'FAILED' ORDER BY id"
        )
        pending = index.query("SELECT COUNT(*) AS n FROM outbox WHERE state = 'PENDING'")
        retrying = index.query(
            "SELECT id, destination, kind, series_uid, attempts, reason, updated FROM outbox "
            "WHERE state = 'PENDING' AND attempts > 0 ORDER BY id"
        )
        nodes = index.nodes() if _has_nodes(index) else []
        tasks = index.queue_tasks()
        index.close()
    except Exception as exc:  # sqlite3.Error, or psycopg's when the database is away
        print(f"cannot read the index: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for node in nodes:
        node["heartbeat_age"] = round(float(node["heartbeat_age"]), 1)
    now = time.time()
    for row in series:
        row["age_seconds"] = round(now - row.pop("last_received_epoch"), 1)
    if args.json:
        summary = {
            "series": series,
            "jobs": {j["state"]: j["n"] for j in jobs},
            "failed_deliveries": deliveries,
            "pending_deliveries": pending[0]["n"],
            "retrying_deliveries": retrying,
            "nodes": nodes,
            "queue_tasks": tasks,
        }
        print(json.dumps(summary, indent=2))
        return 0
    print(render(series, jobs))
    if nodes:
        print("\n" + render_nodes(nodes))
    if tasks:
        print("queue tasks: " + ", ".join(f"{t['queue']} {t['n']} {t['status']}" for t in tasks))
    if deliveries:
        print(f"\n{len(deliveries)} failed deliveries (ctnode retry [ID ...] re-queues them):")
        for d in deliveries:
            print(
                f"  {d['id']:>6}  {d['destination']}  {d['kind']}  "
                f"after {d['attempts']} attempts: {d['reason']}"
            )
    if retrying:
        print(f"\n{len(retrying)} deliveries to be tried again:")
        for d in retrying:
            print(
                f"  {d['id']:>6}  {d['destination']}  {d['kind']}  "
                f"after {d['attempts']} attempts: {d['reason']}"
            )
    return 0


def render(series: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> str:
    header = ("STUDY", "SERIES", "MOD", "NO", "STATE", "INSTANCES", "AGE", "DESCRIPTION/REASON")
    rows = [header]
    for s in series:
        rows.append(
            (
                uid_hash(s["study_uid"]),
                uid_hash(s["series_uid"]),
                s["modality"] or "",
                "" if s["series_number"] is None else str(s["series_number"]),
                s["state"],
                str(s["instance_count"]),
                _age(s["age_seconds"]),
                s["reason"] or s["description"] or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]
    studies = len({s["study_uid"] for s in series})
    summary = f"{studies} studies, {len(series)} series"
    if jobs:
        summary += "; jobs: " + ", ".join(f"{j['n']} {j['state']}" for j in jobs)
    return "\n".join([*lines, "", summary])


def render_nodes(nodes: list[dict[str, Any]]) -> str:
    """One line per serving process: what it does, where, when it was last heard from."""
    header = ("NODE", "ROLE", "HOST", "STATE", "HEARTBEAT", "JOBS", "DELIVERIES")
    rows = [header] + [
        (
            str(n["node_id"]),
            str(n["role"]),
            str(n["host"]),
            str(n["state"]),
            _age(float(n["heartbeat_age"])) + " ago",
            str(n["jobs_held"]),
            str(n["deliveries_held"]),
        )
        for n in nodes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _has_nodes(index: Index) -> bool:
    """An index written before node registration (read-only: it is not migrated) has none."""
    if index.pool is not None:
        return True
    return bool(index.query("SELECT 1 FROM sqlite_master WHERE name = 'nodes'"))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
