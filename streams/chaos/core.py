"""What every chaos scenario shares: sizes, verdicts, the context, and one scenario's stage.

A scenario is an async function from a `ChaosContext` to an `Outcome`: per-subscriber
`Tally`s (lost, duplicated, reordered, ...) and named `Check`s (a poison record found in the
invalid topic, a process that stopped within its deadline, ...). `Stage` sets up what most
scenarios need: sinks, a configuration with a topic prefix of its own, the bus's role
processes, and a subscription per sink made through the API as a subscriber would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiohttp

from streams.chaos.bus import OPERATOR, Bus, token, write_config
from streams.chaos.checker import Ledger, Sent, Tally, tally
from streams.chaos.cluster import Brokers, heap_for
from streams.chaos.receivers import Sink
from streams.config import LocalKafkaSettings
from streams.contract.schemas import registry

__all__ = [
    "FULL",
    "QUICK",
    "ROLES",
    "ChaosContext",
    "Check",
    "Outcome",
    "Scenario",
    "Size",
    "Stage",
]

ROLES: Final[tuple[str, ...]] = ("api", "worker", "delivery")


@dataclass(frozen=True, slots=True, kw_only=True)
class Size:
    """How much each scenario does."""

    kill_events: int  # kill: events published (half HTTP, half Kafka)
    kills_per_role: int
    kill_roles: tuple[str, ...] = ROLES
    rate: float  # events/s offered under load
    outage_s: float  # broker-kill, broker-stop: how long a broker is gone
    load_events: int  # broker-*, poison, sigterm, subscriber-down: events under load
    replay_events: int
    volgindicaties: int = 200
    spread_subscriptions: int = 200  # delivery-kill: subscriptions over two delivery processes
    settle_s: float  # the longest wait for the last deliveries after the faults
    # ... ended early when nothing arrives for this long: longer than a consumer group's
    # session timeout (the worker's 20 s), which a SIGKILLed member holds its partitions for
    stall_s: float


QUICK: Final = Size(
    kill_events=2_400, kills_per_role=2, rate=100.0, outage_s=20.0, load_events=1_000,
    replay_events=5_000, settle_s=180.0, stall_s=45.0,
)  # fmt: skip
FULL: Final = Size(
    kill_events=100_000, kills_per_role=10, rate=250.0, outage_s=120.0, load_events=40_000,
    replay_events=100_000, settle_s=900.0, stall_s=240.0, spread_subscriptions=2_000,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Check:
    """One named verdict of a scenario; `ok` None is informational (no verdict)."""

    name: str
    ok: bool | None
    detail: str = ""


@dataclass
class Outcome:
    """What one scenario found."""

    tallies: list[Tally] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # what was done, when (s after start)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and all(t.ok for t in self.tallies)
            and all(c.ok is not False for c in self.checks)
        )

    def check(self, name: str, ok: bool | None, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))


@dataclass
class ChaosContext:
    """What a scenario gets: sizes, a work folder, progress, and a shared one-node broker."""

    local: LocalKafkaSettings
    quick: bool
    size: Size
    folder: Path
    progress: Callable[[str], None]
    _shared: Brokers | None = None
    started: float = field(default_factory=time.monotonic)

    async def broker(self) -> Brokers:
        """The one-node broker scenarios that do not stop it share (started once)."""
        if self._shared is None:
            # the delivery-kill's crowd: a deliver topic of 2 partitions and a DLQ each
            crowd = 3 * self.size.spread_subscriptions
            self._shared = Brokers(
                self.folder / "broker-shared", self.local, heap_mb=heap_for(crowd)
            )
            await self._shared.up()
        return self._shared

    async def own_broker(self, name: str, nodes: int) -> Brokers:
        """A broker only this scenario uses (it stops or kills it); `down()` it afterwards."""
        brokers = Brokers(self.folder / f"broker-{name}", self.local, nodes=nodes)
        await brokers.up()
        return brokers

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.down()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    run: Callable[[ChaosContext], Awaitable[Outcome]]


def wants(sink: Sink) -> Callable[[Sent], bool]:
    """Which offered events `sink`'s subscription matches (its types; not its failing zaak)."""

    def chosen(sent: Sent) -> bool:
        if sink.types and sent.type not in sink.types:
            return False
        return not (sink.failing_zaak and sent.key.endswith(":" + sink.failing_zaak))

    return chosen


