"""Reading a record batch whose header names are not UTF-8, instead of dying of it.

Kafka's protocol says a header name is a string, and aiokafka (0.14, C and Python parsers
alike) decodes it as strict UTF-8: one record whose header name is not UTF-8 raises
`UnicodeDecodeError` out of the fetcher for its whole batch, at every fetch. A plain consumer
then fails every `getone`; Faust's fetcher dies silently and the worker reads nothing more.
Any client that can produce into a topic the bus reads could wedge it that way.

`install()` makes aiokafka's fetcher read batches through `LenientRecords`: a batch is parsed
by aiokafka's fast parser, and only when that fails on a header name is the rest of that one
batch parsed again by aiokafka's own Python parser over a buffer that decodes header names
with `surrogateescape`. Such a record comes out whole, with the undecodable bytes of its
header name kept as lone surrogates; `streams.contract.record.read_record` turns it into a
dead letter (`not_utf8_header_name`) and its neighbours are read as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, SupportsIndex, overload

import aiokafka.consumer.fetcher as fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords

__all__ = ["LenientRecords", "install", "installed"]


class _Name(bytearray):
    """A slice of a record: decoding it as text keeps bytes that are not UTF-8."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "surrogateescape")


class _Buffer(bytearray):
    """A batch's bytes whose slices are `_Name`s (indexing one byte stays an int)."""

    @overload
    def __getitem__(self, index: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> bytearray: ...
    def __getitem__(self, index: SupportsIndex | slice) -> int | bytearray:
        if isinstance(index, slice):
            return _Name(bytearray.__getitem__(self, index))
        return bytearray.__getitem__(self, index)


class _LenientBatchPy(_DefaultRecordBatchPy):  # type: ignore[misc]  # aiokafka: untyped
    """aiokafka's Python parser of a v2 batch over a `_Buffer` (also once decompressed)."""

    _buffer: bytearray

    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        super().__init__(buffer)
        self._buffer = _Buffer(self._buffer)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        if not isinstance(self._buffer, _Buffer):
            self._buffer = _Buffer(self._buffer)


def _on_header_name(exc: BaseException) -> bool:
    """Whether a parser's error is a header name that is not UTF-8 (C: `UnicodeDecodeError`,
    Python: `CorruptRecordException` from it)."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    return isinstance(exc, CorruptRecordException) and isinstance(exc.__cause__, UnicodeDecodeError)


class _Batch:
    """A v2 batch as aiokafka's fetcher uses it, read again leniently where it must be."""

    def __init__(self, batch: Any, data: memoryview) -> None:
        self._batch = batch
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        return bool(self._batch.validate_crc())

    def __iter__(self) -> Iterator[Any]:
        read = 0
        try:
            for record in self._batch:
                yield record
                read += 1
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            if not _on_header_name(exc):
                raise
        else:
            return
        for index, record in enumerate(_LenientBatchPy(self._data)):
            if index >= read:
                yield record


class LenientRecords:
    """aiokafka's `MemoryRecords` (a fetch response's batches), each v2 batch read through
    `_Batch`; batches without headers (v0, v1, transaction markers) pass as they are."""

    _MAGIC_OFFSET = 16  # BaseOffset int64, Length int32, PartitionLeaderEpoch int32
    _LOG_OVERHEAD = 12  # BaseOffset int64, Length int32

    def __init__(self, data: bytes) -> None:
        self._records = MemoryRecords(data)
        self._data = memoryview(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        length = int.from_bytes(self._data[start + 8 : start + 12], "big", signed=True)
        end = start + self._LOG_OVERHEAD + length
        self._pos = end
        if self._data[start + self._MAGIC_OFFSET] < 2 or batch.is_control_batch:
            return batch  # no headers: a legacy batch, or a transaction marker
        return _Batch(batch, self._data[start:end])


def install() -> None:
    """Make aiokafka's consumers (plain and Faust's) read fetched batches as `LenientRecords`.
    Idempotent; every consumer the bus makes (`streams.kafka.clients`) calls it first."""
    fetcher.MemoryRecords = LenientRecords


def installed() -> bool:
    """Whether `install()` is in effect."""
    return fetcher.MemoryRecords is LenientRecords
