"""A record batch holding a header name that is not UTF-8 is read whole, not fatal.

Batches are built with aiokafka's own Python builder (the only one that writes such a name)
and read the way aiokafka's fetcher reads a fetch response."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder as CBuilder
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as PyBuilder
from aiokafka.record.memory_records import MemoryRecords

from streams.chaos.rawnames import RawName
from streams.kafka.lenient import LenientRecords

BAD = RawName(b"\xff\xfename")


def _batch(base: int, records: list[tuple[bytes, list[Any]]], compression: int = 0) -> bytes:
    builder = PyBuilder(2, compression, is_transactional=False, producer_id=-1,
                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)  # fmt: skip
    for offset, (key, headers) in enumerate(records):
        builder.append(offset, timestamp=None, key=key, value=b"v-" + key, headers=headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)  # the broker assigns base offsets
    return bytes(data)


def _read(records: Any, *, crc: bool = True) -> list[tuple[int, bytes, list[Any]]]:
    out = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc() or not crc
        out += [(r.offset, r.key, list(r.headers)) for r in batch]
    return out


def test_aiokafka_alone_fails_the_whole_batch_on_such_a_name() -> None:
    data = _batch(0, [(b"k0", []), (b"k1", [(BAD, b"1")]), (b"k2", [])])
    with pytest.raises(UnicodeDecodeError):
        _read(MemoryRecords(data))


@pytest.mark.parametrize("compression", [0, 1], ids=["plain", "gzip"])
def test_every_record_of_every_batch_is_read_once_in_order(compression: int) -> None:
    first = _batch(0, [(b"k0", [("a", b"1")]), (b"k1", [(BAD, b"1"), ("b", None)]),
                       (b"k2", [("a", b"2")])], compression)  # fmt: skip
    second = _batch(3, [(b"k3", [(BAD, b"x")]), (b"k4", [])], compression)
    builder = CBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=None, key=b"k5", value=b"v-k5", headers=[("ok", b"1")])
    third = bytearray(builder.build())
    struct.pack_into(">q", third, 0, 5)
    got = _read(LenientRecords(first + second + bytes(third)))
    assert got == [
        (0, b"k0", [("a", b"1")]),
        (1, b"k1", [("\udcff\udcfename", b"1"), ("b", None)]),
        (2, b"k2", [("a", b"2")]),
        (3, b"k3", [("\udcff\udcfename", b"x")]),
        (4, b"k4", []),
        (5, b"k5", [("ok", b"1")]),
    ]
    assert got[1][2][0][0].encode("utf-8", "surrogateescape") == b"\xff\xfename"


@pytest.mark.parametrize("name", ["a", BAD], ids=["utf8", "not-utf8"])
def test_a_batch_that_is_corrupt_otherwise_still_fails(name: str) -> None:
    data = bytearray(_batch(0, [(b"k0", [(name, b"1")]), (b"k1", [])]))
    data[-1] = 0x7F  # the last record's header count: more headers than bytes
    with pytest.raises(CorruptRecordException):
        _read(LenientRecords(bytes(data)), crc=False)
