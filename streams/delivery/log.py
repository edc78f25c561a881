"""The delivery log: one record per delivery attempt, in `gemeentebus.deliveries` (SPEC §5).

For person events this is the Logboek Dataverwerkingen: it answers "who received data about
this person, when, and why". It therefore holds the person's *pseudonym* (never the BSN),
the subscription, the purpose it was delivered under, and the outcome. Kafka key: the
subscription id, so one subscription's attempts stay in order on one partition.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "CUT_MARK",
    "OUTCOMES",
    "DeliveryAttempt",
    "decode_attempt",
    "encode_attempt",
    "shortened",
]

Outcome = Literal["delivered", "retry", "dead_lettered", "retired", "redriven"]
OUTCOMES: Final = ("delivered", "retry", "dead_lettered", "retired", "redriven")
CUT_MARK: Final = "…[cut]"  # ends a field `shortened` cut
_SHORT: Final = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryAttempt:
    """One attempt to deliver one event to one subscription."""

    subscription: str
    event_id: str
    source: str
    type: str
    outcome: Outcome
    attempt: int
    at: datetime
    purpose: str
    event_time: datetime | None = None
    status: int | None = None  # the HTTP status of a webhook answer
    error: str | None = None  # short, no personal data: "timeout", "HTTP 500", ...
    pseudonym: str | None = None  # person events: whose data this was (keyed hash of the BSN)
    replay: bool = False
    protocol: str = "HTTP"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the record."""
        # flat fields only: a shallow copy, not `asdict`'s deep one (this runs per delivery)
        out = {name: getattr(self, name) for name in _FIELDS}
        out["at"] = self.at.astimezone(UTC).isoformat()
        out["event_time"] = (
            self.event_time.astimezone(UTC).isoformat() if self.event_time is not None else None
        )
        return out


_FIELDS: Final = tuple(f.name for f in fields(DeliveryAttempt))


def encode_attempt(attempt: DeliveryAttempt) -> tuple[bytes, bytes]:
    """The Kafka key and value of an attempt."""
    value = json.dumps(attempt.as_dict(), separators=(",", ":"), sort_keys=True)
    return attempt.subscription.encode(), value.encode()


def decode_attempt(value: bytes) -> DeliveryAttempt:
    """An attempt read back from the delivery log; ValueError when it is not one."""
    raw = json.loads(value)
    if not isinstance(raw, dict) or raw.get("outcome") not in OUTCOMES:
        raise ValueError("not a delivery attempt")
    raw["at"] = datetime.fromisoformat(raw["at"])
    if raw.get("event_time"):
        raw["event_time"] = datetime.fromisoformat(raw["event_time"])
    return DeliveryAttempt(**raw)


def shortened(attempt: DeliveryAttempt) -> DeliveryAttempt:
    """The attempt with its free-text fields (event id, source, type, error, pseudonym) cut to
    200 characters, each cut one ending in `CUT_MARK`: what the delivery log holds of an
    attempt whose full record the topic refused as too large (a poison record's odd id)."""

    def cut(text: str | None) -> str | None:
        if text is None or len(text) <= _SHORT:
            return text
        return text[:_SHORT] + CUT_MARK

    return dataclasses.replace(
        attempt,
        event_id=cut(attempt.event_id) or "",
        source=cut(attempt.source) or "",
        type=cut(attempt.type) or "",
        error=cut(attempt.error),
        pseudonym=cut(attempt.pseudonym),
    )
