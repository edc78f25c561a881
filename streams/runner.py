"""`gemeentebus run`: the HTTP API and the stream workers, together or as separate roles.

Roles, each a process that scales on its own (they share nothing but Kafka):
- `api`: the HTTP API (publishing, subscriptions, operations);
- `worker`: the validating stream (ingress → events, routed to the deliver topics);
- `delivery`: the webhook dispatcher (deliver topics → subscribers' endpoints);
- `all`: the three in one process (the default, and what the demo runs).
Several processes of a role share the work through Kafka consumer groups.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from aiokafka import AIOKafkaProducer

from connectors.delivery import Dispatcher
from streams.app import make_producer
from streams.config import Settings
from streams.schemas import registry
from streams.store import SubscriptionStore
from streams.topics import bus_topics, create_topics
from streams.validator import Validator

__all__ = ["ROLES", "Bus", "Role", "run", "running_bus"]

log = logging.getLogger(__name__)

Role = Literal["all", "api", "worker", "delivery"]
ROLES: tuple[Role, ...] = ("all", "api", "worker", "delivery")


@dataclass
class Bus:
    """What one `run` process has started; `stop()` undoes it in reverse order."""

    settings: Settings
    store: SubscriptionStore | None = None
    validator: Validator | None = None
    dispatcher: Dispatcher | None = None
    producer: AIOKafkaProducer | None = None
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """The API's base URL (with the real port when port 0 was asked)."""
        if self.site is None or self.site._server is None:
            raise RuntimeError("this process runs no API")
        sockets = getattr(self.site._server, "sockets", None) or []
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"


async def start(settings: Settings, role: Role = "all") -> Bus:
    """Start the roles of this process; topics are created first when missing."""
    settings.security.pseudonym_key_bytes()  # refuse to start without a key
    await create_topics(settings.kafka, bus_topics(settings.kafka, registry().types()))
    bus = Bus(settings)
    try:
        bus.store = SubscriptionStore(settings, name=f"store-{role}")
        await bus.store.start()
        await bus.store.ready()
        if role in ("all", "worker"):
            bus.validator = Validator(settings, store=bus.store)
            await bus.validator.start()
        if role in ("all", "delivery"):
            bus.dispatcher = Dispatcher(settings, bus.store)
            await bus.dispatcher.start()
        if role in ("all", "api"):
            from streams.api import make_api

            bus.producer = make_producer(settings, "api")
            await bus.producer.start()
            app = make_api(settings, producer=bus.producer, store=bus.store)
            # No access log: volgindicatie URLs carry a BSN.
            bus.runner = web.AppRunner(app, access_log=None)
            await bus.runner.setup()
            bus.site = web.TCPSite(bus.runner, settings.http.host, settings.http.port)
            await bus.site.start()
            log.info("API listening on %s", bus.url)
    except BaseException:
        await stop(bus)
        raise
    return bus


async def stop(bus: Bus) -> None:
    """Stop what `start` started: the API first (no new input), then the streams."""
    if bus.runner is not None:
        await bus.runner.cleanup()
        bus.runner = bus.site = None
    if bus.producer is not None:
        await bus.producer.stop()
        bus.producer = None
    if bus.dispatcher is not None:
        await bus.dispatcher.stop()
        bus.dispatcher = None
    if bus.validator is not None:
        await bus.validator.stop()
        bus.validator = None
    if bus.store is not None:
        await bus.store.stop()
        bus.store = None


@asynccontextmanager
async def running_bus(settings: Settings, role: Role = "all") -> AsyncIterator[Bus]:
    """The bus, running for the duration of a `with` block (demo, tests, benchmarks)."""
    bus = await start(settings, role)
    try:
        yield bus
    finally:
        await stop(bus)


def settle_garbage_collector() -> None:
    """Keep full garbage collections short: everything built while starting (modules,
    schemas, clients, the subscription set) lives as long as the process, so it is collected
    once and frozen out of later collections. Unfrozen, each full collection walks it all:
    34 ms measured on a worker, a stall every ~16 s at 500 events/s that was most of the
    publish→webhook p99."""
    gc.collect()
    gc.freeze()


async def run(settings: Settings, role: Role = "all") -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with running_bus(settings, role) as bus:
        settle_garbage_collector()
        where = f" on {bus.url}" if bus.site is not None else ""
        print(f"gemeentebus running (role {role}){where}; Ctrl-C to stop", flush=True)
        await stopping.wait()
    print("gemeentebus stopped", flush=True)
