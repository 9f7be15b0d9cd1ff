"""The OpenAPI 3.1 document of ``/api/v1/`` (served at ``/api/v1/openapi.json``).

Written as data next to the routes it describes (`kernel_http.api`), small
enough to read; the tests fuzz every operation it lists with schemathesis
and check that no input makes the server answer 500.
"""

from __future__ import annotations

from typing import Any, Final

from kernel import JobState

__all__ = ["openapi_document"]

_ERROR: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_JOB: Final = {
    "type": "object",
    "required": ["id", "task", "queue", "state", "attempts", "args", "kwargs"],
    "properties": {
        "id": {"type": "string"},
        "task": {"type": "string"},
        "queue": {"type": "string"},
        "state": {"enum": [state.value for state in JobState]},
        "attempts": {"type": "integer"},
        "args": {"type": "array"},
        "kwargs": {"type": "object"},
        "last_error": {"type": ["string", "null"]},
        "run_at": {"type": "string"},
        "enqueued_at": {"type": "string"},
        "finished_at": {"type": ["string", "null"]},
    },
}
_PAGE: Final = {
    "type": "object",
    "required": ["jobs", "next_after"],
    "properties": {
        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
        "next_after": {"type": ["string", "null"]},
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "a malformed parameter",
        401: "no credentials",
        403: "a wrong token, or actions are off",
        404: "no such thing",
        409: "not in a state the action applies to",
        503: "the kernel is not running, or its store fails",
    }
    ref = {"$ref": "#/components/schemas/Error"}
    return {str(code): _json(ref, words[code]) for code in codes}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_LIMIT: Final = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")
_AFTER: Final = _query("after", {"type": "string"}, "the next_after of the previous page")


def _get(summary: str, schema: dict[str, Any], *codes: int, params: Any = ()) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": list(params),
            "responses": {"200": _json(schema), **_errors(401, 403, 503, *codes)},
        }
    }


def _post(summary: str, schema: dict[str, Any], *codes: int, params: Any = ()) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": list(params),
            "responses": {"200": _json(schema), **_errors(401, 403, 503, *codes)},
        }
    }


def openapi_document() -> dict[str, Any]:
    """The document (a fresh dict each call)."""
    obj: dict[str, Any] = {"type": "object"}
    array: dict[str, Any] = {"type": "array", "items": {"type": "object"}}
    job = {"$ref": "#/components/schemas/Job"}
    page = {"$ref": "#/components/schemas/JobPage"}
    plugin = _path("name", "the plugin's instance name")
    schedule = _path("name", "the schedule's name (may contain '/')")
    queue = _path("name", "the queue's name")
    job_id = _path("job_id", "32 hex digits")
    paths: dict[str, Any] = {
        "/api/v1/health": _get("Health of every component, and readiness", obj),
        "/api/v1/metrics": _get("The kernel's metrics as JSON", obj),
        "/api/v1/plugins": _get("Plugins: state, version, restarts, health", array),
        "/api/v1/plugins/{name}": _get("One plugin", obj, 404, params=[plugin]),
        "/api/v1/schedules": _get("Schedules with their next and last fire", array),
        "/api/v1/queues": _get("Queues: depth, running, concurrency, paused", array),
        "/api/v1/jobs": _get(
            "Jobs in id order, filtered",
            page,
            400,
            params=[
                _query("state", {"enum": [s.value for s in JobState]}, "only jobs in this state"),
                _query("queue", {"type": "string"}, "only jobs of this queue"),
                _query("task", {"type": "string"}, "only jobs of this task"),
                _LIMIT,
                _AFTER,
            ],
        ),
        "/api/v1/jobs/{job_id}": _get(
            "One job, with its arguments and last error", job, 400, 404, params=[job_id]
        ),
        "/api/v1/jobs/{job_id}/cancel": _post(
            "Cancel a queued or running job", job, 400, 404, 409, params=[job_id]
        ),
        "/api/v1/jobs/{job_id}/retry": _post(
            "Put a dead job back in its queue", job, 400, 404, 409, params=[job_id]
        ),
        "/api/v1/dead-letters": _get("Dead jobs in id order", page, 400, params=[_LIMIT, _AFTER]),
        "/api/v1/dead-letters/purge": _post(
            "Delete dead jobs",
            {"type": "object", "properties": {"purged": {"type": "integer"}}},
            400,
            params=[
                _query(
                    "older_than_seconds", {"type": "number", "minimum": 0}, "only those dead longer"
                )
            ],
        ),
    }
    for verb in ("enable", "disable", "restart"):
        paths[f"/api/v1/plugins/{{name}}/{verb}"] = _post(
            f"{verb.capitalize()} a plugin", obj, 404, 409, params=[plugin]
        )
    for verb in ("pause", "resume", "trigger"):
        paths[f"/api/v1/schedules/{{name}}/{verb}"] = _post(
            f"{verb.capitalize()} a schedule", obj, 400, 404, params=[schedule]
        )
    for verb in ("pause", "resume"):
        paths[f"/api/v1/queues/{{name}}/{verb}"] = _post(
            f"{verb.capitalize()} a queue here", obj, 404, params=[queue]
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "trio-kernel",
            "version": "1",
            "description": (
                "Reads are open on loopback; every POST needs 'Authorization: Bearer <token>'."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR, "Job": _JOB, "JobPage": _PAGE},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
