"""What every route module of the HTTP API shares: the caller, bodies, and error answers.

A handler finds the caller with `caller(request)` (the app's `AUTHENTICATOR`), reads its
body with `read_body` and `parse_json`, and raises `Failure` (or an `AuthError`) for any
answer but success; `answering` turns those into the JSON error answer of SPEC §4, and
`internal_errors` turns anything unexpected into a bare 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Final

from aiohttp import hdrs, web
from pydantic import TypeAdapter, ValidationError

from streams.auth import Authenticator, AuthError, Client

__all__ = [
    "AUTHENTICATOR",
    "BODY_TIMEOUT_S",
    "RETRY_AFTER_S",
    "Failure",
    "Handler",
    "answering",
    "caller",
    "dump_json",
    "error_response",
    "internal_errors",
    "parse_json",
    "read_body",
    "rfc3339",
]

log = logging.getLogger(__name__)

# Every route authenticates with the same clients.
AUTHENTICATOR: Final = web.AppKey("authenticator", Authenticator)
RETRY_AFTER_S: Final = "5"
# how long a request's body may take to arrive (`http.body_timeout_s`; unset: no bound)
BODY_TIMEOUT_S: Final = web.AppKey("body_timeout_s", float)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Failure(Exception):
    """Any answer but success: status, stable code, why, per-event errors, and for a 429 or
    503 when to try again (seconds)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: Iterable[dict[str, Any]] = (),
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, list(errors)
        self.retry_after = retry_after


def caller(request: web.Request) -> Client:
    """The authenticated client of a request, or `AuthError` (401)."""
    return request.app[AUTHENTICATOR].authenticate(request.headers.get(hdrs.AUTHORIZATION))


def _no_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def parse_json(body: bytes) -> Any:
    """Parsed JSON, or `ValueError`."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def dump_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, or a 413 as soon as it is known to be over `limit` bytes, or a 408 when it
    takes over the app's `BODY_TIMEOUT_S` to arrive (a slowly trickled body)."""
    too_large = Failure(413, "payload_too_large", f"the body is over {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks, size = [], 0
    timeout_s = request.app.get(BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        message = f"the body did not arrive within {timeout_s:g} s"
        raise Failure(408, "body_timeout", message) from None
    return b"".join(chunks)


def error_response(
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, Any]],
    *,
    retry_after: int | None = None,
) -> web.Response:
    """The JSON error answer: `status`, `code`, `message`, and `errors` (always on a 400);
    `Retry-After` on a 503, and with `retry_after` (seconds) given."""
    body: dict[str, Any] = {"status": status, "code": code, "message": message}
    if errors or status == 400:
        body["errors"] = errors
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="gemeentebus"'}
    return web.json_response(body, status=status, headers=headers)


def answering(handler: Handler) -> Handler:
    """A route handler whose `AuthError`s and failures become JSON answers (401/403/4xx/5xx)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except AuthError as exc:
            return error_response(exc.status, exc.code, exc.message, [])
        except Failure as failure:
            return error_response(
                failure.status,
                failure.code,
                failure.message,
                failure.errors,
                retry_after=failure.retry_after,
            )

    return answer


def _route(request: web.Request) -> str:
    # The route's pattern, never the path: a path may hold a BSN (volgindicaties).
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "?"


@web.middleware
async def internal_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected error answers a bare 500: no stack trace, no input echoed."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, _route(request))
        body = {"status": 500, "code": "internal_error", "message": "internal error"}
        return web.json_response(body, status=500)


_TIME = TypeAdapter(datetime)


def rfc3339(value: Any, name: str) -> datetime:
    """A request's time (`name` says where): RFC 3339 with a zone, or a 400 invalid_time."""
    try:
        parsed = _TIME.validate_python(value)
    except ValidationError:
        parsed = None
    if parsed is None or parsed.utcoffset() is None:
        raise Failure(400, "invalid_time", f"{name}: an RFC 3339 time with a zone is required")
    return parsed
