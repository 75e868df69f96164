"""Logging set-up: one line per event with the association or job correlation id.

Messages carry hashed UIDs only (``scp.uids.uid_hash``) and never patient attributes: a rule
for every ``log.*`` call in the code base, and, for what libraries log or warn, the handler's
``node.redaction.Redaction`` filter.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from config import LoggingSettings
from node.redaction import Redaction


class _CorrelationDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "cid"):
            record.cid = "-"
        return True


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "cid": getattr(record, "cid", "-"),
            "message": record.getMessage(),
        }
        if record.exc_text:  # formatted, and redacted, by the handler's filter
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CorrelationDefault())
    handler.addFilter(Redaction())
    if settings.json:
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(cid)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # pynetdicom logs every PDU at INFO/DEBUG, including patient-level data set summaries.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # procrastinate logs each task's start and end at INFO, the periodic ones every second;
    # the node logs what each analysis did itself.
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # library warnings through the same handler and redaction
