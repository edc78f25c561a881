"""The test vectors of SPEC §8: the same event as HTTP JSON and as a Kafka record, both ways.

The Kafka value is also read and rewritten by Apache's `avro` package with nothing but the
published `.avsc` file, as a client in another language would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import uuid
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest

from streams.contract.codec import from_json, from_kafka, to_json, to_kafka
from streams.contract.record import KafkaRecord
from streams.contract.schemas import DEFAULT_ROOT, registry

VECTORS = Path(__file__).parents[2] / "vectors"
TYPES = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())
TEST_PSEUDONYM_KEY = b"gemeentebus-test-vector-key"


def _load(type_: str) -> tuple[dict[str, Any], dict[str, Any]]:
    event = json.loads((VECTORS / type_ / "event.json").read_text(encoding="utf-8"))
    kafka = json.loads((VECTORS / type_ / "kafka.json").read_text(encoding="utf-8"))
    return event, kafka


def _record(kafka: dict[str, Any]) -> KafkaRecord:
    headers = tuple((name, base64.b64decode(v)) for name, v in kafka["headers"].items())
    value = base64.b64decode(kafka["value"])
    return KafkaRecord(key=base64.b64decode(kafka["key"]), headers=headers, value=value)


def _partition_key(event: dict[str, Any]) -> bytes:
    if event["type"].startswith("nl.brp."):
        bsn = event["data"]["bsn"].encode()
        return hmac.new(TEST_PSEUDONYM_KEY, bsn, hashlib.sha256).hexdigest().encode()
    return event["data"]["zaakUuid"].encode()


def test_every_type_has_a_vector() -> None:
    assert sorted(registry().types()) == TYPES


@pytest.mark.parametrize("type_", TYPES)
def test_json_to_kafka_gives_the_kafka_vector(type_: str) -> None:
    event_json, kafka = _load(type_)
    expected = _record(kafka)

    record = to_kafka(from_json(event_json), key=_partition_key(event_json))

    assert record == expected
    assert list(kafka["headers"]) == [name for name, _ in record.headers]


@pytest.mark.parametrize("type_", TYPES)
def test_kafka_to_json_gives_the_event_vector(type_: str) -> None:
    event_json, kafka = _load(type_)

    assert to_json(from_kafka(_record(kafka))) == event_json


@pytest.mark.parametrize("type_", TYPES)
def test_vector_events_carry_no_bsn_outside_data(type_: str) -> None:
    event_json, kafka = _load(type_)
    record = _record(kafka)
    bsn = event_json["data"].get("bsn")
    outside = [record.key or b"", *(v for _, v in record.headers)]
    assert bsn is None or all(bsn.encode() not in part for part in outside)
    if bsn is None:
        assert event_json["subject"] == event_json["data"]["zaakUuid"]
    else:
        assert "subject" not in event_json


@pytest.mark.parametrize("type_", TYPES)
def test_apache_avro_reads_and_rewrites_the_value_with_the_published_avsc(type_: str) -> None:
    event_json, kafka = _load(type_)
    value = base64.b64decode(kafka["value"])
    dataschema = base64.b64decode(kafka["headers"]["ce_dataschema"]).decode()
    version = registry().by_dataschema(dataschema)
    avsc = DEFAULT_ROOT / "published" / type_ / f"{version.version}.avsc"
    schema = avro.schema.parse(avsc.read_text(encoding="utf-8"))

    stream = io.BytesIO(value)
    datum = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(stream))
    assert stream.tell() == len(value)
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(out))

    assert out.getvalue() == value
    assert _plain(datum) == _plain(from_json(event_json).data)


def _plain(value: Any) -> Any:
    """Both libraries' python values in one comparable form."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return value
