"""The gate's and the delivery record's fast paths give what the full paths give.

Data read from Avro written with the current schema needs only a partial exactness check
(`DataBinding.is_exact_read`, used by `examine(read=...)`); every verdict, error code and
record must be the one the full check makes. The JSON of `data` skips the conversion of
values that are their own JSON; it must stay the same JSON. No broker needed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from streams.contract import codec
from streams.contract.avrodata import DataBinding, data_binding
from streams.contract.envelope import CloudEvent
from streams.contract.headers import ERROR_HEADER, ORDER_HEADER
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today, examine
from streams.contract.schemas import SchemaVersion, registry
from streams.demo.generators import EventFactory
from streams.exceptions import InvalidEvent
from streams.ingress.gate import Accepted, Gate, Rejected
from streams.kafka.topics import Topics

TODAY = dutch_today()
Change = Callable[[dict[str, Any]], None]


def _binding(event_type: str) -> DataBinding:
    return data_binding(registry().current(event_type))


def _loose_writer(binding: DataBinding) -> Any:
    """The current schema with room for what it forbids: a long where it has an int (the
    same varint on the wire), a plain string for a uuid, so bad values can be written."""
    raw = json.dumps(binding.version.raw)
    raw = raw.replace('["null", "int"]', '["null", "long"]')
    raw = raw.replace('"logicalType": "uuid"', '"comment": "no uuid"')
    return parse_schema(json.loads(raw), named_schemas={})


def _record(event: CloudEvent, change: Change | None = None) -> KafkaRecord:
    """The ingress record of `event`, its data changed by `change` first (written loosely)."""
    if change is None:
        return codec.to_kafka(event, key=b"k")
    data = json.loads(json.dumps(codec.to_json(event)["data"]))
    data = codec.from_json({**codec.to_json(event), "data": data}).data
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    change(data)
    out = io.BytesIO()
    schemaless_writer(out, _loose_writer(_binding(event.type)), data)
    return codec.to_kafka(event, key=b"k", value=out.getvalue())


def _set(path: str, value: Any) -> Change:
    def change(data: dict[str, Any]) -> None:
        *parents, name = path.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[name] = value

    return change


def _cases() -> list[tuple[str, KafkaRecord]]:
    factory = EventFactory(7, today=TODAY)
    cases = [(f"valid {i}", _record(e)) for i, e in enumerate(factory.mixed(300))]
    move, death, zaak = factory.verhuisd(), factory.overleden(), factory.zaak_gemuteerd()
    changes: list[tuple[str, CloudEvent, Change]] = [
        ("huisnummer over int", move, _set("nieuwAdres.huisnummer", 2**40)),
        ("huisnummer under int", move, _set("nieuwAdres.huisnummer", -(2**35))),
        ("huisnummer zero", move, _set("nieuwAdres.huisnummer", 0)),
        ("bsn elfproef", move, _set("bsn", "123456789")),
        ("bsn short", death, _set("bsn", "12345")),
        ("postcode", move, _set("nieuwAdres.postcode", "0000 aa")),
        ("date in future", death, _set("datumOverlijden", TODAY + timedelta(days=3))),
        ("uuid not a uuid", zaak, _set("zaakUuid", "not-a-uuid")),
        ("uuid upper case", zaak, _set("zaakUuid", str(zaak.data["zaakUuid"]).upper())),
        ("uuid other zaak", zaak, _set("zaakUuid", "6f0e2a44-5b1c-4f7e-9a4d-2c1b3a4d5e6f")),
        ("url", zaak, _set("zaakUrl", "ftp://elders")),
    ]
    cases += [(name, _record(event, change)) for name, event, change in changes]
    cases += [(f"padded varint {e.type}", _padded(_record(e))) for e in (move, death, zaak)]
    return cases


def _padded(record: KafkaRecord) -> KafkaRecord:
    """`record` with its value's first varint (every event's first field is a string: its
    length) padded by 6 bytes: fastavro reads the same data, Java's reader refuses it."""
    value = record.value
    end = next(i for i, byte in enumerate(value) if byte < 0x80)  # the varint's last byte
    padded = value[:end] + bytes([value[end] | 0x80]) + b"\x80" * 5 + b"\x00" + value[end + 1 :]
    event = codec.from_kafka(record)
    assert codec.from_kafka(replace(record, value=padded)).data == event.data
    return replace(record, value=padded)


CASES = _cases()


def test_the_cases_hold_valid_and_invalid_records() -> None:
    gate = Gate(Topics("t"), b"test-pseudonym-key")
    outcomes = [gate.from_record(record) for _, record in CASES]
    codes = {o.code for o in outcomes if isinstance(o, Rejected)}
    assert sum(isinstance(o, Accepted) for o in outcomes) >= 300
    assert {"field_type", "bsn_elfproef", "postcode_format", "uuid_format"} <= codes


