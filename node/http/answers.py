"""What each HTTP operation can answer, for the OpenAPI document (``/openapi.json``).

FastAPI derives a 200 and a 422 from a handler's signature; everything else an operation
can answer (the 401 of the token guard, a 404, the upload's 400/408/413, files that are
not JSON) is declared here, so that generated clients and schema-driven testers such as
schemathesis agree with the server.
"""

from __future__ import annotations

from typing import Any

Answers = dict[int | str, dict[str, Any]]

# HTTPException's body, as FastAPI writes it.
PROBLEM = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string"}},
}

# reporting.legacy_json: every answer of /predict and /studies/{uid}/result, success or not.
LEGACY = {
    "type": "object",
    "required": ["processing_status", "error"],
    "properties": {
        "study_uid": {"type": ["string", "null"]},
        "processing_status": {"type": "string"},
        "error": {"type": ["string", "null"]},
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def problem(status: int, description: str) -> Answers:
    return {status: _json(description, PROBLEM)}


def legacy(status: int, description: str) -> Answers:
    return {status: _json(description, LEGACY)}


def binary(media_type: str, description: str) -> Answers:
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


UNAUTHORISED = problem(401, "No token, or a wrong one (WWW-Authenticate: Bearer).")
NOT_FOUND = problem(404, "No such object.")
FOREIGN = problem(403, "A browser's request from another origin (Origin or Referer).")
