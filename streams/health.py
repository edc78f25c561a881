"""Readiness that tells the truth: does each role of this process make progress?

A role (`api`, `worker`, `delivery`) is made of *parts*: the worker's stream, one courier per
subscription, a producer. Each part reports what it sees:
- `advanced()` when it finished work (records acked, deliveries committed);
- `waiting(n)` how much input is available to it (lag), 0 when it is caught up;
- `broken(reason)` / `mended()` when it cannot work at all (a producer that fails every
  send, a reader that died), with a reason that holds no personal data.

A part is not ready when it is broken, or when input has been waiting longer than
`stall_after_s` without progress. A role is ready when it has started and all its parts
are ready. A *shared* part (the cluster, the subscription reader) belongs to every role of
the process. A fault the process cannot mend itself is `fail(reason)`: every role is then
not ready, `/health` (liveness) says so too, and `run` exits non-zero.

`/ready` answers per role, with the reasons: 200 when ready, 503 when not
(`add_health_routes`); processes without the HTTP API serve `/health`, `/ready` and
`/metrics` alone (`health_app`).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web

from streams.config import Settings

__all__ = ["Health", "Progress", "RoleState", "add_health_routes", "guarded_metrics", "health_app"]

log = logging.getLogger(__name__)


class Progress:
    """What one part of a role reports about its own progress."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self.last_progress = clock()
        self.lag = 0
        self._waiting_since: float | None = None
        self.broken_reason: str | None = None

    def advanced(self) -> None:
        """Work was finished just now."""
        now = self._clock()
        self.last_progress = now
        if self._waiting_since is not None:
            self._waiting_since = now

    def waiting(self, lag: int) -> None:
        """`lag` records of input are available and not yet finished."""
        self.lag = max(0, lag)
        if self.lag == 0:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = self._clock()

    def broken(self, reason: str) -> None:
        """The part cannot work at all (why, without personal data)."""
        self.broken_reason = reason

    def mended(self) -> None:
        self.broken_reason = None

    def since_progress(self) -> float:
        """Seconds since the last progress."""
        return self._clock() - self.last_progress

    def problem(self, stall_after_s: float) -> str | None:
        """Why this part is not ready, or None."""
        if self.broken_reason is not None:
            return f"{self.name}: {self.broken_reason}"
        if self._waiting_since is not None:
            stalled = self._clock() - max(self._waiting_since, self.last_progress)
            if stalled > stall_after_s:
                return (
                    f"{self.name}: no progress for {stalled:.0f}s with {self.lag} records waiting"
                )
        return None


@dataclass
class RoleState:
    """One role's readiness as `/ready` answers it."""

    role: str
    started: bool = False
    parts: dict[str, Progress] = field(default_factory=dict)

    def problems(self, stall_after_s: float, shared: Iterable[Progress] = ()) -> list[str]:
        if not self.started:
            return [f"{self.role}: starting"]
        found = (p.problem(stall_after_s) for p in (*shared, *self.parts.values()))
        return [problem for problem in found if problem is not None]


class Health:
    """The readiness of every role this process runs."""

    def __init__(
        self, *, stall_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._roles: dict[str, RoleState] = {}
        self._shared: dict[str, Progress] = {}
        self.failed: str | None = None
        self.on_fail: list[Callable[[str], None]] = []

    def role(self, role: str) -> RoleState:
        """The state of `role`, created (not started) on first use."""
        return self._roles.setdefault(role, RoleState(role))

    def part(self, role: str, name: str) -> Progress:
        """The progress of one part of `role`, created on first use."""
        state = self.role(role)
        if name not in state.parts:
            state.parts[name] = Progress(name, clock=self._clock)
        return state.parts[name]

    def shared(self, name: str) -> Progress:
        """A part every role of this process depends on (the cluster, the subscription set)."""
        if name not in self._shared:
            self._shared[name] = Progress(name, clock=self._clock)
        return self._shared[name]

    def fail(self, reason: str) -> None:
        """The process cannot go on (why, without personal data): every listener hears it once."""
        if self.failed is not None:
            return
        self.failed = reason
        log.error("giving up: %s", reason)
        for listener in list(self.on_fail):
            listener(reason)

    def drop(self, role: str, name: str) -> None:
        """Forget a part that no longer exists (a stopped courier)."""
        self.role(role).parts.pop(name, None)

    def started(self, role: str) -> None:
        self.role(role).started = True

    def __iter__(self) -> Iterator[RoleState]:
        return iter(list(self._roles.values()))

    def ready(self) -> tuple[bool, dict[str, list[str]]]:
        """Whether every role is ready, and per role the reasons it is not."""
        problems = {
            state.role: state.problems(self.stall_after_s, self._shared.values()) for state in self
        }
        if self.failed is not None:
            failed = f"failed: {self.failed}"
            problems = {role: [failed, *found] for role, found in problems.items()}
        return bool(problems) and all(not p for p in problems.values()), problems

    def parts_of(self, role: str) -> list[Progress]:
        """The parts `role` depends on: the shared ones and its own."""
        return [*self._shared.values(), *self.role(role).parts.values()]

    def report(self) -> dict[str, Any]:
        """What `/ready` answers: overall, then per role whether it is ready and why not."""
        ready, problems = self.ready()
        return {
            "ready": ready,
            "roles": {
                role: {"ready": not found, "problems": found} for role, found in problems.items()
            },
        }


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_health_routes(app: web.Application, health: Health, *, liveness: bool = True) -> None:
    """`GET /ready` (200 or 503 with the reasons per role) and, unless `liveness` is False
    (the API has its own), `GET /health`: 200 while the process can go on, 503 once it
    gave up (it is about to exit)."""

    async def ready(request: web.Request) -> web.Response:
        report = health.report()
        return web.json_response(report, status=200 if report["ready"] else 503)

    async def alive(request: web.Request) -> web.Response:
        if health.failed is not None:
            return web.json_response({"status": "failed", "message": health.failed}, status=503)
        return web.json_response({"status": "ok"})

    app.router.add_get("/ready", ready)
    if liveness:
        app.router.add_get("/health", alive)


def guarded_metrics(settings: Settings, handler: _Handler) -> _Handler:
    """`handler` (`GET /metrics`) as the settings allow it: to anyone when
    `http.public_metrics` (by default outside production), else only to a request with
    `Authorization: Bearer <http.metrics_token>`, 401 otherwise (the metrics name roles,
    subscriptions and clients: what an attacker maps first)."""
    public = settings.http.public_metrics
    if public if public is not None else settings.mode != "production":
        return handler
    token = settings.http.metrics_token_value()
    expected = token.encode() if token else None
    if expected is None:
        log.warning("/metrics answers 401: set http.metrics_token or http.public_metrics: true")

    async def guarded(request: web.Request) -> web.StreamResponse:
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
        credential = given.strip().encode("utf-8", "replace")
        if (
            expected is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(credential, expected)
        ):
            return await handler(request)
        message = "send Authorization: Bearer <http.metrics_token>"
        if expected is None:
            message = "no http.metrics_token is set, and http.public_metrics is false"
        return web.json_response(
            {"status": 401, "code": "metrics_token_required", "message": message},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="gemeentebus-metrics"'},
        )

    return guarded


def health_app(health: Health, *, metrics: _Handler, settings: Settings) -> web.Application:
    """The HTTP server of a process without the API: `/health`, `/ready`, and `/metrics` as
    `guarded_metrics` allows it."""
    app = web.Application()
    add_health_routes(app, health)
    app.router.add_get("/metrics", guarded_metrics(settings, metrics))
    return app
