"""A delivery process killed while many subscriptions are spread over two of them (issue 16).

Two delivery processes share the partitions of every subscription's deliver topic through
the delivery group: the four standard subscribers (every event) and a crowd of
`spread_subscriptions` more (200 quick, 2,000 full), created in one go with
`SubscriptionStore.put_many` as `subscriptions apply` does. Each crowd subscription takes
the events whose id ends in its own hex suffix (`filters`), so the crowd costs about one
delivery an event, not one per subscription; its webhooks are one endpoint with a path per
subscription. Deliver topics have two partitions, so every subscription has one on each
process (the group's round robin). Under load one process is SIGKILLed and not started
again: the other must take every partition over once the group's session timeout passes,
and deliver everything at least once, per key in order (duplicates counted).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from streams.chaos.bus import CROWD
from streams.chaos.checker import Arrival, Sent, Tally, tally
from streams.chaos.core import ChaosContext, Outcome, Stage
from streams.chaos.kills import exits_check, load_for, standard_sinks
from streams.chaos.receivers import CALLBACK_CHECK_TYPE
from streams.config import KafkaSettings, Settings
from streams.contract.schemas import registry
from streams.kafka.clients import make_admin
from streams.kafka.topics import Groups
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["delivery_kill_scenario"]

_DELIVER_PARTITIONS: Final = 2  # every subscription on both processes
_TAKEOVER_S: Final = 90.0  # the session timeout (10 s) and a rebalance, with room
_SECRET: Final = "whsec_" + base64.b64encode(b"chaos crowd signing secret, 32 b").decode()


@dataclass
class Crowd:
    """One webhook endpoint for many subscriptions: `POST /hook/<n>`, arrivals per n."""

    arrivals: dict[int, list[Arrival]] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{n}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def count(self) -> int:
        return sum(len(a) for a in self.arrivals.values())

    async def _hook(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        if event.get("type") != CALLBACK_CHECK_TYPE:
            n = int(request.match_info["n"])
            self.arrivals.setdefault(n, []).append(Arrival(str(event.get("id")), time.time()))
        return web.Response(status=204)


def suffixes(n: int) -> list[str]:
    """`n` distinct hex suffixes of one length: each picks 1/16**length of the event ids."""
    digits = max(1, math.ceil(math.log(n, 16))) if n > 1 else 1
    return [f"{i:0{digits}x}" for i in range(n)]


def crowd_subscriptions(crowd: Crowd, n: int) -> list[Subscription]:
    types = list(registry().types())
    return [
        Subscription.model_validate(
            {
                "id": f"crowd-{i:04d}",
                "sink": f"{crowd.url}/{i}",
                "protocol": "HTTP",
                "types": types,
                "filters": [{"suffix": {"id": suffix}}],
                "owner": CROWD,
                "purpose": "chaos crowd",
                "callbackCheck": False,
                "signingSecret": _SECRET,
            }
        )
        for i, suffix in enumerate(suffixes(n))
    ]


def crowd_tally(stage: Stage, crowd: Crowd, n: int, healed_at: float) -> Tally:
    """The crowd's subscriptions tallied one by one (order is per subscription), summed."""

    def picks(suffix: str) -> Callable[[Sent], bool]:
        return lambda sent: sent.id.endswith(suffix)

    each = [
        tally(f"crowd-{i}", stage.ledger, crowd.arrivals.get(i, []), picks(s), healed_at=healed_at)
        for i, s in enumerate(suffixes(n))
    ]
    recovers = [t.recover_s for t in each]

    def total(name: str) -> int:
        return sum(int(getattr(t, name)) for t in each)

    return Tally(
        subscriber=f"crowd ({n} subscriptions)",
        published=total("published"),
        accepted=total("accepted"),
        delivered=total("delivered"),
        lost=total("lost"),
        duplicated=total("duplicated"),
        reordered=total("reordered"),
        unexpected=total("unexpected"),
        recover_s=None if None in recovers else max((r or 0.0 for r in recovers), default=0.0),
        lost_ids=tuple(i for t in each for i in t.lost_ids)[:5],
    )


async def members(kafka: KafkaSettings, group: str) -> list[int]:
    """How many partitions each member of `group` holds now."""
    admin = make_admin(kafka, "chaos-group")
    await admin.start()
    try:
        described = (await admin.describe_consumer_groups([group]))[0].to_object()
    finally:
        await admin.close()
    counts = []
    for found in described["groups"]:
        for member in found["members"]:
            raw = member["member_assignment"]
            parts = ConsumerProtocolMemberAssignment.decode(raw).partitions() if raw else []
            counts.append(len(parts))
    return counts


