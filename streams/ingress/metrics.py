"""Prometheus metrics of the bus. Labels carry types and error codes, never personal data."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.contract.attributes import ROUTING_ATTRIBUTES
from streams.health import Health
from streams.ingress.gate import Accepted, Rejected

__all__ = ["Metrics", "metrics", "observe", "observe_batch", "render", "watch_health"]


class _Roles(Collector):
    """Per role, from the `Health` of each running bus: readiness, lag, time since progress."""

    def __init__(self) -> None:
        self.healths: weakref.WeakSet[Health] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "gemeentebus_role_ready",
            "1 when the role is ready (GET /ready), else 0.",
            labels=["role"],
        )
        lag = GaugeMetricFamily(
            "gemeentebus_role_lag",
            "Records of input available to the role and not finished yet.",
            labels=["role"],
        )
        since = GaugeMetricFamily(
            "gemeentebus_role_seconds_since_progress",
            "Seconds since the role last finished work while input waits (0: caught up).",
            labels=["role"],
        )
        for health in list(self.healths):
            _, problems = health.ready()
            for role, found in problems.items():
                parts = health.parts_of(role)
                waiting = [p.since_progress() for p in parts if p.lag > 0]
                ready.add_metric([role], 0.0 if found else 1.0)
                lag.add_metric([role], float(sum(p.lag for p in parts)))
                since.add_metric([role], max(waiting, default=0.0))
        yield from (ready, lag, since)


class Metrics:
    """The bus's metrics in a registry of its own (no global state shared with libraries)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "gemeentebus_events_accepted",
            "Events accepted into their events topic.",
            ["type", "via"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "gemeentebus_events_rejected",
            "Input rejected to the invalid topic or with a 4xx.",
            ["type", "code", "via"],
            registry=self.registry,
        )
        self.ingress_latency = Histogram(
            "gemeentebus_ingress_latency_seconds",
            "Time from receiving input to the broker confirming it (per batch on Kafka).",
            ["via"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.subscription_records_refused = Counter(
            "gemeentebus_subscription_records_refused",
            "Subscription records not applied because a secret's seal did not open, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.roles = _Roles()
        self.registry.register(self.roles)


@cache
def metrics() -> Metrics:
    """The process's metrics."""
    return Metrics()


def _type_label(event_type: str | None) -> str:
    # Only known types become label values: input must not grow the label set.
    return event_type if event_type is not None and event_type in ROUTING_ATTRIBUTES else "unknown"


def observe(*, event_type: str | None, via: str, code: str | None = None) -> None:
    """Count one accepted (code None) or rejected event."""
    if code is None:
        metrics().accepted.labels(_type_label(event_type), via).inc()
    else:
        metrics().rejected.labels(_type_label(event_type), code, via).inc()


def observe_batch(outcomes: Iterable[Accepted | Rejected], via: str, seconds: float) -> None:
    """Count a batch of outcomes and its latency."""
    for outcome in outcomes:
        if isinstance(outcome, Accepted):
            observe(event_type=outcome.event.type, via=via)
        else:
            observe(event_type=outcome.event_type, via=via, code=outcome.code)
    metrics().ingress_latency.labels(via).observe(seconds)


def watch_health(health: Health) -> None:
    """Expose the roles of `health` in `/metrics` for as long as it lives."""
    metrics().roles.healths.add(health)


def render() -> bytes:
    """The Prometheus text exposition of the process's metrics."""
    return generate_latest(metrics().registry)
