"""The node's index (SQLite through sqlite-utils in WAL mode, or PostgreSQL): ``Index`` is the
connection (``node.index.connection``) with the queries grouped by what they serve: instances
and series (``node.index.instances``), analysis jobs (``node.index.jobs``), deliveries
(``node.index.deliveries``) and the serving processes (``node.index.nodes``). The tables are
defined in ``node.index.schema`` (SQLite) and ``node/index/migrations`` (PostgreSQL).
"""

from __future__ import annotations

from node.index.deliveries import DeliveryQueries
from node.index.instances import InstanceQueries
from node.index.jobs import JobQueries
from node.index.nodes import NodeQueries


class Index(InstanceQueries, JobQueries, DeliveryQueries, NodeQueries):
    """Read and write access to the index: ``index.sqlite`` in the data directory, or the
    PostgreSQL database of ``[database] url``."""
