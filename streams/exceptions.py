"""The exceptions of gemeentebus.

    GemeentebusError                 every error this package raises
    ├── ConfigurationError           settings missing or wrong; fatal at start
    ├── InvalidEvent                 an event breaks the contract; carries `.errors`, never retried
    │   ├── UndecodableEvent         bytes that are no event of ours (headers, Avro, JSON)
    │   └── UnknownSchema            a `dataschema` or type the bus does not know
    ├── KafkaUnavailable             the broker did not answer; retriable
    ├── RoutingFailed                the router failed on an accepted event (a bug); never retried
    ├── WorkerFailed                 a stream worker met an error it cannot get past; fatal
    └── DeliveryFailed               a subscriber did not take an event; `.retriable` per response

`retriable` on every error says whether trying the same thing again can succeed, so retry
versus dead-letter is one lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigurationError",
    "DeliveryFailed",
    "FieldError",
    "GemeentebusError",
    "InvalidEvent",
    "KafkaUnavailable",
    "RoutingFailed",
    "UndecodableEvent",
    "UnknownSchema",
    "WorkerFailed",
]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule: where (`path`, e.g. `data.nieuwAdres.postcode`), a stable `code`, and a
    human `message` that never repeats the offending value (it may be personal data)."""

    path: str
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "code": self.code, "message": self.message}


class GemeentebusError(Exception):
    """Base of every error raised by gemeentebus."""

    retriable: bool = False


class ConfigurationError(GemeentebusError):
    """Configuration is missing or invalid."""


class InvalidEvent(GemeentebusError):
    """An event breaks the contract. `errors` lists every broken rule, not only the first."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("; ".join(f"{e.path}: {e.code}" for e in self.errors) or "invalid event")

    @property
    def code(self) -> str:
        """The stable code of the first error (for the `gemeentebus_error` header)."""
        return self.errors[0].code if self.errors else "invalid"


class UndecodableEvent(InvalidEvent):
    """Bytes, headers or JSON that cannot be read as a CloudEvent of ours."""


class UnknownSchema(InvalidEvent):
    """A `type` or `dataschema` the bus does not know."""


class KafkaUnavailable(GemeentebusError):
    """The broker did not answer in time."""

    retriable = True


class RoutingFailed(GemeentebusError):
    """The router failed on an accepted event: a bug of the bus, not of the event.

    `cause` is the type name of the underlying exception only (its message could quote
    event data)."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the router failed on this event: {cause}")
        self.cause = cause


class WorkerFailed(GemeentebusError):
    """A stream worker stopped at an error it cannot get past (a permanent Kafka error, a
    bug): nothing after its last acknowledged batch was acknowledged, so a restarted worker
    (after the cause is fixed) takes over from there. The message holds no personal data."""


class DeliveryFailed(GemeentebusError):
    """A subscriber did not accept an event."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after
