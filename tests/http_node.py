"""An in-process node (SCP on a free port, index, one worker with the real pipeline, HTTP
API on a free port with a token) for tests of the HTTP face."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import config
from node.pipeline import AnalysisPipeline
from node.serve import Node

TOKEN = "predict-token"


def make_node(
    tmp_path: Path,
    destinations: tuple[config.DestinationSettings, ...] = (),
    outbox: dict[str, Any] | None = None,
    neural: dict[str, Any] | None = None,
    **api: Any,
) -> Node:
    """A started node; ``api``, ``outbox`` and ``neural`` replace settings of those
    sections."""
    base = config.load(None, {})
    settings = dataclasses.replace(
        base,
        scp=dataclasses.replace(base.scp, host="127.0.0.1", port=0),
        storage=dataclasses.replace(base.storage, data_dir=str(tmp_path / "var")),
        assembly=dataclasses.replace(base.assembly, stable_age=60.0, tick=0.2),
        worker=dataclasses.replace(base.worker, poll=0.1),
        outbox=dataclasses.replace(base.outbox, **{"tick": 0.2, **(outbox or {})}),
        api=dataclasses.replace(base.api, **{"port": 0, "token": TOKEN, **api}),
        neural=dataclasses.replace(base.neural, **(neural or {})),
        destinations=destinations,
    )
    pipeline = AnalysisPipeline(settings)
    node = Node(settings, pipeline=pipeline, analyzers=pipeline.ensemble.states)
    node.start()
    return node
