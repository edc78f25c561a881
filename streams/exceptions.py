"""The exceptions of gemeentebus.

    GemeentebusError                 every error this package raises
    ├── ConfigurationError           settings missing or wrong; fatal at start
    ├── InvalidEvent                 an event breaks the contract; carries `.errors`, never retried
    │   ├── UndecodableEvent         bytes that are no event of ours (headers, Avro, JSON)
    │   └── UnknownSchema            a `dataschema` or type the bus does not know
    ├── KafkaUnavailable             the broker did not answer; retriable
    ├── TopicsRefused                the cluster would not create topics; `.refused` says why,
    │                                per topic, and for subscriptions which were not written
    ├── RoutingFailed                the router failed on an accepted event (a bug); never retried
    ├── WorkerFailed                 a stream worker met an error it cannot get past; fatal
    └── DeliveryFailed               a subscriber did not take an event; `.retriable` per response

`retriable` on every error says whether trying the same thing again can succeed, so retry
versus dead-letter is one lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigurationError",
    "DeliveryFailed",
    "FieldError",
    "GemeentebusError",
    "InvalidEvent",
    "KafkaUnavailable",
    "RoutingFailed",
    "TopicsRefused",
    "UndecodableEvent",
    "UnknownSchema",
    "WorkerFailed",
]


# How many topics and subscriptions an error message lists before "and N more".
_SHOWN = 20


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


class TopicsRefused(GemeentebusError):
    """The cluster would not create some topics (a name it refuses, a policy, a quota).

    `refused` maps each topic to the reason; `not_written` lists the subscriptions whose
    records were therefore not written (a subscription never exists without its topics),
    while the others of the same batch were. Trying again creates what is still missing.
    """

    def __init__(self, refused: Mapping[str, str], *, not_written: Sequence[str] = ()) -> None:
        self.refused = dict(refused)
        self.not_written = list(not_written)
        shown = sorted(self.refused.items())[:_SHOWN]
        lines = [f"  {topic}: {why}" for topic, why in shown]
        if len(self.refused) > _SHOWN:
            lines.append(f"  and {len(self.refused) - _SHOWN} more")
        head = f"the cluster refused {len(self.refused)} topic(s)"
        if self.not_written:
            ids = sorted(self.not_written)
            more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
            head += f"; subscription(s) not written: {', '.join(ids[:_SHOWN])}{more}"
        super().__init__("\n".join([f"{head}:", *lines]))


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
