"""The dashboard's sign-in and the browser defences, on a real node: a session cookie that
is never the token, expires and ends at sign-out; wrong tokens throttled per address;
cross-origin posts refused; security headers on every response."""

from __future__ import annotations

import dataclasses
import http.client
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

import config
from node.http.api import https_context
from node.http.auth import COOKIE, ApiContext, Sessions, SignInThrottle
from node.serve import Node
from tests.http_node import TOKEN, make_node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    running = make_node(tmp_path_factory.mktemp("security"))
    yield running
    running.stop()


@pytest.fixture
def context(node: Node) -> Iterator[ApiContext]:
    assert node.api is not None
    ctx: ApiContext = node.api.app.state.context
    clock = ctx.clock
    yield ctx
    ctx.clock = clock
    ctx.throttle.failures.clear()


def request(
    node: Node, method: str, path: str, body: str = "", **headers: str
) -> http.client.HTTPResponse:
    assert node.api is not None
    connection = http.client.HTTPConnection("127.0.0.1", node.api.port, timeout=10)
    names = {k.replace("_", "-"): v for k, v in headers.items()}
    if body:
        names["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(method, path, body=body.encode() or None, headers=names)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def sign_in(node: Node, token: str = TOKEN, **headers: str) -> http.client.HTTPResponse:
    return request(node, "POST", "/login", urllib.parse.urlencode({"token": token}), **headers)


def cookie_of(response: http.client.HTTPResponse) -> tuple[str, str]:
    header = response.headers["set-cookie"]
    name, _, rest = header.partition("=")
    assert name == COOKIE
    return rest.partition(";")[0], header


def test_sessions_and_throttle_alone() -> None:
    sessions = Sessions(b"k" * 32)
    value = sessions.issue("tok", now=1000.0, lifetime=60)
    assert "tok" not in value and sessions.valid(value, "tok", 1059.0)
    assert not sessions.valid(value, "tok", 1060.0)  # expired
    assert not sessions.valid(value, "other", 1001.0)  # the token changed
    assert not sessions.valid(value.replace(".1060.", ".9999."), "tok", 1001.0)  # forged expiry
    assert not Sessions(b"j" * 32).valid(value, "tok", 1001.0)  # another process's key
    sessions.end(value)
    assert not sessions.valid(value, "tok", 1001.0)
    throttle = SignInThrottle(capacity=2)
    assert [throttle.failed("a", 0.0, 5.0) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert throttle.wait("a", 1.0) == 4.0 and throttle.wait("b", 1.0) == 0.0
    throttle.failed("b", 0.0, 5.0)
    throttle.failed("c", 0.0, 5.0)
    assert throttle.wait("a", 1.0) == 0.0  # forgotten: capacity
    throttle.succeeded("c")
    assert throttle.wait("c", 0.5) == 0.0


def test_the_session_cookie_is_not_the_token_and_ends(node: Node, context: ApiContext) -> None:
    signed = sign_in(node)
    assert signed.status == 303
    value, header = cookie_of(signed)
    assert TOKEN not in value and TOKEN not in header
    flags = header.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=43200" in flags
    assert "secure" not in flags  # plain HTTP on loopback
    assert request(node, "GET", "/jobs", Cookie=f"{COOKIE}={value}").status == 200
    assert request(node, "GET", "/jobs", Cookie=f"{COOKIE}={TOKEN}").status == 401
    later = context.clock
    context.clock = lambda: later() + 12 * 3600 + 1
    assert request(node, "GET", "/jobs", Cookie=f"{COOKIE}={value}").status == 401
    context.clock = later
    out = request(node, "POST", "/logout", Cookie=f"{COOKIE}={value}")
    assert out.status == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert request(node, "GET", "/jobs", Cookie=f"{COOKIE}={value}").status == 401


def test_the_cookie_is_secure_over_https(node: Node) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback: a local TLS proxy in front.
    signed = sign_in(node, X_Forwarded_Proto="https")
    assert signed.status == 303 and "secure" in cookie_of(signed)[1].lower()


def test_wrong_sign_ins_are_throttled(node: Node, context: ApiContext) -> None:
    assert sign_in(node, "wrong").status == 401
    refused = sign_in(node)  # even the right token must wait
    assert refused.status == 429 and refused.headers["retry-after"] == "1"
    now = context.clock
    context.clock = lambda: now() + 1.5
    assert sign_in(node, "wrong").status == 401
    refused = sign_in(node)
    assert refused.status == 429 and refused.headers["retry-after"] == "2"
    context.clock = lambda: now() + 4.0
    assert sign_in(node).status == 303
    assert sign_in(node, "wrong").status == 401  # a success cleared the count: 1 s again
    assert sign_in(node).headers["retry-after"] == "1"


def test_the_open_sign_in_form_is_bounded(node: Node, context: ApiContext) -> None:
    huge = sign_in(node, "x" * 100_000)
    assert huge.status == 413
    assert context.throttle.wait("127.0.0.1", context.clock()) == 0  # not even tried


def test_cross_origin_posts_are_refused(node: Node) -> None:
    assert node.api is not None
    own = f"http://127.0.0.1:{node.api.port}"
    bearer = f"Bearer {TOKEN}"
    path = "/deliveries/1/retry"
    assert (
        request(node, "POST", path, Authorization=bearer, Origin="https://evil.example").status
        == 403
    )
    assert (
        request(node, "POST", path, Authorization=bearer, Referer="http://evil.example/x").status
        == 403
    )
    assert request(node, "POST", path, Authorization=bearer, Origin="null").status == 403
    assert sign_in(node, Origin="https://evil.example").status == 403
    assert request(node, "POST", path, Authorization=bearer, Origin=own).status == 404
    assert request(node, "POST", path, Authorization=bearer, Referer=f"{own}/").status == 404
    assert request(node, "POST", path, Authorization=bearer).status == 404  # not a browser
    assert (
        request(node, "GET", "/jobs", Authorization=bearer, Origin="https://evil.example").status
        == 200
    )


def test_every_response_carries_the_security_headers(node: Node, context: ApiContext) -> None:
    for method, path, status in [
        ("GET", "/health", 200),
        ("GET", "/", 401),
        ("GET", "/jobs", 401),
        ("GET", "/nowhere", 404),
        ("POST", "/login", 401),
    ]:
        response = request(node, method, path)
        assert response.status == status
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    docs = request(node, "GET", "/docs", Authorization=f"Bearer {TOKEN}")
    assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]


def test_https_from_api_tls(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    tls = config.ApiTLSSettings(
        enabled=True, certificate=str(tls_files["cert"]), private_key=str(tls_files["key"])
    )
    running = make_node(tmp_path, tls=tls)
    try:
        assert running.api is not None
        port = running.api.port
        client = ssl.create_default_context(cafile=str(tls_files["ca"]))
        connection = http.client.HTTPSConnection("localhost", port, context=client, timeout=10)
        connection.request("GET", "/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert connection.getresponse().status == 200
        connection.close()
        connection = http.client.HTTPSConnection("localhost", port, context=client, timeout=10)
        form = urllib.parse.urlencode({"token": TOKEN})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/login", body=form, headers=headers)
        signed = connection.getresponse()
        assert signed.status == 303 and "secure" in signed.headers["set-cookie"].lower()
        connection.close()
        with pytest.raises((http.client.HTTPException, OSError)):  # plain HTTP gets no answer
            plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            plain.request("GET", "/health")
            plain.getresponse()
    finally:
        running.stop()
    missing = dataclasses.replace(tls, private_key=str(tmp_path / "nowhere.pem"))
    with pytest.raises(ValueError, match=r"api\.tls\.private_key.*nowhere\.pem"):
        https_context(missing)
    swapped = dataclasses.replace(tls, private_key=str(tls_files["ca_key"]))
    with pytest.raises(ValueError, match="cannot load certificate"):
        https_context(swapped)
