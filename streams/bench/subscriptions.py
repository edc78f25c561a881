"""The subscriptions scenario: `gemeentebus subscriptions apply` of many new subscriptions.

What the command does after its interpreter started: read a YAML list of N new HTTP
subscriptions, open the subscription set, validate every entry, create the 2 × N topics
(deliver and DLQ, `kafka.deliver_partitions` and `kafka.dlq_partitions` each) and write
the N records. The target is the issue's: 2,000 in under a minute, so the baseline is that
budget for N (30 ms a subscription) and the figure is met at ratio ≥ 1.

Beside it, informational: one `SubscriptionStore.put` per subscription (what
`POST /subscriptions` does) on a sample, per subscription against the batch; and what the
broker charges per topic at creation: a CreateTopics of topics of `kafka.partitions`
partitions against the same number of one-partition topics.
Every topic of the run's namespace is deleted afterwards.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import yaml

from streams.bench.broker import delete_namespace, namespace
from streams.bench.core import BenchContext, Figure
from streams.config import ClientConfig, Settings, SubscribeGrant
from streams.contract.attributes import VERHUISD
from streams.kafka.topics import Topics, TopicSpec, ensure_topics, partitions
from streams.operations import subscription_set as subs
from streams.routing.store import SubscriptionStore

__all__ = ["BUDGET_S", "subscriptions_scenario"]

# The target: 2,000 subscriptions applied in under 60 s.
BUDGET_S: Final = 60.0 / 2_000
_OWNER: Final = "bench-subscriber"
_ONE_BY_ONE: Final = 40  # subscriptions put one at a time, for the per-subscription figure
_TOPIC_SAMPLE: Final = 100  # topics per CreateTopics in the broker-cost figure


def _with_owner(settings: Settings) -> Settings:
    owner = ClientConfig(
        id=_OWNER,
        token_sha256=hashlib.sha256(_OWNER.encode()).hexdigest(),
        subscribe=SubscribeGrant(types=(VERHUISD,), purpose="bench"),
    )
    return settings.model_copy(update={"clients": (owner,)})


def entries(n: int, prefix: str = "bench") -> list[dict[str, Any]]:
    """`n` new HTTP subscriptions as an operator's YAML lists them, each with a filter."""
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "owner": _OWNER,
            "sink": f"https://gemeente-{i % 342:04d}.example/hooks/brp",
            "protocol": "HTTP",
            "types": [VERHUISD],
            "filters": [{"exact": {"gemeentenaar": f"{i % 342:04d}"}}],
            "callbackCheck": False,
        }
        for i in range(n)
    ]


async def _apply_seconds(settings: Settings, file: Path, n: int) -> float:
    """What `gemeentebus subscriptions apply FILE` does once its process runs, timed."""
    started = time.perf_counter()
    listed = subs.read_entries(file)
    async with subs.opened(settings) as store:
        plans = await subs.apply(store, settings, listed)
        seconds = time.perf_counter() - started
        created = sum(1 for p in plans if p.action == "created")
        if created != n or len(store) != n:
            raise RuntimeError(f"apply created {created} of {n}; the store holds {len(store)}")
    return seconds


async def _check_topics(settings: Settings, ids: list[str]) -> None:
    """Raise unless every subscription's topics exist with the configured partitions."""
    t, kafka = Topics(settings.kafka.topic_prefix), settings.kafka
    found = await partitions(kafka, [t.deliver(i) for i in ids] + [t.dlq(i) for i in ids])
    want = len(ids) * (kafka.deliver_partitions + kafka.dlq_partitions)
    if len(found) != want:
        raise RuntimeError(f"the {len(ids)} subscriptions have {len(found)} partitions, not {want}")


