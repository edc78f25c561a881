"""Quotas and limits of the HTTP API (issue 17, item 5): what one client may ask of the bus.

- `rate_limits`: a token bucket per authenticated client (`limits.requests_per_s`, refilled
  continuously, holding at most `limits.burst`); an empty bucket answers 429 `rate_limited`
  with `Retry-After` in whole seconds. Requests whose credentials fail pass on to their
  handler's 401.
- `SubscriptionQuota`: at most `limits.subscriptions_per_client` subscriptions per owner
  (whoever creates them: an operator's for a client count against that client); 403
  `subscription_quota_exceeded`.
- `ReplaySlots`: at most `limits.replays_per_client` unfinished replays per subscription owner
  and `limits.replays_total` in all; 429 `replay_limit`.
- `check_filters`: `filters` nested deeper than `limits.filter_max_depth` expressions, or
  larger than `limits.filter_max_bytes` as compact JSON, are a 400 (`filter_too_deep`,
  `filter_too_large`), checked before anything else looks at them.
- `GuardedRunner`: an `AppRunner` whose connections must send a request's complete headers
  within `http.header_timeout_s` of their first byte (408, then closed: slowloris); a body's
  deadline (`http.body_timeout_s`) is `streams.http.kit.read_body`'s.
The counts are those this process sees (its store, its replay log): several API processes
hold each limit each, give or take the writes in flight between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, cast

from aiohttp import hdrs, web

from streams.auth import AuthError
from streams.config import LimitsSettings, Settings
from streams.http.kit import AUTHENTICATOR, Failure, Handler, dump_json, error_response
from streams.routing.store import SubscriptionStore

__all__ = [
    "FILTER_TOO_DEEP",
    "FILTER_TOO_LARGE",
    "HEADER_DEADLINES",
    "RATE_LIMITED",
    "REPLAY_LIMIT",
    "SUBSCRIPTION_QUOTA_EXCEEDED",
    "GuardedRunner",
    "HeaderDeadlines",
    "ReplaySlots",
    "SubscriptionQuota",
    "TokenBuckets",
    "check_filters",
    "header_deadlines",
    "page_limit",
    "rate_limits",
]

RATE_LIMITED: Final = "rate_limited"
SUBSCRIPTION_QUOTA_EXCEEDED: Final = "subscription_quota_exceeded"
REPLAY_LIMIT: Final = "replay_limit"
FILTER_TOO_DEEP: Final = "filter_too_deep"
FILTER_TOO_LARGE: Final = "filter_too_large"
REPLAY_RETRY_AFTER_S: Final = 30
_LEAF_DIALECTS: Final = frozenset({"exact", "prefix", "suffix"})
_TIMEOUT_ANSWER: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: 84\r\n\r\n"
    b'{"status":408,"code":"header_timeout","message":"the headers did not arrive in time"}'
)


# -- requests per second ----------------------------------------------------------------------


class TokenBuckets:
    """One token bucket per client id: `take` answers None (go) or the seconds until a token."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, when)

    def take(self, client_id: str) -> float | None:
        now = self.clock()
        tokens, then = self._buckets.get(client_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[client_id] = (tokens - 1.0, now)
            return None
        self._buckets[client_id] = (tokens, now)
        return (1.0 - tokens) / self.rate


def rate_limits(settings: Settings) -> Any:
    """The middleware that holds each authenticated client to its token bucket."""
    buckets = TokenBuckets(settings.limits.requests_per_s, settings.limits.burst)

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        auth = request.app.get(AUTHENTICATOR)
        if authorization and auth is not None:
            try:
                client = auth.authenticate(authorization)
            except AuthError:
                return await handler(request)  # its handler says 401, and why
            wait = buckets.take(client.id)
            if wait is not None:
                retry = max(1, math.ceil(wait))
                message = f"client {client.id} sends over {settings.limits.requests_per_s:g}/s"
                return error_response(429, RATE_LIMITED, message, [], retry_after=retry)
        return await handler(request)

    return limit


# -- subscriptions and replays ----------------------------------------------------------------


class SubscriptionQuota:
    """At most `limits.subscriptions_per_client` subscriptions an owner."""

    def __init__(self, limits: LimitsSettings, store: SubscriptionStore) -> None:
        self.most, self.store = limits.subscriptions_per_client, store
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @contextlib.asynccontextmanager
    async def room(self, owner: str) -> AsyncIterator[None]:
        """Hold the owner's place while one subscription is made: 403 when it has no room."""
        async with self._locks[owner]:
            held = sum(1 for s in self.store if s.owner == owner)
            if held >= self.most:
                message = f"client {owner} holds {held} subscriptions, the most it may hold"
                raise Failure(403, SUBSCRIPTION_QUOTA_EXCEEDED, message)
            yield


class ReplaySlots:
    """At most so many unfinished replays per subscription owner, and in all."""

    def __init__(self, limits: LimitsSettings, store: SubscriptionStore) -> None:
        self.per_client, self.total = limits.replays_per_client, limits.replays_total
        self.store = store
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def slot(self, owner: str, unfinished: Callable[[], list[str]]) -> AsyncIterator[None]:
        """Hold a slot while a replay is submitted; `unfinished`: the subscription ids of the
        replays not yet done. 429 (with `Retry-After`) when none is free."""
        async with self._lock:
            running = unfinished()
            owners = [s.owner if (s := self.store.get(i)) is not None else "" for i in running]
            if len(running) >= self.total:
                message = f"{len(running)} replays run, the most the bus runs at once"
                raise _replay_limit(message)
            if owners.count(owner) >= self.per_client:
                message = f"{owners.count(owner)} replays for client {owner} run, its most"
                raise _replay_limit(message)
            yield


def _replay_limit(message: str) -> Failure:
    return Failure(429, REPLAY_LIMIT, message, retry_after=REPLAY_RETRY_AFTER_S)


# -- filters ----------------------------------------------------------------------------------


def check_filters(limits: LimitsSettings, filters: object) -> None:
    """400 for `filters` nested too deeply (walked without recursion) or too large."""
    # (value, expressions around it, containers around it, whether an object is an expression)
    todo: list[tuple[object, int, int, bool]] = [(filters, 0, 0, True)]
    while todo:
        value, depth, nesting, expression = todo.pop()
        if isinstance(value, dict):
            depth += 1 if expression else 0
            # the values of `exact`, `prefix` and `suffix` are attribute maps, no expressions
            children = [(v, k not in _LEAF_DIALECTS) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(v, True) for v in value]
        else:
            continue
        # lists of lists count too, at the rate an `all` or `any` nests (a list in an object)
        if depth > limits.filter_max_depth or nesting > 2 * limits.filter_max_depth + 1:
            message = f"filters: expressions nested over {limits.filter_max_depth} deep"
            error = {"path": "filters", "code": FILTER_TOO_DEEP, "message": message}
            raise Failure(400, FILTER_TOO_DEEP, message, [error])
        todo.extend((child, depth, nesting + 1, counts) for child, counts in children)
    try:
        size = len(dump_json(filters))
    except (RecursionError, ValueError, TypeError):
        size = limits.filter_max_bytes + 1
    if size > limits.filter_max_bytes:
        message = f"filters: over {limits.filter_max_bytes} bytes as JSON"
        error = {"path": "filters", "code": FILTER_TOO_LARGE, "message": message}
        raise Failure(400, FILTER_TOO_LARGE, message, [error])


# -- paged reads ------------------------------------------------------------------------------


def page_limit(request: web.Request, limits: LimitsSettings, default: int = 100) -> int:
    """The `limit` query parameter of a paged read: 1 to `limits.max_page`, else a 400."""
    text = request.query.get("limit")
    if text is None:
        return min(default, limits.max_page)
    if not (text.isdigit() and len(text) <= 9 and 1 <= int(text) <= limits.max_page):
        raise Failure(400, "invalid_limit", f"limit: a whole number from 1 to {limits.max_page}")
    return int(text)


# -- slow headers -----------------------------------------------------------------------------


class _Deadline(asyncio.Protocol):
    """One connection: the server's own protocol, with a deadline on each request's headers
    from its first byte to its handler (the body then is the handler's)."""

    def __init__(self, inner: asyncio.Protocol, owner: HeaderDeadlines) -> None:
        self.inner, self.owner = inner, owner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.open[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self.timer is None:
            self.arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.owner.open.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.owner.timeout_s, self.expired)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expired(self) -> None:
        self.timer = None
        if self.busy or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()


class HeaderDeadlines:
    """The open connections of one runner, each with its header deadline."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.open: dict[object, _Deadline] = {}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Deadline(factory(), self)


HEADER_DEADLINES: Final = web.AppKey("header_deadlines", HeaderDeadlines)


@web.middleware
async def header_deadlines(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The headers are in: the connection's deadline stops until the handler is done."""
    deadlines = request.app.get(HEADER_DEADLINES)
    connection = deadlines.open.get(request.transport) if deadlines is not None else None
    if connection is None:
        return await handler(request)
    connection.disarm()
    connection.busy = True
    try:
        return await handler(request)
    finally:
        connection.busy = False


class GuardedRunner(web.AppRunner):
    """An `AppRunner` (use it with a `web.TCPSite`) that closes connections whose headers
    trickle in: 408 when a request's headers take over `http.header_timeout_s`."""

    def __init__(self, app: web.Application, *, settings: Settings, **kwargs: Any) -> None:
        self.deadlines = HeaderDeadlines(settings.http.header_timeout_s)
        app[HEADER_DEADLINES] = self.deadlines
        app.middlewares.append(header_deadlines)  # innermost: the handler's own time
        super().__init__(app, **kwargs)

    @property
    def server(self) -> web.Server | None:
        inner = super().server
        if inner is None:
            return None
        # what a site calls for each connection's protocol
        return cast(web.Server, self.deadlines.wrap(inner))
