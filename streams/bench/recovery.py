"""The recovery scenario: a receiver that answers 503 for a while, then 200 again.

The bus runs as deployed (`streams.bench.crowd.running_bus`) with one HTTP subscription to
zaak events. After a warm-up the receiver answers 503 for `outage_s` while 10 events a
second of 20 zaken (each zaak its own key, so 20 lanes) keep arriving;
then it answers 2xx again. Two figures, each against its budget:

- the seconds from the receiver's recovery until every one of those events arrived, against
  5 s (issue 16; met at ratio ≥ 1): the endpoint is probed at most
  `delivery.probe_max_interval_s` apart, and the first success lets every lane go;
- the 503s the receiver sent during the outage, against one per probe step (the backoff
  doubling from `delivery.initial_backoff_s` up to `delivery.probe_max_interval_s`, as in
  `connectors.endpoints`) plus the attempts in flight when it began
  (`connectors.attempts.CONCURRENCY`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Final

from connectors.attempts import CONCURRENCY
from streams.bench.core import BenchContext, Figure
from streams.bench.crowd import Hooks, bench_settings, running_bus, subscription, warm_up
from streams.bench.delivery import paced, until
from streams.config import DeliverySettings
from streams.contract.attributes import ZAAK_GEMUTEERD
from streams.contract.envelope import CloudEvent
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory

__all__ = ["RECOVERY_BUDGET_S", "ZAKEN", "probe_steps", "recovery_scenario", "zaak_events"]

RECOVERY_BUDGET_S: Final = 5.0
ZAKEN: Final = 20
_RATE: Final = 10  # events/s published during the outage


def zaak_events(factory: EventFactory, n: int, zaken: int = ZAKEN) -> list[CloudEvent]:
    """`n` zaak events, round robin over `zaken` zaken (each zaak its own Kafka key)."""
    made = [factory.zaak_gemuteerd() for _ in range(n)]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < zaken:
        data = factory.zaak_gemuteerd().data
        if (pair := (str(data["zaakUrl"]), str(data["zaakUuid"]))) not in pairs:
            pairs.append(pair)
    return [
        replace(event, subject=uuid, data={**event.data, "zaakUrl": url, "zaakUuid": uuid})
        for event, (url, uuid) in zip(made, pairs * (n // zaken + 1), strict=False)
    ]


def probe_steps(delivery: DeliverySettings, outage_s: float) -> int:
    """Probe steps in `outage_s`: the one that found the endpoint failing, then one after
    each backoff (doubling from `initial_backoff_s` up to `probe_max_interval_s`)."""
    steps, waited, step = 1, 0.0, 1
    while True:
        wait = min(delivery.probe_max_interval_s, delivery.initial_backoff_s * 2.0 ** (step - 1))
        wait = max(wait, delivery.initial_backoff_s)
        if waited + wait > outage_s:
            return steps
        waited += wait
        steps += 1
        step += 1


async def recovery_scenario(ctx: BenchContext) -> list[Figure]:
    """Seconds from recovery until all arrived, and 503s sent against the probe steps."""
    outage = ctx.size.outage_s
    settings = bench_settings(ctx, "recov")
    hooks, factory = Hooks(), EventFactory(9, today=dutch_today())
    events = zaak_events(factory, max(ZAKEN, int(outage * _RATE)))
    await hooks.start()
    try:
        zaak = subscription("bench-recovery", hooks.url("recovery"), [ZAAK_GEMUTEERD])
        async with running_bus(settings, [zaak]) as bus:
            await warm_up(bus, hooks, zaak_events(EventFactory(10, today=dutch_today()), 30))
            await bus.reading(120.0)
            hooks.status, hooks.refused = 503, 0
            began = time.monotonic()

            async def send(i: int) -> None:
                await bus.send(events[i])

            await paced(len(events), len(events) / outage, send)
            await asyncio.sleep(max(0.0, began + outage - time.monotonic()))  # its full time
            refused, hooks.status = hooks.refused, 204
            recovered = time.time()
            ids = [e.id for e in events]
            await until(lambda: sum(1 for i in ids if i in hooks.at), len(ids), 120.0 + outage)
            seconds = max(hooks.at[i] for i in ids) - recovered
    finally:
        await hooks.stop()
    steps = probe_steps(settings.delivery, outage)
    ctx.progress(
        f"  recovery: {len(events)} events of {ZAKEN} zaken over a {outage:g} s outage; "
        f"{refused} 503s for {steps} probe steps; all arrived {seconds:.2f} s after recovery"
    )
    return [
        Figure.of(
            f"recovery: seconds from the receiver's recovery after a {outage:g} s outage until "
            f"all {len(events)} events of {ZAKEN} zaken arrived vs the budget of "
            f"{RECOVERY_BUDGET_S:g} s",
            value=max(seconds, 0.001), baseline=RECOVERY_BUDGET_S, unit="s", target=1.0,
            higher_is_better=False,
        ),
        Figure.of(
            f"recovery: 503s sent during a {outage:g} s outage vs {steps} probe steps + "
            f"{CONCURRENCY} in flight",
            value=refused, baseline=steps + CONCURRENCY, unit="requests", target=1.0,
            higher_is_better=False,
        ),
    ]  # fmt: skip
