"""`gemeentebus kafka up|down|status` as a user runs it: real JVM brokers on free ports."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from keys import SECRETS_KEY

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import KafkaSettings, load_settings
from streams.exceptions import ConfigurationError
from streams.kafka.topics import TopicSpec, create_topics

pytestmark = pytest.mark.kafka


def _cli(*args: str, data_dir: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEMEENTEBUS_LOCAL_KAFKA__DATA_DIR": str(data_dir)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def _pids(data_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in data_dir.glob("*/node-*/kafka.pid")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


async def _round_trip(bootstrap: str, topic: str, replication: int) -> list[bytes]:
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        replication_factor=replication,
        min_insync_replicas=min(2, replication),
    )
    await create_topics(kafka, [TopicSpec(topic, 3)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"g-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < 10:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    values += [r.value for r in part]
        meta = consumer._client.cluster  # the replication the cluster reports
        replicas = {len(meta._partitions[topic][p].replicas) for p in meta._partitions[topic]}
    finally:
        await consumer.stop()
    assert replicas == {replication}
    return values


def test_up_status_down_single_node(tmp_path: Path) -> None:
    port = free_port_range(2)
    up = _cli("kafka", "up", "--port", str(port), data_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"localhost:{port}"
        again = _cli("kafka", "up", "--port", str(port), data_dir=tmp_path)
        assert again.returncode == 0 and "already running" in again.stderr
        status = _cli("kafka", "status", "--nodes", "1", "--port", str(port), data_dir=tmp_path)
        assert status.returncode == 0 and "running (pid" in status.stdout
        values = asyncio.run(_round_trip(f"localhost:{port}", "roundtrip", 1))
        assert values == [f"m{i}".encode() for i in range(10)]
        pids = _pids(tmp_path)
        assert len(pids) == 1 and _alive(pids[0])
    finally:
        down = _cli("kafka", "down", "--port", str(port), data_dir=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in pids), "a broker process survived `kafka down`"
    status = _cli("kafka", "status", "--nodes", "1", "--port", str(port), data_dir=tmp_path)
    assert status.returncode == 3 and "stopped" in status.stdout


def test_three_nodes_replicate(tmp_path: Path) -> None:
    port = free_port_range(6)
    up = _cli("kafka", "up", "--nodes", "3", "--port", str(port), data_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        bootstrap = up.stdout.strip()
        assert bootstrap.count("localhost:") == 3
        values = asyncio.run(_round_trip(bootstrap, "replicated", 3))
        assert values == [f"m{i}".encode() for i in range(10)]
        assert len([p for p in _pids(tmp_path) if _alive(p)]) == 3
    finally:
        pids = _pids(tmp_path)
        down = _cli("kafka", "down", "--nodes", "3", "--port", str(port), data_dir=tmp_path)
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in pids)


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = int(squatter.getsockname()[1])
        result = _cli("kafka", "up", "--port", str(port), data_dir=tmp_path)
    assert result.returncode == 2
    assert f"port {port} is in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_java_says_what_to_install(tmp_path: Path) -> None:
    result = _cli("kafka", "up", data_dir=tmp_path, path=str(Path(sys.executable).parent))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gemeentebus: java not found: install Java 17 (apt-get install openjdk-17-jre-headless)"
    )


def _exported(stdout: str) -> dict[str, str]:
    """The variables of `export K=V` lines, as a shell's eval would set them."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            key, _, value = shlex.split(line.removeprefix("export "))[0].partition("=")
            found[key] = value
    return found


def _role_lines(stdout: str) -> dict[str, dict[str, str]]:
    """Each role's settings from the `#   <role>: K=V K=V` comments of `kafka up --secure`."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("#   ") and ": " in line:
            role, _, assignments = line.removeprefix("#   ").partition(": ")
            found[role] = dict(a.partition("=")[::2] for a in shlex.split(assignments))
    return found


def test_a_secure_broker_made_without_a_user_asked_for_is_refused(tmp_path: Path) -> None:
    """SCRAM users are added when a node is formatted: a user new to a formatted node would
    never exist, so `up` refuses and names the folder, before making anything."""
    kafka = LocalKafka(
        data_dir=tmp_path,
        cache_dir=load_settings().local_kafka.cache_dir,
        port=free_port_range(2),
        secure=True,
    )
    kafka.credentials.ensure()
    (tmp_path / "node-1" / "data").mkdir(parents=True)
    (tmp_path / "node-1" / "data" / "meta.properties").write_text("version=1\n")  # formatted
    later = dataclasses.replace(kafka, users=("gemeentebus-api",))
    with pytest.raises(ConfigurationError, match=r"made without the Kafka user\(s\) "
                       r"gemeentebus-api: remove that folder"):  # fmt: skip
        later.up(progress=lambda line: None)
    assert not later.credentials.password_file("gemeentebus-api").exists()
    assert not later.status()[0].running


def test_three_secure_nodes_print_their_client_settings(tmp_path: Path) -> None:
    port = free_port_range(6)
    up = _cli("kafka", "up", "--nodes", "3", "--secure", "--port", str(port), data_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        env = _exported(up.stdout)
        assert env["GEMEENTEBUS_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["GEMEENTEBUS_KAFKA__SASL_USERNAME"] == "admin"
        assert "GEMEENTEBUS_KAFKA__SASL_PASSWORD" not in env  # only the file it is in
        password = Path(env["GEMEENTEBUS_KAFKA__SASL_PASSWORD_FILE"])
        assert password.stat().st_mode & 0o077 == 0
        assert password.read_text().strip() not in up.stdout + up.stderr
        # What a user does next: the bus's topics, three replicas each, through SASL_SSL.
        create = subprocess.run(
            [sys.executable, "-m", "streams.cli", "topics", "create"],
            capture_output=True,
            text=True,
            env={**os.environ, **env, "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": "secure3"},
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        assert create.returncode == 0, create.stderr
        assert "created secure3.ingress" in create.stdout
        # a user per role, printed with its password's file, and the roles' ACLs
        roles = _role_lines(up.stdout)
        assert set(roles) == {"api", "worker", "delivery", "operator"}
        for role, values in roles.items():
            assert values["GEMEENTEBUS_KAFKA__SASL_USERNAME"] == f"gemeentebus-{role}"
            role_password = Path(values["GEMEENTEBUS_KAFKA__SASL_PASSWORD_FILE"])
            assert role_password.stat().st_mode & 0o077 == 0
        acls = subprocess.run(  # it reads the subscription set: the secrets key too
            [sys.executable, "-m", "streams.cli", "acls", "apply"],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                **env,
                "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": "secure3",
                "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
            },
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        assert acls.returncode == 0, acls.stderr
        assert "created  User:gemeentebus-worker READ topic secure3.ingress" in acls.stdout
        status = _cli("kafka", "status", "--secure", "--port", str(port), data_dir=tmp_path)
        assert status.stdout.count("3-node secure cluster") == 3
        assert status.stdout.count("running (pid") == 3
    finally:
        pids = _pids(tmp_path)
        down = _cli("kafka", "down", "--secure", "--port", str(port), data_dir=tmp_path)
    assert down.returncode == 0, down.stderr
    assert len(pids) == 3 and not any(_alive(p) for p in pids)


def test_free_ports_are_drawn_below_the_ephemeral_range() -> None:
    # Outgoing connections take their local ports from the ephemeral range; a broker port
    # from there could be taken between the check and the broker's bind.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port_range(6)
        assert port + 6 <= low, (port, low)
