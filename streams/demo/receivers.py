"""The demo's subscribers: real HTTP servers on 127.0.0.1 that verify every signature.

Each plays one party (a municipality, the BRP, a zaaksysteem), counts what it receives,
dedupes on `source`+`id` as the SPEC asks of subscribers, and can be told to fail for a
while (503) to show retries and recovery.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = ["Receiver", "serve_hook"]


async def serve_hook(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.AppRunner, str]:
    """Serve `POST /hook` with `handler` on 127.0.0.1, on a free port: (runner, its URL).
    `await runner.cleanup()` stops it."""
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook"


@dataclass
class Receiver:
    """One subscriber's webhook endpoint."""

    name: str
    subscription: dict[str, Any]  # the body for POST /subscriptions, without `sink`
    token: str  # the subscriber's own API token
    purpose: str = ""  # its purpose binding (doelbinding)
    fail_for_s: float = 0.0  # answer 503 for this long after the first event
    received: Counter[str] = field(default_factory=Counter)  # unique events per type
    duplicates: int = 0
    failures_sent: int = 0
    bad_signatures: int = 0
    secret: str | None = None
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _failing_until: float | None = None
    _runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        self._runner, self.url = await serve_hook(self._hook)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def total(self) -> int:
        return sum(self.received.values())

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret is None:  # the callback check, before the secret is known
            return web.json_response({"ok": True})
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        now = time.monotonic()
        if self.fail_for_s and self._failing_until is None:
            self._failing_until = now + self.fail_for_s
        if self._failing_until is not None and now < self._failing_until:
            self.failures_sent += 1
            return web.json_response({"error": "maintenance"}, status=503)
        event = json.loads(body)
        key = (event["source"], event["id"])
        if key in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(key)
            self.received[event["type"]] += 1
        return web.Response(status=204)
