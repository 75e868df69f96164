"""The node's SQLite index: patients, studies, series, instances, the analysis job queue,
results, deliveries and refused instances (``schema``), one connection shared by the node's
threads (``connection``), the queries grouped by what they serve (``instances``, ``jobs``,
``deliveries``) and composed into ``Index`` (``store``).
"""

from node.index.connection import utc_now
from node.index.schema import DB_NAME, SeriesState
from node.index.store import Index

__all__ = ["DB_NAME", "Index", "SeriesState", "utc_now"]
