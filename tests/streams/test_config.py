"""Configuration as an operator meets it: one YAML file, environment overrides, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.config import load_settings
from streams.exceptions import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[2] / "gemeentebus.example.yaml"


def test_the_example_configuration_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert {c.id for c in settings.clients} == {
        "brp-component",
        "gemeente-0363",
        "beheer",
        "open-zaak",
    }
    assert settings.kafka.events_retention_days == 400


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMEENTEBUS_KAFKA__PARTITIONS", "12")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    settings = load_settings(EXAMPLE)
    assert settings.kafka.partitions == 12
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"


def test_a_broken_file_names_the_key(tmp_path: Path) -> None:
    broken = tmp_path / "gemeentebus.yaml"
    broken.write_text("kafka:\n  partitions: nul\n")
    with pytest.raises(ConfigurationError, match="partitions"):
        load_settings(broken)


def test_no_pseudonym_key_no_bus(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMEENTEBUS_")}
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--config", str(EXAMPLE), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY" in result.stderr
    assert "Traceback" not in result.stderr
