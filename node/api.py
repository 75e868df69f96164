"""The HTTP face of the node (FastAPI): health, jobs, studies, metrics.

Every endpoint but ``/health`` requires ``Authorization: Bearer <token>`` when a token is
configured, and the node refuses to serve HTTP on a non-loopback address without one.
Responses carry UIDs and states, never patient attributes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from config import Settings
from node import __version__
from node.index import Index
from node.metrics import IndexCollector

HealthCheck = Callable[[], str | None]


@dataclass
class ApiContext:
    """What the API reads: settings, the index, and named health checks that return None
    when healthy or a sentence saying what is wrong."""

    settings: Settings
    index: Index
    checks: dict[str, HealthCheck] = field(default_factory=dict)


def default_checks(
    settings: Settings, index: Index, scp_listening: Callable[[], bool]
) -> dict[str, HealthCheck]:
    def scp() -> str | None:
        return None if scp_listening() else "the DICOM listener is not running"

    def database() -> str | None:
        try:
            index.query("SELECT 1")
        except Exception as exc:
            return f"the index does not answer: {exc}"
        return None

    def disk() -> str | None:
        free = shutil.disk_usage(settings.storage.root).free
        watermark = settings.scp.min_free_disk_mb * 2**20
        return None if free >= watermark else f"free disk {free // 2**20} MiB below watermark"

    return {"scp": scp, "database": database, "disk": disk}


def create_app(context: ApiContext) -> FastAPI:
    token = context.settings.api.token
    app = FastAPI(
        title="ctnode",
        version=__version__,
        description="Chest-CT analysis node: jobs, studies, results, metrics.",
    )
    registry = CollectorRegistry()
    registry.register(IndexCollector(context.index))

    def authorised(request: Request) -> None:
        if not token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise HTTPException(
                status_code=401,
                detail="bearer token required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(authorised)]

    @app.get("/health")
    def health() -> JSONResponse:
        failing = {
            name: problem
            for name, check in context.checks.items()
            if (problem := check()) is not None
        }
        if failing:
            return JSONResponse({"status": "unhealthy", "failing": failing}, status_code=503)
        return JSONResponse({"status": "healthy"})

    @app.get("/metrics", dependencies=guarded)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/jobs", dependencies=guarded)
    def jobs(limit: int = 100) -> list[dict[str, Any]]:
        return context.index.query(
            "SELECT j.id, j.series_uid, j.study_uid, j.revision, j.state, j.reason, j.created, "
            "j.updated FROM jobs j ORDER BY j.id DESC LIMIT ?",
            (max(1, min(limit, 1000)),),
        )

    @app.get("/jobs/{job_id}", dependencies=guarded)
    def job(job_id: int) -> dict[str, Any]:
        rows = context.index.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return {**rows[0], **_result(context.index, job_id)}

    @app.get("/studies", dependencies=guarded)
    def studies(limit: int = 100) -> list[dict[str, Any]]:
        return context.index.query(
            "SELECT st.study_uid, st.first_received, "
            "COUNT(se.series_uid) AS series, MAX(se.last_received) AS last_received "
            "FROM studies st LEFT JOIN series se ON se.study_uid = st.study_uid "
            "GROUP BY st.study_uid ORDER BY last_received DESC LIMIT ?",
            (max(1, min(limit, 1000)),),
        )

    @app.get("/studies/{study_uid}", dependencies=guarded)
    def study(study_uid: str) -> dict[str, Any]:
        series = context.index.query(
            "SELECT series_uid, modality, series_number, description, state, reason, "
            "instance_count, first_received, last_received FROM series WHERE study_uid = ? "
            "ORDER BY series_number",
            (study_uid,),
        )
        if not series:
            raise HTTPException(status_code=404, detail="unknown study")
        for entry in series:
            latest = context.index.query(
                "SELECT job_id FROM results WHERE series_uid = ? ORDER BY job_id DESC LIMIT 1",
                (entry["series_uid"],),
            )
            entry["result"] = _result(context.index, latest[0]["job_id"]) if latest else None
        return {"study_uid": study_uid, "series": series}

    return app


def _result(index: Index, job_id: int) -> dict[str, Any]:
    rows = index.query(
        "SELECT state, reason, result_json, timings_json, created FROM results WHERE job_id = ?",
        (job_id,),
    )
    if not rows:
        return {"result": None, "timings": None}
    row = rows[0]
    return {
        "result_state": row["state"],
        "result": json.loads(row["result_json"] or "null"),
        "timings": json.loads(row["timings_json"] or "null"),
        "finished": row["created"],
    }


def check_exposure(host: str, token: str) -> None:
    """Refuse to serve HTTP beyond loopback without a token."""
    if token:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"api.host {host} is not loopback: configure api.token to serve it")


class ApiServer:
    """Uvicorn in a background thread, stopped cleanly with the node."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        for _ in range(int(timeout / 0.05)):
            if self.server.started:
                return
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.05)
        raise RuntimeError("the HTTP API did not start (port in use?)")

    @property
    def port(self) -> int:
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
