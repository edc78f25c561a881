"""The subscriptions topic's two kinds of record folded into one set (no broker needed)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from test_subscriptions import subscription

from streams.routing.records import Records, volgindicatie_key
from streams.routing.retirements import Retirement, parse, record
from streams.routing.sealing import Keyring, seal_record

A, B, C = "a" * 64, "b" * 64, "c" * 64
KEYRING = Keyring(bytes(32))
GOOD = {"id": "s1", "version": "sha256:" + "1" * 64, "at": "2026-01-01T00:00:00+00:00"}


def fold(records: Records, writes: list[tuple[bytes, bytes | None]]) -> None:
    for key, value in writes:
        records.apply(key, value)


def test_volgindicaties_are_records_of_their_own_and_a_put_never_removes_one() -> None:
    records = Records(KEYRING)
    sub = subscription().with_volgindicatie(A)
    writes = records.put(sub)
    assert [k for k, _ in writes] == [volgindicatie_key(sub.id, A), sub.id.encode()]
    assert json.loads(writes[-1][1] or b"")["volgindicaties"] == {}  # the record holds none
    fold(records, writes)
    fold(records, [records.follow(sub.id, B, date(2031, 12, 31))])  # another process
    assert records.subscriptions[sub.id].volgindicaties == {A: None, B: date(2031, 12, 31)}
    fold(records, records.put(sub.model_copy(update={"volgindicaties": {}})))  # an older view
    assert set(records.subscriptions[sub.id].volgindicaties) == {A, B}
    fold(records, records.unfollow(sub.id, A))
    assert set(records.subscriptions[sub.id].volgindicaties) == {B}
    fold(records, records.delete(sub.id))
    assert sub.id not in records.subscriptions and records.delete(sub.id) == [
        (sub.id.encode(), None)
    ]


def test_a_subscription_record_from_before_the_split_keeps_its_volgindicaties() -> None:
    records = Records(KEYRING)
    old = subscription().with_volgindicatie(A).with_volgindicatie(B)
    records.apply(old.id.encode(), json.dumps(seal_record(old.record_dict(), KEYRING)).encode())
    assert set(records.subscriptions[old.id].volgindicaties) == {A, B}
    fold(records, [records.follow(old.id, C, None)])
    writes = records.unfollow(old.id, A)  # moves B (and C stays) into records of their own
    fold(records, writes)
    assert set(records.subscriptions[old.id].volgindicaties) == {B, C}
    assert volgindicatie_key(old.id, B) in [k for k, _ in writes]
    # from here on the subscription's own record holds none: a later write keeps B
    fold(records, records.put(records.subscriptions[old.id]))
    assert set(records.subscriptions[old.id].volgindicaties) == {B, C}


# -- retirements (a 410, written by the delivery role to a topic of its own) -------------


def placed(records: Records, writes: list[tuple[bytes, bytes | None]], first: int) -> None:
    """Fold `writes` in as a reader of the topic does: each at its offset from `first`."""
    for offset, (key, value) in enumerate(writes, start=first):
        records.apply(key, value, place=(0, offset))


def _retirement(sub_id: str, version: str | None) -> Retirement:
    """A retirement as the reader gets it: through its record (None: a tombstone)."""
    if version is None:
        return parse(sub_id.encode(), None)
    return parse(*record(Retirement(sub_id, version, datetime.now(UTC))))


def test_a_retirement_retires_the_version_it_names_and_an_edit_reactivates() -> None:
    records = Records(KEYRING)
    sub = subscription().with_volgindicatie(A)
    placed(records, records.put(sub), 0)
    version = records.versions[sub.id]
    retired = records.retire(_retirement(sub.id, version))
    assert retired is not None and retired.status == "retired"
    assert records.subscriptions[sub.id] is retired
    # nothing else changed: the record's sink, secrets and volgindicaties are what they were
    assert retired.record_dict() == {**sub.record_dict(), "status": "retired"}
    placed(records, [records.follow(sub.id, B, None)], 2)  # a volgindicatie: no new version
    assert records.subscriptions[sub.id].status == "retired"
    assert set(records.subscriptions[sub.id].volgindicaties) == {A, B}
    assert records.retire(_retirement(sub.id, version)) is None  # again: no change
    # an operator's write, even of the same content, is a new version: active again
    placed(records, records.put(sub), 3)
    assert records.versions[sub.id] != version
    assert records.subscriptions[sub.id].status == "active"
    assert set(records.subscriptions[sub.id].volgindicaties) == {A, B}


def test_a_retirement_of_an_older_version_or_withdrawn_retires_nothing() -> None:
    records = Records(KEYRING)
    sub = subscription()
    placed(records, records.put(sub), 0)
    old = records.versions[sub.id]
    placed(records, records.put(sub.model_copy(update={"purpose": "changed"})), 1)
    assert records.retire(_retirement(sub.id, old)) is None
    assert records.subscriptions[sub.id].status == "active"
    current = records.versions[sub.id]
    assert records.retire(_retirement(sub.id, current)) is not None
    withdrawn = records.retire(_retirement(sub.id, None))  # a tombstone
    assert withdrawn is not None and withdrawn.status == "active"


def test_a_retirement_read_before_its_subscription_applies_once_the_record_is_read() -> None:
    writer = Records(KEYRING)
    sub = subscription()
    writes = writer.put(sub)
    placed(writer, writes, 7)
    reader = Records(KEYRING)  # reads the retirements topic first: nothing to retire yet
    assert reader.retire(_retirement(sub.id, writer.versions[sub.id])) is None
    placed(reader, writes, 7)
    assert reader.subscriptions[sub.id].status == "retired"


def test_a_retirement_cannot_reactivate_a_subscription_retired_by_its_record() -> None:
    records = Records(KEYRING)
    sub = subscription().retired()
    fold(records, records.put(sub))
    other = "sha256:" + "0" * 64
    assert records.retire(_retirement(sub.id, other)) is None
    assert records.retire(_retirement(sub.id, None)) is None
    assert records.subscriptions[sub.id].status == "retired"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"\xff", b"{}", "its key is not UTF-8"),
        (b"Not/An/Id", b"{}", "its key is no subscription id"),
        (b"s1", b"{not json", "its value is not JSON"),
        (b"s1", b'["s1"]', "not an object of id, version and at alone"),
        (b"s1", json.dumps({**GOOD, "sink": "https://evil.example/"}).encode(),
         "not an object of id, version and at alone"),
        (b"s1", json.dumps({**GOOD, "id": "s2"}).encode(), "its id is not its key"),
        (b"s1", json.dumps({**GOOD, "version": "md5:00"}).encode(), "no sha256 digest"),
        (b"s1", json.dumps({**GOOD, "at": "yesterday"}).encode(), "no ISO 8601 time"),
        (b"s1", json.dumps({**GOOD, "at": "2026-01-01T00:00:00"}).encode(), "with a zone"),
    ],
)  # fmt: skip
def test_a_malformed_retirement_record_is_refused_with_a_fixed_reason(
    key: bytes, value: bytes, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        parse(key, value)
    assert "evil" not in str(caught.value) and "{" not in str(caught.value)
    assert parse(b"s1", json.dumps(GOOD).encode()).version == GOOD["version"]
