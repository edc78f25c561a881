"""Brokers failing under load: one of three SIGKILLed, or the only one stopped for a while.

- broker-kill: a 3-node cluster (replication factor 3, min.insync.replicas 2); under load,
  one node is SIGKILLed and started again `outage_s` later. Every 202 and every acked Kafka
  publish delivered, in order, and the bus never restarted.
- broker-stop: a 1-node broker stopped (SIGTERM) for `outage_s` under load, then started
  again. The bus recovers by itself; `/ready` of each role is sampled during the outage
  (should be false) and after (true), or noted "n/a" where a role serves no `/ready`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from streams.chaos.bus import Bus, http_status
from streams.chaos.core import ROLES, ChaosContext, Outcome, Stage
from streams.chaos.kills import exits_check, load_for, standard_sinks

__all__ = ["broker_kill_scenario", "broker_stop_scenario"]


async def _ready(bus: Bus, roles: Iterable[str]) -> dict[str, int | None]:
    """Each role's `GET /ready` status (None: nothing answers there)."""
    return {role: await http_status(bus.procs[role].url + "/ready") for role in roles}


def _ready_word(status: int | None) -> str:
    if status is None or status == 404:
        return "n/a"
    return "ready" if status == 200 else f"not ready ({status})"


async def broker_kill_scenario(ctx: ChaosContext) -> Outcome:
    """SIGKILL one of three brokers under load; restart it `outage_s` later."""
    size, outcome = ctx.size, Outcome()
    brokers = await ctx.own_broker("kill3", nodes=3)
    try:
        async with Stage(
            ctx, "broker-kill", brokers.bootstrap, standard_sinks(3), nodes=3
        ) as stage:
            rate = size.rate / 2
            n = int(rate * (size.outage_s + 20))
            load = load_for(stage, n, rate, brokers.bootstrap, seed=3)
            publishing = asyncio.create_task(load.run())
            await asyncio.sleep(10.0)
            await brokers.kill(2)
            outcome.faults.append(f"{stage.at()} SIGKILL broker node 2")
            await asyncio.sleep(size.outage_s)
            await brokers.up()
            outcome.faults.append(f"{stage.at()} broker node 2 started again")
            healed = time.time()
            await publishing
            await stage.settle()
            outcome.tallies = stage.tallies(healed_at=healed)
            exits_check(outcome, stage)
    finally:
        await brokers.down()
    return outcome


async def broker_stop_scenario(ctx: ChaosContext) -> Outcome:
    """Stop the only broker for `outage_s` under load; the bus recovers by itself."""
    size, outcome = ctx.size, Outcome()
    brokers = await ctx.own_broker("stop1", nodes=1)
    try:
        async with Stage(ctx, "broker-stop", brokers.bootstrap, standard_sinks(4)) as stage:
            rate = size.rate / 2
            n = int(rate * (size.outage_s + 20))
            load = load_for(stage, n, rate, brokers.bootstrap, seed=4)
            before = await _ready(stage.bus, ROLES)
            publishing = asyncio.create_task(load.run())
            await asyncio.sleep(10.0)
            await brokers.down()
            outcome.faults.append(f"{stage.at()} broker stopped")
            await asyncio.sleep(min(size.outage_s / 2, 15.0))
            during = await _ready(stage.bus, ROLES)
            await asyncio.sleep(max(0.0, size.outage_s - min(size.outage_s / 2, 15.0)))
            await brokers.up()
            outcome.faults.append(f"{stage.at()} broker started again")
            healed = time.time()
            await publishing
            await stage.settle()
            after = await _ready(stage.bus, ROLES)
            outcome.tallies = stage.tallies(healed_at=healed)
            for role in ROLES:
                states = (before[role], during[role], after[role])
                known = all(s not in (None, 404) for s in states)
                right = before[role] == 200 and during[role] != 200 and after[role] == 200
                outcome.check(f"/ready of {role}: ready, not ready during the outage, ready after",
                              right if known else None,
                              " → ".join(_ready_word(s) for s in states))  # fmt: skip
            exits_check(outcome, stage)
    finally:
        await brokers.down()
    return outcome
