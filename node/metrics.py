"""Prometheus metrics computed from the index at scrape time.

Everything the node counts already lives in SQLite (instances, refusals, series states, job
timings, deliveries, the serving processes and their heartbeats), written by every process of
every host. Reading it at scrape time gives one consistent view however many processes
receive, analyse and send, and nothing to lose on restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from node.index import Index, SeriesState

STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
STATES = tuple(SeriesState)


class IndexCollector(Collector):
    def __init__(self, index: Index) -> None:
        self.index = index

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        q = self.index.query
        received = CounterMetricFamily(
            "ctnode_instances_stored", "CT instances stored (current index content)"
        )
        received.add_metric([], q("SELECT COUNT(*) AS n FROM instances")[0]["n"])
        yield received

        refused = CounterMetricFamily(
            "ctnode_instances_refused",
            "Instances not stored, by outcome (rejected/discarded) and reason",
            labels=["outcome", "reason"],
        )
        for row in q("SELECT outcome, reason, COUNT(*) AS n FROM refusals GROUP BY 1, 2"):
            refused.add_metric([row["outcome"], row["reason"]], row["n"])
        yield refused

        series = GaugeMetricFamily("ctnode_series", "Series by state", labels=["state"])
        counts = {
            r["state"]: r["n"] for r in q("SELECT state, COUNT(*) AS n FROM series GROUP BY state")
        }
        for state in STATES:
            series.add_metric([state], counts.get(state, 0))
        yield series

        jobs = GaugeMetricFamily("ctnode_jobs", "Analysis jobs by state", labels=["state"])
        for row in q("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            jobs.add_metric([row["state"]], row["n"])
        yield jobs

        yield self._durations()

        deliveries = CounterMetricFamily(
            "ctnode_deliveries",
            "Result deliveries by destination and state",
            labels=["destination", "state"],
        )
        for row in q("SELECT destination, state, COUNT(*) AS n FROM outbox GROUP BY 1, 2"):
            deliveries.add_metric([row["destination"], row["state"]], row["n"])
        yield deliveries

        tasks = GaugeMetricFamily(
            "ctnode_queue_tasks",
            "PostgreSQL: procrastinate's tasks by queue and status",
            labels=["queue", "status"],
        )
        for row in self.index.queue_tasks():
            tasks.add_metric([row["queue"], row["status"]], row["n"])
        yield tasks

        yield from self._nodes()

    def _nodes(self) -> Iterator[GaugeMetricFamily]:
        """Every serving process of every host (``nodes``): its heartbeat and its claims."""
        labels = ["node_id", "role", "host"]
        age = GaugeMetricFamily(
            "ctnode_node_heartbeat_age_seconds",
            "Seconds since each serving process's last heartbeat (database clock)",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "ctnode_node_running",
            "1 while a serving process has not stopped cleanly",
            labels=labels,
        )
        held = GaugeMetricFamily(
            "ctnode_node_claims", "Jobs and deliveries each process holds", labels=[*labels, "kind"]
        )
        for node in self.index.nodes():
            key = [str(node["node_id"]), str(node["role"]), str(node["host"])]
            age.add_metric(key, float(node["heartbeat_age"]))
            up.add_metric(key, 1.0 if node["state"] == "running" else 0.0)
            held.add_metric([*key, "job"], int(node["jobs_held"]))
            held.add_metric([*key, "delivery"], int(node["deliveries_held"]))
        yield age
        yield up
        yield held

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "ctnode_job_stage_seconds", "Duration of analysis job stages", labels=["stage"]
        )
        samples: dict[str, list[float]] = {}
        for row in self.index.query("SELECT timings_json FROM results"):
            for stage, seconds in json.loads(row["timings_json"] or "{}").items():
                samples.setdefault(stage, []).append(float(seconds))
        for stage, values in sorted(samples.items()):
            buckets = [(str(b), sum(v <= b for v in values)) for b in STAGE_BUCKETS]
            buckets.append(("+Inf", len(values)))
            family.add_metric([stage], buckets, sum_value=sum(values))
        return family
