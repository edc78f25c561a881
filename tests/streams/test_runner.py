"""`gemeentebus run` as a supervisor meets it: real processes, real signals, a real broker.

Start-up within a bound with a clear error, SIGTERM within the grace period (also when the
event loop is wedged), `/ready` that tells the truth, and an exit when the process cannot
go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kafka_reading import transport_env
from keys import PSEUDONYM_KEY, SECRETS_KEY

from connectors.kafka_local import LocalKafka, free_port_range
from streams.config import Settings, load_settings
from streams.contract import codec
from streams.contract.attributes import OVERLEDEN, VERHUISD
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.kafka.clients import make_admin
from streams.kafka.topics import Topics
from streams.runner import EXIT_FAILED, EXIT_LATE

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

START_WITHIN_S = 90.0  # two cores shared by many: a process may take a while to import

# A `gemeentebus run` whose stop never returns: the loop blocked, or awaiting forever.
WEDGED = "import time\nasync def stop(bus):\n    time.sleep(3600)\n"
SLOW = "import asyncio\nasync def stop(bus):\n    await asyncio.sleep(3600)\n"


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMEENTEBUS_")}
    env.update(
        {
            **transport_env(settings),
            "GEMEENTEBUS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "GEMEENTEBUS_KAFKA__PARTITIONS": "1",
            "GEMEENTEBUS_KAFKA__REPLICATION_FACTOR": "1",
            "GEMEENTEBUS_KAFKA__MIN_INSYNC_REPLICAS": "1",
            "GEMEENTEBUS_KAFKA__ALLOW_SINGLE_REPLICA": "true",
            "GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT": "true",  # the test broker: loopback
            "GEMEENTEBUS_HTTP__PORT": "0",
            "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY": PSEUDONYM_KEY,
            "GEMEENTEBUS_SECURITY__SECRETS_KEY": SECRETS_KEY,
            "GEMEENTEBUS_KAFKA__START_TIMEOUT_S": "120",  # a shared broker may be busy
            **extra,
        }
    )
    return env


@dataclass
class Running:
    """One `gemeentebus run` process, its output in files (a pipe could fill and block it)."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def url(self, within: float = START_WITHIN_S) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = re.search(r"running \(role \w+\) on (http://\S+);", self.stdout())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}: {self.stderr()[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"not running within {within}s: {self.stderr()[-2000:]}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def exit_code(self, within: float) -> tuple[int, float]:
        """The exit code, and how long after this call it came."""
        started = time.monotonic()
        code = self.process.wait(timeout=within)
        return code, time.monotonic() - started


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[Running] = []

    def start(settings: Settings, *args: str, patch: str | None = None, **env: str) -> Running:
        n = len(started)
        out, err = tmp_path / f"out-{n}.txt", tmp_path / f"err-{n}.txt"
        if patch is None:
            command = [sys.executable, "-m", "streams.cli", "run", *args]
        else:  # the same command, with `streams.runner.stop` replaced
            code = (
                f"{patch}\nimport sys\nimport streams.runner\nstreams.runner.stop = stop\n"
                "from streams.cli import main\nsys.exit(main(sys.argv[1:]))\n"
            )
            command = [sys.executable, "-c", code, "run", *args]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                command, env=_env(settings, **env), stdout=stdout, stderr=stderr
            )
        running = Running(process, out, err)
        started.append(running)
        return running

    yield start
    for running in started:  # only the processes this test started
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


