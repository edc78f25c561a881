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
        "brp-verhuizingen",
    }
    assert [c.id for c in settings.kafka_publishers()] == ["brp-verhuizingen"]
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


def test_a_file_that_is_no_yaml_says_where_not_what(tmp_path: Path) -> None:
    """It was a yaml.ParserError with a traceback that quoted the text around the error."""
    broken = tmp_path / "gemeentebus.yaml"
    broken.write_text("clients: [{id: x, token_sha256: geheim\n")
    with pytest.raises(ConfigurationError, match="no valid YAML at line 2") as raised:
        load_settings(broken)
    assert "geheim" not in str(raised.value)


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


def test_sasl_needs_a_user_name_and_a_password() -> None:
    with pytest.raises(ConfigurationError, match=r"SASL_SSL needs kafka\.sasl_username"):
        load_settings(kafka={"security_protocol": "SASL_SSL"})
    with pytest.raises(ConfigurationError, match=r"needs kafka\.sasl_password \(GEMEENTEBUS_"):
        load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_username": "bus"})


def test_transport_settings_that_would_be_ignored_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"used only with kafka\.security_protocol SASL"):
        load_settings(kafka={"security_protocol": "SSL", "sasl_username": "bus"})
    with pytest.raises(ConfigurationError, match=r"kafka\.ssl_cafile set, but .* PLAINTEXT"):
        load_settings(kafka={"ssl_cafile": str(tmp_path / "ca.crt")})
    with pytest.raises(ConfigurationError, match=r"kafka\.ssl_keyfile needs kafka\.ssl_certfile"):
        load_settings(kafka={"security_protocol": "SSL", "ssl_keyfile": str(tmp_path / "k")})
    with pytest.raises(ConfigurationError, match="not both"):
        load_settings(
            kafka={
                "security_protocol": "SASL_SSL",
                "sasl_username": "bus",
                "sasl_password": "x",
                "sasl_password_file": str(tmp_path / "p"),
            }
        )


def test_the_kafka_password_comes_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GEMEENTEBUS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("GEMEENTEBUS_KAFKA__SASL_USERNAME", "bus")
    monkeypatch.setenv("GEMEENTEBUS_KAFKA__SASL_PASSWORD", "from-the-environment")
    kafka = load_settings().kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kafka.sasl_password_value() == "from-the-environment"
    assert "from-the-environment" not in repr(kafka)
    assert kafka.ssl_check_hostname is True

    monkeypatch.delenv("GEMEENTEBUS_KAFKA__SASL_PASSWORD")
    secret = tmp_path / "kafka.password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("GEMEENTEBUS_KAFKA__SASL_PASSWORD_FILE", str(secret))
    assert load_settings().kafka.sasl_password_value() == "from-a-file"

    secret.unlink()
    with pytest.raises(ConfigurationError, match=r"kafka\.sasl_password_file .* cannot be read"):
        load_settings().kafka.sasl_password_value()


def test_a_refused_configuration_never_shows_the_password() -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(kafka={"sasl_password": "hunter2-do-not-print"})  # PLAINTEXT: refused
    assert "sasl_password" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    assert "\n" not in str(refused.value)


def test_production_refuses_a_transport_without_tls_unless_allowed() -> None:
    assert KafkaSettings().plaintext_problem() is not None  # the default: PLAINTEXT
    sasl = {"sasl_username": "bus", "sasl_password": "x"}
    problem = KafkaSettings(security_protocol="SASL_PLAINTEXT", **sasl).plaintext_problem()
    assert problem is not None and "kafka.allow_plaintext: true" in problem
    assert KafkaSettings(allow_plaintext=True).plaintext_problem() is None
    assert KafkaSettings(security_protocol="SSL").plaintext_problem() is None
    assert KafkaSettings(security_protocol="SASL_SSL", **sasl).plaintext_problem() is None


BRP_SOURCE = "urn:nld:oin:00000001823288444000:systeem:BRP-component"


def test_a_kafka_publisher_needs_only_its_principal() -> None:
    settings = load_settings(
        clients=[
            {
                "id": "brp",
                "kafka_principal": "User:brp-publisher",
                "publish": {"types": ["nl.brp.persoon-verhuisd"], "sources": [BRP_SOURCE]},
            },
            {"id": "gemeente-0363", "kafka_principal": "User:gemeente-0363"},  # no grant
            {"id": "beheer", "token_sha256": "0" * 64, "operator": True},
            {"id": "open-zaak", "jwt_secret_env": "X", "publish": {"types": ["*"]}},  # HTTP
        ]
    )
    [brp] = settings.kafka_publishers()  # a principal and a publish grant, nothing else
    assert (brp.id, brp.kafka_principal, brp.token_sha256) == ("brp", "User:brp-publisher", None)
    with pytest.raises(ConfigurationError, match="needs token_sha256, jwt_secret_env or kafka_"):
        load_settings(clients=[{"id": "nobody", "publish": {"types": ["*"]}}])