async def _one_by_one_seconds(settings: Settings, listed: list[dict[str, Any]]) -> float:
    """Seconds per subscription when each of `listed` is put alone (the HTTP path)."""
    store = SubscriptionStore(settings, name="bench-one-by-one")
    await store.start()
    try:
        await store.ready()
        plans = subs.prepare(settings, listed, {})
        started = time.perf_counter()
        for plan in plans:
            await store.put(plan.subscription)
        return (time.perf_counter() - started) / len(plans)
    finally:
        await store.stop()


async def _topic_cost_s(settings: Settings, specs: list[TopicSpec]) -> float:
    """Seconds per topic to create `specs` in one request until the metadata has them all:
    the brokers' own work per partition (a log directory and its files) is in that wait."""
    started = time.perf_counter()
    creation = await ensure_topics(settings.kafka, specs)
    seconds = time.perf_counter() - started
    if len(creation.created) != len(specs):
        raise RuntimeError(f"created {len(creation.created)} of {len(specs)} topics: {creation}")
    return seconds / len(specs)


def _cost_specs(settings: Settings, parts: int, n: int) -> list[TopicSpec]:
    prefix = f"{settings.kafka.topic_prefix}.cost-{parts}"
    return [TopicSpec(f"{prefix}-{i:04d}", parts) for i in range(n)]


async def subscriptions_scenario(ctx: BenchContext) -> list[Figure]:
    """Apply N new subscriptions against the budget; one-by-one puts and topic cost beside."""
    assert ctx.bootstrap is not None
    n = ctx.size.apply_subscriptions
    settings = _with_owner(namespace(ctx.settings, ctx.bootstrap, "subs", uuid.uuid4().hex[:8]))
    kafka = settings.kafka
    many = max(kafka.partitions, 2)
    t, listed = Topics(kafka.topic_prefix), entries(n)
    singles = entries(min(_ONE_BY_ONE, n), prefix="single")
    ones, manys = (_cost_specs(settings, p, min(_TOPIC_SAMPLE, n)) for p in (1, many))
    known = [name for e in listed + singles for name in (t.deliver(e["id"]), t.dlq(e["id"]))]
    known += [s.name for s in ones + manys]
    try:
        with tempfile.TemporaryDirectory(prefix="gemeentebus-bench-") as folder:
            file = Path(folder) / "subscriptions.yaml"
            file.write_text(yaml.safe_dump(listed, sort_keys=False), encoding="utf-8")
            apply_s = await _apply_seconds(settings, file, n)
        await _check_topics(settings, [e["id"] for e in listed])
        single_s = await _one_by_one_seconds(settings, singles)
        one_s = await _topic_cost_s(settings, ones)
        many_s = await _topic_cost_s(settings, manys)
    finally:
        deleted = await delete_namespace(settings, known)
        ctx.progress(f"  subscriptions: deleted the run's {deleted} topics")
    ctx.progress(
        f"  subscriptions: apply of {n} in {apply_s:.1f} s ({apply_s / n * 1000:.1f} ms each; "
        f"{kafka.deliver_partitions}+{kafka.dlq_partitions} partitions), one put "
        f"{single_s * 1000:.0f} ms; a topic of {many} partitions {many_s * 1000:.1f} ms, "
        f"of 1 {one_s * 1000:.1f} ms (until in the metadata)"
    )
    return [
        Figure.of(
            f"subscriptions apply: {n} new vs the budget (2,000 in 60 s, "
            f"{BUDGET_S * 1000:.0f} ms each)",
            value=apply_s,
            baseline=BUDGET_S * n,
            unit="s",
            target=1.0,
            higher_is_better=False,
        ),
        Figure.of(
            "subscriptions: apply, per subscription, vs one put each (POST /subscriptions)",
            value=apply_s / n * 1000,
            baseline=single_s * 1000,
            unit="ms/subscription",
            target=None,
            higher_is_better=False,
        ),
        Figure.of(
            f"topic creation: a topic of {many} partitions vs of 1 (broker cost per topic)",
            value=many_s * 1000,
            baseline=one_s * 1000,
            unit="ms/topic",
            target=None,
            higher_is_better=False,
        ),
    ]
