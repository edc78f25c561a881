"""The bus as deployed, for one scenario: `gemeentebus run --role api|worker|delivery` processes.

`write_config` writes the YAML (JSON, which YAML reads) every process of a scenario reads:
the brokers, a topic prefix of its own, a pseudonym key for synthetic data, and clients with
tokens for the publisher, the subscribers (granted every type and volgindicaties), the crowd
and the operator. `Bus` starts role processes
(each its own HTTP port on 127.0.0.1, stdout and stderr in a log file), kills, stops and
restarts them by their own handles, and notes every exit it did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from connectors.kafka_local import free_port_range
from streams.config import KafkaSettings
from streams.contract.schemas import registry

__all__ = ["CROWD", "OPERATOR", "PUBLISHER", "Bus", "Proc", "token", "write_config"]

PUBLISHER: Final = "chaos-publisher"
OPERATOR: Final = "chaos-operator"
# The owner of the subscriptions a scenario writes into the store itself (`spread`).
CROWD: Final = "chaos-crowd"
PSEUDONYM_KEY: Final = "gemeentebus-chaos"  # synthetic data only
# Lines of a process's log that the error of one that exited at start carries.
_LOG_TAIL: Final = 20
_START_S: Final = 180.0  # a restart may wait out its group's session timeout first


def token(client_id: str) -> str:
    """The bearer token of a chaos client (test credentials, made up per client)."""
    return f"chaos-token-{client_id}"


def _client(client_id: str, **grants: Any) -> dict[str, Any]:
    digest = hashlib.sha256(token(client_id).encode()).hexdigest()
    return {"id": client_id, "token_sha256": digest, **grants}


def write_config(
    path: Path,
    *,
    bootstrap: str,
    prefix: str,
    subscribers: list[str],
    nodes: int = 1,
    partitions: int = 4,
    deliver_partitions: int | None = None,
    retry_window_s: float = 900.0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The configuration file of one scenario's bus (see the module doc)."""
    types = list(registry().types())
    kafka: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "partitions": partitions,
        # as many as ingress unless said: the poison scenario writes into each of them
        "deliver_partitions": partitions if deliver_partitions is None else deliver_partitions,
        "replication_factor": min(nodes, 3),
        "min_insync_replicas": 2 if nodes >= 3 else 1,
        "request_timeout_s": 10.0,
    }
    if nodes == 1 and "allow_single_replica" in KafkaSettings.model_fields:
        kafka["allow_single_replica"] = True
    clients = [
        _client(PUBLISHER, publish={"types": types, "sources": ["*"]}),
        _client(OPERATOR, operator=True),
        # every subscription's owner is a client whose grant covers it, or routing suspends it
        *(
            _client(s, subscribe={"types": types, "purpose": f"chaos {s}", "volgindicaties": True})
            for s in (*subscribers, CROWD)
        ),
    ]
    config = {
        "mode": "test",
        "kafka": kafka,
        "security": {"pseudonym_key": PSEUDONYM_KEY},
        "http": {"host": "127.0.0.1", "port": 0},
        "delivery": {
            "retry_window_s": retry_window_s,
            "initial_backoff_s": 0.2,
            "max_backoff_s": min(2.0, retry_window_s / 3),
            "connect_timeout_s": 2.0,
            "read_timeout_s": 5.0,
        },
        "clients": clients,
        **(extra or {}),
    }
    path.write_text(json.dumps(config, indent=2))
    return path


@dataclass
class Proc:
    """One role process of the bus."""

    name: str
    role: str
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    expected_exit: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class Bus:
    """The role processes of one scenario (see the module doc)."""

    config: Path
    folder: Path
    bootstrap: str
    procs: dict[str, Proc] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)  # exits nobody asked for

    def _env(self, port: int) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith("GEMEENTEBUS_")}
        return kept | {
            "GEMEENTEBUS_CONFIG": str(self.config),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "GEMEENTEBUS_HTTP__PORT": str(port),
        }

    def command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """A `gemeentebus` command line on this bus's configuration, and its environment."""
        # --config on the command line: CI finds the processes of its own run by it.
        argv = [sys.executable, "-m", "streams.cli", "--config", str(self.config), *args]
        return argv, self._env(0)

    async def start(self, name: str, role: str, *, wait: bool = True) -> Proc:
        """Start (or restart) the process `name` of `role`; return once it runs (at once
        when not `wait`: `wait_running` later)."""
        proc = self.procs.get(name)
        if proc is None:
            port = free_port_range(1)
            proc = Proc(name, role, port, self.folder / f"{name}.log")
            self.procs[name] = proc
        argv, env = self.command("run", "--role", role)
        env["GEMEENTEBUS_HTTP__PORT"] = str(proc.port)
        with proc.log.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            # a Popen, not asyncio's: its handle is polled and signalled from anywhere
            proc.popen = subprocess.Popen(  # noqa: S603, ASYNC220 - fixed arguments, no shell
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        proc.started_at, proc.expected_exit = time.monotonic(), False
        if wait:
            await self.wait_running(proc)
        return proc

    async def wait_running(self, proc: Proc, within: float = _START_S) -> None:
        """Wait until the process says it runs (and its API answers HTTP at all: /health
        may say 503 while it is up, see the report of the first run)."""
        async with asyncio.timeout(within):
            while True:
                if not proc.alive:  # the log's end in the error: the folder may not be kept
                    tail = proc.log.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
                    raise RuntimeError(
                        f"{proc.name} exited at start; its log ({proc.log}) ends:\n"
                        + "\n".join(tail)
                    )
                text = proc.log.read_text(errors="replace").rsplit("--- start", 1)[-1]
                if "gemeentebus running" in text and (
                    proc.role != "api" or await http_status(proc.url + "/health") is not None
                ):
                    return
                await asyncio.sleep(0.2)

    def signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name]
        proc.expected_exit = True
        if proc.alive and proc.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)

    async def wait_exit(self, name: str, within: float) -> float | None:
        """Seconds until `name` exited, or None if it still runs after `within`."""
        proc, began = self.procs[name], time.monotonic()
        while proc.alive and time.monotonic() - began < within:  # noqa: ASYNC110 - polls
            await asyncio.sleep(0.05)
        return None if proc.alive else round(time.monotonic() - began, 2)

    async def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        await self.wait_exit(name, 30.0)

    def unexpected_exits(self) -> list[str]:
        """Processes that exited without being told to (noted once each)."""
        for proc in self.procs.values():
            if proc.popen is not None and not proc.alive and not proc.expected_exit:
                proc.expected_exit = True
                self.exits.append(f"{proc.name} exited with {proc.popen.returncode}")
        return self.exits

    async def stop(self) -> None:
        """SIGTERM every process, SIGKILL what still runs after 30 s."""
        for name in self.procs:
            self.signal(name, signal.SIGTERM)
        for name in self.procs:
            if await self.wait_exit(name, 30.0) is None:
                await self.kill(name)
        for proc in self.procs.values():
            if proc.popen is not None:
                proc.popen.wait()


async def http_status(url: str, **kwargs: Any) -> int | None:
    """The status of a GET (None when nothing answers)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0)) as session,
            session.get(url, **kwargs) as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
