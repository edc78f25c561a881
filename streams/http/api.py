"""The HTTP API (SPEC §4): publishing, the ZGW Notificaties bridge, health and metrics.

`make_api(settings, producer=...)` builds the aiohttp application; the caller starts and
stops the producer and runs the app. `POST /events` authenticates, checks the grant for what
each event claims (403), decodes and validates every event through the gate, and then either
- sends every record, each accepted event routed like the validator routes it (its
  events-topic record, then its delivery records), and answers 202 with the ids once the
  broker confirmed all of them (`acks=all`), or 503 when it did not in time: nothing is
  claimed, a retry dedupes on source+id (records confirmed before the timeout do stay in
  their topic);
- or publishes nothing of the request, writes each rejected event to the invalid topic, and
  answers 400 with every error of every event.
Responses, logs and metrics carry codes, paths, types and client ids, never event data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from aiohttp import hdrs, web
from aiokafka.errors import KafkaError
from multidict import CIMultiDict

from connectors import zgw
from streams.auth import (
    Authenticator,
    AuthError,
    Client,
    Forbidden,
    authorize_bronorganisatie,
)
from streams.config import Settings
from streams.contract import codec
from streams.contract.attributes import ZAAK_GEMUTEERD
from streams.contract.record import KafkaRecord
from streams.exceptions import FieldError, InvalidEvent, KafkaUnavailable, RoutingFailed
from streams.health import Health, add_health_routes, guarded_metrics
from streams.http import openapi
from streams.http.audit import add_audit_routes
from streams.http.kit import (
    AUTHENTICATOR,
    BODY_TIMEOUT_S,
    RETRY_AFTER_S,
    Failure,
    dump_json,
    error_response,
    internal_errors,
    parse_json,
    read_body,
)
from streams.http.limits import rate_limits
from streams.http.openapi import OPENAPI_PATH
from streams.http.operations import add_operation_routes
from streams.http.subscriptions import add_subscription_routes
from streams.ingress import metrics
from streams.ingress.gate import Accepted, Gate, Rejected
from streams.kafka.clients import Producer, send_all
from streams.kafka.topics import Topics
from streams.routing.router import Router
from streams.routing.worker import outputs_for, produce

if TYPE_CHECKING:
    from streams.routing.store import SubscriptionStore

__all__ = ["BATCH_BODY_FACTOR", "MAX_BATCH_EVENTS", "METRICS_CONTENT_TYPE", "make_api"]

log = logging.getLogger(__name__)

VIA: Final = "http"
MAX_BATCH_EVENTS: Final = 1000
# A batch body may be this many times `max_event_bytes` (4 MiB with the default 64 KiB).
BATCH_BODY_FACTOR: Final = 64
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_MODES: Final = (codec.STRUCTURED_CONTENT_TYPE, codec.BATCH_CONTENT_TYPE, codec.JSON_CONTENT_TYPE)


@dataclass(slots=True)
class _Input:
    """One event of a request as it came in, and what became of it."""

    index: int | None  # None: the body as a whole (not JSON, not a list)
    value: bytes  # the event's own bytes, for the invalid topic
    content_type: str
    parsed: Any = None
    headers: tuple[tuple[str, bytes], ...] = ()  # binary mode: the ce_* headers
    claimed: tuple[str | None, str | None] = (None, None)  # type and source, unverified
    errors: list[FieldError] = field(default_factory=list)
    accepted: Accepted | None = None


def _error(index: int | None, e: FieldError) -> dict[str, Any]:
    return {"index": index, "path": e.path, "code": e.code, "message": e.message}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _producer_running(producer: Producer) -> bool:
    """Liveness: the producer was started and not stopped, its sender alive. Whether the
    broker answers is readiness (`GET /ready`), not liveness: an outage is no reason to
    restart the process."""
    return producer.running


class _Api:
    """The handlers, sharing one gate, authenticator and producer."""

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        timeout_s: float,
        auth: Authenticator,
        store: SubscriptionStore,
    ) -> None:
        self.producer, self.timeout_s, self.auth = producer, timeout_s, auth
        self.store = store
        self.router = Router(settings, store=store)
        self.max_event = settings.http.max_event_bytes
        self.gate = Gate(
            Topics(settings.kafka.topic_prefix), settings.security.pseudonym_key_bytes()
        )

    # -- POST /events -------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            client = self.auth.authenticate(request.headers.get(hdrs.AUTHORIZATION))
            if client.publish is None:
                raise Forbidden("not_a_publisher", f"client {client.id} may not publish events")
            media = request.content_type
            if media not in _MODES:
                message = f"use {', '.join(_MODES)}"
                raise Failure(415, codec.UNSUPPORTED_MEDIA_TYPE, message)
            limit = self.max_event * (BATCH_BODY_FACTOR if media == codec.BATCH_CONTENT_TYPE else 1)
            inputs = self._inputs(request, media, await read_body(request, limit))
            self._authorize(client, inputs)
            for item in inputs:
                self._judge(item)
            if any(item.errors for item in inputs):
                await self._reject(client.id, [i for i in inputs if i.errors])
                errors = [_error(i.index, e) for i in inputs for e in i.errors]
                count = sum(1 for i in inputs if i.errors)
                message = f"{len(errors)} errors in {count} of {len(inputs)} events; none published"
                raise Failure(400, "invalid_event", message, errors)
            self._authorize_organisations(client, inputs)
            accepted = [i.accepted for i in inputs if i.accepted is not None]
            await self._publish(accepted)
        except AuthError as exc:
            metrics.observe(event_type=None, via=VIA, code=exc.code)
            return error_response(exc.status, exc.code, exc.message, [])
        except Failure as failure:
            if failure.status != 400 and failure.status < 500:  # 400s are counted per event
                metrics.observe(event_type=None, via=VIA, code=failure.code)
            return error_response(failure.status, failure.code, failure.message, failure.errors)
        metrics.observe_batch(accepted, VIA, time.perf_counter() - started)
        log.info("client %s published %d events over HTTP", client.id, len(accepted))
        return web.json_response({"ids": [a.event.id for a in accepted]}, status=202)

    def _inputs(self, request: web.Request, media: str, body: bytes) -> list[_Input]:
        if media == codec.JSON_CONTENT_TYPE:  # binary mode: attributes in ce-* headers
            ce = [(k.lower(), v) for k, v in request.headers.items() if k.lower().startswith("ce-")]
            headers = tuple(("ce_" + k[3:], v.encode("utf-8", "surrogateescape")) for k, v in ce)
            found = dict(ce)
            claimed = tuple(
                unquote(found[k]) if k in found else None for k in ("ce-type", "ce-source")
            )
            return [_Input(0, body, media, headers=headers, claimed=(claimed[0], claimed[1]))]
        try:
            parsed = parse_json(body)
        except ValueError:
            error = FieldError("body", "invalid_json", "not UTF-8 JSON")
            return [
                _Input(
                    None if media == codec.BATCH_CONTENT_TYPE else 0, body, media, errors=[error]
                )
            ]
        if media == codec.STRUCTURED_CONTENT_TYPE:
            return [self._structured(0, body, parsed)]
        if not isinstance(parsed, list):
            error = FieldError("body", "invalid_batch", "expected a JSON list")
            return [_Input(None, body, media, errors=[error])]
        if len(parsed) > MAX_BATCH_EVENTS:
            message = f"a batch holds at most {MAX_BATCH_EVENTS} events"
            raise Failure(413, "batch_too_large", message)
        inputs = [self._structured(i, dump_json(obj), obj) for i, obj in enumerate(parsed)]
        large = [i for i in inputs if len(i.value) > self.max_event]
        if large:
            message = f"events over {self.max_event} bytes"
            errors = [
                {"index": i.index, "path": "", "code": "event_too_large", "message": message}
                for i in large
            ]
            raise Failure(413, "event_too_large", f"{len(large)} {message}", errors)
        return inputs

    @staticmethod
    def _structured(index: int, value: bytes, obj: Any) -> _Input:
        item = _Input(index, value, codec.STRUCTURED_CONTENT_TYPE, parsed=obj)
        if isinstance(obj, dict):
            item.claimed = (_text(obj.get("type")), _text(obj.get("source")))
        return item

    def _authorize(self, client: Client, inputs: list[_Input]) -> None:
        """403 naming every type or source the client may not publish; checked before all else."""
        errors: list[dict[str, Any]] = []
        for item in inputs:
            event_type, source = item.claimed
            if event_type is None:
                continue  # no type: decoding reports it
            try:
                self.auth.authorize_publish(client, event_type, source)
            except Forbidden as exc:
                path = "source" if exc.code == "source_not_granted" else "type"
                errors.append(
                    {"index": item.index, "path": path, "code": exc.code, "message": exc.message}
                )
                metrics.observe(event_type=event_type, via=VIA, code=exc.code)
        if errors:
            raise Failure(403, errors[0]["code"], errors[0]["message"], errors)

    @staticmethod
    def _authorize_organisations(client: Client, inputs: list[_Input]) -> None:
        """403 for every valid zaak event of an organisation outside the grant's `rsins`."""
        errors: list[dict[str, Any]] = []
        for item in inputs:
            rsin = item.accepted.event.extensions.get("bronorganisatie") if item.accepted else None
            if rsin is None:
                continue
            try:
                authorize_bronorganisatie(client, rsin, required=False)
            except Forbidden as exc:
                path = "data.bronorganisatie"
                errors.append(
                    {"index": item.index, "path": path, "code": exc.code, "message": exc.message}
                )
                metrics.observe(event_type=item.claimed[0], via=VIA, code=exc.code)
        if errors:
            raise Failure(403, errors[0]["code"], errors[0]["message"], errors)

    def _judge(self, item: _Input) -> None:
        """Decode and validate one input; its errors or its accepted record."""
        if item.errors:
            return
        try:
            if item.content_type == codec.JSON_CONTENT_TYPE:
                headers = self._binary_headers(item)
                [event] = codec.parse_http(item.content_type, headers, item.value)
            else:
                event = codec.from_json(item.parsed)
            item.accepted = self.gate.accept(event)
        except InvalidEvent as exc:
            item.errors = list(exc.errors)

    @staticmethod
    def _binary_headers(item: _Input) -> CIMultiDict[str]:
        # a multidict keeps a repeated ce-* header, which the codec reports
        return CIMultiDict(
            ("ce-" + k[3:], v.decode("utf-8", "surrogateescape")) for k, v in item.headers
        )

    async def _reject(self, client_id: str, inputs: Iterable[_Input]) -> None:
        """Write each rejected input to the invalid topic, so operators see every one of them."""
        rejected: list[Rejected] = []
        for item in inputs:
            ours = (
                ("content-type", item.content_type.encode()),
                ("gemeentebus_via", VIA.encode()),
                ("gemeentebus_client", client_id.encode()),
            )
            record = KafkaRecord(key=None, headers=item.headers, value=item.value)
            rejected.append(self.gate.reject(record, item.errors, annotations=ours))
            metrics.observe(event_type=item.claimed[0], via=VIA, code=item.errors[0].code)
        try:
            async with asyncio.timeout(self.timeout_s):
                await produce(self.producer, rejected)
        except (KafkaError, TimeoutError) as exc:
            # The publisher's error stands either way: it still gets its 400.
            log.warning(
                "%d rejected inputs not written to the invalid topic: %s",
                len(rejected),
                type(exc).__name__,
            )

    async def _publish(self, accepted: list[Accepted]) -> None:
        """Route, send and wait for the broker's confirmation of every record, or a 503; a
        500 with nothing sent when routing fails (an event delivered to nobody is no 202)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                # every subscription written before this request takes part
                await self.store.sync()
                outputs = outputs_for(self.router, accepted)  # all routed before any is sent
                await send_all(self.producer, outputs)
        except RoutingFailed as exc:
            log.error("%s; %d events not accepted, nothing published", exc, len(accepted))
            metrics.observe(event_type=None, via=VIA, code="routing_failed")
            message = "the bus failed to route these events; nothing is accepted, send it again"
            raise Failure(500, "routing_failed", message) from exc
        except (KafkaError, KafkaUnavailable, TimeoutError) as exc:
            log.warning("broker did not confirm %d records: %s", len(accepted), type(exc).__name__)
            message = "the broker did not confirm in time; nothing is accepted, send it again"
            raise Failure(503, "kafka_unavailable", message) from exc

    # -- POST /api/v1/notificaties ----------------------------------------------------------

    async def notificaties(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        base_url = str(request.url.origin())
        try:
            client = self.auth.authenticate(request.headers.get(hdrs.AUTHORIZATION))
            self.auth.authorize_publish(client, ZAAK_GEMUTEERD, None)
            if request.content_type != codec.JSON_CONTENT_TYPE:
                raise Failure(415, "unsupported_media_type", "use application/json")
            body = await read_body(request, self.max_event)
            item = _Input(0, body, codec.JSON_CONTENT_TYPE)
            accepted = self._notificatie(client, item)
            if accepted is None:
                await self._reject(client.id, [item])
                params = zgw.invalid_params(item.errors)
                detail = f"{len(params)} invalid parameters; nothing published"
                return web.json_response(
                    zgw.problem(400, "invalid", detail, base_url=base_url, params=params),
                    status=400,
                )
            await self._publish([accepted])
        except AuthError as exc:
            metrics.observe(event_type=ZAAK_GEMUTEERD, via=VIA, code=exc.code)
            problem = zgw.problem(exc.status, exc.code, exc.message, base_url=base_url)
            return web.json_response(problem, status=exc.status)
        except Failure as failure:
            if failure.status < 500:
                metrics.observe(event_type=ZAAK_GEMUTEERD, via=VIA, code=failure.code)
            problem = zgw.problem(failure.status, failure.code, failure.message, base_url=base_url)
            headers = {"Retry-After": RETRY_AFTER_S} if failure.status == 503 else None
            return web.json_response(problem, status=failure.status, headers=headers)
        metrics.observe_batch([accepted], VIA, time.perf_counter() - started)
        log.info("client %s published a notificatie as event %s", client.id, accepted.event.id)
        return web.json_response(zgw.echo(item.parsed), status=201)

    def _notificatie(self, client: Client, item: _Input) -> Accepted | None:
        """The accepted event of a notificatie, or None with `item.errors` filled in."""
        try:
            item.parsed = parse_json(item.value)
        except ValueError:
            item.errors = [FieldError("nonFieldErrors", "parse_error", "not UTF-8 JSON")]
            return None
        try:
            event = zgw.to_event(item.parsed, client_id=client.id)
        except InvalidEvent as exc:
            item.errors = list(exc.errors)
            return None
        item.claimed = (event.type, event.source)
        self.auth.authorize_publish(client, event.type, event.source)
        try:
            accepted = self.gate.accept(event)
        except InvalidEvent as exc:
            item.errors = list(exc.errors)
            return None
        # The source names this organisation: only its own zaaksystemen may speak for it.
        rsin = accepted.event.extensions["bronorganisatie"]
        authorize_bronorganisatie(client, rsin, required=True)
        return accepted

    # -- GET /health, GET /metrics ----------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if _producer_running(self.producer):
            return web.json_response({"status": "ok"})
        body = {"status": "unavailable", "message": "the Kafka producer is not running"}
        return web.json_response(body, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


def make_api(
    settings: Settings,
    *,
    producer: Producer,
    produce_timeout_s: float | None = None,
    store: SubscriptionStore,
    environ: Mapping[str, str] | None = None,
    health: Health | None = None,
) -> web.Application:
    """The HTTP API over a started idempotent producer (`streams.kafka.clients.make_producer`) and a
    started subscription `store`: what it accepts is routed against that set, and the
    subscription and operator routes (replay, reconciliation, pull) work on it.

    `produce_timeout_s` bounds the wait for the broker's confirmation (default: the Kafka
    request timeout); `environ` is where JWT secrets are read (default: `os.environ`);
    `health` is what `GET /ready` reports (default: the API alone, ready).
    """
    auth = Authenticator(settings, environ=environ)
    timeout = (
        produce_timeout_s if produce_timeout_s is not None else settings.kafka.request_timeout_s
    )
    api = _Api(settings, producer, timeout, auth, store)
    # aiohttp's own limit backs up `read_body`'s: never buffer more than a full batch.
    app = web.Application(
        middlewares=[internal_errors, rate_limits(settings)],
        client_max_size=settings.http.max_event_bytes * BATCH_BODY_FACTOR,
    )
    app[AUTHENTICATOR] = auth
    app[BODY_TIMEOUT_S] = settings.http.body_timeout_s
    app.router.add_post("/events", api.events)
    app.router.add_post("/api/v1/notificaties", api.notificaties)
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", guarded_metrics(settings, api.metrics))
    app.router.add_get(OPENAPI_PATH, _openapi)
    if health is None:  # an API on its own (tests, tools): ready while it runs
        health = Health()
        health.started("api")
    add_health_routes(app, health, liveness=False)  # GET /ready
    add_subscription_routes(app, settings=settings, store=store)
    add_operation_routes(app, settings=settings, store=store)
    add_audit_routes(app, settings=settings, store=store)
    return app
