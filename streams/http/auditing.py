"""The audit trail over HTTP: every audited route records one `AuditRecord`, and operators read
the trail.

`audited(action, handler)` replaces `answering(handler)` where a route is mounted: the caller
is authenticated (a 401 is answered and not recorded: nobody to name), the route is refused
with `503 audit_unavailable` while the trail has an unwritten record (nothing is done), and
once the handler answered, its outcome is recorded (the status, and the code of a 4xx/5xx)
with the request's `X-Request-ID`, which the answer carries. A handler adds what only it
knows with `note(request, target=..., **details)` (a person only as the BSN's pseudonym).

    GET /audit?since=&until=&actor=&action=&target=&limit=   the trail, oldest first: operators

`add_auditing(app, settings=...)` mounts `GET /audit` and starts and stops the `Auditor`; every
`add_*_routes` with audited routes calls it (once per app, whichever comes first).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from streams.auth import AuthError
from streams.config import Settings
from streams.contract.values import elfproef
from streams.http.kit import (
    AUTHENTICATOR,
    Failure,
    Handler,
    answering,
    caller,
    error_response,
    rfc3339,
)
from streams.operations.audit import (
    Auditor,
    AuditRecord,
    AuditUnavailable,
    Outcome,
    read_trail,
    request_id_from,
)

__all__ = ["AUDITOR", "REQUEST_ID_HEADER", "add_auditing", "audited", "note"]

AUDITOR: Final = web.AppKey("auditor", Auditor)
REQUEST_ID_HEADER: Final = "X-Request-ID"
_NOTE: Final = web.RequestKey("audit-note", dict)
_CODE: Final = web.RequestKey("audit-code", str)
MAX_LIMIT: Final = 1000


def note(request: web.Request, /, **details: Any) -> None:
    """Add to the audit record of this request (`target=` names what it is about)."""
    if _NOTE not in request:
        request[_NOTE] = {}
    request[_NOTE].update(details)


def audited(action: str, handler: Handler) -> Handler:
    """`handler`, answered like `answering` does, with one audit record per authenticated call."""

    async def coded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (AuthError, Failure) as exc:
            request[_CODE] = exc.code
            raise

    answered = answering(coded)

    async def audit(request: web.Request) -> web.StreamResponse:
        try:
            client = caller(request)
        except AuthError:
            return await answered(request)  # 401: answered, and nobody to record
        auditor = request.app[AUDITOR]
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        try:
            auditor.check()
        except AuditUnavailable:
            message = "the audit trail cannot be written now, so nothing was done; try again"
            refused = error_response(503, "audit_unavailable", message, [])
            refused.headers[REQUEST_ID_HEADER] = request_id
            return refused
        status: int = 500
        code: str | None = "internal_error"
        try:
            response = await answered(request)
            status, code = response.status, request.get(_CODE)
        finally:
            details = dict(request.get(_NOTE, {}))
            bsn = request.match_info.get("bsn")
            if bsn is not None and elfproef(bsn):  # a person by pseudonym alone, never the BSN
                details.setdefault("person", auditor.pseudonym(bsn))
            target = details.pop("target", request.match_info.get("id"))
            outcome: Outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
            record = AuditRecord(
                action=action,
                actor=client.id,
                via="http",
                outcome=outcome,
                code=None if status < 400 else code or str(status),
                status=status,
                target=target,
                request_id=request_id,
                details=details,
            )
            # record-after: a record not written is kept and retried; `check` refuses meanwhile
            await auditor.record(record)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return audit


def _time(value: str | None, name: str) -> datetime | None:
    return None if value is None else rfc3339(value, name)


def add_auditing(app: web.Application, *, settings: Settings) -> None:
    """Start and stop the app's `Auditor` with it, and mount `GET /audit` (operators); a second
    call on the same app does nothing."""
    if AUDITOR in app:
        return
    auditor = Auditor(settings)
    app[AUDITOR] = auditor

    async def start(_: web.Application) -> None:
        await auditor.start()

    async def stop(_: web.Application) -> None:
        await auditor.stop()

    async def trail(request: web.Request) -> web.Response:
        client = caller(request)
        request.app[AUTHENTICATOR].require_operator(client)
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise Failure(400, "invalid_limit", "limit: a whole number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise Failure(400, "invalid_limit", f"limit: 1 to {MAX_LIMIT}")
        found = read_trail(
            settings,
            since=_time(query.get("since"), "since"),
            until=_time(query.get("until"), "until"),
            actor=query.get("actor"),
            action=query.get("action"),
            target=query.get("target"),
            limit=limit,
        )
        async with contextlib.aclosing(found) as entries:
            records = [entry async for entry in entries]
        return web.json_response({"records": records})

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/audit", answering(trail))