async def _ready(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/ready") as response:
        return response.status, await response.json()


async def _until_ready(
    url: str, status: int, within: float = 60.0, *, saying: str = ""
) -> dict[str, Any]:
    """`/ready`'s body once it answers `status` (with a problem containing `saying`)."""
    async with asyncio.timeout(within):
        while True:
            try:
                got, body = await _ready(url)
            except aiohttp.ClientError:
                got, body = 0, {}
            problems = [p for role in body.get("roles", {}).values() for p in role["problems"]]
            if got == status and (not saying or any(saying in p for p in problems)):
                return body
            await asyncio.sleep(0.2)


async def test_sigterm_stops_every_role_within_the_grace_period(
    settings: Settings, spawn: Any
) -> None:
    bus = spawn(settings, "--role", "all", "--grace", "20")
    url = bus.url()
    body = await _until_ready(url, 200)
    assert set(body["roles"]) == {"api", "worker", "delivery"}
    bus.signal(signal.SIGTERM)
    code, took = bus.exit_code(within=30)
    assert code == 0, bus.stderr()[-2000:]
    assert took < 20
    assert "gemeentebus stopped" in bus.stdout()


@pytest.mark.parametrize("stop", [WEDGED, SLOW], ids=["loop-wedged", "stop-hangs"])
async def test_a_stop_that_hangs_exits_non_zero_at_the_deadline(
    settings: Settings, spawn: Any, stop: str
) -> None:
    bus = spawn(settings, "--role", "worker", "--grace", "2", patch=stop)
    bus.url()
    bus.signal(signal.SIGTERM)
    code, took = bus.exit_code(within=30)
    assert code == EXIT_LATE
    assert 1.5 <= took < 8
    assert "did not stop within 2s" in bus.stderr()


async def test_a_second_signal_exits_at_once(settings: Settings, spawn: Any) -> None:
    bus = spawn(settings, "--role", "delivery", "--grace", "60", patch=SLOW)
    bus.url()
    bus.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    bus.signal(signal.SIGINT)
    code, took = bus.exit_code(within=30)
    assert code == 128 + signal.SIGINT
    assert took < 5


async def test_an_unreachable_broker_is_a_clear_error_after_a_bounded_wait(
    settings: Settings, spawn: Any
) -> None:
    port = free_port_range(1)  # nothing listens there
    unreachable = settings.kafka.model_copy(update={"bootstrap_servers": f"localhost:{port}"})
    bus = spawn(
        settings.model_copy(update={"kafka": unreachable}),
        "--role",
        "worker",
        GEMEENTEBUS_KAFKA__START_TIMEOUT_S="3",
    )
    code, _ = bus.exit_code(within=60)
    assert code == 2
    last = bus.stderr().strip().splitlines()[-1]
    assert last == (
        "gemeentebus: the bus did not start within 3s (kafka.start_timeout_s): "
        f"still waiting for the Kafka cluster at localhost:{port}"
    )


async def test_a_deleted_subscription_topic_is_not_ready_then_an_exit(
    settings: Settings, spawn: Any
) -> None:
    bus = spawn(
        settings,
        "--role",
        "worker",
        GEMEENTEBUS_HEALTH__GIVE_UP_AFTER_S="4",
        GEMEENTEBUS_HEALTH__PROBE_INTERVAL_S="0.5",
    )
    url = bus.url()
    await _until_ready(url, 200)
    topic = Topics(settings.kafka.topic_prefix).subscriptions
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    deleted = time.monotonic()
    await _until_ready(url, 503, within=30, saying=f"topic {topic} is gone from the cluster")
    code, _ = bus.exit_code(within=60)
    took = time.monotonic() - deleted
    assert code == EXIT_FAILED
    # the store's reader or the cluster watch, whichever noticed first
    [gave_up] = [
        line for line in bus.stderr().splitlines() if line.startswith("gemeentebus: gave up")
    ]
    assert gave_up.startswith("gemeentebus: gave up: ") and topic in gave_up and "gone" in gave_up
    # no loop: every client of the process logs this once per metadata refresh until the
    # exit (seen from 4 to 590 lines, as the exit took its time); the spin this guards
    # against logged about 1,200 a second for as long as the process ran
    assert bus.stderr().count("not found in cluster metadata") < 300 * took


async def test_ready_of_a_worker_follows_its_broker_frozen_and_back(
    settings: Settings, spawn: Any, tmp_path: Path
) -> None:
    kafka = LocalKafka(
        data_dir=tmp_path / "kafka",
        cache_dir=load_settings().local_kafka.cache_dir,
        port=free_port_range(2),
    )
    bootstrap = await asyncio.to_thread(kafka.up, progress=lambda line: None)
    try:
        own = settings.kafka.model_copy(  # its own broker: plaintext, whatever the session's
            update={
                "bootstrap_servers": bootstrap,
                "security_protocol": "PLAINTEXT",
                "sasl_username": None,
                "sasl_password": None,
                "sasl_password_file": None,
                "ssl_cafile": None,
            }
        )
        bus = spawn(
            settings.model_copy(update={"kafka": own}),
            "--role",
            "worker",
            GEMEENTEBUS_HEALTH__PROBE_INTERVAL_S="0.5",
        )
        url = bus.url()
        await _until_ready(url, 200)
        [node] = kafka.status()
        assert node.pid is not None
        os.kill(node.pid, signal.SIGSTOP)
        try:
            frozen = f"the Kafka cluster at {bootstrap} does not answer"
            await _until_ready(url, 503, within=30, saying=frozen)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        await _until_ready(url, 200, within=60)
        bus.signal(signal.SIGTERM)
        code, _ = bus.exit_code(within=30)
        assert code == 0
    finally:
        await asyncio.to_thread(kafka.down)


# -- SIGHUP: the clients of the configuration, reloaded -----------------------------------------


def _client(client_id: str, **fields: Any) -> dict[str, Any]:
    token = hashlib.sha256(f"token-{client_id}".encode()).hexdigest()
    return {"id": client_id, "token_sha256": token, **fields}


def _as(client_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer token-{client_id}"}


_OPERATOR = _client("beheer", operator=True)
_PUBLISHER = _client("publisher", publish={"types": ["*"], "sources": ["*"]})


def _configure(path: Path, *subscribers: dict[str, Any]) -> None:
    path.write_text(json.dumps({"clients": [*subscribers, _OPERATOR, _PUBLISHER]}))  # YAML


def _move(seed: int) -> dict[str, Any]:
    event: dict[str, Any] = codec.to_json(
        EventFactory(seed, today=dutch_today()).verhuisd(soort="INTERGEMEENTELIJK")
    )
    for name in ("gemeentevan", "gemeentenaar"):  # the bus derives them from the data
        event.pop(name, None)
    return event


async def test_sighup_applies_the_clients_of_the_configuration_at_once(
    settings: Settings, spawn: Any, tmp_path: Path
) -> None:
    """A client removed from the configuration (or its type) kept receiving until every process
    was restarted: SIGHUP did not reload, it ended the process."""
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = web.AppRunner(app, shutdown_timeout=0.1)
    await receiver.setup()
    try:
        await web.TCPSite(receiver, "127.0.0.1", 0).start()
        sink = f"http://127.0.0.1:{receiver.addresses[0][1]}/hook"

        config = tmp_path / "gemeentebus.yaml"
        granted = _client("gemeente-0363", subscribe={"types": [VERHUISD, OVERLEDEN]})
        _configure(config, granted)
        bus = spawn(
            settings,
            "--role",
            "all",
            "--config",
            str(config),
            GEMEENTEBUS_DELIVERY__ALLOW_HTTP="true",  # the receiver: loopback, over http
            GEMEENTEBUS_DELIVERY__ALLOWED_PRIVATE_SINKS='["127.0.0.0/8"]',
        )
        url = bus.url()
        await _until_ready(url, 200)

        def moves() -> list[str]:
            return [e["id"] for e in got if e.get("type") == VERHUISD]

        async def until(condition: Any, within: float = 60.0) -> None:
            async with asyncio.timeout(within):
                while not condition():  # noqa: ASYNC110 - a tiny poll of what the receiver got
                    await asyncio.sleep(0.05)

        async with aiohttp.ClientSession(base_url=url) as http:

            async def publish(event: dict[str, Any]) -> None:
                headers = {"Content-Type": "application/cloudevents+json", **_as("publisher")}
                async with http.post("/events", data=json.dumps(event), headers=headers) as answer:
                    assert answer.status == 202, await answer.text()

            async def shown(sub_id: str) -> dict[str, Any]:
                async with http.get(f"/subscriptions/{sub_id}", headers=_as("beheer")) as answer:
                    assert answer.status == 200, await answer.text()
                    body: dict[str, Any] = await answer.json()
                    return body

            async def reload_until(wanted: str, code: str | None, sub_id: str) -> None:
                bus.signal(signal.SIGHUP)
                async with asyncio.timeout(30):
                    while True:
                        now = await shown(sub_id)
                        suspension = now.get("suspension", {})
                        if now["status"] == wanted and suspension.get("code") == code:
                            return
                        await asyncio.sleep(0.1)

            body = {"sink": sink, "protocol": "HTTP", "types": [VERHUISD]}
            owner = _as("gemeente-0363")
            async with http.post("/subscriptions", json=body, headers=owner) as answer:
                assert answer.status == 201, await answer.text()
                sub_id = (await answer.json())["id"]
            first = _move(1)
            await publish(first)
            await until(lambda: first["id"] in moves())

            # the client removed, then back without the type: suspended
            withdrawn = _client("gemeente-0363", subscribe={"types": [OVERLEDEN]})
            steps = ((2, (), "owner_unknown"), (3, (withdrawn,), "type_not_granted"))
            for seed, subscribers, code in steps:
                _configure(config, *subscribers)
                await reload_until("suspended", code, sub_id)
                await publish(_move(seed))
            async with http.get("/subscriptions", headers=_as("gemeente-0363")) as answer:
                assert answer.status == 200  # still a client (withdrawn's grant), only less granted
            _configure(config)
            await reload_until("suspended", "owner_unknown", sub_id)
            async with http.get("/subscriptions", headers=_as("gemeente-0363")) as answer:
                assert answer.status == 401  # a removed client's token no longer authenticates

            # the grant back: it resumes, and what came meanwhile was never routed to it
            _configure(config, granted)
            await reload_until("active", None, sub_id)
            resumed = _move(4)
            await publish(resumed)
            await until(lambda: resumed["id"] in moves())
            assert moves() == [first["id"], resumed["id"]]

            # a broken configuration: refused in one line, the old one kept, the process alive
            # YAML that does not parse; a grant naming a field that does not exist (valid
            # settings, refused when the grants are compiled: nothing of it may be applied)
            unknown = {"types": [VERHUISD], "fields": {VERHUISD: ["no.such.field"]}}
            for n, broken in enumerate(
                ("clients: [", json.dumps({"clients": [_client("x", subscribe=unknown)]})), 1
            ):
                config.write_text(broken)
                bus.signal(signal.SIGHUP)
                await until(lambda n=n: bus.stderr().count("configuration reload refused") == n, 30)
                assert bus.process.poll() is None
                assert (await shown(sub_id))["status"] == "active"
            last = _move(5)
            await publish(last)
            await until(lambda: last["id"] in moves())
        assert bus.stdout().count("configuration reloaded: ") == 4
        assert "other settings are not reloaded (unchanged)" in bus.stdout()
    finally:
        await receiver.cleanup()