class Stage:
    """One scenario's bus, sinks and subscriptions; `async with` starts and stops them."""

    def __init__(
        self,
        ctx: ChaosContext,
        name: str,
        bootstrap: str,
        sinks: list[Sink],
        *,
        nodes: int = 1,
        retry_window_s: float = 900.0,
        apis: int = 1,
        streams: bool = True,
        partitions: int = 4,
        deliver_partitions: int | None = None,
    ) -> None:
        self.ctx, self.name, self.sinks, self.apis = ctx, name, sinks, apis
        self.streams = streams  # start the worker and delivery roles too
        self.prefix = f"chaos-{name}-{uuid.uuid4().hex[:6]}"
        self.folder = ctx.folder / self.prefix
        self.folder.mkdir(parents=True, exist_ok=True)
        config = write_config(
            self.folder / "gemeentebus.yaml", bootstrap=bootstrap, prefix=self.prefix,
            subscribers=[s.name for s in sinks], nodes=nodes, retry_window_s=retry_window_s,
            partitions=partitions, deliver_partitions=deliver_partitions,
        )  # fmt: skip
        self.bus = Bus(config, self.folder, bootstrap)
        self.ids: dict[str, str] = {}  # sink name -> subscription id
        self.ledger = Ledger()
        self.began = time.monotonic()

    def at(self) -> str:
        """Seconds since the stage started, for the fault log."""
        return f"{time.monotonic() - self.began:.1f}s"

    def api_url(self) -> str:
        alive = [p for p in self.bus.procs.values() if p.role == "api" and p.alive]
        return (alive or [self.bus.procs["api"]])[0].url

    async def __aenter__(self) -> Self:
        try:
            for sink in self.sinks:
                await sink.start()
            await self.bus.start("api", "api")
            for sink in self.sinks:
                self.ids[sink.name] = await self.subscribe(sink.name, sink.url, sink.types)
            for number in range(1, self.apis):
                await self.bus.start(f"api{number + 1}", "api")
            if self.streams:
                await asyncio.gather(
                    self.bus.start("worker", "worker"), self.bus.start("delivery", "delivery")
                )
        except BaseException:
            await self._close()
            raise
        self.began = time.monotonic()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        await self.bus.stop()
        for sink in self.sinks:
            await sink.stop()

    async def subscribe(
        self, owner: str, url: str, types: tuple[str, ...] = (), **extra: Any
    ) -> str:
        """A subscription of `owner` (a configured subscriber) through the API: its id."""
        body = {"sink": url, "protocol": "HTTP", "types": list(types or registry().types()),
                "callbackCheck": False, **extra}  # fmt: skip
        answer = await self.request("POST", "/subscriptions", owner, body)
        return str(answer["id"])

    async def request(
        self, method: str, path: str, client: str = OPERATOR, body: Any = None,
        *, url: str | None = None, ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> Any:  # fmt: skip
        """One API call as `client`; its JSON answer (None when empty); raises on failure."""
        headers = {"Authorization": f"Bearer {token(client)}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as session,
            session.request(
                method, (url or self.api_url()) + path, json=body, headers=headers
            ) as response,
        ):
            text = await response.text()
            if response.status not in ok:
                raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
            return await response.json(content_type=None) if text else None

    def expected(self, sink: Sink) -> set[str]:
        chosen = wants(sink)
        return {s.id for s in self.ledger.matching(chosen) if s.id in self.ledger.accepted}

    async def settle(self, sinks: list[Sink] | None = None) -> float:
        """Wait until every sink has every expected event, or nothing arrives for `stall_s`,
        or `settle_s` passed. Returns the seconds waited."""
        sinks = self.sinks if sinks is None else sinks
        size, began = self.ctx.size, time.monotonic()
        last_count, last_change = -1, began
        while time.monotonic() - began < size.settle_s:
            missing = sum(len(self.expected(s) - s.ids()) for s in sinks)
            if missing == 0:
                break
            count = sum(len(s.arrivals) for s in sinks)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > size.stall_s:
                break
            await asyncio.sleep(0.5)
        return round(time.monotonic() - began, 1)

    def tallies(
        self, healed_at: float | None = None, sinks: list[Sink] | None = None
    ) -> list[Tally]:
        return [
            tally(s.name, self.ledger, s.arrivals, wants(s), healed_at=healed_at)
            for s in (self.sinks if sinks is None else sinks)
        ]
