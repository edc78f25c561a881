"""The audit trail (`gemeentebus.audit`): every change and every operator action, one record each.

The HTTP API (`streams.http.auditing`) and the command line (`audited`) write here. A record
(`AuditRecord.as_dict`) is one JSON object:

    action     subscription_create, subscription_update, subscription_delete, subscription_add,
               subscriptions_apply, volgindicatie_set, volgindicatie_unset, replay, reconcile,
               dlq_redrive, person_audit, secrets_rotate, acls_apply, topics_create
    actor      the client id (HTTP) or `cli:<os user>` (the command line)
    at         when, UTC, ISO 8601
    via        `http` or `cli`
    target     what it was about (a subscription id), or null
    outcome    `ok`, `refused` (a 4xx, or input the command refused) or `failed` (5xx, broker)
    code       the stable error code of a refused or failed action (`not_the_owner`, ...)
    status     the HTTP status (via http)
    requestId  the request's `X-Request-ID` (or one made for it), one per CLI command
    details    counts and the bus's own ids; a person only as the BSN's pseudonym (`person`)

No BSN, name, address or event data is ever part of a record. Writing is fail-closed first,
record-after second: an `Auditor` with a record it could not write (after the producer's own
retries, bounded by `kafka.request_timeout_s`) keeps it, retries it in the background and
refuses every further audited action (`AuditUnavailable`) until the trail has it; a command
line run whose record cannot be written exits with an error naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import getpass
import json
import logging
import os
import re
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from streams.config import Settings
from streams.contract.attributes import PseudonymKey
from streams.exceptions import GemeentebusError, KafkaUnavailable, TopicsRefused
from streams.kafka.clients import Producer, make_producer
from streams.kafka.creation import create_topics
from streams.kafka.topics import Topics, bus_topics, partitions
from streams.kafka.window import consumer, merged, offsets_at

__all__ = [
    "AuditNote",
    "AuditRecord",
    "AuditUnavailable",
    "Auditor",
    "Outcome",
    "audited",
    "cli_actor",
    "new_request_id",
    "read_trail",
    "request_id_from",
    "verdict",
]

log = logging.getLogger(__name__)

Outcome = Literal["ok", "refused", "failed"]
# An id a caller sends is kept when it is short, plain and holds no 9 digits in a row (a BSN).
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_NINE_DIGITS: Final = re.compile(r"[0-9]{9}")
_BROKER_ERRORS: Final = (KafkaError, KafkaUnavailable, TopicsRefused, TimeoutError, OSError)


class AuditUnavailable(GemeentebusError):
    """The audit trail cannot be written now: the action is refused, or (already done) named."""

    retriable = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One entry of the trail; `details` hold counts and ids, never personal data."""

    action: str
    actor: str
    via: Literal["http", "cli"]
    outcome: Outcome
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    target: str | None = None
    code: str | None = None
    status: int | None = None
    request_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "actor": self.actor,
            "at": self.at.astimezone(UTC).isoformat(),
            "via": self.via,
            "target": self.target,
            "outcome": self.outcome,
            "code": self.code,
            "status": self.status,
            "requestId": self.request_id,
            "details": dict(self.details),
        }

    def encoded(self) -> bytes:
        return json.dumps(self.as_dict(), default=str, separators=(",", ":")).encode()


def new_request_id() -> str:
    return str(uuid.uuid4())


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is a plain token without a BSN in it, else a new one."""
    if header and _REQUEST_ID.fullmatch(header) and not _NINE_DIGITS.search(header):
        return header
    return new_request_id()


def cli_actor() -> str:
    """`cli:<the operating-system user>` (its uid where the user has no name)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        user = str(os.getuid())
    return f"cli:{user}"


