"""Retirements: the subscriptions whose webhook answered `410 Gone`, one record each.

The compacted topic `<prefix>.retirements` (key = subscription id) is written by the delivery
role alone, so that role needs no WRITE on the subscription set (issue 15: subscription
records come from the api and operator principals only). A retirement names the *version* of
the subscription that answered 410: a SHA-256 over its record's place in
`<prefix>.subscriptions` (partition and offset, which compaction keeps) and its value
(`version_of`). Every reader computes the same one, and every write of the subscription is a
new version, even one of the same content: after any later write by the API or an operator
the older retirement no longer applies, their change wins, and the subscription is active
again unless they wrote it retired.

The value is JSON `{"id", "version", "at"}` and nothing else: no sink, no credential, no
personal data, so a record on this topic can retire one version of a subscription and can
change nothing else. `parse` refuses (`ValueError`, its message a fixed reason that quotes
nothing of the record) any other shape; a tombstone withdraws the retirement.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

__all__ = ["Retirement", "parse", "record", "version_of"]

_ID: Final = re.compile(r"^[a-z0-9-]{1,64}$")  # as `Subscription.id`
_VERSION: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_FIELDS: Final = frozenset({"id", "version", "at"})


def version_of(value: bytes, place: tuple[int, int] | None) -> str:
    """The version of a subscription record: the digest of its place in the topic
    (partition, offset) and its value; without a place (not read from Kafka), its value."""
    head = b"" if place is None else f"{place[0]}:{place[1]}:".encode()
    return f"sha256:{hashlib.sha256(head + value).hexdigest()}"


@dataclass(frozen=True, slots=True)
class Retirement:
    """`subscription_id` answered 410 at `at`, as the record of `version` had it
    (`version` None: a tombstone, the retirement withdrawn)."""

    subscription_id: str
    version: str | None
    at: datetime | None = None


def record(retirement: Retirement) -> tuple[bytes, bytes]:
    """The key and value of a retirement's record."""
    if retirement.version is None or retirement.at is None:
        raise ValueError("a retirement record names a version and a time")
    body = {
        "id": retirement.subscription_id,
        "version": retirement.version,
        "at": retirement.at.isoformat(),
    }
    return retirement.subscription_id.encode(), json.dumps(body, separators=(",", ":")).encode()


def parse(key: bytes | None, value: bytes | None) -> Retirement:
    """The retirement a record holds; `ValueError` (a fixed reason) for anything else."""
    try:
        subscription_id = bytes(key or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("its key is not UTF-8") from None
    if not _ID.match(subscription_id):
        raise ValueError("its key is no subscription id")
    if value is None:
        return Retirement(subscription_id, None)
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("its value is not JSON") from None
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise ValueError("its value is not an object of id, version and at alone")
    if body["id"] != subscription_id:
        raise ValueError("its id is not its key")
    version, at = body["version"], body["at"]
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError("its version is no sha256 digest")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None:
        raise ValueError("its time is no ISO 8601 time with a zone")
    return Retirement(subscription_id, version, when)
