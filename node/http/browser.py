"""Defences for browsers, on every request and response of the HTTP face (an ASGI
middleware, so uploads still stream through it untouched).

- Every response carries a Content-Security-Policy (``frame-ancestors 'none'``: no other
  site may frame the dashboard), ``X-Frame-Options: DENY`` for older browsers,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
- A state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` (or, without one,
  ``Referer``) names another origin than the ``Host`` it was sent to is refused with 403
  before any handler runs: SameSite cookies are not the only defence against cross-site
  forms. Requests with neither header (API clients, curl) are not browsers' and pass.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The dashboard is self-contained (inline style and reload script, images from itself);
# /docs and /redoc load FastAPI's Swagger UI and ReDoc from their CDN.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
    f"style-src 'self' 'unsafe-inline' {CDN}; script-src 'self' 'unsafe-inline' {CDN}; "
    "worker-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def foreign_origin(method: str, headers: dict[bytes, bytes], scheme: str) -> str | None:
    """The foreign origin a state-changing request comes from, or None when it may pass."""
    if method not in STATE_CHANGING:
        return None
    host = headers.get(b"host", b"").decode("latin-1").lower()
    claimed = headers.get(b"origin") or headers.get(b"referer")
    if claimed is None:
        return None
    text = claimed.decode("latin-1")
    parts = urlsplit(text)
    if text == "null" or parts.netloc.lower() != host or parts.scheme != scheme:
        return text
    return None


class BrowserDefences:
    """The middleware: refuse foreign state-changing requests, add the headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        policy = DOCS_POLICY if path in ("/docs", "/redoc") else PAGE_POLICY
        extra = [*HEADERS, (b"content-security-policy", policy.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        headers = dict(scope.get("headers", []))
        origin = foreign_origin(str(scope["method"]), headers, str(scope.get("scheme", "http")))
        if origin is None:
            await self.app(scope, receive, send_with_headers)
            return
        body = json.dumps({"detail": f"cross-origin request from {origin} refused"}).encode()
        await send_with_headers(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send_with_headers({"type": "http.response.body", "body": body})