def test_a_zgw_clients_rsins_are_nine_digit_strings(tmp_path: Path) -> None:
    config = tmp_path / "gemeentebus.yaml"
    grant = '{types: ["nl.overheid.zaken.*"], sources: ["*"], rsins: [%s]}'
    client = "[{id: open-zaak, jwt_secret_env: X, publish: %s}]"
    config.write_text("clients: " + client % (grant % '"002220647"') + "\n")
    [open_zaak] = load_settings(config).clients
    assert open_zaak.publish is not None and open_zaak.publish.rsins == ("002220647",)
    for wrong in ("002220647", '"2220647"', '"*"'):  # unquoted YAML drops the leading zeros
        config.write_text("clients: " + client % (grant % wrong) + "\n")
        with pytest.raises(ConfigurationError, match="rsins"):
            load_settings(config)


@pytest.mark.parametrize(
    "principal", ["brp-publisher", "User:", "Group:brp", "User:brp publisher", "User:*", "User:a;b"]
)
def test_a_kafka_principal_is_user_and_a_name(principal: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(clients=[{"id": "brp", "kafka_principal": principal}])
    assert str(refused.value) == (
        "invalid configuration: clients.0.kafka_principal: must be User:<name> as the broker "
        "names it (e.g. User:brp-publisher; at most 255 characters, no space, '*' or ';')"
    )


def test_a_certificate_principal_is_a_name_too() -> None:
    [client] = load_settings(
        clients=[{"id": "brp", "kafka_principal": "User:CN=brp,OU=BRP,O=RvIG"}]
    ).clients
    assert client.kafka_principal == "User:CN=brp,OU=BRP,O=RvIG"


def test_one_principal_belongs_to_one_client() -> None:
    """Sharing it would let one principal write both ingress topics: the wider grant wins."""
    grant = {"types": ["nl.brp.*"], "sources": ["*"]}
    with pytest.raises(ConfigurationError, match="kafka_principal User:brp is given to more"):
        load_settings(
            clients=[
                {"id": "brp-a", "kafka_principal": "User:brp", "publish": grant},
                {"id": "brp-b", "kafka_principal": "User:brp", "publish": grant},
            ]
        )


def test_two_publishers_whose_topics_kafka_cannot_tell_apart_are_refused() -> None:
    grant = {"types": ["nl.brp.*"], "sources": ["*"]}
    with pytest.raises(ConfigurationError, match=r"brp\.a and brp_a would get ingress topics"):
        load_settings(
            clients=[
                {"id": "brp_a", "kafka_principal": "User:a", "publish": grant},
                {"id": "brp.a", "kafka_principal": "User:b", "publish": grant},
            ]
        )
    # only publishers get a topic: an HTTP client may have such an id
    load_settings(
        clients=[
            {"id": "brp_a", "kafka_principal": "User:a", "publish": grant},
            {"id": "brp.a", "token_sha256": "0" * 64, "publish": grant},
        ]
    )


def test_a_client_whose_consumer_groups_would_include_anothers_is_refused() -> None:
    """A KAFKA subscriber may use the groups `sub.<id>.*`: `a`'s would include `a.b`'s."""
    with pytest.raises(ConfigurationError, match=r"clients zaken and zaken\.app\.b have"):
        load_settings(
            clients=[
                {"id": "zaken", "kafka_principal": "User:zaken"},
                {"id": "zaken-x", "kafka_principal": "User:zaken-x"},  # sorts in between
                {"id": "zaken.app.b", "kafka_principal": "User:zaken-app-b"},
            ]
        )
    # dots alone are fine, and so is an id that merely starts with another's
    load_settings(
        clients=[
            {"id": "zaken.app", "kafka_principal": "User:zaken-app"},
            {"id": "zaken-app", "kafka_principal": "User:zaken-app-2"},
            {"id": "zaken.apps", "kafka_principal": "User:zaken-apps"},
            {"id": "zaken", "token_sha256": "0" * 64},  # no Kafka principal: no groups
        ]
    )


def test_the_metrics_token_comes_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMEENTEBUS_HTTP__METRICS_TOKEN", "from-env")
    assert load_settings().http.metrics_token_value() == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    with pytest.raises(ConfigurationError, match="not both"):
        load_settings(http={"metrics_token_file": token_file}).http.metrics_token_value()
    monkeypatch.delenv("GEMEENTEBUS_HTTP__METRICS_TOKEN")
    assert load_settings(http={"metrics_token_file": token_file}).http.metrics_token_value() == (
        "from-file"
    )
    assert load_settings().http.metrics_token_value() is None
