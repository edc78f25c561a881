"""Reading a header never raises, whatever a client's record carries."""

from __future__ import annotations

from streams.contract.headers import header, header_text, raw_headers


def test_a_null_value_stays_null_and_a_name_that_is_not_text_is_its_repr() -> None:
    odd = [("ce_id", None), (b"\xff", b"x"), ("ce_type", bytearray(b"t")), ("n", 5), "junk"]
    odd.append(("\udcff\udcfe", b"y"))  # not UTF-8 on the wire (`streams.kafka.lenient`)
    assert raw_headers(odd) == (
        ("ce_id", None),
        ("b'\\xff'", b"x"),
        ("ce_type", b"t"),
        ("n", None),
        ("'junk'", None),
        ("b'\\xff\\xfe'", b"y"),
    )
    assert raw_headers(None) == ()


def test_the_first_header_of_a_name_counts() -> None:
    headers = [("ce_id", b"a"), ("ce_id", b"b"), ("ce_source", memoryview(b"s"))]
    assert header(headers, "ce_id") == b"a"
    assert header(headers, "ce_source") == b"s"
    assert header(headers, "absent") is None
    assert header([("ce_id", None)], "ce_id") is None


def test_text_that_is_not_utf8_is_replaced_not_raised() -> None:
    assert header_text([("ce_id", b"\xffok")], "ce_id") == "\ufffdok"
    assert header_text([("ce_id", None)], "ce_id") is None
