"""Who may use the HTTP face, and what its handlers read.

Every endpoint but ``/health`` requires the token when one is configured: as
``Authorization: Bearer <token>``, or, for the dashboard in a browser, the sign-in cookie:
browsers cannot send bearer headers on navigation, so the sign-in form sets an HttpOnly,
SameSite=Strict cookie (strict, so other sites cannot post the dashboard's retry form).
Tokens are compared in constant time.

``ApiContext`` is the request context: ``create_app`` stores it on the application, and
handlers (the API's and the dashboard router's) receive it as a parameter ``context: Context``.
"""

from __future__ import annotations

import hmac
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

COOKIE = "ctnode_token"

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
    """True without a configured token; else the bearer header, or failing that the
    sign-in cookie, must carry it."""
    token = request_context(request).settings.api.token
    if not token:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.cookies.get(COOKIE, "")
    return token_matches(given.strip(), token)


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


def sign_in(response: Response, token: str) -> None:
    """Set the cookie the dashboard's requests carry from now on."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
