"""The local Apache Kafka broker: jars from Maven Central, KRaft mode, no Docker.

`LocalKafka(...).up()` fetches Kafka's jars once (`mvn dependency:copy-dependencies` on
`connectors/kafka/pom.xml`) into a cache outside the checkout, formats each node's data
folder once, starts the nodes in the background and returns when the cluster answers a
metadata request with every node. `down()` sends SIGTERM and waits.

`secure=True` gives the shape of a production cluster: clients connect over SASL_SSL
(SCRAM-SHA-512; the users, `admin` and `broker` and the `users` asked for, get their
passwords and are added when a node is formatted), the brokers
replicate over the same listener as the SCRAM user `broker`, and the controller listener
takes TLS with client certificates only (the brokers' own); the `StandardAuthorizer`
denies whatever no ACL allows, and only `User:admin` and the brokers are super users.
The CA, the certificate and the passwords are in `connectors.kafka_credentials`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from connectors.kafka_credentials import ADMIN, BROKER_CN, BROKER_USER, LocalCredentials
from streams.config import KafkaSettings
from streams.exceptions import ConfigurationError, KafkaUnavailable
from streams.kafka.clients import make_admin

__all__ = ["POM", "LocalKafka", "NodeStatus", "fetch_jars", "free_port_range"]

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
LOG4J = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"

_SINGLE_NODE = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.bootstrap.servers={quorum}
listeners={client}://localhost:{port},CONTROLLER://localhost:{controller_port}
advertised.listeners={client}://localhost:{port},CONTROLLER://localhost:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name={client}
listener.security.protocol.map=CONTROLLER:{controller},{client}:{client}
log.dirs={log_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor={replication}
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
default.replication.factor={replication}
min.insync.replicas={min_isr}
group.initial.rebalance.delay.ms=0
"""

# What `secure=True` adds: PEM key and certificates inline (the properties file is 0600).
_SECURE = """\
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{broker_user}" password="{broker_password}";
ssl.keystore.type=PEM
ssl.keystore.certificate.chain={chain}
ssl.keystore.key={key}
ssl.truststore.type=PEM
ssl.truststore.location={ca_file}
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{admin};User:{broker_user};User:CN={broker_cn}
"""


# Nodes this process started, kept so they are reaped, not garbage-collected while running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _need(program: str, install: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ConfigurationError(f"{program} not found: install {install}")
    return path


