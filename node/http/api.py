"""The HTTP face of the node (FastAPI): the legacy ``POST /predict``, health, jobs, studies
and their report and summary image, metrics, and the operators' dashboard at ``/``.

Every endpoint but ``/health`` requires the token when one is configured (``node.http.auth``:
the bearer header, or the dashboard's sign-in cookie); the dashboard is a router this
application mounts (``node.http.dashboard``). The node refuses to serve HTTP on a
non-loopback address without a token. Responses carry UIDs and states, never patient attributes.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from config import ApiTLSSettings, Settings, __version__
from node.http import dashboard
from node.http.answers import (
    FOREIGN,
    LEGACY,
    NOT_FOUND,
    UNAUTHORISED,
    binary,
    legacy,
)
from node.http.auth import ApiContext, HealthCheck, RowId, authorised
from node.http.browser import BrowserDefences
from node.http.predict import PredictError
from node.http.upload import UploadError, receive_file
from node.index import Index
from node.metrics import IndexCollector
from node.worker import result_folder
from reporting import legacy_json


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
    app = FastAPI(
        title="ctnode",
        version=__version__,
        description="Chest-CT analysis node: jobs, studies, results, metrics.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.context = context
    app.add_middleware(BrowserDefences)
    registry = CollectorRegistry()
    registry.register(IndexCollector(context.index))

    guarded = [Depends(authorised)]

    # The documentation is served by guarded routes of our own: FastAPI's built-in ones
    # cannot take a dependency, and the README promises that only /health is open.
    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=guarded, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="ctnode API")

    @app.get("/redoc", dependencies=guarded, include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="ctnode API")

    @app.get(
        "/health",
        responses={503: {"description": "Something is wrong; `failing` says what."}},
    )
    def health() -> JSONResponse:
        failing = {
            name: problem
            for name, check in context.checks.items()
            if (problem := check()) is not None
        }
        analyzers = {
            a.name: {"enabled": a.enabled, "reason": a.reason} for a in context.analyzers()
        }
        if failing:
            body = {"status": "unhealthy", "failing": failing, "analyzers": analyzers}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "healthy", "analyzers": analyzers})

    @app.get(
        "/metrics",
        dependencies=guarded,
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **UNAUTHORISED,
        },
    )
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/jobs", dependencies=guarded, responses=UNAUTHORISED)
    def jobs(limit: int = 100) -> list[dict[str, Any]]:
        return context.index.query(
            "SELECT j.id, j.series_uid, j.study_uid, j.revision, j.state, j.reason, j.created, "
            "j.updated FROM jobs j ORDER BY j.id DESC LIMIT ?",
            (max(1, min(limit, 1000)),),
        )

    @app.get("/jobs/{job_id}", dependencies=guarded, responses={**UNAUTHORISED, **NOT_FOUND})
    def job(job_id: RowId) -> dict[str, Any]:
        rows = context.index.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        return {**rows[0], **_result(context.index, job_id)}

    @app.get("/studies", dependencies=guarded, responses=UNAUTHORISED)
    def studies(limit: int = 100) -> list[dict[str, Any]]:
        return context.index.query(
            "SELECT st.study_uid, st.first_received, "
            "COUNT(se.series_uid) AS series, MAX(se.last_received) AS last_received "
            "FROM studies st LEFT JOIN series se ON se.study_uid = st.study_uid "
            "GROUP BY st.study_uid ORDER BY last_received DESC LIMIT ?",
            (max(1, min(limit, 1000)),),
        )

    @app.get("/studies/{study_uid}", dependencies=guarded, responses={**UNAUTHORISED, **NOT_FOUND})
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

    @app.get(
        "/studies/{study_uid}/result",
        dependencies=guarded,
        responses={
            **legacy(200, "The study's legacy JSON."),
            **legacy(202, "Still being received or analysed."),
            **UNAUTHORISED,
            **NOT_FOUND,
            **legacy(422, "The study could not be analysed; `error` says why."),
        },
    )
    def study_result(study_uid: str) -> JSONResponse:
        """The legacy JSON for the study, as ``POST /predict`` answers it (202 while its
        series are still being received or analysed)."""
        answer = context.predictor.study_result(study_uid) if context.predictor else None
        if answer is None:
            raise HTTPException(status_code=404, detail="unknown study")
        return JSONResponse(answer[1], status_code=answer[0])

    @app.get(
        "/studies/{study_uid}/report",
        dependencies=guarded,
        response_class=Response,
        responses={
            **binary("application/dicom", "The newest report (DICOM SR)."),
            **UNAUTHORISED,
            **NOT_FOUND,
        },
    )
    def report(study_uid: str) -> FileResponse:
        path = _latest_output(context, study_uid, "*.sr.dcm")
        return FileResponse(path, media_type="application/dicom", filename="report.dcm")

    @app.get(
        "/studies/{study_uid}/summary.png",
        dependencies=guarded,
        response_class=Response,
        responses={
            **binary("image/png", "The newest report's summary page."),
            **UNAUTHORISED,
            **NOT_FOUND,
        },
    )
    def summary(study_uid: str) -> Response:
        path = _latest_output(context, study_uid, "summary.sc.dcm")
        return Response(dashboard.png_of(path), media_type="image/png")

    @app.post(
        "/predict",
        dependencies=guarded,
        responses={
            **legacy(200, "The legacy JSON of the analysed study."),
            **legacy(202, "Not finished within predict_timeout: `poll` and `result` say where."),
            **legacy(400, "Not a multipart upload, no or an empty `file`, not a ZIP, unsafe."),
            **UNAUTHORISED,
            **FOREIGN,
            **legacy(408, "The body did not arrive within [api] upload_timeout."),
            **legacy(413, "Beyond [api] max_upload_mb, a ZIP bomb, too many files."),
            422: {
                "description": "No CT in the archive, or a bad query parameter.",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                LEGACY,
                                {"$ref": "#/components/schemas/HTTPValidationError"},
                            ]
                        }
                    }
                },
            },
            **legacy(503, "This node does not analyse uploads."),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def predict(request: Request, send: bool = False) -> JSONResponse:
        """Analyse a ZIP of DICOM files (multipart field ``file``); the legacy JSON. With
        ``send=true`` the DICOM results also go to the configured destinations."""
        predictor = context.predictor
        if predictor is None:
            return _failure(503, "unavailable", "this node does not analyse uploads")
        api = context.settings.api
        cap = api.max_upload_mb * 2**20
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return _failure(413, "too_large", f"the upload exceeds {api.max_upload_mb} MiB")
        target = predictor.uploads / f"{uuid.uuid4().hex}.zip"
        try:
            content_type = request.headers.get("content-type", "")
            await receive_file(
                content_type, request.stream(), "file", target, cap, api.upload_timeout
            )
            submission = await run_in_threadpool(predictor.ingest, target, deliver=send)
        except UploadError as exc:
            # The rest of a refused body is never read: the connection cannot be reused.
            return _failure(exc.status, exc.code, exc.message, {"Connection": "close"})
        except PredictError as exc:
            return _failure(exc.status, exc.code, exc.message)
        finally:
            target.unlink(missing_ok=True)
        status, body = await run_in_threadpool(predictor.outcome, submission, api.predict_timeout)
        return JSONResponse(body, status_code=status)

    app.include_router(dashboard.router)
    return app


def _failure(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = legacy_json.failure("", "", f"{code}: {message}", time_of_processing=0.0)
    return JSONResponse(body, status_code=status, headers=headers)


def _latest_output(context: ApiContext, study_uid: str, pattern: str) -> Path:
    """The file matching ``pattern`` among the study's newest report's objects (404 if none)."""
    rows = context.index.query(
        "SELECT job_id, series_uid FROM results WHERE study_uid = ? AND state = 'REPORTED' "
        "ORDER BY job_id DESC LIMIT 1",
        (study_uid,),
    )
    if not rows or context.results_root is None:
        raise HTTPException(status_code=404, detail="no report for this study")
    folder = result_folder(context.results_root, rows[0]["series_uid"], rows[0]["job_id"])
    found = sorted(folder.glob(pattern))
    if not found:
        raise HTTPException(status_code=404, detail="the report's files are gone")
    return found[0]


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


def https_context(tls: ApiTLSSettings) -> ssl.SSLContext:
    """``[api.tls]``'s certificate and key, loaded now as the SCP loads its own (TLS 1.2 or
    later), so that a bad file stops the start with its name and what is wrong."""
    for name, path in (("certificate", tls.certificate), ("private_key", tls.private_key)):
        if not path or not Path(path).is_file():
            raise ValueError(f"api.tls.{name}: no such file {path!r}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"api.tls: cannot load certificate {tls.certificate} with key {tls.private_key}: {exc}"
        ) from exc
    return context


class ApiServer:
    """Uvicorn in a background thread, stopped cleanly with the node."""

    def __init__(
        self, app: FastAPI, host: str, port: int, tls: ApiTLSSettings | None = None
    ) -> None:
        self.app = app
        https: dict[str, Any] = {}
        if tls is not None and tls.enabled:
            context = https_context(tls)
            https = {"ssl_context_factory": lambda _config, _default: context}
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", access_log=False, **https
            )
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
