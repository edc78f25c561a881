"""Configuration as an operator meets it: one YAML file, environment overrides, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.config import KafkaSettings, Settings, load_settings
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


def test_production_defaults_survive_a_broker_loss() -> None:
    kafka = Settings(mode="production").kafka
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)
    assert kafka.allow_single_replica is False
    assert kafka.ingress_retention_days == 7
    settings = Settings(mode="production")
    assert settings.run.grace_s == 25.0
    assert settings.health.stall_after_s > 0 and settings.health.give_up_after_s > 0


def test_one_node_is_said_explicitly() -> None:
    kafka = KafkaSettings.single_node(bootstrap_servers="localhost:9092")
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (1, 1)
    assert kafka.allow_single_replica is True


def test_more_insync_replicas_than_replicas_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="min_insync_replicas"):
        load_settings(kafka={"replication_factor": 1})  # min_insync_replicas stays 2