def fetch_jars(cache_dir: Path, *, progress: Callable[[str], None] = print) -> Path:
    """Kafka's jars in `cache_dir`, fetched with Maven when the pom changed or they are absent."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    libs = cache_dir / f"libs-{digest}"
    if (libs / ".complete").is_file():
        return libs
    mvn = _need("mvn", "Maven 3 (apt-get install maven)")
    _need("java", "Java 17 (apt-get install openjdk-17-jre-headless)")
    partial = cache_dir / f".libs-{digest}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    progress(f"fetching Apache Kafka jars from Maven Central into {libs} ...")
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise ConfigurationError("mvn could not fetch the Kafka jars: " + " | ".join(tail))
    (partial / ".complete").write_text(digest)
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    return libs


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# Listening ports are drawn below the kernel's ephemeral range: a port from that range can be
# taken between the check and the broker's bind by any outgoing connection of any process (a
# test's Kafka clients make hundreds), which lost a 3-node broker its third node once.
_LISTEN_FROM = 20000
_ports = random.SystemRandom()  # not the global one: tests draw hypothesis examples beside it


def _ephemeral_start() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_range(count: int) -> int:
    """A port p such that p .. p+count-1 are all free on 127.0.0.1 (for tests and tools),
    below the ephemeral range when the machine leaves room there."""
    top = _ephemeral_start() - count
    for _ in range(200):
        if top > _LISTEN_FROM:
            port = _ports.randrange(_LISTEN_FROM, top)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        if port + count < 65000 and all(_port_free(port + i) for i in range(count)):
            return port
    raise ConfigurationError(f"no {count} adjacent free ports on 127.0.0.1")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # a zombie still answers kill(0)
        del _CHILDREN[pid]
        return False
    return True


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node of the local cluster as `status` reports it."""

    node_id: int
    port: int
    pid: int | None
    running: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalKafka:
    """A single node or a small cluster of KRaft nodes on localhost.

    Node i (1-based) listens on `port + 2(i-1)` for clients and the next port for the
    controller quorum.
    """

    data_dir: Path
    cache_dir: Path
    nodes: int = 1
    port: int = 9092
    heap_mb: int = 512
    start_timeout_s: float = 90.0
    secure: bool = False
    # SCRAM users beside `admin` and `broker` (secure only): the bus's roles, test principals.
    users: tuple[str, ...] = ()

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"localhost:{self._port(i)}" for i in self._ids())

    @property
    def credentials(self) -> LocalCredentials:
        """The CA, broker certificate and passwords of a secure cluster (made by `up`)."""
        return LocalCredentials(self.data_dir / "credentials", users=self.users)

    def client_settings(self, user: str = ADMIN) -> dict[str, str]:
        """The `kafka.*` settings a client of this cluster needs (as `user` when secure)."""
        values = {"bootstrap_servers": self.bootstrap_servers}
        if self.secure:
            values |= {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": user,
                "sasl_password_file": str(self.credentials.password_file(user)),
                "ssl_cafile": str(self.credentials.ca_file),
            }
        return values

    def kafka_settings(self, user: str = ADMIN, **values: object) -> KafkaSettings:
        """`KafkaSettings` for a client of this cluster, with `values` on top."""
        return KafkaSettings.model_validate({**self.client_settings(user), **values})

    def _ids(self) -> range:
        return range(1, self.nodes + 1)

    def _port(self, node_id: int) -> int:
        return self.port + 2 * (node_id - 1)

    def _node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def _pidfile(self, node_id: int) -> Path:
        return self._node_dir(node_id) / "kafka.pid"

    def _pid(self, node_id: int) -> int | None:
        try:
            pid = int(self._pidfile(node_id).read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def status(self) -> list[NodeStatus]:
        """Each node: its port, its process, whether that process is alive."""
        out = []
        for i in self._ids():
            pid = self._pid(i)
            out.append(NodeStatus(node_id=i, port=self._port(i), pid=pid, running=pid is not None))
        return out

    def up(self, *, progress: Callable[[str], None] = print) -> str:
        """Start every node that is not running; return the bootstrap servers once ready."""
        if self.nodes not in (1, 3):
            raise ConfigurationError("--nodes must be 1 or 3 (a KRaft quorum needs a majority)")
        java = _need("java", "Java 17 (apt-get install openjdk-17-jre-headless)")
        if all(s.running for s in self.status()):
            progress(f"Kafka already running on {self.bootstrap_servers}")
            self._wait_ready()
            return self.bootstrap_servers
        libs = fetch_jars(self.cache_dir, progress=progress)
        self._check_ports()
        if self.secure:
            self._ensure_credentials()
        cluster_id = self._cluster_id(java, libs)
        for i in self._ids():
            if self._pid(i) is None:
                self._start_node(java, libs, i, cluster_id)
        progress(f"waiting for Kafka on {self.bootstrap_servers} ...")
        self._wait_ready()
        return self.bootstrap_servers

    def down(self, *, timeout_s: float = 60.0) -> None:
        """SIGTERM every node, wait for it to exit (SIGKILL after `timeout_s`)."""
        pids = [s.pid for s in self.status() if s.pid is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for i in self._ids():
            self._pidfile(i).unlink(missing_ok=True)

    def _ensure_credentials(self) -> None:
        """The credentials of every user; a user new to a node formatted without it is
        refused (SCRAM users are added at format time)."""
        creds = self.credentials
        formatted = [
            i for i in self._ids() if (self._node_dir(i) / "data" / "meta.properties").is_file()
        ]
        missing = creds.missing_users() if creds.complete else []
        if formatted and missing:
            raise ConfigurationError(
                f"the secure broker in {self.data_dir} was made without the Kafka user(s) "
                f"{', '.join(missing)}: remove that folder to make it anew with them (its "
                "data goes with it)"
            )
        creds.ensure()

    def _check_ports(self) -> None:
        for i in self._ids():
            if self._pid(i) is not None:
                continue
            for port in (self._port(i), self._port(i) + 1):
                if not _port_free(port):
                    raise ConfigurationError(
                        f"port {port} is in use by another process: stop it, or choose "
                        "another base port (--port, or local_kafka.port)"
                    )

    def _cluster_id(self, java: str, libs: Path) -> str:
        idfile = self.data_dir / "cluster.id"
        if idfile.is_file():
            return idfile.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = self._java(java, libs, "kafka.tools.StorageTool", "random-uuid")
        cluster_id = result.stdout.strip().splitlines()[-1]
        idfile.write_text(cluster_id)
        return cluster_id

    def _java(self, java: str, libs: Path, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [java, "-cp", f"{libs}/*", *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise ConfigurationError(f"{args[0]} failed: " + " | ".join(tail))
        return result

    def server_properties(self, node_id: int = 1) -> str:
        """The `server.properties` of node `node_id` (secure: after `up` made its credentials)."""
        voters = ",".join(f"localhost:{self._port(i) + 1}" for i in self._ids())
        text = _SINGLE_NODE.format(
            node_id=node_id,
            quorum=voters,
            client="SASL_SSL" if self.secure else "PLAINTEXT",
            controller="SSL" if self.secure else "PLAINTEXT",
            port=self._port(node_id),
            controller_port=self._port(node_id) + 1,
            log_dir=self._node_dir(node_id) / "data",
            replication=min(self.nodes, 3),
            min_isr=2 if self.nodes >= 3 else 1,
        )
        if self.secure:
            text += self._secure_properties()
        if self.nodes > 1:
            # A static quorum: every node knows every voter up front.
            quorum_voters = ",".join(f"{i}@localhost:{self._port(i) + 1}" for i in self._ids())
            text = text.replace(
                f"controller.quorum.bootstrap.servers={voters}",
                f"controller.quorum.voters={quorum_voters}",
            )
        return text

    def _secure_properties(self) -> str:
        creds = self.credentials

        def inline(path: Path) -> str:  # one properties line: newlines as \n escapes
            return path.read_text().strip().replace("\n", "\\n")

        return _SECURE.format(
            broker_user=BROKER_USER,
            broker_password=creds.password(BROKER_USER),
            chain=inline(creds.broker_chain),
            key=inline(creds.broker_key),
            ca_file=creds.ca_file,
            admin=ADMIN,
            broker_cn=BROKER_CN,
        )

    def _start_node(self, java: str, libs: Path, node_id: int, cluster_id: str) -> None:
        node = self._node_dir(node_id)
        (node / "logs").mkdir(parents=True, exist_ok=True)
        props = node / "server.properties"
        # 0600: a secure node's properties hold its private key and its SCRAM password.
        props.unlink(missing_ok=True)
        fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.server_properties(node_id))
        if not (node / "data" / "meta.properties").is_file():
            fmt = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)]
            if self.nodes == 1:
                fmt.append("--standalone")
            for user in self.credentials.all_users if self.secure else ():
                password = self.credentials.password(user)
                fmt += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
            self._java(java, libs, *fmt)
        with (node / "logs" / "stdout.log").open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
                [
                    java,
                    f"-Xms{self.heap_mb}m",
                    f"-Xmx{self.heap_mb}m",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dkafka.logs.dir={node / 'logs'}",
                    f"-Dlog4j2.configurationFile={LOG4J}",
                    "-cp",
                    f"{libs}/*",
                    "kafka.Kafka",
                    str(props),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it
            )
        _CHILDREN[process.pid] = process
        self._pidfile(node_id).write_text(str(process.pid))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            dead = [s.node_id for s in self.status() if not s.running]
            if dead:
                log = self._node_dir(dead[0]) / "logs" / "server.log"
                raise KafkaUnavailable(f"Kafka node {dead[0]} exited during start; see {log}")
            try:
                # Knock before asking: aiokafka logs every refused connection as an error.
                if all(_listening(self._port(i)) for i in self._ids()) and (
                    asyncio.run(_broker_count(self.kafka_settings(request_timeout_s=5.0)))
                    >= self.nodes
                ):
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
            time.sleep(0.5)
        raise KafkaUnavailable(
            f"Kafka on {self.bootstrap_servers} did not answer within "
            f"{self.start_timeout_s:.0f}s ({type(last).__name__ if last else 'too few nodes'})"
        )


async def _broker_count(settings: KafkaSettings) -> int:
    """How many brokers the cluster's metadata names (a real metadata request)."""
    admin = make_admin(settings, "local-kafka")
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    finally:
        await admin.close()
