"""The pydantic models are generated from the Avro schemas, and the two agree."""

from __future__ import annotations

import io
import json
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fastavro
import pydantic
import pytest
from fastavro.validation import validate as avro_validate

from streams.contract import models
from streams.contract.modelgen import SCHEMA_DIR, generate_models_source
from streams.contract.models import MODELS
from streams.demo.generators import EventFactory

TODAY = date(2026, 6, 15)
TYPES = sorted(MODELS)


def _parsed_schemas() -> dict[str, Any]:
    named: dict[str, Any] = {}
    for path in sorted((SCHEMA_DIR / "types").glob("*.avsc")):
        fastavro.parse_schema(json.loads(path.read_text()), named_schemas=named)
    return {
        path.stem: fastavro.parse_schema(json.loads(path.read_text()), named_schemas=named)
        for path in (SCHEMA_DIR / "events").glob("*.avsc")
    }


SCHEMAS = _parsed_schemas()


def _events(event_type: str) -> list[dict[str, Any]]:
    events = EventFactory(7, today=TODAY).mixed(600)
    return [dict(e.data) for e in events if e.type == event_type]


def test_models_py_is_what_the_generator_writes() -> None:
    committed = Path(models.__file__).read_text(encoding="utf-8")
    assert generate_models_source() == committed, "run `python -m streams.contract.modelgen`"


def test_every_event_type_has_a_model() -> None:
    assert set(MODELS) == set(SCHEMAS)


def _records(schema: Any) -> Iterator[dict[str, Any]]:
    """Every record schema in a parsed schema (the event and the records it nests)."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _records(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            yield schema
            for f in schema["fields"]:
                yield from _records(f["type"])
        elif schema.get("type") == "array":
            yield from _records(schema["items"])


def _enum_symbols(avro_type: Any) -> list[str] | None:
    if isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        return list(avro_type["symbols"])
    return None


@pytest.mark.parametrize("event_type", TYPES)
def test_fields_optionality_and_enums_agree(event_type: str) -> None:
    for record in _records(SCHEMAS[event_type]):
        model = getattr(models, record["name"].rsplit(".", 1)[-1])
        hints = typing.get_type_hints(model, include_extras=True)
        assert list(model.model_fields) == [f["name"] for f in record["fields"]]
        for avro_field in record["fields"]:
            name, avro_type = avro_field["name"], avro_field["type"]
            info = model.model_fields[name]
            nullable = isinstance(avro_type, list) and "null" in avro_type
            assert info.is_required() == ("default" not in avro_field), name
            allows_none = type(None) in typing.get_args(hints[name])
            assert allows_none == nullable, name
            symbols = _enum_symbols(avro_type)
            if symbols is not None:
                assert list(typing.get_args(hints[name])) == symbols, name


@pytest.mark.parametrize("event_type", TYPES)
def test_generated_events_pass_avro_and_pydantic(event_type: str) -> None:
    datas = _events(event_type)
    assert datas
    for data in datas:
        assert avro_validate(data, SCHEMAS[event_type], strict=True)
        out = io.BytesIO()
        fastavro.schemaless_writer(out, SCHEMAS[event_type], data)
        out.seek(0)
        # the CloudEvent's data is the fastavro-python form (uuid as str, SPEC envelope):
        # a round trip changes nothing
        read = fastavro.schemaless_reader(out, SCHEMAS[event_type])
        assert {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in read.items()} == data
        MODELS[event_type].model_validate(data)


_BAD_VALUES: list[Any] = [
    None,
    "tekst",
    12,
    2**31,
    2**63,
    True,
    1.5,
    b"bytes",
    [],
    {},
    date(2024, 1, 1),
    datetime(2024, 1, 1, tzinfo=UTC),
    "NIET_EEN_SYMBOOL",
]


def _mutations(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Data with one field replaced by a wrong value, or removed, at every level."""
    for name, value in data.items():
        for bad in _BAD_VALUES:
            yield f"{name}={bad!r}", {**data, name: bad}
        yield f"-{name}", {k: v for k, v in data.items() if k != name}
        if isinstance(value, dict):
            for label, inner in _mutations(value):
                yield f"{name}.{label}", {**data, name: inner}


def _avro_accepts(data: dict[str, Any], schema: Any) -> bool:
    # fastavro's logical-type converters raise instead of answering False
    try:
        if not avro_validate(data, schema, raise_errors=False, strict=True):
            return False
        fastavro.schemaless_writer(io.BytesIO(), schema, data)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return False
    return True


@pytest.mark.parametrize("event_type", TYPES)
def test_what_avro_rejects_pydantic_rejects(event_type: str) -> None:
    data = _events(event_type)[0]
    rejected = 0
    for label, mutated in _mutations(data):
        if _avro_accepts(mutated, SCHEMAS[event_type]):
            continue
        rejected += 1
        with pytest.raises(pydantic.ValidationError):
            MODELS[event_type].model_validate(mutated)
            pytest.fail(f"pydantic accepted {label}, which Avro rejects")
    assert rejected > 20  # the mutations do exercise the schema


def test_models_reject_unknown_fields_and_are_frozen() -> None:
    data = _events("nl.brp.persoon-overleden")[0]
    with pytest.raises(pydantic.ValidationError):
        MODELS["nl.brp.persoon-overleden"].model_validate({**data, "geboortedatum": None})
    model = MODELS["nl.brp.persoon-overleden"].model_validate(data)
    with pytest.raises(pydantic.ValidationError):
        model.bsn = "111222333"  # type: ignore[attr-defined]
