"""The context attributes: one reading of `ce_*` / `ce-*` headers, and the error they make."""

from __future__ import annotations

import pytest

from streams.contract.context import header_attributes, raise_for
from streams.exceptions import FieldError, InvalidEvent, UndecodableEvent, UnknownSchema


def _text(raw: object) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else None


def test_header_attributes_reads_the_prefixed_headers_only() -> None:
    errors: list[FieldError] = []
    headers = [("ce_id", b"1"), ("traceparent", b"00-x"), ("Content-Type", b"application/avro")]
    attrs, broken = header_attributes(
        headers, "ce_", _text, "not UTF-8", errors, also=("content-type",)
    )
    assert attrs == {"id": "1", "content-type": "application/avro"}
    assert (broken, errors) == (frozenset(), [])


def test_header_attributes_reports_a_repeated_or_undecodable_header() -> None:
    errors: list[FieldError] = []
    headers = [("ce_id", b"1"), ("ce_id", b"2"), ("ce_id", b"3"), ("ce_type", None)]
    attrs, broken = header_attributes(headers, "ce_", _text, "not UTF-8", errors)
    assert attrs == {}
    assert broken == {"id", "type"}
    assert [(e.path, e.code) for e in errors] == [
        ("ce_id", "duplicate_header"),
        ("ce_id", "duplicate_header"),
        ("ce_type", "header_encoding"),
    ]
    assert errors[-1].message == "not UTF-8"


def test_raise_for_picks_the_most_specific_error() -> None:
    raise_for([])  # nothing to raise
    with pytest.raises(UnknownSchema):
        raise_for([FieldError("dataschema", "unknown_dataschema", "no such schema")])
    with pytest.raises(UndecodableEvent):
        raise_for([FieldError("ce_id", "missing_header", "required")])
    with pytest.raises(InvalidEvent) as caught:
        raise_for([FieldError("data.x", "avro_type", "not an int")])
    assert not isinstance(caught.value, UndecodableEvent)
