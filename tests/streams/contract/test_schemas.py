"""The schema registry: published versions are frozen, self-contained and match the sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import avro.schema
import pytest

from streams.contract.schemas import (
    DEFAULT_ROOT,
    SchemaRegistry,
    dataschema_urn,
    parse_dataschema,
    registry,
)
from streams.exceptions import UnknownSchema

TYPES = ["nl.brp.persoon-overleden", "nl.brp.persoon-verhuisd", "nl.overheid.zaken.zaak-gemuteerd"]


def test_the_three_event_types_are_published() -> None:
    assert registry().types() == tuple(TYPES)
    assert registry().source_types() == tuple(TYPES)
    assert registry() is registry()


@pytest.mark.parametrize("type_", TYPES)
def test_source_expanded_equals_latest_published_version(type_: str) -> None:
    # Fails when someone edited a schema without `gemeentebus schemas publish`.
    assert registry().expanded_source(type_) == registry().current(type_).raw


def test_published_files_never_change() -> None:
    assert registry().changed_published_files() == []


@pytest.mark.parametrize("type_", TYPES)
def test_published_files_are_self_contained(type_: str) -> None:
    for version in registry().versions(type_):
        text = (DEFAULT_ROOT / "published" / type_ / f"{version.version}.avsc").read_text()
        parsed = avro.schema.parse(text)  # another implementation, no named types given
        assert parsed.type == "record"


def test_dataschema_urns() -> None:
    urn = dataschema_urn("nl.brp.persoon-verhuisd", 1)
    assert urn == "urn:gemeentebus:schema:nl.brp.persoon-verhuisd:1"
    assert parse_dataschema(urn) == ("nl.brp.persoon-verhuisd", 1)
    version = registry().by_dataschema(urn)
    assert (version.type, version.version, version.dataschema) == (
        "nl.brp.persoon-verhuisd",
        1,
        urn,
    )
    assert registry().current("nl.brp.persoon-verhuisd") is version


@pytest.mark.parametrize(
    "urn",
    [
        "urn:gemeentebus:schema:nl.brp.persoon-verhuisd:9",
        "urn:gemeentebus:schema:nl.brp.persoon-verhuisd:0",
        "urn:gemeentebus:schema:nl.brp.onbekend:1",
        "https://example.org/schema.avsc",
        "",
    ],
)
def test_unknown_dataschema(urn: str) -> None:
    with pytest.raises(UnknownSchema) as caught:
        registry().by_dataschema(urn)
    assert [(e.path, e.code) for e in caught.value.errors] == [("dataschema", "unknown_dataschema")]


def test_unknown_type() -> None:
    with pytest.raises(UnknownSchema):
        registry().current("nl.brp.onbekend")


@pytest.fixture
def schema_root(tmp_path: Path) -> Path:
    root = tmp_path / "avro"
    shutil.copytree(DEFAULT_ROOT, root)
    return root


def test_publish_writes_next_version_only_when_the_source_changed(schema_root: Path) -> None:
    reg = SchemaRegistry(schema_root)
    assert reg.publish("nl.brp.persoon-overleden") is None

    source = schema_root / "events" / "nl.brp.persoon-overleden.avsc"
    schema = json.loads(source.read_text())
    schema["fields"].append({"name": "akte", "type": ["null", "string"], "default": None})
    source.write_text(json.dumps(schema))
    published = reg.publish("nl.brp.persoon-overleden")

    assert published is not None
    assert published.dataschema == "urn:gemeentebus:schema:nl.brp.persoon-overleden:2"
    assert reg.current("nl.brp.persoon-overleden") is published
    reread = SchemaRegistry(schema_root)
    assert (
        reread.expanded_source("nl.brp.persoon-overleden")
        == reread.current("nl.brp.persoon-overleden").raw
    )
    assert reread.changed_published_files() == []
    assert [v.version for v in reread.versions("nl.brp.persoon-overleden")] == [1, 2]


def test_shared_type_change_needs_a_new_version_of_its_users(schema_root: Path) -> None:
    shared = schema_root / "types" / "nl.gemeentebus.common.Adres.avsc"
    schema = json.loads(shared.read_text())
    schema["fields"].append({"name": "locatie", "type": ["null", "string"], "default": None})
    shared.write_text(json.dumps(schema))
    reg = SchemaRegistry(schema_root)

    assert (
        reg.expanded_source("nl.brp.persoon-verhuisd") != reg.current("nl.brp.persoon-verhuisd").raw
    )
    assert reg.publish("nl.brp.persoon-verhuisd") is not None
    assert reg.publish("nl.brp.persoon-overleden") is None


def test_a_changed_or_unlisted_published_file_is_detected(schema_root: Path) -> None:
    folder = schema_root / "published" / "nl.brp.persoon-verhuisd"
    edited = (folder / "1.avsc").read_text().replace("A person", "Someone")
    (folder / "1.avsc").write_text(edited)
    (folder / "2.avsc").write_text(edited)  # published by hand, not through `publish`
    (schema_root / "published" / "nl.brp.persoon-overleden" / "1.avsc").unlink()

    assert SchemaRegistry(schema_root).changed_published_files() == [
        "nl.brp.persoon-overleden/1.avsc",
        "nl.brp.persoon-verhuisd/1.avsc",
        "nl.brp.persoon-verhuisd/2.avsc",
    ]
