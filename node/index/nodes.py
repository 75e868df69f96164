"""What the node registry serves: one row per serving process (``nodes``), its role, host,
process id, version and last heartbeat (the database's clock), so that ``ctnode status`` and
``/metrics`` show every host of a deployment and how long ago each was last heard from."""

from __future__ import annotations

import socket
from typing import Any

from node.index.connection import Connection


class NodeQueries(Connection):
    def register_node(self, role: str, pid: int, version: str) -> None:
        """This process serves as ``role`` under its node id (a restart takes its row over)."""
        epoch = self.dialect.epoch
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO nodes (node_id, role, host, pid, version, started_epoch, "
                f"heartbeat_epoch, state) VALUES (?, ?, ?, ?, ?, {epoch}, {epoch}, 'running') "
                "ON CONFLICT(node_id) DO UPDATE SET role = excluded.role, host = excluded.host, "
                "pid = excluded.pid, version = excluded.version, "
                "started_epoch = excluded.started_epoch, "
                "heartbeat_epoch = excluded.heartbeat_epoch, state = 'running'",
                (self.node_id, role, socket.gethostname(), pid, version),
            )

    def heartbeat(self) -> None:
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE nodes SET heartbeat_epoch = {self.dialect.epoch}, state = 'running' "
                "WHERE node_id = ?",
                (self.node_id,),
            )

    def unregister_node(self) -> None:
        """This process stopped cleanly (its row stays, for the operator to see)."""
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE nodes SET state = 'stopped', heartbeat_epoch = {self.dialect.epoch} "
                "WHERE node_id = ?",
                (self.node_id,),
            )

    def nodes(self) -> list[dict[str, Any]]:
        """Every registered process with the seconds since its last heartbeat and the jobs
        and deliveries it holds now."""
        return self.query(
            "SELECT n.node_id, n.role, n.host, n.pid, n.version, n.state, "
            f"{self.dialect.epoch} - n.heartbeat_epoch AS heartbeat_age, "
            "(SELECT COUNT(*) FROM jobs j WHERE j.owner = n.node_id AND j.state = 'running') "
            "AS jobs_held, (SELECT COUNT(*) FROM outbox o WHERE o.owner = n.node_id "
            "AND o.state = 'PENDING') AS deliveries_held FROM nodes n ORDER BY n.node_id"
        )

    def queue_tasks(self) -> list[dict[str, Any]]:
        """PostgreSQL: procrastinate's tasks by queue and status (finished ones are deleted,
        so this is what waits and what runs); nothing on SQLite, whose queue is ``jobs``."""
        if self.tasks is None:
            return []
        return self.query(
            "SELECT queue_name AS queue, status::text AS status, COUNT(*) AS n "
            "FROM procrastinate_jobs GROUP BY 1, 2 ORDER BY 1, 2"
        )
