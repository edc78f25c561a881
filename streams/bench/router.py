"""The router scenario: routing cost per event as unrelated subscriptions pile up.

Every event is an intergemeentelijke move from Amsterdam (0363) to Utrecht (0344), so
exactly three subscriptions match it, whatever the set holds: the two gemeenten (on their
`fields`) and the BRP (everything, whole). The other subscriptions are other gemeenten's,
filtered the same way, which never match. The baseline is the set of the three alone (a
fixed match count of three needs three subscriptions); the target is a flat cost.

`Router.route` runs in-process on pre-encoded events-topic records, as the agent calls it:
decode, pseudonym, index lookup, projection, structured-mode encoding.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Any, Final

from streams.bench.broker import BENCH_OWNER, namespace
from streams.bench.codec import best_of
from streams.bench.core import BenchContext, Figure
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.contract.envelope import CloudEvent
from streams.contract.gemeenten import current_codes
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import BRP_SOURCE, EventFactory
from streams.ingress.gate import Gate
from streams.kafka.topics import Topics
from streams.routing.router import Router
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription

__all__ = ["SET_SIZES", "router_scenario", "subscription_set"]

SET_SIZES: Final = (3, 10, 100, 1_000)
MATCHING: Final = 3
VAN, NAAR = "0363", "0344"
_FIELDS: Final = ["bsn", "soort", "nieuwAdres.gemeentecode", "vorigAdres.gemeentecode"]


def _subscription(id_: str, **extra: Any) -> Subscription:
    return Subscription.model_validate(
        {
            "id": id_,
            "sink": f"gemeentebus.deliver.{id_}",
            "protocol": "KAFKA",
            "types": [VERHUISD, OVERLEDEN],
            "owner": BENCH_OWNER,
            "purpose": "bench",
            **extra,
        }
    )


def _gemeente(code: str, suffix: str = "") -> Subscription:
    moves = {"any": [{"exact": {"gemeentevan": code}}, {"exact": {"gemeentenaar": code}}]}
    residents = {"exact": {"gemeente": code}}
    filters = [{"any": [moves, residents]}]
    return _subscription(f"gemeente-{code}{suffix}", filters=filters, fields=_FIELDS)


def subscription_set(size: int) -> list[Subscription]:
    """`size` subscriptions of which exactly three match a move from VAN to NAAR."""
    others = [c for c in current_codes() if c not in (VAN, NAAR)]
    matching = [_gemeente(VAN), _gemeente(NAAR), _subscription("brp")]
    # more subscriptions than gemeenten: several subscribers (departments) per gemeente
    return matching + [
        _gemeente(others[i % len(others)], suffix=f"-{i // len(others)}")
        for i in range(size - MATCHING)
    ]


def _moves(n: int, today: date) -> list[CloudEvent]:
    factory = EventFactory(8, today=today)
    at = datetime.now().astimezone() - timedelta(days=2)
    return [
        CloudEvent(
            id=factory.uuid(),
            source=BRP_SOURCE,
            type=VERHUISD,
            time=at + timedelta(seconds=i),
            dataschema=f"urn:gemeentebus:schema:{VERHUISD}:1",
            data={
                "bsn": factory.bsn(),
                "soort": "INTERGEMEENTELIJK",
                "vorigAdres": factory.adres(VAN),
                "nieuwAdres": factory.adres(NAAR),
                "datumAanvangAdreshouding": today - timedelta(days=3),
            },
        )
        for i in range(n)
    ]


async def router_scenario(ctx: BenchContext) -> list[Figure]:
    """Cost per routed event with 3 (baseline), 10, 100 and 1,000 subscriptions."""
    settings = namespace(ctx.settings, ctx.bootstrap or "localhost:9092", "router", "inproc")
    today = dutch_today()
    gate = Gate(Topics(settings.kafka.topic_prefix), settings.security.pseudonym_key_bytes())
    records = [gate.accept(e, today=today).record for e in _moves(ctx.size.route_events, today)]
    costs: dict[int, float] = {}
    for size in SET_SIZES:
        store = SubscriptionStore(settings, name="bench-router-store")  # never started
        for subscription in subscription_set(size):
            store.index.upsert(subscription)
        router = Router(settings, store=store)
        outputs = router.route(records[0], today=today)
        if len(outputs) != MATCHING:  # the scenario measures what it says, or nothing
            raise AssertionError(f"{len(outputs)} outputs with {size} subscriptions, not 3")

        def route_all(router: Router = router, records: list[KafkaRecord] = records) -> None:
            for record in records:
                router.route(record, today=today)

        try:
            (best,) = best_of(ctx.size.repeats, route_all)
        finally:
            await store.stop()
        costs[size] = best / len(records) * 1e6
        await asyncio.sleep(0)
    return [
        Figure.of(
            f"router: cost per event, {size} subscriptions (3 match) vs 3",
            value=costs[size],
            baseline=costs[SET_SIZES[0]],
            unit="µs/event",
            target=0.8,
            higher_is_better=False,
        )
        for size in SET_SIZES
    ]
