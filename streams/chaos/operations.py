"""Operator work under faults: a replay killed half way, and volgindicaties set in a race.

- replay-kill: events in the events topics, a new subscription, a replay of the whole
  window into it; the API process that runs the replay is SIGKILLed once about a third is
  scanned, and started again. The replay must finish by itself (state `done`) and the
  subscriber receive every event (duplicates allowed).
- volg-race: two API processes add `volgindicaties` (200) volgindicaties to one
  subscription at once, half each; all of them must be stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from streams.chaos.bus import OPERATOR
from streams.chaos.core import ChaosContext, Outcome, Stage
from streams.chaos.kills import exits_check, load_for
from streams.chaos.receivers import Sink
from streams.config import Settings
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.routing.store import SubscriptionStore

__all__ = ["replay_kill_scenario", "volg_race_scenario"]

_KILL_AT: Final = 0.3  # share of the replay scanned when its process is killed
_FINISH_S: Final = 120.0
_PARALLEL: Final = 8  # requests in flight per API process


async def _status(stage: Stage, subscription: str, replay: str) -> dict[str, Any] | None:
    try:
        found = await stage.request("GET", f"/subscriptions/{subscription}/replays/{replay}")
    except (RuntimeError, OSError, TimeoutError):
        return None
    return found if isinstance(found, dict) else None


async def replay_kill_scenario(ctx: ChaosContext) -> Outcome:
    """Kill the API process while it replays; the replay must resume and finish."""
    size, outcome = ctx.size, Outcome()
    broker = await ctx.broker()
    live, replayed = Sink("live"), Sink("replayed")
    async with Stage(ctx, "replay-kill", broker.bootstrap, [live]) as stage:
        began = datetime.now(UTC) - timedelta(minutes=1)
        n = size.replay_events
        load = load_for(stage, n, max(size.rate, 400.0), broker.bootstrap, seed=8)
        load.http_n, load.kafka_n = 0, n  # into Kafka: quick to fill the events topics
        await load.run()
        await stage.settle([live])
        await replayed.start()
        try:
            stage.sinks.append(replayed)
            target = await stage.subscribe("live", replayed.url)
            stage.ids["replayed"] = target
            window = {"from": began.isoformat(), "to": datetime.now(UTC).isoformat()}
            answer = await stage.request("POST", f"/subscriptions/{target}/replays", OPERATOR,
                                         window)  # fmt: skip
            replay = str(answer["id"])
            killed_at: dict[str, Any] | None = None
            deadline = time.monotonic() + _FINISH_S
            while time.monotonic() < deadline:
                status = await _status(stage, target, replay)
                if status is not None and (
                    status["state"] not in ("queued", "running")
                    or status["scanned"] >= _KILL_AT * max(status["total"], 1)
                ):
                    killed_at = status
                    break
                await asyncio.sleep(0.02)
            if killed_at is None or killed_at["state"] not in ("queued", "running"):
                outcome.check("replay killed half way", False,
                              f"could not catch it running: {killed_at}")  # fmt: skip
            else:
                await stage.bus.kill("api")
                outcome.faults.append(f"{stage.at()} SIGKILL api at {killed_at['scanned']} of "
                                      f"{killed_at['total']} scanned")  # fmt: skip
                await stage.bus.start("api", "api")
                healed = time.time()
                final: dict[str, Any] | None = None
                deadline = time.monotonic() + min(_FINISH_S, size.settle_s / 2)
                while time.monotonic() < deadline:
                    final = await _status(stage, target, replay)
                    if final is not None and final["state"] not in ("queued", "running"):
                        break
                    await asyncio.sleep(0.5)
                shown = "no answer" if final is None else (
                    f"{final['state']}, {final['scanned']} of {final['total']} scanned, "
                    f"{final['written']} written"
                )  # fmt: skip
                outcome.check("the replay resumes after the restart and finishes",
                              final is not None and final["state"] == "done", shown)  # fmt: skip
                await stage.settle([replayed])
                outcome.tallies = stage.tallies(healed_at=healed)
        finally:
            await replayed.stop()
        exits_check(outcome, stage)
    return outcome


def _settings(stage: Stage) -> Settings:
    return Settings(**json.loads(stage.bus.config.read_text()))


async def volg_race_scenario(ctx: ChaosContext) -> Outcome:
    """Two API processes add volgindicaties to one subscription at once: all stored."""
    size, outcome = ctx.size, Outcome()
    broker = await ctx.broker()
    sink = Sink("volger")
    async with Stage(ctx, "volg-race", broker.bootstrap, [sink], apis=2, streams=False) as stage:
        target = stage.ids["volger"]
        factory = EventFactory(9, today=dutch_today())
        bsns = [factory.bsn() for _ in range(size.volgindicaties)]
        urls = [stage.bus.procs["api"].url, stage.bus.procs["api2"].url]
        failures: list[str] = []

        async def follow(url: str, mine: list[str]) -> None:
            gate = asyncio.Semaphore(_PARALLEL)

            async def one(bsn: str) -> None:
                async with gate:
                    try:
                        await stage.request("PUT", f"/subscriptions/{target}/volgindicaties/{bsn}",
                                            "volger", url=url)  # fmt: skip
                    except (RuntimeError, OSError, TimeoutError) as exc:
                        failures.append(str(exc).split(":")[-1][:80])

            await asyncio.gather(*(one(b) for b in mine))

        outcome.faults.append(f"{stage.at()} {len(bsns)} volgindicaties over two API processes")
        await asyncio.gather(follow(urls[0], bsns[0::2]), follow(urls[1], bsns[1::2]))
        store = SubscriptionStore(_settings(stage), name="chaos-volg")
        await store.start()
        try:
            await store.ready()
            stored, last, since = 0, -1, time.monotonic()
            while time.monotonic() - since < 5.0:
                found = store.get(target)
                stored = len(found.volgindicaties) if found is not None else 0
                if stored != last:
                    last, since = stored, time.monotonic()
                if stored == len(bsns):
                    break
                await asyncio.sleep(0.2)
        finally:
            await store.stop()
        outcome.check(f"{len(bsns)} volgindicaties stored", stored == len(bsns),
                      f"{stored} stored; {len(failures)} requests failed "
                      f"{sorted(set(failures))[:3]}")  # fmt: skip
        exits_check(outcome, stage)
    return outcome