class Auditor:
    """The one writer of the trail in a process: `start`, `check` before an action, `record`
    after it, `stop`. A record that could not be written is kept and retried in the
    background; meanwhile `check` refuses (`AuditUnavailable`)."""

    def __init__(self, settings: Settings, *, retry_s: float = 1.0) -> None:
        self.settings = settings
        self.topic = Topics(settings.kafka.topic_prefix).audit
        self.timeout_s = settings.kafka.request_timeout_s
        self.retry_s = retry_s
        self.unwritten = 0  # records that failed a first write (a counter of trouble)
        self._producer: Producer = make_producer(settings, "audit")
        self._pending: deque[AuditRecord] = deque()
        self._retrying: asyncio.Task[None] | None = None
        self._key: PseudonymKey | None = None  # made when first needed: not every CLI has one

    def pseudonym(self, bsn: str) -> str:
        """How a record names a person: the bus's BSN pseudonym (HMAC-SHA-256, SPEC §1)."""
        if self._key is None:
            self._key = PseudonymKey(self.settings.security.pseudonym_key_bytes())
        return self._key.pseudonym(bsn)

    async def start(self) -> None:
        """Create the audit topic if missing, connect, and see its partition: an unreachable
        broker fails here, before anything was done."""
        specs = [s for s in bus_topics(self.settings.kafka, ()) if s.name == self.topic]
        await create_topics(self.settings.kafka, specs)
        await self._producer.start()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._producer.partitions_for(self.topic)
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        """Write what is pending (bounded), then disconnect; what is still unwritten stays in
        the error log (`pending` says how many)."""
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
            self._retrying = None
        with contextlib.suppress(*_BROKER_ERRORS):
            while self._pending:
                await self._write(self._pending[0])
                self._pending.popleft()
        await self._producer.stop()

    @property
    def pending(self) -> int:
        """Records done but not yet in the trail."""
        return len(self._pending)

    def check(self) -> None:
        """`AuditUnavailable` while a record is unwritten: no action without its record."""
        if self._pending:
            raise AuditUnavailable(
                f"{len(self._pending)} audit record(s) not yet written to {self.topic}"
            )

    async def record(self, record: AuditRecord) -> bool:
        """Write a record (acks=all); False when it could not be, and is kept to retry."""
        if not self._pending:
            try:
                await self._write(record)
                return True
            except _BROKER_ERRORS as exc:
                reason = type(exc).__name__
        else:
            reason = "records before it are unwritten"
        self.unwritten += 1
        self._pending.append(record)
        # the record holds no personal data: the log line lets an operator restore it
        log.error("audit record not written (%s), retrying: %s", reason, record.encoded().decode())
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry(), name="audit-retry")
        return False

    async def _write(self, record: AuditRecord) -> None:
        key = (record.target or record.actor).encode()
        async with asyncio.timeout(self.timeout_s):
            await (await self._producer.send(self.topic, record.encoded(), key=key))

    async def _retry(self) -> None:
        delay = self.retry_s
        while self._pending:
            try:
                await self._write(self._pending[0])
            except _BROKER_ERRORS as exc:
                log.warning("audit trail still unwritable (%s)", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._pending.popleft()
            delay = self.retry_s
        log.warning("audit trail written again: audited actions are accepted")


@dataclass(slots=True)
class AuditNote:
    """What an action tells its record while it runs: its target, details, or its own
    verdict (`refuse`, `fail`) when it ends without an exception."""

    target: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome = "ok"
    code: str | None = None

    def add(self, **details: Any) -> None:
        self.details.update(details)

    def refuse(self, code: str) -> None:
        self.outcome, self.code = "refused", code

    def fail(self, code: str) -> None:
        self.outcome, self.code = "failed", code


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def verdict(exc: BaseException) -> tuple[Outcome, str]:
    """Refused or failed, and the code, of an action that raised `exc`."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    if isinstance(code, str) and isinstance(status, int):  # an HTTP answer (`Failure`, `AuthError`)
        return ("refused" if status < 500 else "failed"), code
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return "failed", "interrupted"
    if isinstance(exc, GemeentebusError) and not exc.retriable:
        return "refused", _snake(type(exc).__name__)
    if isinstance(exc, ValueError):  # input that does not parse (a pydantic error among them)
        return "refused", "invalid_input"
    return "failed", _snake(type(exc).__name__)


@contextlib.asynccontextmanager
async def audited(
    settings: Settings,
    action: str,
    *,
    actor: str | None = None,
    target: str | None = None,
    **details: Any,
) -> AsyncIterator[AuditNote]:
    """Run a command-line action with its record: the trail is reached first (else
    `AuditUnavailable` and nothing is done), the record written once the action ended, how it
    ended (an exception: refused or failed, and re-raised). `AuditUnavailable` after the action
    when its record could not be written: the action happened and its record is in the log."""
    auditor = Auditor(settings)
    try:
        await auditor.start()
    except _BROKER_ERRORS as exc:
        message = f"the audit trail cannot be written ({type(exc).__name__}); nothing was done"
        raise AuditUnavailable(message) from exc
    note = AuditNote(target=target, details=dict(details))
    raised: BaseException | None = None
    try:
        yield note
    except BaseException as exc:
        raised = exc
        raise
    finally:
        outcome, code = verdict(raised) if raised is not None else (note.outcome, note.code)
        record = AuditRecord(
            action=action,
            actor=actor or cli_actor(),
            via="cli",
            outcome=outcome,
            code=code,
            target=note.target,
            request_id=new_request_id(),
            details=note.details,
        )
        await auditor.record(record)
        await auditor.stop()
        if auditor.pending:
            raise AuditUnavailable(
                f"{action} ({outcome}) was not recorded in {auditor.topic}: the record is in"
                " the error log; write it there once the broker is back"
            ) from raised


async def read_trail(
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """The trail's records in order, from `since` (default: the oldest kept) to `until` (default:
    now); `actor` and `action` may be shell patterns (`cli:*`), `target` is exact."""
    topic = Topics(settings.kafka.topic_prefix).audit
    reader = consumer(settings)
    await reader.start()
    try:
        tps: list[TopicPartition] = await partitions(settings.kafka, [topic])
        if since is None or since.timestamp() <= 0:  # before any Kafka timestamp: all
            starts = dict(await reader.beginning_offsets(tps)) if tps else {}
        else:
            starts = await offsets_at(reader, tps, since)
        ends = await offsets_at(reader, tps, None)
        found = 0
        async for raw in merged(reader, starts, ends):
            try:
                entry = json.loads(raw.value or b"null")
            except ValueError:
                continue
            if not isinstance(entry, dict) or not _wanted(entry, until, actor, action, target):
                continue
            yield entry
            found += 1
            if limit is not None and found >= limit:
                return
    finally:
        await reader.stop()


def _wanted(
    entry: Mapping[str, Any],
    until: datetime | None,
    actor: str | None,
    action: str | None,
    target: str | None,
) -> bool:
    if actor is not None and not fnmatch.fnmatchcase(str(entry.get("actor")), actor):
        return False
    if action is not None and not fnmatch.fnmatchcase(str(entry.get("action")), action):
        return False
    # records from before `target` existed name their subscription as `subscription`
    if target is not None and target not in (entry.get("target"), entry.get("subscription")):
        return False
    if until is not None:
        try:
            at = datetime.fromisoformat(str(entry.get("at")))
        except ValueError:
            return True
        return (at if at.tzinfo else at.replace(tzinfo=UTC)) <= until
    return True
