"""`accepted_order`: the gate's order header, looked up fast where the gate puts it (last),
with the same answer as the header lookup for every other shape of headers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from streams.contract.headers import ORDER_HEADER, header
from streams.kafka.window import accepted_order

OURS = [("ce_id", b"1"), ("ce_type", b"t"), ("content-type", b"application/avro")]


def _slow(headers: Any) -> int:
    digits = header(headers, ORDER_HEADER) or b""
    return int(digits) if digits.isdigit() and len(digits) <= 20 else 0


@pytest.mark.parametrize(
    "headers",
    [
        (*OURS, (ORDER_HEADER, b"1796591171467880331")),  # as the gate writes it
        [*OURS, (ORDER_HEADER, b"42")],
        ((ORDER_HEADER, b"7"), *OURS, (ORDER_HEADER, b"9")),  # the first one counts
        (*OURS,),  # none: 0
        (),
        None,
        (*OURS, (ORDER_HEADER, None)),
        (*OURS, (ORDER_HEADER, b"not digits")),
        (*OURS, (ORDER_HEADER, b"1" * 21)),  # longer than any order the gate writes
        ((ORDER_HEADER, b"5"), *OURS),  # not last
        ((b"bytes-name", b"x"), *OURS, (ORDER_HEADER, b"3")),
        ([ORDER_HEADER, b"8"], (ORDER_HEADER, b"3")),  # a list pair first
    ],
)
def test_the_order_is_what_the_header_lookup_says(headers: Any) -> None:
    assert accepted_order(SimpleNamespace(headers=headers)) == _slow(headers)  # type: ignore[arg-type]
