"""The node's SQLite index."""

from node.index.store import DB_NAME, Index, SeriesState, _float, _int, _multi, _text, utc_now

__all__ = ["DB_NAME", "Index", "SeriesState", "_float", "_int", "_multi", "_text", "utc_now"]
