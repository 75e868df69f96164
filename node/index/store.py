"""The node's SQLite index (through sqlite-utils, WAL mode): ``Index`` is the connection
(``node.index.connection``) with the queries grouped by what they serve: instances and series
(``node.index.instances``), analysis jobs (``node.index.jobs``) and deliveries
(``node.index.deliveries``). The tables are defined in ``node.index.schema``.
"""

from __future__ import annotations

from node.index.deliveries import DeliveryQueries
from node.index.instances import InstanceQueries
from node.index.jobs import JobQueries


class Index(InstanceQueries, JobQueries, DeliveryQueries):
    """Read and write access to ``index.sqlite`` in the data directory."""
