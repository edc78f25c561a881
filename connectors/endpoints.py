"""The health of each webhook endpoint, so that recovery follows the endpoint, not each record.

An `Endpoint` is one sink origin (scheme, host and port), shared by every lane of every
subscription delivering there from this process. It is *healthy* until two attempts in a
row fail retriably (a connection refused, a timeout, a 5xx, a 429...) with no success
between them; then it is *failing*:

- one attempt at a time goes, the *probe*, the next one `probe_s(step)` after the last
  probe failed (the backoff doubles from `delivery.initial_backoff_s` up to
  `delivery.probe_max_interval_s`; a `Retry-After` the endpoint named is waited instead);
  every other lane waits, so an outage costs one request per backoff step, not one per
  waiting record;
- the probe is the record that has waited longest: a record that just failed as the probe
  goes to the back, so one event the endpoint always refuses cannot stand for the others;
- the moment an attempt succeeds, the endpoint is healthy and every waiting lane goes at
  once (each still in its own key order, at most `CONCURRENCY` requests per subscription).

While healthy, a failed record waits its own backoff (`streams.retry`), as before: one
event the endpoint refuses (a 500 for that event only) is interleaved with successes of
the others, never makes the endpoint failing and holds back only its own key. The retry
window is each record's own: a record whose window ends while the endpoint fails is tried
once more then, or dead-lettered if it was tried before.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from streams.config import DeliverySettings

__all__ = ["Endpoint", "Endpoints", "Turn", "origin"]

log = logging.getLogger(__name__)

FAILURES_TO_FAIL: Final = 2  # retriable failures in a row, no success between: failing


class Turn(enum.Enum):
    """What `Endpoint.turn` lets an attempt do."""

    GO = "go"  # healthy: attempt now
    PROBE = "probe"  # failing: this attempt is the probe
    EXPIRED = "expired"  # the record's retry window ended while it waited
    STOPPED = "stopped"


def origin(url: str) -> str:
    """The endpoint of a sink URL: scheme://host:port (no path, no credentials)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


class Endpoint:
    """One endpoint's health, and whose turn it is while it fails."""

    def __init__(
        self,
        name: str,
        *,
        first_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failing = False
        self.probes = 0  # attempts that went as the probe
        self.outages = 0  # times it became failing
        self._first_s, self._max_s = first_s, max(first_s, max_s)
        self._clock = clock
        self._failures = 0  # retriable failures since the last success
        self._step = 0
        self._next_probe = 0.0
        self._probe: object | None = None  # the attempt probing now
        self._queue: deque[object] = deque()  # records waiting, the longest first
        self._changed = asyncio.Event()

    def probe_s(self, step: int) -> float:
        """The wait after failed probe `step` (1-based)."""
        return float(min(self._max_s, self._first_s * 2.0 ** max(0, step - 1)))

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def recheck(self) -> None:
        """Have every waiter look at the clock again now (for a clock that jumps: tests)."""
        self._wake()

    async def turn(
        self, token: object, *, not_before: float, until: float, stopping: asyncio.Event
    ) -> Turn:
        """Wait until the next attempt of the record `token` may go.

        Healthy: at `not_before` (the record's own backoff). Failing: when it is the probe,
        or the moment the endpoint recovers (then at once, whatever `not_before`). At
        `until` (the end of its retry window) in any case."""
        queued = paced = False
        try:
            while not stopping.is_set():
                now = self._clock()
                if not self.failing:
                    if paced or now >= not_before:
                        return Turn.GO
                    wait = not_before - now
                else:
                    paced = True
                    if not queued:
                        self._queue.append(token)
                        queued = True
                    wait = float("inf")
                    if self._probe is None and self._queue[0] is token:
                        if now >= self._next_probe:
                            self._queue.popleft()
                            queued = False
                            self._probe = token
                            self.probes += 1
                            return Turn.PROBE
                        wait = self._next_probe - now
                if now >= until:
                    return Turn.EXPIRED
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(wait, until - now)):
                        await _first(changed.wait(), stopping.wait())
            return Turn.STOPPED
        finally:
            if queued:
                head = self._queue[0] is token
                self._queue.remove(token)
                if head:
                    self._wake()

    def succeeded(self, token: object) -> None:
        """An attempt of `token` was delivered."""
        self._failures = 0
        if self._probe is token:
            self._probe = None
        if self.failing:
            self.failing = False
            log.info("endpoint %s answers again: every waiting lane goes", self.name)
            self._wake()

    def failed(self, token: object, retry_after: float | None) -> None:
        """An attempt of `token` failed retriably."""
        probing = self._probe is token
        if probing:
            self._probe = None
        self._failures += 1
        now = self._clock()
        if not self.failing and self._failures >= FAILURES_TO_FAIL:
            self.failing = True
            self.outages += 1
            self._step = 0
            probing = True
            log.warning(
                "endpoint %s failed %d attempts in a row: one probe at a time until it answers",
                self.name,
                self._failures,
            )
        if self.failing and probing:
            self._step += 1
            self._next_probe = now + self.probe_s(self._step)
        if self.failing and retry_after is not None:
            self._next_probe = max(self._next_probe, now + retry_after)
        self._wake()

    def released(self, token: object) -> None:
        """The attempt of `token` ended without telling anything of the endpoint."""
        if self._probe is token:
            self._probe = None
            self._wake()


async def _first(*waits: object) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class Endpoints:
    """The endpoints of one delivery process, by origin."""

    def __init__(self, settings: DeliverySettings) -> None:
        self._settings = settings
        self._by_origin: dict[str, Endpoint] = {}

    def get(self, sink: str) -> Endpoint:
        name = origin(sink)
        endpoint = self._by_origin.get(name)
        if endpoint is None:
            endpoint = Endpoint(
                name,
                first_s=self._settings.initial_backoff_s,
                max_s=self._settings.probe_max_interval_s,
            )
            self._by_origin[name] = endpoint
        return endpoint
