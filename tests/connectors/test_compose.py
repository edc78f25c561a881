"""docker-compose.secure.yml cannot drift from `gemeentebus kafka up --secure`.

No Docker engine runs here, so the compose broker's own entrypoint (start.sh) runs on this
host against Kafka's real StorageTool (the jars `kafka up` uses). Only the server is left
out: its stand-in keeps the properties it was given. Those properties must be the local
secure broker's (`LocalKafka.server_properties`), key for key and value for value. Only
the hosts, ports and paths may differ."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connectors.kafka_credentials import LocalCredentials, scram_user
from connectors.kafka_local import POM, LocalKafka, fetch_jars
from streams.config import KafkaPrincipals, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.secure.yml"
BROKER = ROOT / "connectors" / "kafka" / "compose-secure"
# Where the broker listens and keeps its data: the compose network's, or this host's.
PLACES = {"listeners", "advertised.listeners", "controller.quorum.bootstrap.servers", "log.dirs",
          "ssl.truststore.location"}  # fmt: skip
CREDENTIALS = "/etc/gemeentebus/kafka"  # where the compose file mounts `kafka certs`' folder
ROLE_USERS = tuple(scram_user(p) for p in KafkaPrincipals().model_dump().values())


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def _compose() -> dict[str, dict[str, dict[str, object]]]:
    loaded: dict[str, dict[str, dict[str, object]]] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalKafka, dict[str, str], str]:
    """start.sh run on this host with a credentials folder like `gemeentebus kafka certs`
    makes. Returns the local secure broker that shares those credentials, the properties
    the server would have been started with, and the arguments StorageTool was given."""
    root = tmp_path_factory.mktemp("compose")
    local = LocalKafka(data_dir=root / "local", cache_dir=load_settings().local_kafka.cache_dir,
                       secure=True, users=ROLE_USERS)  # fmt: skip
    creds = LocalCredentials(local.credentials.folder, users=ROLE_USERS, hosts=("kafka",))
    creds.ensure()
    libs = fetch_jars(local.cache_dir, progress=lambda line: None)
    template = root / "server.properties"
    data = root / "data"
    text = (BROKER / "server.properties").read_text()
    template.write_text(re.sub(r"(?m)^log\.dirs=.*$", f"log.dirs={data}", text))
    bin_dir = root / "kafka" / "bin"
    bin_dir.mkdir(parents=True)
    storage, server = bin_dir / "kafka-storage.sh", bin_dir / "kafka-server-start.sh"
    storage.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {root}/storage.args\n'
                       f'exec java -cp "{libs}/*" kafka.tools.StorageTool "$@"\n')  # fmt: skip
    server.write_text(f'#!/bin/sh\ncp "$1" {root}/started.properties\n')
    for script in (storage, server):
        script.chmod(0o755)
    env = {**os.environ, "KAFKA_HOME": str(root / "kafka"),
           "GEMEENTEBUS_KAFKA_CREDENTIALS": str(creds.folder),
           "GEMEENTEBUS_KAFKA_PROPERTIES": str(template)}  # fmt: skip
    run = subprocess.run(["sh", str(BROKER / "start.sh")], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert (data / "meta.properties").is_file()  # formatted by the real StorageTool
    started = _parse((root / "started.properties").read_text())
    return local, started, (root / "storage.args").read_text()


def test_the_compose_broker_has_the_local_secure_brokers_properties(
    started: tuple[LocalKafka, dict[str, str], str],
) -> None:
    local, compose, _ = started
    ours = _parse(local.server_properties(1))
    assert sorted(compose) == sorted(ours)
    differ = {k for k in ours if compose[k] != ours[k]}
    assert differ <= PLACES, {k: (compose[k], ours[k]) for k in differ - PLACES}
    # the places: a node named kafka, every listener of the local one, data in the volume
    names = lambda v: sorted(re.findall(r"([A-Z_]+)://", v))  # noqa: E731
    assert names(compose["listeners"]) == names(ours["listeners"])
    assert "kafka:" in compose["advertised.listeners"]
    assert (BROKER / "server.properties").read_text().count("log.dirs=/var/lib/kafka/data") == 1
    assert compose["ssl.truststore.location"] == f"{CREDENTIALS}/{local.credentials.ca_file.name}"


def test_the_compose_broker_formats_with_every_scram_user(
    started: tuple[LocalKafka, dict[str, str], str],
) -> None:
    local, _, args = started
    creds = local.credentials
    given = {a for a in args.splitlines() if a.startswith("SCRAM-")}
    mechanism = local.client_settings()["sasl_mechanism"]
    assert given == {f"{mechanism}=[name={u},password={creds.password(u)}]"
                     for u in creds.all_users}  # fmt: skip
    assert set(ROLE_USERS) <= set(creds.all_users)


def test_the_compose_services_run_each_role_as_its_own_user_over_sasl_ssl() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]
    plain = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["kafka"]
    assert kafka["image"] == plain["image"]  # one Kafka version for both shapes
    version = str(kafka["image"]).split(":")[1]
    assert f"<kafka.version>{version}</kafka.version>" in POM.read_text()
    mounts = {str(v).split(":")[1] for v in kafka["volumes"]}  # type: ignore[attr-defined]
    assert {"/etc/gemeentebus/server.properties", "/etc/gemeentebus/start.sh"} <= mounts
    assert CREDENTIALS in mounts
    local = LocalKafka(data_dir=Path("/nonexistent"), cache_dir=Path("/nonexistent"),
                       secure=True).client_settings()  # fmt: skip
    users = {}
    for name in ("topics", "api", "worker", "delivery"):
        env = services[name]["environment"]
        assert isinstance(env, dict)
        for key in ("security_protocol", "sasl_mechanism"):
            assert env[f"GEMEENTEBUS_KAFKA__{key.upper()}"] == local[key], (name, key)
        user = env["GEMEENTEBUS_KAFKA__SASL_USERNAME"]
        assert env["GEMEENTEBUS_KAFKA__SASL_PASSWORD_FILE"] == f"{CREDENTIALS}/{user}.password"
        assert env["GEMEENTEBUS_KAFKA__SSL_CAFILE"] == f"{CREDENTIALS}/ca.crt"
        assert "GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT" not in env
        users[name] = user
    assert users == {"topics": "admin", "api": ROLE_USERS[0], "worker": ROLE_USERS[1],
                     "delivery": ROLE_USERS[2]}  # fmt: skip


def test_kafka_certs_makes_the_folder_the_compose_file_mounts(tmp_path: Path) -> None:
    """`gemeentebus kafka certs DIR --host kafka`: a certificate for `kafka`, a password per
    role; run again with another user, it keeps what it made and adds that user."""
    from cryptography import x509

    folder = tmp_path / "kafka-secure"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMEENTEBUS_", "KAFKA_"))}

    def certs(*args: str) -> str:
        command = [sys.executable, "-m", "streams.cli", "kafka", "certs", str(folder), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    certs("--host", "kafka")
    key = (folder / "broker.key").read_bytes()
    cert = x509.load_pem_x509_certificates((folder / "broker.crt").read_bytes())[0]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "kafka"} <= set(names.get_values_for_type(x509.DNSName))
    for user in ("admin", "broker", *ROLE_USERS):
        assert (folder / f"{user}.password").stat().st_mode & 0o777 == 0o600
    again = certs("--host", "kafka", "--user", "sub-a")
    assert "sub-a: " in again and "(new)" in again.split("sub-a: ")[1].splitlines()[0]
    assert (folder / "broker.key").read_bytes() == key  # made once
