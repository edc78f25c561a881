"""Processes dying: SIGKILL of each role at random moments, and SIGTERM with a deadline.

- kill: events published half over HTTP and half into Kafka to four subscribers (one answers
  503 a third of the time); each role is SIGKILLed `kills_per_role` times at random moments
  and started again after a second or two, as a supervisor would. Lost 0, reordered 0;
  duplicates are counted, not judged.
- sigterm: under load, with extra subscriptions to sinks that fail in odd ways (a closed
  port, https to a plain-HTTP listener, an IPv4-mapped IPv6 address), each role gets
  SIGTERM and must exit within the deadline (25 s by default); then it is started again and
  nothing may be lost.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from typing import Final

from aiohttp import web

from streams.chaos.core import ROLES, ChaosContext, Outcome, Stage
from streams.chaos.load import Load
from streams.chaos.receivers import Sink
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.demo.receivers import serve_hook

__all__ = ["SIGTERM_DEADLINE_S", "kill_scenario", "sigterm_scenario", "standard_sinks"]

SIGTERM_DEADLINE_S: Final = 25.0
_SLACK_S: Final = 2.0  # the interpreter's own exit
_LIFE_S: Final = 5.0  # the least time a restarted process runs before its next kill


def standard_sinks(seed: int) -> list[Sink]:
    """Four subscribers: two plain, one answering 503 a third of the time, one BRP-only."""
    return [
        Sink("gemeente-a"),
        Sink("gemeente-b"),
        Sink("flaky", flaky=1 / 3, seed=seed),
        Sink("brp", types=(VERHUISD, OVERLEDEN)),
    ]


def load_for(stage: Stage, n: int, rate: float, bootstrap: str, seed: int) -> Load:
    return Load(stage.ledger, stage.api_url, bootstrap, stage.prefix,
                http_n=n // 2, kafka_n=n - n // 2, rate=rate, seed=seed)  # fmt: skip


async def _at(moment: float) -> None:
    ahead = moment - time.monotonic()
    if ahead > 0:
        await asyncio.sleep(ahead)


def exits_check(outcome: Outcome, stage: Stage, *, allowed: bool = False) -> None:
    exits = stage.bus.unexpected_exits()
    outcome.check(
        "no bus process exited on its own", None if allowed else not exits,
        "; ".join(exits) or "none",
    )  # fmt: skip


async def kill_scenario(ctx: ChaosContext) -> Outcome:
    """SIGKILL each role N times at random moments under load (see the module doc)."""
    size, outcome = ctx.size, Outcome()
    broker = await ctx.broker()
    async with Stage(ctx, "kill", broker.bootstrap, standard_sinks(1)) as stage:
        load = load_for(stage, size.kill_events, size.rate, broker.bootstrap, seed=1)
        rng = random.Random(13)  # noqa: S311 - reproducible moments
        span = size.kill_events / size.rate
        publishing = asyncio.create_task(load.run())
        began = time.monotonic()

        async def kill_often(role: str, moments: list[float]) -> None:
            restarted = 0.0
            for moment in sorted(moments):
                # at least a few seconds of life: a kill may still land while it starts
                await _at(max(began + moment, restarted + _LIFE_S))
                await stage.bus.kill(role)
                outcome.faults.append(f"{stage.at()} SIGKILL {role}")
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                await stage.bus.start(role, role, wait=False)
                restarted = time.monotonic()
            try:
                await stage.bus.wait_running(stage.bus.procs[role])
            except TimeoutError:
                outcome.check(f"{role} runs again after its last kill", False,
                              "not running within 180 s of its restart")  # fmt: skip

        async with asyncio.TaskGroup() as group:
            for role in size.kill_roles:
                moments = [rng.uniform(0.05, 0.9) * span for _ in range(size.kills_per_role)]
                group.create_task(kill_often(role, moments))
        healed = time.time()
        await publishing
        waited = await stage.settle()
        outcome.tallies = stage.tallies(healed_at=healed)
        outcome.check("publisher resends", None,
                      f"http {load.http_failures}, kafka {load.kafka_failures}, "
                      f"rejected {load.rejected}; settled in {waited} s")  # fmt: skip
        exits_check(outcome, stage)
    return outcome


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def sigterm_scenario(ctx: ChaosContext) -> Outcome:
    """SIGTERM each role under load with failing sinks; each must exit within the deadline."""
    size, outcome = ctx.size, Outcome()
    broker = await ctx.broker()
    plain_runner, plain_url = await serve_hook(_plain)
    odd = {
        "closed port": f"http://127.0.0.1:{_closed_port()}/hook",
        "https to plain HTTP": plain_url.replace("http://", "https://"),
        "IPv4-mapped IPv6": plain_url.replace("127.0.0.1", "[::ffff:127.0.0.1]"),
    }
    try:
        async with Stage(ctx, "sigterm", broker.bootstrap, standard_sinks(2)) as stage:
            for what, url in odd.items():
                try:
                    await stage.subscribe("gemeente-a", url)
                except RuntimeError as exc:
                    outcome.check(f"subscription to {what} sink", None, f"refused: {exc}")
            n = size.load_events
            load = load_for(stage, n, size.rate, broker.bootstrap, seed=2)
            publishing = asyncio.create_task(load.run())
            span = n / size.rate
            restarts = []
            for number, role in enumerate(ROLES):
                await asyncio.sleep(span / (len(ROLES) + 1) if number == 0 else 2.0)
                stage.bus.signal(role, signal.SIGTERM)
                outcome.faults.append(f"{stage.at()} SIGTERM {role}")
                took = await stage.bus.wait_exit(role, SIGTERM_DEADLINE_S + _SLACK_S)
                if took is None:
                    await stage.bus.kill(role)
                    outcome.check(f"{role} exits within {SIGTERM_DEADLINE_S:.0f} s of SIGTERM",
                                  False, "still running: SIGKILLed")  # fmt: skip
                else:
                    code = stage.bus.procs[role].popen.returncode  # type: ignore[union-attr]
                    outcome.check(f"{role} exits within {SIGTERM_DEADLINE_S:.0f} s of SIGTERM",
                                  True, f"exited in {took} s with code {code}")  # fmt: skip
                restarts.append(asyncio.create_task(stage.bus.start(role, role)))
            await asyncio.gather(*restarts)
            healed = time.time()
            await publishing
            await stage.settle()
            outcome.tallies = stage.tallies(healed_at=healed)
            exits_check(outcome, stage)
    finally:
        await plain_runner.cleanup()
    return outcome


async def _plain(request: web.Request) -> web.Response:
    return web.Response(status=204)
