"""Subscriptions over HTTP (SPEC §4): CRUD, volgindicaties and the callback check.

`add_subscription_routes(app, settings=..., store=...)` mounts the routes on the app that
`make_api` builds. A subscriber sees and changes only its own subscriptions, an operator all
of them; a subscription must lie within its owner's grant (`streams.routing.grants`: types,
fields, volgindicaties), also when an operator writes it. Every
write waits for the store (durable, and visible in this process) before answering.
The signing secret is answered once, when the subscription is created. A volgindicatie's BSN
is kept only as its pseudonym and never answered, logged or echoed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

import aiohttp
from aiohttp import hdrs, web
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, ValidationError

from streams.auth import Authenticator, Client, Forbidden
from streams.config import Settings
from streams.contract.attributes import pseudonym
from streams.contract.codec import STRUCTURED_CONTENT_TYPE
from streams.contract.values import elfproef
from streams.delivery.sinks import SinkPolicy, SinkRefused
from streams.exceptions import KafkaUnavailable, TopicsRefused
from streams.http.auditing import add_auditing, audited
from streams.http.auditing import note as audit_note
from streams.http.kit import (
    AUTHENTICATOR,
    Failure,
    answering,
    caller,
    dump_json,
    parse_json,
    read_body,
)
from streams.http.limits import SubscriptionQuota, check_filters
from streams.routing.grants import Grants
from streams.routing.intake import (
    check_purpose,
    client_from,
    new_signing_secret,
    purpose_of,
    server_owned,
    validation_errors,
)
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import MASK, Subscription, new_subscription_id

__all__ = ["CALLBACK_CHECK_TIMEOUT_S", "CALLBACK_CHECK_TYPE", "add_subscription_routes"]

log = logging.getLogger(__name__)

CALLBACK_CHECK_TYPE: Final = "nl.gemeentebus.callback-check"
CALLBACK_CHECK_SOURCE: Final = "urn:gemeentebus:callback-check"
CALLBACK_CHECK_TIMEOUT_S: Final = 5.0
# The CloudEvents webhook validation handshake's headers (abuse protection, §4).
REQUEST_ORIGIN: Final = "WebHook-Request-Origin"
ALLOWED_ORIGIN: Final = "WebHook-Allowed-Origin"


class _Volgindicatie(BaseModel):
    """The optional body of `PUT .../volgindicaties/{bsn}`."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    einddatum: date | None = None


