"""The operators' page at ``/``: recent studies with state, result and timings; failed
deliveries with a retry button; the summary image of a selected study.

Plain server-rendered HTML (every value escaped) and a few lines of JavaScript that reload
the page while nothing is selected; an ``APIRouter`` the API mounts. With a token configured,
a browser signs in with a form that sets a session cookie, and signs out with a button
(``node.http.auth``); ``node.http.browser`` adds the security headers and refuses
cross-origin posts. UIDs and states only; no patient attributes.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from PIL import Image
from pydicom import dcmread

from node.http.answers import FOREIGN, UNAUTHORISED
from node.http.auth import (
    ApiContext,
    Context,
    RowId,
    authorised,
    sign_in,
    sign_out,
    signed_in,
    token_matches,
)
from node.http.upload import UploadError
from node.outbox import Outbox

RECENT = 50


def png_of(sc_path: Path) -> bytes:
    """A secondary capture's pixels as PNG (RGB or monochrome, 8 bit)."""
    ds = dcmread(sc_path)
    mode = "RGB" if ds.SamplesPerPixel == 3 else "L"
    image = Image.fromarray(ds.pixel_array, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page(request: Request, context: Context, study: str = "") -> HTMLResponse:
    if not signed_in(request):
        return HTMLResponse(_sign_in_page(""), status_code=401)
    return HTMLResponse(_page(context, study))


@router.post("/login", include_in_schema=False)
async def login(request: Request, context: Context) -> Response:
    """Sign in with the token (a session cookie); wrong tokens make the address wait."""
    api, now = context.settings.api, context.clock()
    address = request.client.host if request.client else ""
    wait = context.throttle.wait(address, now)
    if wait > 0:
        message = f"Too many wrong tokens: try again in {math.ceil(wait)} s."
        headers = {"Retry-After": str(math.ceil(wait))}
        return HTMLResponse(_sign_in_page(message), status_code=429, headers=headers)
    try:
        given = await _token_of(request)
    except UploadError as exc:
        return HTMLResponse(_sign_in_page(exc.message), status_code=exc.status)
    if not api.token or not token_matches(given, api.token):
        delay = context.throttle.failed(address, now, api.sign_in_delay_max)
        message = f"Wrong token. The next try is possible in {math.ceil(delay)} s."
        return HTMLResponse(_sign_in_page(message), status_code=401)
    context.throttle.succeeded(address)
    response = RedirectResponse("/", status_code=303)
    sign_in(request, response)
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request) -> Response:
    """End the session; back to the sign-in form."""
    response = RedirectResponse("/", status_code=303)
    sign_out(request, response)
    return response


@router.get("/deliveries", dependencies=[Depends(authorised)], responses=UNAUTHORISED)
def deliveries(context: Context, state: str = "FAILED", limit: int = 100) -> list[dict[str, Any]]:
    return context.index.deliveries(state, limit)


@router.post(
    "/deliveries/{delivery_id}/retry",
    dependencies=[Depends(authorised)],
    responses={
        303: {"description": "Requeued, back to the dashboard (a browser's form)."},
        **UNAUTHORISED,
        **FOREIGN,
        404: {
            "description": "No FAILED delivery with this id.",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"requeued": {"type": "integer"}}}
                }
            },
        },
    },
)
def retry(delivery_id: RowId, request: Request, context: Context) -> Response:
    """Queue a FAILED delivery again (the outbox sends it at its next tick)."""
    count = Outbox(context.index, Path("."), {}, context.settings.outbox).retry([delivery_id])
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/", status_code=303)
    return JSONResponse({"requeued": count}, status_code=200 if count else 404)


SIGN_IN_BYTES = 4096
SIGN_IN_SECONDS = 10.0


async def _token_of(request: Request) -> str:
    """The ``token`` of the sign-in form. /login is open to anyone, so its body is bounded
    in size and in time (Starlette's form parser would buffer any urlencoded body)."""
    body = bytearray()
    try:
        async with asyncio.timeout(SIGN_IN_SECONDS):
            async for chunk in request.stream():
                body += chunk
                if len(body) > SIGN_IN_BYTES:
                    raise UploadError(413, "too_large", "The sign-in form is too large.")
    except TimeoutError as exc:
        raise UploadError(408, "timeout", "The sign-in form did not arrive in time.") from exc
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return fields.get("token", [""])[0]


