"""Subscribers failing: one down longer than the retry window, one failing a single zaak.

With a short retry window: first a warm-up with every subscriber up (the others' baseline
latency), then `down` answers 503 to everything while events flow. Everything it should
have received must be in its DLQ, per key in order; then it comes back, `gemeentebus dlq
redrive` runs, and it must receive all of it, in order. The other subscribers' latency
while `down` is down is compared with their baseline.

Then, on a bus of its own with the default (long) retry window and one partition,
`one-zaak` answers 500 to the events of one zaak from its first event on, while more
records than the courier's pending cap (2,000) flow, and that zaak gets more events than
one lane holds (`connectors.holding.LANE_CAP`, 500): every other key must be delivered
meanwhile (the zaak's later events are left in Kafka, not its partition paused); the
delivery process's memory is noted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
import uuid
from typing import Final

from streams.chaos.checker import Sent, latencies, reorders
from streams.chaos.cluster import read_topic
from streams.chaos.core import ChaosContext, Outcome, Stage
from streams.chaos.kills import exits_check, load_for
from streams.chaos.load import order_key
from streams.chaos.receivers import Sink
from streams.contract.attributes import ZAAK_GEMUTEERD
from streams.kafka.topics import Topics

__all__ = ["subscriber_down_scenario"]

_FLOOD: Final = 800  # extra events of the failing zaak: more than a lane holds (500)

_WINDOW_S: Final = 5.0
_REDRIVE_S: Final = 180.0


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _dead_letters(stage: Stage, bootstrap: str, subscription: str) -> list[str]:
    """The event ids in a subscription's DLQ, partition by partition in offset order."""
    records = await read_topic(bootstrap, Topics(stage.prefix).dlq(subscription))
    return [dict(r.headers)["ce_id"].decode() for r in records if dict(r.headers).get("ce_id")]


async def subscriber_down_scenario(ctx: ChaosContext) -> Outcome:
    """A subscriber down past the retry window, then redriven; one failing one zaak."""
    outcome = Outcome()
    await _down(ctx, outcome)
    await _one_zaak(ctx, outcome)
    return outcome