class _Subscriptions:
    """The handlers, over one store and the API's authenticator."""

    def __init__(self, settings: Settings, store: SubscriptionStore, auth: Authenticator) -> None:
        self.settings, self.store, self.auth = settings, store, auth
        self.key = settings.security.pseudonym_key_bytes()
        self.max_body = settings.http.max_event_bytes
        self.timeout_s = settings.kafka.request_timeout_s
        self.sinks = SinkPolicy.from_settings(settings)
        self.quota = SubscriptionQuota(settings.limits, store)
        # read-modify-write of one subscription, one request at a time (in this process)
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def grants(self) -> Grants:
        """The owners' current grants: intake holds a subscription to them, and the store
        binds what it hands out by the same (`SubscriptionStore.regrant` replaces them)."""
        return self.store.grants

    # -- GET/POST /subscriptions --------------------------------------------------------------

    async def listing(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        mine = [s for s in self.store if client.operator or s.owner == client.id]
        mine.sort(key=lambda s: (s.created, s.id))
        return web.json_response([s.public_dict() for s in mine])

    async def create(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        body = await self._body(request)
        check_filters(self.settings.limits, body.get("filters"))
        check_purpose(self.auth, client, body.get("types"))
        secret = new_signing_secret()
        server = {
            "id": new_subscription_id(),
            "owner": client.id,
            "purpose": purpose_of(client),
            "signingSecret": secret,
        }
        subscription = self._validate(body, server)
        self.grants.check(subscription)
        self._check_sink(subscription)
        async with self.quota.room(subscription.owner):
            await self._callback_check(subscription)
            # valid: about to exist (or a 503 says maybe)
            audit_note(request, target=subscription.id)
            await self._write(self.store.put(subscription))
        log.info("client %s created subscription %s", client.id, subscription.id)
        answer = {**subscription.public_dict(), "signingSecret": secret}
        location = {hdrs.LOCATION: f"/subscriptions/{subscription.id}"}
        return web.json_response(answer, status=201, headers=location)

    # -- GET/PUT/DELETE /subscriptions/{id} ---------------------------------------------------

    async def get(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        return web.json_response((await self._own(request, client)).public_dict())

    async def replace(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        async with self.locks[request.match_info["id"]]:
            existing = await self._own(request, client)
            body = await self._body(request)
            check_filters(self.settings.limits, body.get("filters"))
            config = self.grants.owner(existing.owner)
            owner = (
                client
                if client.id == existing.owner
                else None
                if config is None
                else client_from(config)
            )
            if owner is not None:
                check_purpose(self.auth, owner, body.get("types"))
            record = existing.record_dict()
            kept = ("id", "owner", "purpose", "created", "signingSecret")
            # volgindicaties left out: they are records of their own, which a put never
            # removes, so a replace cannot undo a volgindicatie set meanwhile elsewhere
            server = {name: record[name] for name in kept if name in record}
            subscription = self._validate(_unmasked(body, existing), server)
            # the owner's grant, also when an operator writes it
            self.grants.check(subscription)
            self._check_sink(subscription)
            await self._callback_check(subscription)
            await self._write(self.store.put(subscription))
        log.info("client %s replaced subscription %s", client.id, subscription.id)
        return web.json_response(subscription.public_dict())

    async def delete(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        async with self.locks[request.match_info["id"]]:
            existing = await self._own(request, client)
            if existing.active:  # deliverers see it retired before it is gone
                await self._write(self.store.put(existing.retired()))
            await self._write(self.store.delete(existing.id))
        log.info("client %s deleted subscription %s", client.id, existing.id)
        return web.Response(status=204)

    # -- PUT/DELETE /subscriptions/{id}/volgindicaties/{bsn} ----------------------------------

    async def follow(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        existing = await self._own(request, client)
        self.grants.check_volgindicaties(existing)
        key = self._pseudonym(request)
        einddatum = await self._einddatum(request)
        # one record per volgindicatie: no read-modify-write, so no lock and no lost update
        if key not in existing.volgindicaties or existing.volgindicaties[key] != einddatum:
            await self._write(self.store.follow(existing.id, key, einddatum))
        log.info("client %s set a volgindicatie on %s", client.id, existing.id)
        return web.Response(status=204)

    async def unfollow(self, request: web.Request) -> web.Response:
        client = self._caller(request)
        existing = await self._own(request, client)
        key = self._pseudonym(request)
        if key in existing.volgindicaties:
            await self._write(self.store.unfollow(existing.id, key))
        log.info("client %s removed a volgindicatie from %s", client.id, existing.id)
        return web.Response(status=204)

    # -- helpers --------------------------------------------------------------------------------

    def _caller(self, request: web.Request) -> Client:
        client = caller(request)
        if client.subscribe is None and not client.operator:
            raise Forbidden("not_a_subscriber", f"client {client.id} may not subscribe")
        return client

    async def _own(self, request: web.Request, client: Client) -> Subscription:
        subscription = self.store.get(request.match_info["id"])
        if subscription is None:
            # made a moment ago by another API process: this one may not have read it yet
            await self.store.sync()
            subscription = self.store.get(request.match_info["id"])
        if subscription is None:
            raise Failure(404, "not_found", "no such subscription")
        if subscription.owner != client.id and not client.operator:
            message = f"client {client.id} does not own this subscription"
            raise Forbidden("not_the_owner", message)
        return subscription

    def _pseudonym(self, request: web.Request) -> str:
        bsn = request.match_info["bsn"]
        if not elfproef(bsn):
            message = "not a BSN: 9 digits that pass the elfproef"
            error = {"path": "bsn", "code": "invalid_bsn", "message": message}
            raise Failure(400, "invalid_bsn", message, [error])
        return pseudonym(bsn, self.key)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await read_body(request, self.max_body)
        try:
            body = parse_json(raw)
        except ValueError:
            error = {"path": "", "code": "invalid_json", "message": "not UTF-8 JSON"}
            raise Failure(400, "invalid_json", "the body is not UTF-8 JSON", [error]) from None
        if not isinstance(body, dict):
            error = {"path": "", "code": "invalid_body", "message": "expected a JSON object"}
            raise Failure(400, "invalid_body", "expected a JSON object", [error])
        return body

    async def _einddatum(self, request: web.Request) -> date | None:
        if not request.can_read_body:
            return None
        raw = await read_body(request, self.max_body)
        if not raw.strip():
            return None
        try:
            return _Volgindicatie.model_validate_json(raw).einddatum
        except ValidationError as exc:
            errors = validation_errors(exc, {})
            message = "expected {einddatum: YYYY-MM-DD}"
            raise Failure(400, "invalid_volgindicatie", message, errors) from None

    @staticmethod
    def _validate(body: Mapping[str, Any], server: Mapping[str, Any]) -> Subscription:
        given = {key: value for key, value in body.items() if not server_owned(key)}
        try:
            return Subscription.model_validate({**given, **server})
        except ValidationError as exc:
            errors = validation_errors(exc, given)
            message = f"{len(errors)} errors in the subscription; nothing stored"
            raise Failure(400, "invalid_subscription", message, errors) from None

    def _check_sink(self, subscription: Subscription) -> None:
        """A 400 for a sink the policy refuses outright (`streams.delivery.sinks`: the scheme, a
        literal address); a name is checked where it is connected to."""
        if subscription.protocol != "HTTP":
            return
        try:
            self.sinks.check_url(subscription.sink)
        except SinkRefused as exc:
            error = {"path": "sink", "code": exc.code, "message": exc.reason}
            raise Failure(400, exc.code, f"sink: {exc.reason}", [error]) from None

    async def _callback_check(self, subscription: Subscription) -> None:
        """Probe an HTTP sink, through the sink policy: POST a test event (`callbackCheck`
        true; a 2xx passes) or the CloudEvents webhook validation handshake (`"handshake"`:
        OPTIONS with `WebHook-Request-Origin`, passed by a 2xx whose `WebHook-Allowed-Origin`
        is that origin or `*`). Failing is a 400 that says only that the check failed (what
        the sink did, or that its name led to an address the policy refuses, is for the
        operator's log: a client must not map the network with it)."""
        if subscription.protocol != "HTTP" or not subscription.callback_check:
            return
        headers: dict[str, str] = {}
        if subscription.sink_credential is not None:
            token = subscription.sink_credential.access_token.get_secret_value()
            headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        why: str | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=CALLBACK_CHECK_TIMEOUT_S)
            async with aiohttp.ClientSession(
                timeout=timeout, connector=self.sinks.connector()
            ) as session:
                if subscription.callback_check == "handshake":
                    why = await self._handshake(session, subscription.sink, headers)
                else:
                    why = await self._test_post(session, subscription, headers)
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, SinkRefused)
            why = "an address the sink policy refuses" if refused else type(exc).__name__
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__
        if why is not None:
            log.warning("subscription %s: the callback check failed (%s)", subscription.id, why)
            message = (
                "the callback check failed; fix the sink, or set callbackCheck false for an"
                " endpoint agreed by hand"
            )
            error = {"path": "sink", "code": "callback_check_failed", "message": "failed"}
            raise Failure(400, "callback_check_failed", message, [error])

    @staticmethod
    async def _test_post(
        session: aiohttp.ClientSession, subscription: Subscription, headers: dict[str, str]
    ) -> str | None:
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": CALLBACK_CHECK_SOURCE,
            "type": CALLBACK_CHECK_TYPE,
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {"subscriptionId": subscription.id},
        }
        headers = {**headers, hdrs.CONTENT_TYPE: STRUCTURED_CONTENT_TYPE}
        async with session.post(
            subscription.sink, data=dump_json(event), headers=headers, allow_redirects=False
        ) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"

    async def _handshake(
        self, session: aiohttp.ClientSession, sink: str, headers: dict[str, str]
    ) -> str | None:
        """CloudEvents "HTTP 1.1 Web Hooks for Event Delivery" §4.2: the validation request."""
        origin = self.settings.delivery.webhook_origin
        headers = {**headers, REQUEST_ORIGIN: origin}
        async with session.options(sink, headers=headers, allow_redirects=False) as response:
            if not 200 <= response.status < 300:
                return f"HTTP {response.status}"
            allowed = response.headers.get(ALLOWED_ORIGIN)
            if allowed is None:
                return f"no {ALLOWED_ORIGIN} in the answer"
            if allowed.strip() not in (origin, "*"):
                return f"{ALLOWED_ORIGIN} is not {origin}"
            return None

    async def _write(self, write: Awaitable[object]) -> None:
        """Wait for a store write to be durable and visible here, or answer 503."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await write
        except TopicsRefused as exc:  # nothing written: the subscription does not exist
            log.error("the cluster refused a subscription's topics: %s", exc)
            message = (
                "the cluster refused to create the subscription's topics, so nothing was"
                " written; the bus's operator can see why in its log"
            )
            raise Failure(503, "topics_refused", message) from exc
        except (KafkaError, KafkaUnavailable, TimeoutError) as exc:
            log.warning("the subscription store did not confirm a write: %s", type(exc).__name__)
            message = "the broker did not confirm in time; GET to see whether the change holds"
            raise Failure(503, "kafka_unavailable", message) from exc


def _unmasked(body: dict[str, Any], existing: Subscription) -> dict[str, Any]:
    """The body with a masked access token (from a GET answer) replaced by the stored one."""
    if existing.sink_credential is None:
        return body
    for name in ("sinkCredential", "sink_credential"):
        credential = body.get(name)
        if isinstance(credential, dict):
            for token_name in ("accessToken", "access_token"):
                if credential.get(token_name) == MASK:
                    token = existing.sink_credential.access_token.get_secret_value()
                    return {**body, name: {**credential, token_name: token}}
    return body


def add_subscription_routes(
    app: web.Application, *, settings: Settings, store: SubscriptionStore
) -> None:
    """Mount the subscription routes of SPEC §4 on an API app built by `make_api`.

    `store` must be started (and ready) while the app serves.
    """
    add_auditing(app, settings=settings)
    api = _Subscriptions(settings, store, app[AUTHENTICATOR])
    one = "/subscriptions/{id}"
    volgindicatie = one + "/volgindicaties/{bsn}"
    app.router.add_get("/subscriptions", answering(api.listing))
    app.router.add_post("/subscriptions", audited("subscription_create", api.create))
    app.router.add_get(one, answering(api.get))
    app.router.add_put(one, audited("subscription_update", api.replace))
    app.router.add_delete(one, audited("subscription_delete", api.delete))
    app.router.add_put(volgindicatie, audited("volgindicatie_set", api.follow))
    app.router.add_delete(volgindicatie, audited("volgindicatie_unset", api.unfollow))
