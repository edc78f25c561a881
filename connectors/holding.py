"""What a courier holds: the records read and not finished, and per partition the offsets.

`held` makes the courier's record of a client's record and never raises: every record is
converted by `read_record`, and one that is no event the courier can send (a null or
non-bytes header value, a header that is not UTF-8, a value over the size limit, a value
that is not a UTF-8 JSON CloudEvent) is held with its `problem`, to be dead-lettered byte
for byte, null header values included.

`Watermark` keeps only the *unfinished* offsets of a partition, in read order: the first is
the offset to commit, and what finished above it takes no memory at all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from connectors.writes import Write
from streams.contract.headers import RawHeaders
from streams.contract.record import KafkaRecord, Unreadable
from streams.delivery.log import EventRef, event_ref
from streams.exceptions import FieldError

__all__ = ["Held", "Watermark", "held", "poison", "unsendable"]


def unsendable(record: KafkaRecord) -> tuple[FieldError | None, dict[str, Any] | None]:
    """Why a deliver-topic record cannot be POSTed as a structured-mode CloudEvent (None when
    it can), and its parsed JSON."""
    for name, raw in record.headers:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return FieldError(f"headers.{name}", "not_utf8", "a header value is not UTF-8"), None
    try:
        body = json.loads(record.value.decode("utf-8"))
    except UnicodeDecodeError:
        return FieldError("value", "not_utf8", "the value is not UTF-8"), None
    except (ValueError, RecursionError):
        return FieldError("value", "not_json", "the value is not JSON"), None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(name), str) and body[name] for name in ("id", "source", "type")
    ):
        return FieldError(
            "value", "not_cloudevent", "the value is no CloudEvent (JSON with id, source, type)"
        ), None
    return None, body


@dataclass(slots=True, eq=False)
class Held:
    """A deliver-topic record as its lane holds it, until it is finished."""

    partition: int
    offset: int
    key: bytes | None
    headers: RawHeaders
    value: bytes | None
    ref: EventRef
    read_at: float  # monotonic; the retry window runs from here
    problem: FieldError | None = None  # unsendable: dead-lettered without an attempt
    writes: list[asyncio.Task[Write]] = field(default_factory=list)


@dataclass(slots=True)
class Watermark:
    """The unfinished offsets of one partition, read in order; below the first, all done."""

    next_offset: int | None = None  # one past the last offset read
    unfinished: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def read(self, offset: int) -> None:
        self.unfinished[offset] = None
        self.next_offset = offset + 1

    def finish(self, offset: int) -> None:
        self.unfinished.pop(offset, None)

    @property
    def committable(self) -> int | None:
        """The next offset to commit: the first unfinished one, else one past the last read."""
        return next(iter(self.unfinished), self.next_offset)


def held(partition: int, offset: int, read: KafkaRecord | Unreadable) -> Held:
    """The record `read_record` made, as held: with its `problem` when it cannot be sent."""
    now = time.monotonic()
    if isinstance(read, Unreadable):
        return poison(partition, offset, read, read.error, now)
    problem, body = unsendable(read)
    ref = event_ref(read.key, read.headers, read.value, body=body)
    return Held(partition, offset, read.key, read.headers, read.value, ref, now, problem)


def poison(
    partition: int,
    offset: int,
    read: KafkaRecord | Unreadable,
    problem: FieldError,
    now: float,
) -> Held:
    """`read` held to be dead-lettered for `problem`."""
    ref = event_ref(read.key, read.headers, read.value)
    return Held(partition, offset, read.key, read.headers, read.value, ref, now, problem)
