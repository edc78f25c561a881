"""What every scenario shares: the size of a run, the context it gets, the figures it returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from streams.config import Settings

__all__ = ["FULL", "QUICK", "BenchContext", "Figure", "Scenario", "Size"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Size:
    """How much work each scenario does."""

    events_per_type: int  # codec: pre-generated events of each type
    repeats: int  # codec and router: best of this many timed passes
    kafka_records: int  # validator: ingress records
    baseline_records: int = 20_000  # baseline: records of ~1 KB for Kafka's own tools
    route_events: int = 2_000  # router: events routed per pass
    delivery_rate: int = 200  # delivery: events/s offered
    delivery_s: float = 10.0  # delivery: seconds at that rate
    delivery_burst: int = 2_000  # delivery: events published at once, for throughput
    replay_events: int = 20_000  # replay: events in the events topics
    rss_events: int = 50_000  # rss: ingress records fed to one worker process
    scale_events: int = 6_000  # scale-out: ingress records per worker count
    apply_subscriptions: int = 200  # subscriptions: new ones in one `subscriptions apply`
    national_municipalities: int = 10  # national: municipalities, each its own subscription
    national_zaaksystemen: int = 5  # national: zaak subscriptions (per RSIN or zaaktype)
    national_registries: int = 3  # national: subscriptions to every BRP event (or death)
    national_rate: int = 100  # national: events/s of the first step
    national_step: float = 1.5  # national: each next step's rate, × this
    national_steps: int = 2  # national: steps at most (it stops at one not sustained)
    national_s: float = 5.0  # national: seconds each step publishes
    # national: moves, deaths and zaak notifications a day (1.7 M and 170,000 a year, ~2 M)
    national_mix: tuple[float, float, float] = (1_700_000 / 365, 170_000 / 365, 2_000_000)
    crowd_idle: int = 200  # crowd: idle subscriptions beside the active one (and a quarter)
    crowd_window_s: float = 5.0  # crowd: seconds of nothing over which idle cost is measured
    crowd_rate: int = 50  # crowd: events/s to the active subscription, for latency
    crowd_s: float = 6.0  # crowd: seconds at that rate
    fan_out: int = 100  # crowd: subscriptions one event matches
    outage_s: float = 5.0  # recovery: seconds the receiver answers 503


QUICK: Final = Size(events_per_type=2_000, repeats=5, kafka_records=10_000)
FULL: Final = Size(
    events_per_type=10_000,
    repeats=7,
    kafka_records=200_000,
    baseline_records=200_000,
    route_events=10_000,
    delivery_rate=500,
    delivery_s=60.0,
    delivery_burst=20_000,
    replay_events=200_000,
    rss_events=1_000_000,
    scale_events=40_000,
    apply_subscriptions=2_000,
    national_municipalities=342,
    national_zaaksystemen=300,
    national_rate=200,
    national_step=1.4,
    national_steps=8,
    national_s=60.0,
    crowd_idle=2_000,
    crowd_window_s=20.0,
    crowd_rate=100,
    crowd_s=20.0,
    fan_out=1_000,
    outage_s=30.0,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One measured figure and its baseline; `ratio` is oriented so that higher is better.

    `target` None: informational, reported without a verdict (`met` is None too).
    """

    name: str
    value: float
    baseline: float
    unit: str
    ratio: float
    target: float | None
    met: bool | None

    @classmethod
    def of(
        cls,
        name: str,
        *,
        value: float,
        baseline: float,
        unit: str,
        target: float | None,
        higher_is_better: bool = True,
    ) -> Figure:
        """A figure whose ratio is value/baseline (baseline/value for times and latencies)."""
        top, bottom = (value, baseline) if higher_is_better else (baseline, value)
        ratio = top / bottom if bottom > 0 else 0.0
        return cls(
            name=name,
            value=round(value, 3),
            baseline=round(baseline, 3),
            unit=unit,
            ratio=round(ratio, 4),
            target=target,
            met=None if target is None else ratio >= target,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchContext:
    """What a scenario gets: settings, the size of the run, the broker if it asked for one."""

    settings: Settings
    quick: bool
    size: Size
    bootstrap: str | None
    progress: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named benchmark; `needs_kafka` makes `run_bench` provide a broker; one that is not
    `in_default_run` runs only when named (`gemeentebus bench --only NAME`)."""

    name: str
    run: Callable[[BenchContext], Awaitable[list[Figure]]]
    needs_kafka: bool = False
    in_default_run: bool = True
