"""Prometheus metrics of the bus. Labels carry types and error codes, never personal data."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.attributes import ROUTING_ATTRIBUTES
from streams.ingress import Accepted, Rejected

__all__ = ["Bus", "bus", "observe", "observe_batch", "render"]


class Bus:
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


@cache
def bus() -> Bus:
    """The process's metrics."""
    return Bus()


def _type_label(event_type: str | None) -> str:
    # Only known types become label values: input must not grow the label set.
    return event_type if event_type is not None and event_type in ROUTING_ATTRIBUTES else "unknown"


def observe(*, event_type: str | None, via: str, code: str | None = None) -> None:
    """Count one accepted (code None) or rejected event."""
    if code is None:
        bus().accepted.labels(_type_label(event_type), via).inc()
    else:
        bus().rejected.labels(_type_label(event_type), code, via).inc()


def observe_batch(outcomes: Iterable[Accepted | Rejected], via: str, seconds: float) -> None:
    """Count a batch of outcomes and its latency."""
    for outcome in outcomes:
        if isinstance(outcome, Accepted):
            observe(event_type=outcome.event.type, via=via)
        else:
            observe(event_type=outcome.event_type, via=via, code=outcome.code)
    bus().ingress_latency.labels(via).observe(seconds)


def render() -> bytes:
    """The Prometheus text exposition of the process's metrics."""
    return generate_latest(bus().registry)