@pytest.mark.parametrize(("name", "record"), CASES, ids=[name for name, _ in CASES])
def test_a_check_after_reading_is_the_full_exactness_check(name: str, record: KafkaRecord) -> None:
    event, value = codec.from_kafka_with_value(record)
    assert value is not None  # read with the current schema: the fast path applies
    binding = _binding(event.type)
    assert binding.is_exact_read(event.data) == binding.root.is_exact(event.data)


@pytest.mark.parametrize(("name", "record"), CASES, ids=[name for name, _ in CASES])
def test_examine_after_reading_gives_the_verdict_of_examine(name: str, record: KafkaRecord) -> None:
    event, _ = codec.from_kafka_with_value(record)
    fast = examine(event, today=TODAY, read=_binding(event.type))
    full = examine(event, today=TODAY)
    assert [(e.path, e.code, e.message) for e in fast.errors] == [
        (e.path, e.code, e.message) for e in full.errors
    ]
    assert fast.routing == full.routing
    assert fast.exact == full.exact


def _slow_accept(gate: Gate, record: KafkaRecord) -> Accepted | Rejected:
    """The gate without the fast path: decoded, then judged and encoded from scratch."""
    try:
        return gate.accept(codec.from_kafka(record))
    except InvalidEvent as exc:
        return gate.reject(record, exc.errors)


def _without_order(record: Any) -> tuple[Any, ...]:
    headers = tuple((k, v) for k, v in record.headers if k != ORDER_HEADER)
    return record.key, headers, record.value


@pytest.mark.parametrize(("name", "record"), CASES, ids=[name for name, _ in CASES])
def test_the_gate_makes_the_records_and_dead_letters_of_the_slow_path(
    name: str, record: KafkaRecord
) -> None:
    gate = Gate(Topics("t"), b"test-pseudonym-key")
    fast, slow = gate.from_record(record), _slow_accept(gate, record)
    assert type(fast) is type(slow)
    assert fast.topic == slow.topic
    assert _without_order(fast.record) == _without_order(slow.record)
    if isinstance(fast, Rejected):
        assert isinstance(slow, Rejected)
        assert [(e.path, e.code) for e in fast.errors] == [(e.path, e.code) for e in slow.errors]
        assert dict(fast.record.headers)[ERROR_HEADER] == fast.code.encode()


def test_json_of_data_is_unchanged_by_the_fast_conversion() -> None:
    """to_json and back gives the event; bytes, dates and times still converted."""
    for event in EventFactory(9, today=TODAY).mixed(300):
        body = codec.to_json(event)
        text = json.dumps(body)  # plain JSON: nothing left unconverted
        assert codec.from_json(json.loads(text)) == event


def test_json_of_data_shares_no_list_or_dict_with_the_event() -> None:
    move = EventFactory(3, today=TODAY).verhuisd(soort="EMIGRATIE")
    data = move.data["nieuwAdres"]
    assert isinstance(data, dict) and isinstance(data["adresregels"], list)
    body = codec.to_json(move)
    body["data"]["nieuwAdres"]["adresregels"].append("extra")
    assert "extra" not in data["adresregels"]


def test_a_projected_record_keeps_only_its_fields_in_json() -> None:
    zaak = EventFactory(5, today=TODAY).zaak_gemuteerd()
    kept = {k: v for k, v in zaak.data.items() if k in ("zaakUuid", "aanmaakdatum")}
    body = codec.to_json(replace(zaak, data=kept), checked=True)
    assert set(body["data"]) == set(kept)
    assert isinstance(body["data"]["aanmaakdatum"], str)


def test_read_bytes_are_passed_on_only_when_every_avro_reader_reads_them_alike() -> None:
    events = EventFactory(11, today=TODAY).mixed(100)
    passed = 0
    for event in events:
        value = codec.to_kafka(event, key=b"k").value
        written = _binding(event.type).written(event.data, value)
        assert written == value
        passed += written is value
    assert passed >= 90  # written again only where string or double bytes look padded
    for name, record in CASES:
        if name.startswith("padded"):
            event = codec.from_kafka(record)
            assert _binding(event.type).written(event.data, record.value) == (
                codec.to_kafka(event, key=b"k").value
            )
    raw = {
        "type": "record",
        "name": "b",
        "namespace": "t",
        "fields": [{"name": "flag", "type": "boolean"}],
    }
    version = SchemaVersion("t.b", 1, "urn:t:b:1", parse_schema(raw), raw)
    assert data_binding(version).written({"flag": True}, b"\x02") == b"\x01"  # Java: false
