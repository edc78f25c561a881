"""The subscriptions topic's two kinds of record folded into one set (no broker needed)."""

from __future__ import annotations

import json
from datetime import date

from test_subscriptions import subscription

from streams.routing.records import Records, volgindicatie_key
from streams.routing.sealing import Keyring, seal_record

A, B, C = "a" * 64, "b" * 64, "c" * 64
KEYRING = Keyring(bytes(32))


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
