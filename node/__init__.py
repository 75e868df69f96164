"""The service: CLI, SQLite index, series assembler, worker, outbox; wires the other packages."""

__version__ = "0.1.0"
