"""Audit and dead-letter routes.

    GET  /subscriptions/{id}/deliveries?limit=&before=
                                                 delivery attempts, newest page first; `next`
                                                 is the `before` of the page older than it:
                                                 the owner or an operator
    POST /audit/persons  {"bsn": "..."}          who received data about a person: operators;
                                                 POST keeps the BSN out of URLs and access logs
    GET  /subscriptions/{id}/dlq                 dead letters (no data contents): owner/operator
    POST /subscriptions/{id}/dlq/redrive         deliver them again, in order: operators
Person queries and redrives are recorded in the audit trail (`streams.http.auditing`; a person
by the BSN's pseudonym alone).
"""

from __future__ import annotations

from dataclasses import asdict

from aiohttp import web

from streams.auth import Client, Forbidden
from streams.config import Settings
from streams.contract.values import elfproef
from streams.delivery.dlq import list_dead_letters, redrive
from streams.http.auditing import AUDITOR, add_auditing, audited, note
from streams.http.kit import AUTHENTICATOR, Failure, answering, caller, parse_json, read_body
from streams.http.limits import page_limit
from streams.operations.logboek import delivery_page, person_deliveries
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["add_audit_routes"]


def add_audit_routes(app: web.Application, *, settings: Settings, store: SubscriptionStore) -> None:
    """Mount the audit routes on an API app built by `make_api`."""
    add_auditing(app, settings=settings)

    async def deliveries(request: web.Request) -> web.Response:
        client = caller(request)
        subscription = _own(client, request)
        limit = page_limit(request, settings.limits)
        before: int | None = None
        if "before" in request.query:
            text = request.query["before"]
            if not (text.isdigit() and len(text) <= 19):
                raise Failure(400, "invalid_cursor", "before: a `next` this API gave")
            before = int(text)
        page = await delivery_page(settings, subscription.id, limit=limit, before=before)
        answer = {
            "deliveries": [a.as_dict() for a in page.attempts],
            "next": None if page.before is None else str(page.before),
        }
        return web.json_response(answer)

    async def person(request: web.Request) -> web.Response:
        auth = request.app[AUTHENTICATOR]
        client = caller(request)
        auth.require_operator(client)
        try:
            body = parse_json(await read_body(request, 4096))
        except ValueError:
            raise Failure(400, "invalid_json", "the body is not UTF-8 JSON") from None
        bsn = body.get("bsn") if isinstance(body, dict) else None
        if not isinstance(bsn, str):
            raise Failure(400, "invalid_body", 'expected {"bsn": "<9 digits>"}')
        if elfproef(bsn):
            note(request, person=request.app[AUDITOR].pseudonym(bsn))
        try:
            found = await person_deliveries(settings, bsn)
        except ValueError:
            raise Failure(400, "invalid_bsn", "not a BSN (9 digits, elfproef)") from None
        note(request, results=len(found))
        return web.json_response({"deliveries": [asdict(d) for d in found]})

    async def dead_letters(request: web.Request) -> web.Response:
        client = caller(request)
        subscription = _own(client, request)
        letters = await list_dead_letters(settings, subscription.id)
        return web.json_response(
            {
                "deadLetters": [
                    {**asdict(d), "time": d.time.isoformat() if d.time else None} for d in letters
                ]
            }
        )

    async def redrive_letters(request: web.Request) -> web.Response:
        auth = request.app[AUTHENTICATOR]
        client = caller(request)
        auth.require_operator(client)
        subscription = _own(client, request)
        count = await redrive(settings, subscription.id, purpose=subscription.purpose)
        note(request, redriven=count)
        return web.json_response({"redriven": count})

    def _own(client: Client, request: web.Request) -> Subscription:
        subscription = store.get(request.match_info["id"])
        if subscription is None:
            raise Failure(404, "not_found", "no such subscription")
        if not client.operator and subscription.owner != client.id:
            raise Forbidden("not_the_owner", f"client {client.id} does not own this subscription")
        return subscription

    app.router.add_get("/subscriptions/{id}/deliveries", answering(deliveries))
    app.router.add_get("/subscriptions/{id}/dlq", answering(dead_letters))
    app.router.add_post("/subscriptions/{id}/dlq/redrive", audited("dlq_redrive", redrive_letters))
    app.router.add_post("/audit/persons", audited("person_audit", person))
