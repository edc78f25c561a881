"""The webhook sender: one structured-mode CloudEvent per POST to one subscription's sink.

One `WebhookSender` per subscription, holding one keep-alive `aiohttp.ClientSession`. A
request carries the event JSON as `application/cloudevents+json`, the `sinkCredential` as a
Bearer token, and a Standard Webhooks signature made with the subscription's `whsec_…`
secret by the `standardwebhooks` library. `webhook-id` is a digest of the event's
`source`+`id`, the same for every attempt, so a subscriber can dedupe on it too.

The answer, classified by `streams.retry.http_answer` (the one table of statuses):
- 2xx: delivered (`send` returns the status);
- 410: `SubscriberGone`, the subscription is to be retired;
- 429, 503: `WebhookFailed(retriable=True, retry_after=…)` from `Retry-After` (seconds or HTTP
  date), when the answer has one;
- any other status, a timeout, a refused or broken connection: `WebhookFailed(retriable=True)`
  with a stable `code` (`http_500`, `timeout`, `connect`, `disconnected`, …);
- a payload that is not UTF-8 is never sent: `WebhookFailed(code="not_utf8", retriable=False)`.
Redirects are not followed (a 3xx is a failure): a sink is registered as the exact URL.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import aiohttp
from standardwebhooks import Webhook

from streams.config import DeliverySettings
from streams.delivery.sinks import SinkPolicy, SinkRefused
from streams.exceptions import DeliveryFailed
from streams.retry import http_answer
from streams.routing.subscriptions import Subscription

__all__ = [
    "CONTENT_TYPE",
    "SubscriberGone",
    "WebhookFailed",
    "WebhookSender",
    "parse_retry_after",
    "webhook_id",
]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
_BODY_LIMIT = 64 * 1024  # read (and drop) at most this much of an answer to keep the connection


class WebhookFailed(DeliveryFailed):
    """A webhook attempt that did not deliver: `code` is stable (`http_503`, `timeout`, …)."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        retriable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retriable=retriable, retry_after=retry_after)
        self.code = code
        self.status = status


class SubscriberGone(WebhookFailed):
    """`410 Gone`: the subscriber wants nothing more; never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="http_410", status=410, retriable=False)


def webhook_id(source: str, event_id: str) -> str:
    """The `webhook-id` of an event: stable across attempts, unique per `source`+`id`."""
    digest = hashlib.sha256(f"{source}\n{event_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date); None if absent
    or unreadable, 0 for a date in the past."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _secret(subscription: Subscription) -> str | None:
    if subscription.signing_secret is None:
        return None
    return subscription.signing_secret.get_secret_value() or None


class WebhookSender:
    """POSTs events to one subscription's sink. `close()` when done."""

    def __init__(
        self,
        subscription: Subscription,
        settings: DeliverySettings,
        *,
        connections: int = 8,
        policy: SinkPolicy | None = None,
    ) -> None:
        self.subscription = subscription
        self._policy = policy if policy is not None else SinkPolicy()  # https, public only
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_s,  # includes waiting for a pooled connection
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        )
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._allowed_url: str | None = None  # the sink URL `check_url` let through
        secret = _secret(subscription)
        self._webhook = Webhook(secret) if secret is not None else None
        if self._webhook is None:
            log.warning(
                "subscription %s has no signing secret: its webhooks go out unsigned",
                subscription.id,
            )
        self._headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "gemeentebus"}
        if subscription.sink_credential is not None:
            token = subscription.sink_credential.access_token.get_secret_value()
            self._headers["Authorization"] = f"Bearer {token}"

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:  # made lazily: a session belongs to the running loop
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=self._policy.connector(limit=self._connections, keepalive_timeout=30),
            )
        return self._session

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, *, source: str, event_id: str, payload: str) -> dict[str, str]:
        """The request headers for one event, signed now."""
        headers = dict(self._headers)
        if self._webhook is not None:
            msg_id = webhook_id(source, event_id)
            now = datetime.now(UTC)
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
            headers["webhook-signature"] = self._webhook.sign(msg_id, now, payload)
        return headers

    async def send(self, payload: bytes, *, source: str, event_id: str) -> int:
        """POST one structured-mode event (its JSON bytes); the 2xx status, else raises.

        Raises `SubscriberGone` on 410 and `WebhookFailed` on anything else that is no 2xx.
        """
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:  # the same bytes fail every time: never retried
            raise WebhookFailed(
                "the event is not UTF-8 JSON", code="not_utf8", retriable=False
            ) from exc
        headers = self.headers(source=source, event_id=event_id, payload=text)
        url = self.subscription.sink
        if url != self._allowed_url:  # the policy and the URL are fixed: allowed once, always
            try:
                self._policy.check_url(url)  # a literal address; names where they are connected
            except SinkRefused as exc:
                raise WebhookFailed(exc.reason, code=exc.code, retriable=False) from exc
            self._allowed_url = url
        try:
            async with self._session_now().post(
                url, data=payload, headers=headers, allow_redirects=False
            ) as response:
                await _drain(response)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except aiohttp.ConnectionTimeoutError as exc:
            raise WebhookFailed("no connection within the connect timeout", code="connect") from exc
        except TimeoutError as exc:  # aiohttp.SocketTimeoutError is one too
            raise WebhookFailed("no answer within the read timeout", code="timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, SinkRefused):  # the name resolved to an address refused
                raise WebhookFailed(
                    exc.os_error.reason, code=exc.os_error.code, retriable=False
                ) from exc
            raise WebhookFailed(
                f"cannot connect: {exc.strerror or 'refused'}", code="connect"
            ) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise WebhookFailed(
                f"the connection broke: {type(exc).__name__}", code="disconnected"
            ) from exc
        except aiohttp.ClientError as exc:
            raise WebhookFailed(f"HTTP error: {type(exc).__name__}", code="http_error") from exc
        answer = http_answer(status)
        if answer.delivered:
            return status
        if answer.gone:
            raise SubscriberGone("the subscriber answered 410 Gone")
        raise WebhookFailed(
            f"the subscriber answered HTTP {status}",
            code=f"http_{status}",
            status=status,
            retriable=answer.retriable,
            retry_after=retry_after if answer.honours_retry_after else None,
        )


async def _drain(response: aiohttp.ClientResponse) -> None:
    # read the (ignored) answer so the connection goes back to the pool; never log it:
    # a subscriber may echo data
    read = 0
    while read < _BODY_LIMIT:
        chunk = await response.content.read(_BODY_LIMIT - read)
        if not chunk:
            return
        read += len(chunk)
