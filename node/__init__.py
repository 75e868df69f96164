"""The service: the SQLite index, series assembler, worker, outbox, HTTP face and ``serve``;
the one place that wires the other packages together."""
