"""Error responses of the API, in one shape for every route.

A1111 answers failures with `{"error", "detail", "body", "errors"}`. Field problems additionally follow
FastAPI's validation shape (`detail` is a list of `{loc, msg, type}`), so a client that handles FastAPI's
422 handles ours too. The route class below converts exceptions for the /sdapi routes only, leaving the
rest of the server (Gradio, /healthz) alone.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ..engine.errors import CheckpointError, EngineError, InvalidParameterError
from ..engine.sampling.registry import UnknownSamplerError, UnknownScheduleError
from ..services.job_queue import JobNotFound, QueueFullError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status; `field` names the request field at fault, if one is."""

    def __init__(self, status: int, message: str, field: str | None = None, kind: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.message = message
        self.field = field
        self.kind = kind or ("ValidationError" if field else "ApiError")


def field_error(field: str, message: str, status: int = 422) -> ApiError:
    return ApiError(status, message, field=field)


def error_body(kind: str, message: str, fields: list[tuple[str, str, str]] = ()) -> dict[str, Any]:
    """`fields` are (dotted field name, message, type) triples."""
    if not fields:
        return {"error": kind, "detail": message, "body": "", "errors": message}
    detail = [{"loc": ["body", *name.split(".")], "msg": msg, "type": typ} for name, msg, typ in fields]
    return {"error": kind, "detail": detail, "body": "", "errors": message}


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    fields = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        msg, typ = str(err.get("msg", "invalid value")), str(err.get("type", "value_error"))
        fields.append((".".join(loc) or "body", msg, typ))
    message = "; ".join(f"{name}: {msg}" for name, msg, _ in fields)
    return JSONResponse(error_body("ValidationError", message, fields), status_code=422)


def _field_response(field: str, message: str, status: int = 422, kind: str = "ValidationError") -> JSONResponse:
    return JSONResponse(error_body(kind, message, [(field, message, "value_error")]), status_code=status)


def exception_response(exc: Exception) -> JSONResponse:
    """Map an exception to its response; unexpected ones become 500 and are logged with a traceback."""
    if isinstance(exc, RequestValidationError):
        return _validation_response(exc)
    if isinstance(exc, HTTPException):   # e.g. FastAPI's 400 for a body it cannot parse (too deeply nested)
        return JSONResponse(error_body("HTTPException", str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
    if isinstance(exc, ApiError):
        if exc.field:
            return _field_response(exc.field, str(exc), exc.status, exc.kind)
        return JSONResponse(error_body(exc.kind, str(exc)), status_code=exc.status)
    if isinstance(exc, InvalidParameterError):
        return _field_response(exc.field, str(exc))
    if isinstance(exc, UnknownSamplerError):
        return _field_response("sampler_name", f"sampler_name: {exc}")
    if isinstance(exc, UnknownScheduleError):
        return _field_response("scheduler", f"scheduler: {exc}")
    for kinds, status, name in _STATUS:
        if isinstance(exc, kinds):
            return JSONResponse(error_body(name or type(exc).__name__, str(exc)), status_code=status)
    log.exception("API request failed")
    return JSONResponse(error_body(type(exc).__name__, f"{type(exc).__name__}: {exc}"), status_code=500)


# Errors without a field, most specific first: (exception types, HTTP status, error name or None for the type's).
_STATUS: list[tuple[type | tuple[type, ...], int, str | None]] = [
    (QueueFullError, 503, "QueueFull"),
    (JobNotFound, 404, "JobNotFound"),
    (CheckpointError, 500, "CheckpointError"),
    (EngineError, 400, None),
]


class ApiRoute(APIRoute):
    """Turns exceptions raised by an API route (and body validation errors) into JSON error responses."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every failure of one request becomes that request's answer
                return exception_response(exc)

        return handle
