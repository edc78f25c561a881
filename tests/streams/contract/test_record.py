"""The Kafka record of the bus: a client's record read defensively, never raising."""

from __future__ import annotations

import pytest

from streams.contract.record import KafkaRecord, Unreadable, read_record


def test_read_record_takes_a_well_formed_record() -> None:
    record = read_record(
        bytearray(b"k"), [("ce_id", b"1"), ("ce_type", memoryview(b"t"))], b"v", max_bytes=10
    )
    assert record == KafkaRecord(key=b"k", headers=(("ce_id", b"1"), ("ce_type", b"t")), value=b"v")


@pytest.mark.parametrize(
    ("key", "headers", "value", "code"),
    [
        (None, [("ce_id", None)], b"v", "null_header"),
        (None, [("ce_id", "text")], b"v", "malformed_header"),
        (None, [("ce_id",)], b"v", "malformed_header"),
        (None, None, None, "null_value"),
        (None, (), b"x" * 11, "too_large"),
        ("a str key", (), b"v", "malformed_key"),
        (None, (), "a str value", "malformed_value"),
    ],
)
def test_read_record_keeps_an_odd_record_as_it_came_with_the_reason(
    key: object, headers: object, value: object, code: str
) -> None:
    unreadable = read_record(key, headers, value, max_bytes=10)
    assert isinstance(unreadable, Unreadable)
    assert unreadable.error.code == code
    assert "v" not in unreadable.error.message.split()  # the reason never quotes the input


def test_read_record_keeps_a_null_header_null_for_a_byte_for_byte_dead_letter() -> None:
    unreadable = read_record(b"k", [("a", b"1"), ("b", None)], b"v", max_bytes=10)
    assert isinstance(unreadable, Unreadable)
    assert unreadable.headers == (("a", b"1"), ("b", None))
    assert (unreadable.key, unreadable.value) == (b"k", b"v")


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("\udcff\udcfex", "b'\\xff\\xfex'"),  # bytes that are not UTF-8, read leniently
        (b"ce_id", "b'ce_id'"),  # not text at all
    ],
)
def test_a_header_name_that_is_not_utf8_text_is_a_dead_letter_under_its_repr(
    name: object, kept: str
) -> None:
    unreadable = read_record(b"k", [("a", b"1"), (name, b"2")], b"v", max_bytes=10)
    assert isinstance(unreadable, Unreadable)
    assert unreadable.error.code == "not_utf8_header_name"
    assert unreadable.headers == (("a", b"1"), (kept, b"2"))
    for written, _ in unreadable.headers:
        written.encode("utf-8")  # a producer can write it again


def _odd_headers() -> list[list[object]]:
    return [
        [("ce_id", b"1"), ("straße", b"x")],  # a UTF-8 name that is not ASCII
        [("ce_id", b"1"), ("\udcff", b"x")],  # a name read from bytes that are not UTF-8
        [("ce_id", b"1"), (b"bytes-name", b"x")],
        [("ce_id", bytearray(b"1"))],
        [("ce_id", memoryview(b"1"))],
        [("ce_id", None)],
        [("ce_id", "text")],
        [("ce_id",)],
        [("ce_id", b"1", b"2")],
        [],
    ]


def test_the_common_record_reads_as_the_defensive_path_reads_it() -> None:
    from streams.contract import codec
    from streams.contract.rules import dutch_today
    from streams.demo.generators import EventFactory

    records = [codec.to_kafka(e, key=b"k") for e in EventFactory(3, today=dutch_today()).mixed(60)]
    cases: list[tuple[object, list[object], object]] = [
        (r.key, list(r.headers), r.value) for r in records
    ]
    cases += [(b"k", headers, b"v") for headers in _odd_headers()]
    cases += [(None, [("ce_id", b"1")], b"v"), (b"k", [("ce_id", b"1")], b"x" * 11)]
    for key, headers, value in cases:
        fast = read_record(key, headers, value, max_bytes=10 if value == b"x" * 11 else 10**6)
        # the same record through the per-header loop: list pairs and a bytearray key
        slow = read_record(
            None if key is None else bytearray(key),  # type: ignore[arg-type]
            [list(h) if isinstance(h, tuple) else h for h in headers],
            value,
            max_bytes=10 if value == b"x" * 11 else 10**6,
        )
        assert fast == slow
        assert type(fast.headers) is tuple
        assert all(type(pair) is tuple for pair in fast.headers)
