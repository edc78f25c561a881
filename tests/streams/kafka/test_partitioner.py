"""Our partitioner must put every key where Kafka's own clients put it."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference

from streams.kafka.partitioner import KeyPartitioner, murmur2


def test_murmur2_agrees_with_the_reference_for_every_length_and_byte() -> None:
    rng = random.Random(8)
    keys = [bytes(rng.randrange(256) for _ in range(n)) for n in range(0, 80) for _ in range(25)]
    keys += [b"\xff" * n for n in range(9)] + [b"\x80" * n for n in range(9)]
    for key in keys:
        assert murmur2(key) == reference(key), key


def test_known_values_of_kafkas_java_client() -> None:
    # From Kafka's UtilsTest.testMurmur2 (org.apache.kafka.common.utils), as signed ints.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, signed in cases.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key


def test_the_partition_is_the_default_partitioners() -> None:
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    rng = random.Random(3)
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(1, 40))
        parts = list(range(rng.choice((1, 3, 6, 12, 50))))
        assert ours(key, parts, parts) == theirs(key, parts, parts)
        assert ours(key, parts, parts) == ours(key, parts, parts)  # remembered: the same answer
        assert ours(bytearray(key), parts, parts) == theirs(key, parts, parts)


def test_an_unkeyed_record_goes_to_an_available_partition() -> None:
    ours = KeyPartitioner()
    assert {ours(None, [0, 1, 2], [2]) for _ in range(50)} == {2}
    assert {ours(None, [0, 1, 2], []) for _ in range(200)} <= {0, 1, 2}