async def _until_members(
    kafka: KafkaSettings, group: str, wanted: Callable[[list[int]], bool], within: float
) -> list[int]:
    began, found = time.monotonic(), []
    while time.monotonic() - began < within:
        found = await members(kafka, group)
        if wanted(found):
            break
        await asyncio.sleep(0.5)
    return found


async def delivery_kill_scenario(ctx: ChaosContext) -> Outcome:
    """SIGKILL one of two delivery processes sharing many subscriptions (see the module doc)."""
    size, outcome = ctx.size, Outcome()
    broker = await ctx.broker()
    n = size.spread_subscriptions
    crowd = Crowd()
    await crowd.start()
    try:
        sinks = standard_sinks(3)
        partitions = _DELIVER_PARTITIONS
        name = "delivery-kill"
        stage_of = Stage(
            ctx, name, broker.bootstrap, sinks, streams=False, deliver_partitions=partitions
        )
        async with stage_of as stage:
            settings = Settings(**json.loads(stage.bus.config.read_text()))
            store = SubscriptionStore(settings, name="chaos-crowd")
            await store.start()
            try:
                await store.ready()
                began = time.monotonic()
                await store.put_many(crowd_subscriptions(crowd, n))
                took = time.monotonic() - began
            finally:
                await store.stop()
            outcome.faults.append(f"{stage.at()} {n} subscriptions created in {took:.1f} s")
            await asyncio.gather(
                stage.bus.start("worker", "worker"),
                stage.bus.start("delivery", "delivery"),
                stage.bus.start("delivery2", "delivery"),
            )
            group = Groups(stage.prefix).delivery
            every = (n + len(stage.sinks)) * _DELIVER_PARTITIONS
            spread = await _until_members(
                settings.kafka, group,
                lambda m: len(m) == 2 and min(m) > 0 and sum(m) == every, _TAKEOVER_S,
            )  # fmt: skip
            outcome.check(f"two delivery processes share the {every} partitions",
                          len(spread) == 2 and min(spread) > 0 and sum(spread) == every,
                          f"partitions per member: {spread}")  # fmt: skip
            load = load_for(stage, size.load_events, size.rate, broker.bootstrap, seed=3)
            publishing = asyncio.create_task(load.run())
            await asyncio.sleep(0.4 * size.load_events / size.rate)
            await stage.bus.kill("delivery2")
            outcome.faults.append(f"{stage.at()} SIGKILL delivery2 (not restarted)")
            killed = time.monotonic()
            left = await _until_members(settings.kafka, group, lambda m: m == [every], _TAKEOVER_S)
            outcome.check("the other delivery process takes every partition over",
                          left == [every], f"partitions per member {left} after "
                          f"{time.monotonic() - killed:.1f} s")  # fmt: skip
            healed = time.time()
            await publishing
            waited = await stage.settle()
            waited += await _settle_crowd(stage, crowd, n)
            outcome.tallies = [*stage.tallies(healed_at=healed),
                               crowd_tally(stage, crowd, n, healed)]  # fmt: skip
            outcome.check("publisher resends", None,
                          f"http {load.http_failures}, kafka {load.kafka_failures}, "
                          f"rejected {load.rejected}; settled in {waited} s; crowd "
                          f"{crowd.count()} deliveries")  # fmt: skip
            exits_check(outcome, stage)
    finally:
        await crowd.stop()
    return outcome


async def _settle_crowd(stage: Stage, crowd: Crowd, n: int) -> float:
    """Like `Stage.settle`, for the crowd: until nothing is missing, or nothing arrives for
    `stall_s`, or `settle_s` passed. The seconds waited."""
    size, began = stage.ctx.size, time.monotonic()
    accepted = stage.ledger.accepted
    wanted = {i: {s for s in accepted if s.endswith(x)} for i, x in enumerate(suffixes(n))}
    last_count, last_change = -1, began
    while time.monotonic() - began < size.settle_s:
        missing = sum(
            len(ids - {a.id for a in crowd.arrivals.get(i, [])}) for i, ids in wanted.items()
        )
        if missing == 0:
            break
        if crowd.count() != last_count:
            last_count, last_change = crowd.count(), time.monotonic()
        elif time.monotonic() - last_change > size.stall_s:
            break
        await asyncio.sleep(0.5)
    return round(time.monotonic() - began, 1)
