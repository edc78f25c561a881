"""The chaos suite's subscribers: real webhook endpoints on 127.0.0.1 that note every arrival.

A `Sink` answers 204 and notes (event id, time) in arrival order; it can be told to answer
503 to a share of the requests at random (`flaky`), to every request (`down`), or to the
events of one zaak (`failing_zaak`). The callback check the API sends when a subscription
is created is answered and not counted.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

from aiohttp import web

from streams.chaos.checker import Arrival
from streams.demo.receivers import serve_hook

__all__ = ["CALLBACK_CHECK_TYPE", "Sink"]

CALLBACK_CHECK_TYPE = "nl.gemeentebus.callback-check"


@dataclass
class Sink:
    """One subscriber's webhook endpoint (see the module doc)."""

    name: str
    flaky: float = 0.0  # share of requests answered 503 at random
    seed: int = 0
    down: bool = False
    types: tuple[str, ...] = ()  # its subscription's types (empty: every type)
    failing_zaak: str | None = None  # the events of this zaak (its UUID) are answered 500
    arrivals: list[Arrival] = field(default_factory=list)
    refused: int = 0  # requests answered with an error on purpose
    url: str = ""
    _runner: web.AppRunner | None = None
    _rng: random.Random = field(default_factory=random.Random)

    async def start(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - a test's dice, reproducible
        self._runner, self.url = await serve_hook(self._hook)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> set[str]:
        return {a.id for a in self.arrivals}

    async def _hook(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        if event.get("type") == CALLBACK_CHECK_TYPE:
            return web.Response(status=204)
        if self.down or (self.flaky and self._rng.random() < self.flaky):
            self.refused += 1
            return web.json_response({"error": "unavailable"}, status=503)
        data = event.get("data") or {}
        if self.failing_zaak is not None and data.get("zaakUuid") == self.failing_zaak:
            self.refused += 1
            return web.json_response({"error": "cannot take this one"}, status=500)
        self.arrivals.append(Arrival(str(event.get("id")), time.time()))
        return web.Response(status=204)
