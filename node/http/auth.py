"""Who may use the HTTP face, and what its handlers read.

Every endpoint but ``/health`` requires the token when one is configured: as
``Authorization: Bearer <token>``, or, for the dashboard in a browser, the session cookie:
browsers cannot send bearer headers on navigation, so the sign-in form sets an HttpOnly,
SameSite=Strict (Secure over HTTPS) cookie whose value is a session, never the token: a
random id, its expiry and an HMAC of both and the token under a per-process random key
(:class:`Sessions`). A restart, a changed token, the expiry or a sign-out ends it. Wrong
sign-ins are throttled per client address (:class:`SignInThrottle`). Tokens and MACs are
compared in constant time.

``ApiContext`` is the request context: ``create_app`` stores it on the application, and
handlers (the API's and the dashboard router's) receive it as a parameter ``context: Context``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, Security
from fastapi import Path as PathParameter
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from config import Settings
from inference.availability import AnalyzerState
from node.http.predict import Predictor
from node.index import Index

COOKIE = "ctnode_session"

HealthCheck = Callable[[], str | None]


@dataclass
class ApiContext:
    """What the API reads: settings, the index, named health checks that return None when
    healthy or a sentence saying what is wrong, where results live, and the predictor
    behind ``POST /predict`` (None: uploads are refused with 503)."""

    settings: Settings
    index: Index
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    results_root: Path | None = None
    predictor: Predictor | None = None
    analyzers: Callable[[], list[AnalyzerState]] = list
    sessions: Sessions = field(default_factory=lambda: Sessions())
    throttle: SignInThrottle = field(default_factory=lambda: SignInThrottle())
    clock: Callable[[], float] = time.time


class Sessions:
    """Dashboard sessions: ``<id>.<expiry>.<mac>``, the MAC an HMAC-SHA256 under a key drawn
    at start-up of the id, the expiry and the token. Live ids are kept, so a sign-out ends
    a session at once; expired ones are dropped as new ones are issued."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key if key is not None else secrets.token_bytes(32)
        self.live: dict[str, float] = {}

    def _mac(self, session: str, expiry: int, token: str) -> str:
        message = f"{session}.{expiry}.".encode() + token.encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def issue(self, token: str, now: float, lifetime: float) -> str:
        self.live = {s: e for s, e in self.live.items() if e > now}
        session, expiry = secrets.token_hex(16), int(now + lifetime)
        self.live[session] = expiry
        return f"{session}.{expiry}.{self._mac(session, expiry, token)}"

    def valid(self, value: str, token: str, now: float) -> bool:
        session, _, rest = value.partition(".")
        expiry_text, _, mac = rest.partition(".")
        if not expiry_text.isdigit() or session not in self.live:
            return False
        expiry = int(expiry_text)
        expected = self._mac(session, expiry, token)
        return hmac.compare_digest(mac, expected) and now < expiry == self.live[session]

    def end(self, value: str) -> None:
        self.live.pop(value.partition(".")[0], None)


class SignInThrottle:
    """Wrong sign-ins per client address: after the n-th wrong token in a row that address
    may not try again for 2**(n-1) seconds (at most ``ceiling``); a right one clears it.
    At most ``capacity`` addresses are remembered (the oldest are forgotten)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def wait(self, address: str, now: float) -> float:
        """Seconds ``address`` must still wait before its next try (0: it may try)."""
        _, until = self.failures.get(address, (0, 0.0))
        return max(0.0, until - now)

    def failed(self, address: str, now: float, ceiling: float) -> float:
        """Record a wrong token from ``address``; the seconds it must now wait."""
        count = self.failures.pop(address, (0, 0.0))[0] + 1
        delay = min(ceiling, 2.0 ** min(count - 1, 30))
        self.failures[address] = (count, now + delay)
        while len(self.failures) > self.capacity:
            self.failures.popitem(last=False)
        return delay

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)


def request_context(request: Request) -> ApiContext:
    """The context of the application serving ``request``."""
    context: ApiContext = request.app.state.context
    return context


# A handler's parameter ``context: Context`` receives the request context.
Context = Annotated[ApiContext, Depends(request_context)]

# A row id in a path: SQLite's INTEGER is 64-bit signed and ours start at 1, so anything
# outside 1 .. 2**63 - 1 is refused by validation (422) before it reaches the index.
RowId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def signed_in(request: Request) -> bool:
    """True without a configured token; else the bearer header must carry it, or failing
    that the session cookie must be a live session for it."""
    context = request_context(request)
    token = context.settings.api.token
    if not token:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token_matches(given.strip(), token)
    return context.sessions.valid(request.cookies.get(COOKIE, ""), token, context.clock())


# The two ways in, as the OpenAPI document declares them (either one suffices). They only
# describe: signed_in reads the request itself, so auto_error is off.
BEARER = HTTPBearer(
    scheme_name="token",
    description="`Authorization: Bearer <[api] token>`",
    auto_error=False,
)
SIGN_IN_COOKIE = APIKeyCookie(
    name=COOKIE,
    scheme_name="dashboard",
    description="The cookie the dashboard's sign-in form sets (browsers).",
    auto_error=False,
)


def authorised(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    _cookie: Annotated[str | None, Security(SIGN_IN_COOKIE)],
) -> None:
    """The guard of every endpoint but ``/health`` (a FastAPI dependency): 401 unless
    :func:`signed_in`."""
    if not signed_in(request):
        raise HTTPException(
            status_code=401,
            detail="bearer token required",
            headers={"WWW-Authenticate": "Bearer"},
        )


def sign_in(request: Request, response: Response) -> None:
    """Set the session cookie the dashboard's requests carry from now on."""
    context = request_context(request)
    lifetime = context.settings.api.session_hours * 3600
    value = context.sessions.issue(context.settings.api.token, context.clock(), lifetime)
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(lifetime),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def sign_out(request: Request, response: Response) -> None:
    """End the request's session and tell the browser to drop its cookie."""
    request_context(request).sessions.end(request.cookies.get(COOKIE, ""))
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
