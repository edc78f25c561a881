"""The webhook sender against a real aiohttp receiver on 127.0.0.1: what goes out, and how
each kind of answer is classified."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from connectors.webhook import (
    CONTENT_TYPE,
    SubscriberGone,
    WebhookFailed,
    WebhookSender,
    parse_retry_after,
    webhook_id,
)
from streams.config import DeliverySettings
from streams.delivery.sinks import LOOPBACK, SinkPolicy
from streams.routing.subscriptions import Subscription

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SOURCE = "urn:nld:oin:00000001823288444000:systeem:BRP-component"
SETTINGS = DeliverySettings(connect_timeout_s=0.5, read_timeout_s=0.5)
LOCAL = SinkPolicy(allow_http=True, allowed=LOOPBACK)  # the receivers here are on loopback

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def subscription(sink: str, *, signed: bool = True) -> Subscription:
    raw: dict[str, Any] = {
        "id": "webhook-test",
        "sink": sink,
        "protocol": "HTTP",
        "sinkCredential": {"accessToken": "the-token"},
        "types": ["nl.brp.persoon-verhuisd"],
        "owner": "test",
        "purpose": "test",
        "callbackCheck": False,
    }
    if signed:
        raw["signingSecret"] = SECRET
    return Subscription.model_validate(raw)


def payload(event_id: str = "e1") -> bytes:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": "nl.brp.persoon-verhuisd",
        "datacontenttype": "application/json",
        "data": {"soort": "BINNENGEMEENTELIJK", "plaats": "’s-Hertogenbosch"},
    }
    return json.dumps(event, ensure_ascii=False).encode()


class Receiver:
    """An aiohttp server whose answer the test chooses; it keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answer: Answer = self._ok
        self._runner: web.AppRunner | None = None
        self.url = ""

    @staticmethod
    async def _ok(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        return await self.answer(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sender(receiver: Receiver) -> AsyncIterator[WebhookSender]:
    client = WebhookSender(subscription(receiver.url), SETTINGS, policy=LOCAL)
    yield client
    await client.close()


async def test_a_delivered_event_is_structured_signed_and_authorised(
    receiver: Receiver, sender: WebhookSender
) -> None:
    body = payload()
    assert await sender.send(body, source=SOURCE, event_id="e1") == 204
    assert await sender.send(body, source=SOURCE, event_id="e1") == 204  # a retry, say

    (headers, received), (again, _) = receiver.requests
    assert received == body
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["Authorization"] == "Bearer the-token"
    assert Webhook(SECRET).verify(received, headers) == json.loads(body)
    # the same event keeps its webhook-id across attempts: subscribers can dedupe on it
    assert headers["webhook-id"] == again["webhook-id"] == webhook_id(SOURCE, "e1")
    assert webhook_id(SOURCE, "e1") != webhook_id(SOURCE + "x", "e1")


async def test_a_signature_of_another_secret_does_not_verify(
    receiver: Receiver, sender: WebhookSender
) -> None:
    await sender.send(payload(), source=SOURCE, event_id="e1")
    headers, received = receiver.requests[0]
    other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(received, headers)


async def test_without_a_signing_secret_the_event_goes_out_unsigned(receiver: Receiver) -> None:
    client = WebhookSender(subscription(receiver.url, signed=False), SETTINGS, policy=LOCAL)
    try:
        await client.send(payload(), source=SOURCE, event_id="e1")
    finally:
        await client.close()
    headers, _ = receiver.requests[0]
    assert "webhook-signature" not in headers
    assert headers["Authorization"] == "Bearer the-token"


@pytest.mark.parametrize("status", [400, 401, 404, 500, 502, 503])
async def test_other_failures_are_retriable_with_a_stable_code(
    receiver: Receiver, sender: WebhookSender, status: int
) -> None:
    async def fail(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="no personal data goes into the detail")

    receiver.answer = fail
    with pytest.raises(WebhookFailed) as caught:
        await sender.send(payload(), source=SOURCE, event_id="e1")
    assert caught.value.retriable
    assert caught.value.code == f"http_{status}"
    assert caught.value.status == status
    assert "personal" not in str(caught.value)


async def test_a_redirect_is_not_followed(receiver: Receiver, sender: WebhookSender) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://127.0.0.1:1/elsewhere")

    receiver.answer = redirect
    with pytest.raises(WebhookFailed) as caught:
        await sender.send(payload(), source=SOURCE, event_id="e1")
    assert caught.value.code == "http_302"
    assert len(receiver.requests) == 1


async def test_410_means_gone_and_is_not_retriable(
    receiver: Receiver, sender: WebhookSender
) -> None:
    async def gone(request: web.Request) -> web.StreamResponse:
        return web.Response(status=410)

    receiver.answer = gone
    with pytest.raises(SubscriberGone) as caught:
        await sender.send(payload(), source=SOURCE, event_id="e1")
    assert not caught.value.retriable
    assert caught.value.code == "http_410"


@pytest.mark.parametrize("header", ["7", "date"])
async def test_429_carries_retry_after_in_seconds_or_as_a_date(
    receiver: Receiver, sender: WebhookSender, header: str
) -> None:
    value = header
    if header == "date":
        value = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    async def busy(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": value})

    receiver.answer = busy
    with pytest.raises(WebhookFailed) as caught:
        await sender.send(payload(), source=SOURCE, event_id="e1")
    assert caught.value.retriable
    assert caught.value.code == "http_429"
    assert caught.value.retry_after is not None
    if header == "date":
        assert 25 <= caught.value.retry_after <= 30
    else:
        assert caught.value.retry_after == 7.0


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0  # past: now
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5", now=now) is None


async def test_a_slow_answer_is_a_timeout(receiver: Receiver, sender: WebhookSender) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), timeout=5)
        return web.Response(status=204)

    receiver.answer = slow
    try:
        with pytest.raises(WebhookFailed) as caught:
            await sender.send(payload(), source=SOURCE, event_id="e1")
    finally:
        release.set()
    assert caught.value.retriable
    assert caught.value.code == "timeout"


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WebhookSender(subscription(f"http://127.0.0.1:{port}/hook"), SETTINGS, policy=LOCAL)
    try:
        with pytest.raises(WebhookFailed) as caught:
            await client.send(payload(), source=SOURCE, event_id="e1")
    finally:
        await client.close()
    assert caught.value.retriable
    assert caught.value.code == "connect"


async def test_a_payload_that_is_not_utf8_is_a_permanent_failure_and_never_sent(
    receiver: Receiver, sender: WebhookSender
) -> None:
    with pytest.raises(WebhookFailed) as caught:
        await sender.send(b'{"id": "\xff"}', source=SOURCE, event_id="e1")
    assert not caught.value.retriable  # the same bytes fail every time: dead-lettered at once
    assert caught.value.code == "not_utf8"
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("sink", "policy"),
    [
        ("http://127.0.0.1:{port}/hook", SinkPolicy(allow_http=True)),  # loopback
        ("http://localhost:{port}/hook", SinkPolicy(allow_http=True)),  # a name for it
        ("http://[::ffff:127.0.0.1]:{port}/hook", SinkPolicy(allow_http=True)),  # mapped
        ("http://127.0.0.1:{port}/hook", SinkPolicy()),  # production: https only
    ],
)
async def test_a_sink_the_policy_refuses_gets_no_request_and_no_token(
    receiver: Receiver, sink: str, policy: SinkPolicy
) -> None:
    port = receiver.url.rsplit(":", 1)[1].split("/", 1)[0]
    client = WebhookSender(subscription(sink.format(port=port)), SETTINGS, policy=policy)
    try:
        with pytest.raises(WebhookFailed) as failed:
            await client.send(b'{"id": "e1"}', source="urn:x", event_id="e1")
    finally:
        await client.close()
    assert failed.value.code == "sink_not_allowed" and not failed.value.retriable
    assert receiver.requests == []  # nothing reached it: no event, no bearer token
