"""Operations over HTTP (SPEC §4): replays, reconciliation, and pulling a subscription's events.

`add_operation_routes(app, settings=..., store=...)` mounts, on the app `make_api` builds:
- `POST /subscriptions/{id}/replays` (operators): 202 with the replay's id and state;
  `GET /subscriptions/{id}/replays/{replay_id}`: state, counts, ETA;
- `GET /subscriptions/{id}/reconciliation?from=&to=` and `POST` with `{from, to, held}`
  (the subscription's owner or an operator);
- `GET /subscriptions/{id}/events?after=&limit=` (owner or operator): the subscription's
  deliver topic as structured CloudEvents, `{"events": [...], "next": cursor}`. `after` is
  an earlier `next` (cheap), an event id (its last occurrence, searched for from the end of
  each partition, at most `limits.scan_max_records` records in all: 404 when not among them)
  or an RFC 3339 time (records appended at or after it: the broker's time index). `limit`
  is at most `limits.max_page`. Order: by append time, then partition.
The replayer starts and stops with the app.
"""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import datetime
from typing import Any, Final

from aiohttp import hdrs, web
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import TypeAdapter, ValidationError

from streams.auth import Client, Forbidden
from streams.config import Settings
from streams.contract.headers import header_text
from streams.http.auditing import add_auditing, audited, note
from streams.http.kit import (
    AUTHENTICATOR,
    Failure,
    answering,
    caller,
    parse_json,
    read_body,
    rfc3339,
)
from streams.http.limits import ReplaySlots, page_limit
from streams.kafka.backwards import backwards
from streams.kafka.topics import partitions
from streams.kafka.window import accepted_order, consumer, merged, offsets_at
from streams.operations.reconcile import reconcile
from streams.operations.replay import Replayer
from streams.operations.replay_request import BeyondRetention, ReplayError, ReplayRequest
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["REPLAYER", "add_operation_routes"]

REPLAYER: Final = web.AppKey("replayer", Replayer)
DEFAULT_LIMIT: Final = 100
_SEARCH_CHUNK: Final = 500  # offsets read at a time when looking for an event id
_TIME = TypeAdapter(datetime)