def _studies(context: ApiContext) -> list[dict[str, Any]]:
    """The newest studies with their newest result (a report first, else why none)."""
    studies = context.index.query(
        "SELECT st.study_uid, MAX(se.last_received) AS last_received, "
        "COUNT(se.series_uid) AS series FROM studies st "
        "JOIN series se ON se.study_uid = st.study_uid "
        "GROUP BY st.study_uid ORDER BY last_received DESC LIMIT ?",
        (RECENT,),
    )
    for study in studies:
        rows = context.index.query(
            "SELECT r.job_id, r.state AS result_state, r.reason, r.result_json, "
            "r.timings_json, s.state, s.description FROM results r "
            "JOIN series s ON s.series_uid = r.series_uid WHERE r.study_uid = ? "
            "AND r.state != 'SUPERSEDED' "
            "ORDER BY r.state = 'REPORTED' DESC, r.job_id DESC LIMIT 1",
            (study["study_uid"],),
        )
        if rows:
            row = rows[0]
            study.update(row)
            study["result"] = json.loads(row["result_json"] or "{}")
            study["timings"] = json.loads(row["timings_json"] or "{}")
        else:
            states = context.index.query(
                "SELECT state FROM series WHERE study_uid = ? ORDER BY last_received DESC",
                (study["study_uid"],),
            )
            study.update(state=states[0]["state"], result={}, timings={}, reason="")
    return studies


def _page(context: ApiContext, selected: str) -> str:
    studies = _studies(context)
    failed = context.index.deliveries("FAILED", 100)
    rows = "".join(_study_row(s, s["study_uid"] == selected) for s in studies)
    if not rows:
        rows = '<tr><td colspan="8">No studies received yet.</td></tr>'
    deliveries = "".join(_delivery_row(d) for d in failed)
    if not deliveries:
        deliveries = '<tr><td colspan="6">No failed deliveries.</td></tr>'
    detail = ""
    if selected:
        src = f"/studies/{quote(selected, safe='')}/summary.png"
        detail = (
            f'<section id="summary"><h2>Summary of study {escape(_short(selected))}</h2>'
            f'<p><a href="/">close</a> · <a href="/studies/{quote(selected, safe="")}/report">'
            f'download SR</a></p><img alt="summary page" src="{escape(src)}"></section>'
        )
    reload = "" if selected else "setTimeout(() => location.reload(), 10000);"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ctnode</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 2rem; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.35rem 0.5rem; text-align: left; }}
tr.selected {{ background: #eef4ff; }}
.pos {{ color: #b00020; font-weight: 600; }} .neg {{ color: #2e7d32; }}
img {{ max-width: 100%; border: 1px solid #ccc; }}
code {{ font-size: 0.85rem; }}
</style></head><body>
<h1>ctnode</h1>
<form method="post" action="/logout"><button type="submit">Sign out</button></form>
<h2>Recent studies</h2>
<table id="studies"><thead><tr><th>study</th><th>series</th><th>last received (UTC)</th>
<th>state</th><th>probability</th><th>pathology</th><th>most dangerous</th>
<th>analysis s</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Failed deliveries</h2>
<table id="deliveries"><thead><tr><th>id</th><th>destination</th><th>object</th>
<th>attempts</th><th>reason</th><th></th></tr></thead><tbody>{deliveries}</tbody></table>
{detail}
<script>{reload}</script>
</body></html>"""


def _study_row(study: dict[str, Any], selected: bool) -> str:
    result, timings = study.get("result") or {}, study.get("timings") or {}
    probability = result.get("probability_of_pathology")
    pathology = result.get("pathology")
    verdict = {1: '<span class="pos">yes</span>', 0: '<span class="neg">no</span>'}.get(
        int(pathology) if pathology is not None else -1, ""
    )
    state = escape(str(study.get("state", "")))
    if study.get("reason"):
        state += f"<br><small>{escape(str(study['reason']))}</small>"
    uid = str(study["study_uid"])
    link = (
        f'<a href="/?study={quote(uid, safe="")}" title="{escape(uid)}">{escape(_short(uid))}</a>'
    )
    total = timings.get("total")
    return (
        f'<tr class="{"selected" if selected else ""}"><td>{link}</td><td>{study["series"]}</td>'
        f"<td>{escape(str(study['last_received'] or ''))}</td><td>{state}</td>"
        f"<td>{'' if probability is None else f'{probability:.2f}'}</td><td>{verdict}</td>"
        f"<td>{escape(str(result.get('most_dangerous_pathology_type') or ''))}</td>"
        f"<td>{'' if total is None else f'{total:.1f}'}</td></tr>"
    )


def _delivery_row(delivery: dict[str, Any]) -> str:
    return (
        f"<tr><td>{delivery['id']}</td><td>{escape(str(delivery['destination']))}</td>"
        f"<td>{escape(str(delivery['kind']))}</td><td>{delivery['attempts']}</td>"
        f"<td>{escape(str(delivery['reason'] or ''))}</td><td>"
        f'<form method="post" action="/deliveries/{delivery["id"]}/retry">'
        f'<button type="submit">Retry</button></form></td></tr>'
    )


def _short(uid: str) -> str:
    return uid if len(uid) <= 24 else f"…{uid[-20:]}"


def _sign_in_page(message: str) -> str:
    note = f'<p role="alert">{escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ctnode: sign in</title></head>
<body style="font-family: system-ui, sans-serif; margin: 2rem">
<h1>ctnode</h1>{note}
<form method="post" action="/login"><label>API token
<input type="password" name="token" autocomplete="current-password"></label>
<button type="submit">Sign in</button></form></body></html>"""
