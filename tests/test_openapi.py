"""The OpenAPI document is true: schemathesis (pinned in the test extra) drives every
operation of a real running node from ``/openapi.json`` and finds no 5xx and no answer
(status, media type, body) that the document does not declare; without the token, every
operation but ``/health`` is refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.serve import Node
from tests.http_node import TOKEN, make_node

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,ignored_auth"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    running = make_node(tmp_path_factory.mktemp("openapi"))
    yield running
    running.stop()


def call(node: Node, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    assert node.api is not None
    request = urllib.request.Request(f"http://127.0.0.1:{node.api.port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def document(node: Node) -> dict[str, Any]:
    status, body = call(node, "GET", "/openapi.json", TOKEN)
    assert status == 200
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_the_document_declares_how_to_authenticate_and_what_comes_back(node: Node) -> None:
    doc = document(node)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["token"] == {**schemes["token"], "type": "http", "scheme": "bearer"}
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            if path == "/health":
                assert "security" not in operation
            else:
                assert {"token": []} in operation["security"]
                assert "401" in operation["responses"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    predict = doc["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and body["properties"]["file"]["format"] == "binary"
    assert {"400", "401", "408", "413", "422"} <= set(predict["responses"])


def test_every_operation_but_health_needs_the_token(node: Node) -> None:
    doc = document(node)
    operations = [
        (m.upper(), re.sub(r"\{[^}]+\}", "1", p)) for p in doc["paths"] for m in doc["paths"][p]
    ]
    assert len(operations) >= 12
    for method, path in [*operations, ("GET", "/openapi.json"), ("GET", "/docs")]:
        for token in (None, "wrong", ""):
            status, _ = call(node, method, path, token)
            assert status == (200 if path == "/health" else 401), (method, path, token)


def test_schemathesis_finds_the_server_true_to_its_document(node: Node, tmp_path: Path) -> None:
    assert node.api is not None
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document(node)))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            str(schema),
            "--url",
            f"http://127.0.0.1:{node.api.port}",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            CHECKS,
            "--max-examples",
            "50",
            "--seed",
            "25",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