def _cursor(positions: dict[TopicPartition, int]) -> str:
    raw = json.dumps({f"{tp.topic}:{tp.partition}": o for tp, o in positions.items()})
    return "c." + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _positions(cursor: str, topic: str) -> dict[TopicPartition, int]:
    try:
        encoded = cursor[2:]
        raw = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        found = {TopicPartition(topic, int(k.rpartition(":")[2])): int(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError):
        raise Failure(400, "invalid_cursor", "after: not a cursor this API gave") from None
    return found


class _Operations:
    def __init__(self, settings: Settings, store: SubscriptionStore, app: web.Application) -> None:
        self.settings, self.store, self.app = settings, store, app
        self.max_body = settings.http.max_event_bytes * 64
        self.slots = ReplaySlots(settings.limits, store)

    def _subscription(self, request: web.Request, *, operator: bool) -> tuple[Client, Subscription]:
        auth = request.app[AUTHENTICATOR]
        client = caller(request)
        if operator:
            auth.require_operator(client)
        subscription = self.store.get(request.match_info["id"])
        if subscription is None:
            raise Failure(404, "not_found", "no such subscription")
        if not client.operator and subscription.owner != client.id:
            raise Forbidden("not_the_owner", f"client {client.id} does not own this subscription")
        return client, subscription

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = parse_json(await read_body(request, self.max_body))
        except ValueError:
            raise Failure(400, "invalid_json", "the body is not UTF-8 JSON") from None
        if not isinstance(body, dict):
            raise Failure(400, "invalid_body", "expected a JSON object")
        return body

    # -- replays ------------------------------------------------------------------------------

    async def replay(self, request: web.Request) -> web.Response:
        client, subscription = self._subscription(request, operator=True)
        body = await self._body(request)
        try:
            replay_request = ReplayRequest.model_validate(body)
        except ValidationError as exc:
            errors = [
                {"path": ".".join(map(str, e["loc"])), "code": e["type"], "message": e["msg"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise Failure(400, "invalid_replay", "not a replay request", errors) from None
        replayer = self.app[REPLAYER]

        def running() -> list[str]:
            return [r.subscription for r in replayer.unfinished()]

        try:
            async with self.slots.slot(subscription.owner, running):
                status = await replayer.submit(subscription.id, replay_request, actor=client.id)
        except BeyondRetention as exc:
            raise Failure(400, "beyond_retention", str(exc)) from None
        except ReplayError as exc:
            raise Failure(409, "replay_refused", str(exc)) from None
        note(request, replay=status.id, request=status.request)
        location = {hdrs.LOCATION: f"/subscriptions/{subscription.id}/replays/{status.id}"}
        return web.json_response(status.public_dict(), status=202, headers=location)

    async def replay_status(self, request: web.Request) -> web.Response:
        _, subscription = self._subscription(request, operator=True)
        status = self.app[REPLAYER].status(request.match_info["replay_id"])
        if status is None or status.subscription != subscription.id:
            raise Failure(404, "not_found", "no such replay of this subscription")
        return web.json_response(status.public_dict())

    # -- reconciliation -----------------------------------------------------------------------

    async def reconciliation(self, request: web.Request) -> web.Response:
        _, subscription = self._subscription(request, operator=False)
        held: set[str] | None = None
        if request.method == "POST":
            body = await self._body(request)
            start, end = rfc3339(body.get("from"), "from"), rfc3339(body.get("to"), "to")
            ids = body.get("held")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise Failure(400, "invalid_held", "held: a list of event ids")
            held = set(ids)
        else:
            query = request.query
            start, end = rfc3339(query.get("from"), "from"), rfc3339(query.get("to"), "to")
        if end <= start:
            raise Failure(400, "invalid_window", "to must be after from")
        result = await reconcile(self.settings, self.store, subscription.id, start, end, held)
        counts = {k: v for k, v in result.as_dict().items() if k in ("published", "delivered")}
        window = {"from": start.isoformat(), "to": end.isoformat()}
        held_count = None if held is None else len(held)
        note(request, window=window, held=held_count, consistent=result.consistent, **counts)
        return web.json_response(result.as_dict())

    # -- pull ---------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        _, subscription = self._subscription(request, operator=False)
        limit = page_limit(request, self.settings.limits, DEFAULT_LIMIT)
        topic = self.store.topics.deliver(subscription.id)
        after = request.query.get("after")
        reader = consumer(self.settings)
        await reader.start()
        try:
            tps = await partitions(self.settings.kafka, [topic])
            ends = await offsets_at(reader, tps, None)
            starts = await self._starts(reader, tps, ends, after, topic)
            events: list[Any] = []
            positions = dict(starts)
            async with contextlib.aclosing(merged(reader, starts, ends)) as records:
                async for record in records:
                    events.append(json.loads(record.value or b"null"))
                    positions[TopicPartition(record.topic, record.partition)] = record.offset + 1
                    if len(events) >= limit:
                        break
        finally:
            await reader.stop()
        return web.json_response({"events": events, "next": _cursor(positions)})

    async def _starts(
        self,
        reader: Any,
        tps: list[TopicPartition],
        ends: dict[TopicPartition, int],
        after: str | None,
        topic: str,
    ) -> dict[TopicPartition, int]:
        begins: dict[TopicPartition, int] = dict(await reader.beginning_offsets(tps))
        if not after:
            return begins
        if after.startswith("c."):
            return {tp: max(begins[tp], o) for tp, o in _positions(after, topic).items()}
        try:
            at = _TIME.validate_python(after)
        except ValidationError:
            at = None
        if at is not None and at.utcoffset() is not None:
            return await offsets_at(reader, tps, at)
        last = await self._last_occurrence(reader, tps, begins, ends, after)
        if last is None:
            budget = self.settings.limits.scan_max_records
            message = f"after: no such event among the last {budget} of this subscription's topic"
            raise Failure(404, "unknown_event", message)
        # the merge order is (timestamp, partition): after `last` in every partition
        starts = {}
        for tp in tps:
            ts = last.timestamp + (0 if tp.partition > last.partition else 1)
            found = await reader.offsets_for_times({tp: ts})
            starts[tp] = ends[tp] if found[tp] is None else found[tp].offset
        starts[TopicPartition(topic, last.partition)] = last.offset + 1
        return starts

    async def _last_occurrence(
        self,
        reader: Any,
        tps: list[TopicPartition],
        begins: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
        event_id: str,
    ) -> ConsumerRecord[bytes, bytes] | None:
        """The event's last record in merge order, each partition read from its end backwards
        until it is found there or the partition's share of the scan budget is spent."""
        share = max(1, self.settings.limits.scan_max_records // max(1, len(tps)))
        found: list[ConsumerRecord[bytes, bytes]] = []
        for tp in tps:
            scanned = 0
            chunk = min(_SEARCH_CHUNK, share)
            chunks = backwards(reader, tp, begin=begins[tp], end=ends[tp], chunk=chunk)
            async with contextlib.aclosing(chunks):
                async for _, records in chunks:
                    scanned += len(records)
                    hits = [r for r in records if header_text(r.headers, "ce_id") == event_id]
                    if hits:
                        found.append(hits[-1])
                        break
                    if scanned >= share:
                        break
        return max(found, key=lambda r: (r.timestamp, accepted_order(r), r.partition), default=None)


def add_operation_routes(
    app: web.Application, *, settings: Settings, store: SubscriptionStore
) -> None:
    """Mount replays, reconciliation and the pull endpoint; `store` started while serving."""
    add_auditing(app, settings=settings)
    replayer = Replayer(settings, store)
    app[REPLAYER] = replayer
    ops = _Operations(settings, store, app)

    async def start(_: web.Application) -> None:
        await replayer.start()

    async def stop(_: web.Application) -> None:
        await replayer.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    one = "/subscriptions/{id}"
    app.router.add_post(one + "/replays", audited("replay", ops.replay))
    app.router.add_get(one + "/replays/{replay_id}", answering(ops.replay_status))
    app.router.add_get(one + "/reconciliation", audited("reconcile", ops.reconciliation))
    app.router.add_post(one + "/reconciliation", audited("reconcile", ops.reconciliation))
    app.router.add_get(one + "/events", answering(ops.events))
