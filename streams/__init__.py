"""gemeentebus: the event backbone of Dutch municipalities and base registries.

Events flow one way through the wings of this package, and imports follow the flow (the
contract in pyproject.toml, checked by `lint-imports`):

    contract -> kafka -> ingress -> routing -> delivery -> operations -> http / cli

`contract` says what an event is (envelope, types, rules, Avro), `kafka` how the bus talks to
the cluster, `ingress` admits events (the gate), `routing` validates and matches them to
subscriptions (the worker, the router), `delivery` keeps the delivery log and the DLQ,
`operations` replays and reconciles; `http` and `cli` are the surfaces, `runner` starts the
roles, `connectors` holds the edges (webhook, courier, ZGW, the local broker).

What this package exports is what a Python back office needs to publish into the bus.
"""

from importlib import metadata as _metadata

from streams.config import Settings, load_settings
from streams.contract.envelope import CloudEvent
from streams.exceptions import (
    ConfigurationError,
    FieldError,
    GemeentebusError,
    InvalidEvent,
    KafkaUnavailable,
)
from streams.ingress.client import HttpPublisher, KafkaPublisher, PublishRejected

try:
    __version__ = _metadata.version("gemeentebus")
except _metadata.PackageNotFoundError:  # a checkout on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "CloudEvent",
    "ConfigurationError",
    "FieldError",
    "GemeentebusError",
    "HttpPublisher",
    "InvalidEvent",
    "KafkaPublisher",
    "KafkaUnavailable",
    "PublishRejected",
    "Settings",
    "__version__",
    "load_settings",
]