async def _one_zaak(ctx: ChaosContext, outcome: Outcome) -> None:
    """A subscriber failing one zaak from its first event on, with the default long retry
    window, while more records than the courier's pending cap flow: every other key must
    arrive, and the process's memory stays bounded."""
    size = ctx.size
    broker = await ctx.broker()
    one = Sink("one-zaak")
    # one partition: every record read after the failing zaak's first one waits behind it
    # for its commit, so the courier's pending count grows with the whole stream
    async with Stage(ctx, "one-zaak", broker.bootstrap, [Sink("gemeente-c"), one],
                     partitions=1) as stage:  # fmt: skip
        n = max(size.load_events, 3_000)
        load = load_for(stage, n, size.rate * 2, broker.bootstrap, 10)
        http, _ = load.prepare()
        zaken = [e.data["zaakUuid"] for e in http if e.type == ZAAK_GEMUTEERD]
        early = zaken[: max(1, len(zaken) // 20)]
        one.failing_zaak = max(set(early), key=zaken.count)
        # the zaak floods: more events than one lane holds, right after its first one
        first = next(i for i, e in enumerate(http) if e.data.get("zaakUuid") == one.failing_zaak)
        flood = [dataclasses.replace(http[first], id=str(uuid.uuid4())) for _ in range(_FLOOD)]
        for event in flood:
            stage.ledger.offer(Sent(event.id, event.source, event.type,
                                    order_key("http", event), "http"))  # fmt: skip
        http[first + 1 : first + 1] = flood
        zaken = [e.data["zaakUuid"] for e in http if e.type == ZAAK_GEMUTEERD]
        rss_before = _rss_mb(stage.bus.procs["delivery"].popen.pid)  # type: ignore[union-attr]
        outcome.faults.append(f"{stage.at()} `one-zaak` answers 500 to one zaak "
                              f"({zaken.count(one.failing_zaak)} events) of {n}")  # fmt: skip
        await load.run()
        healed = time.time()
        await stage.settle()
        rss_after = _rss_mb(stage.bus.procs["delivery"].popen.pid)  # type: ignore[union-attr]
        outcome.check("`one-zaak`: delivery process RSS", None,
                      f"{rss_before:.0f} → {rss_after:.0f} MB")  # fmt: skip
        outcome.tallies += stage.tallies(healed_at=healed)
        exits_check(outcome, stage)


async def _down(ctx: ChaosContext, outcome: Outcome) -> None:
    """`down` answers 503 past the retry window; its DLQ, then a redrive (module doc)."""
    size = ctx.size
    broker = await ctx.broker()
    down = Sink("down")
    sinks = [Sink("gemeente-a"), Sink("gemeente-b"), down]
    window = _WINDOW_S if ctx.quick else 30.0
    async with Stage(ctx, "subscriber-down", broker.bootstrap, sinks,
                     retry_window_s=window) as stage:  # fmt: skip
        warm = load_for(stage, 200, size.rate, broker.bootstrap, 6)
        calm = load_for(stage, size.load_events // 2, size.rate, broker.bootstrap, 11)
        main = load_for(stage, size.load_events, size.rate, broker.bootstrap, 7)
        await warm.run()  # joins groups and fills caches: not part of the baseline
        await stage.settle([sinks[0], sinks[1]])
        calm_from = time.time()
        await calm.run()
        await stage.settle([sinks[0], sinks[1]])
        baseline = time.time()
        before = {s.name: _p99(latencies(stage.ledger, s.arrivals, calm_from)) for s in sinks[:2]}
        down.down = True
        outcome.faults.append(f"{stage.at()} subscriber `down` answers 503 to everything")
        await main.run()
        await stage.settle([sinks[0], sinks[1]])
        during = {s.name: _p99(latencies(stage.ledger, s.arrivals, baseline)) for s in sinks[:2]}
        for name in before:
            worse = during[name] > 3 * before[name] + 1.0
            outcome.check(f"{name}: p99 latency while `down` is down", not worse,
                          f"{during[name]:.2f} s vs {before[name]:.2f} s before")  # fmt: skip
        # everything `down` missed must reach its DLQ once the window is over
        missed = stage.expected(down) - down.ids()
        began, letters = time.monotonic(), []
        while time.monotonic() - began < window + size.stall_s:
            letters = await _dead_letters(stage, broker.bootstrap, stage.ids["down"])
            if missed <= set(letters):
                break
            await asyncio.sleep(2.0)
        absent = len(missed - set(letters))
        ledger = stage.ledger
        firsts = list(dict.fromkeys(i for i in letters if i in ledger.sent))
        disorder = reorders((ledger.accepted.get(i) for i in firsts),
                            (ledger.sent[i].key for i in firsts))  # fmt: skip
        detail = f"{len(missed)} missed, {absent} not in the DLQ, {disorder} out of order"
        outcome.check("`down`: every missed event in its DLQ, per key in order",
                      absent == 0 and disorder == 0, detail)  # fmt: skip
        down.down = False
        outcome.faults.append(f"{stage.at()} `down` is back; gemeentebus dlq redrive")
        argv, env = stage.bus.command("dlq", "redrive", stage.ids["down"])
        healed = time.time()
        redrive = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            async with asyncio.timeout(_REDRIVE_S):
                said, _ = await redrive.communicate()
        except TimeoutError:
            redrive.kill()
            said, _ = await redrive.communicate()
        tail = said.decode(errors="replace").strip().splitlines()[-1:] or [""]
        outcome.check("dlq redrive exits 0", redrive.returncode == 0,
                      f"exit {redrive.returncode}: {tail[0][:200]}")  # fmt: skip
        await stage.settle([down])
        outcome.tallies += stage.tallies(healed_at=healed)
        exits_check(outcome, stage)
