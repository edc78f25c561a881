"""`gemeentebus run`: the HTTP API and the stream workers, together or as separate roles.

Roles, each a process that scales on its own (they share nothing but Kafka):
- `api`: the HTTP API (publishing, subscriptions, operations);
- `worker`: the validating stream (ingress → events, routed to the deliver topics);
- `delivery`: the webhook dispatcher (deliver topics → subscribers' endpoints);
- `all`: the three in one process (the default, and what the demo runs).
Several processes of a role share the work through Kafka consumer groups.

Every process answers `GET /health` (liveness) and `GET /ready` (readiness per role, with
the reasons) on `http.host`:`http.port`: the API role beside its routes, a `worker` or
`delivery` process on a small server of its own that also serves `/metrics`.

Starting waits at most `kafka.start_timeout_s` for the cluster, creates the bus's topics
that are missing, and refuses to start (a one-line error, exit 2) when the cluster refuses
the configured transport or credentials (naming the setting: `kafka.sasl_password`,
`kafka.ssl_cafile`, ...), when the cluster lacks the subscription set while deliver topics
exist (it was lost), or, in production, when the transport has no TLS (unless
`kafka.allow_plaintext`), when topics have one replica (unless `kafka.allow_single_replica`)
or keep ingress or deliver records for less than the retry window plus a margin (a warning
outside production).

Stopping: the first SIGTERM or SIGINT stops every role within `run.grace_s` (finished work
committed, unfinished work left to be redone by the next process); past it the process
exits with `EXIT_LATE` anyway, also when its event loop is wedged (a watchdog thread); a
second signal exits at once. A fault the process cannot mend (`Health.fail`) stops it the
same way, with `EXIT_FAILED`.

Reloading: SIGHUP re-reads the configuration the process was started with (the same file and
environment) and applies its `clients` at once (`reload_clients`): every subscription is
bound to its owner's new grant (suspended, or resumed), and the API authenticates the new
clients only. An invalid configuration is refused and the old one kept; one log line says
which. No other setting is reloaded: they need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Final, Literal, Protocol

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connectors.courier import STOP_DEADLINE_S
from connectors.dispatcher import Dispatcher
from streams.auth import Authenticator
from streams.config import Settings
from streams.contract.schemas import registry
from streams.exceptions import ConfigurationError, KafkaUnavailable
from streams.health import Health, health_app
from streams.http.api import METRICS_CONTENT_TYPE, make_api
from streams.http.kit import AUTHENTICATOR
from streams.http.limits import GuardedRunner
from streams.ingress import metrics
from streams.kafka.clients import make_producer
from streams.kafka.topics import (
    Topics,
    bus_topics,
    create_topics,
    describe_topics,
    durability_problems,
    existing_topics,
)
from streams.kafka.transport import check_access
from streams.kafka.watch import ClusterWatch
from streams.retry import CLUSTER_WAIT
from streams.routing.sealing import Keyring
from streams.routing.store import SubscriptionStore
from streams.routing.worker import Validator

__all__ = [
    "EXIT_FAILED",
    "EXIT_LATE",
    "ROLES",
    "Bus",
    "Role",
    "Say",
    "prepare_topics",
    "reload_clients",
    "run",
    "running_bus",
]


class Say(Protocol):
    """Where `run` reports its state: one line, and whether it is an error."""

    def __call__(self, line: str, *, error: bool = False) -> None: ...


log = logging.getLogger(__name__)

Role = Literal["all", "api", "worker", "delivery"]
ROLES: tuple[Role, ...] = ("all", "api", "worker", "delivery")

EXIT_FAILED: Final = 1  # the process gave up on a fault it cannot mend (Health.fail)
EXIT_LATE: Final = 3  # it did not stop within `run.grace_s`
# Leave the dispatcher's in-flight deliveries this much less than the whole grace period.
_STOP_MARGIN_S: Final = 3.0


@dataclass
class Bus:
    """What one `run` process has started; `stop()` undoes it in reverse order."""

    settings: Settings
    health: Health = field(default_factory=Health)
    store: SubscriptionStore | None = None
    validator: Validator | None = None
    dispatcher: Dispatcher | None = None
    producer: AIOKafkaProducer | None = None
    auth: Authenticator | None = None  # the API's, when this process serves it
    watch: ClusterWatch | None = None
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """The base URL of this process's HTTP server (the API, or health alone), with the
        real port when port 0 was asked."""
        if self.site is None or self.site._server is None:
            raise RuntimeError("this process runs no HTTP server")
        sockets = getattr(self.site._server, "sockets", None) or []
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"


def _roles(role: Role) -> tuple[str, ...]:
    return ("api", "worker", "delivery") if role == "all" else (role,)


async def _wait_for_cluster(settings: Settings) -> set[str]:
    """The cluster's topic names, once it answers; retried until the caller's bound. A
    cluster that refuses the credentials or the transport is a `ConfigurationError` at once:
    waiting does not mend a wrong password."""
    attempt = 0
    while True:
        try:
            # Asked first: aiokafka's clients log each refusal as an error of their own.
            await check_access(settings.kafka)
            return await existing_topics(settings.kafka)
        except KafkaError as exc:
            attempt += 1
            if attempt == 1:
                log.warning(
                    "waiting for the Kafka cluster at %s (%s)",
                    settings.kafka.bootstrap_servers,
                    type(exc).__name__,
                )
            await asyncio.sleep(CLUSTER_WAIT.delay(attempt))


def _publishers(settings: Settings) -> list[str]:
    """The Kafka publishers' client ids: each has an ingress topic of its own."""
    return [c.id for c in settings.kafka_publishers()]


def _quiet(step: str) -> None:
    pass


async def prepare_topics(settings: Settings, step: Callable[[str], None] = _quiet) -> None:
    """Create the bus's missing topics; refuse a lost subscription set and, in production,
    topics that can lose acknowledged records (`streams.kafka.topics.durability_problems`).
    `step` hears what it is doing now."""
    t = Topics(settings.kafka.topic_prefix)
    specs = bus_topics(settings.kafka, registry().types(), _publishers(settings))
    step(f"waiting for the Kafka cluster at {settings.kafka.bootstrap_servers}")
    present = await _wait_for_cluster(settings)
    deliver = sorted(n for n in present if n.startswith(t.deliver("")))
    if t.subscriptions not in present and deliver:
        raise ConfigurationError(
            f"topic {t.subscriptions} is missing while {len(deliver)} deliver topics exist: "
            "the subscription set was lost. Restore the topic, or run `gemeentebus topics "
            "create` to start again with no subscriptions"
        )
    step("creating the bus's missing topics")
    await create_topics(settings.kafka, specs)
    step("checking the topics' replication and retention")
    names = [*(s.name for s in specs), *deliver]
    while len(states := await describe_topics(settings.kafka, names)) < len(names):  # noqa: ASYNC110
        await asyncio.sleep(0.2)  # topics just created: until the metadata has them all
    problems = durability_problems(settings, states.values())
    if problems and settings.mode == "production":
        more = f" (and {len(problems) - 1} more like it)" if len(problems) > 1 else ""
        raise ConfigurationError(f"refusing to start in production: {problems[0]}{more}")
    for problem in problems:
        log.warning("%s", problem)


async def start(settings: Settings, role: Role = "all", *, health: Health | None = None) -> Bus:
    """Start the roles of this process; topics are created first when missing.

    The cluster, the topics and the subscription set must be there within
    `kafka.start_timeout_s`, else a `GemeentebusError` says which was not. Then the HTTP
    server answers (`/ready`: "starting") while the roles join their consumer groups, which
    after a crash may take the broker's session timeout, and is not bounded here: the
    cluster watch gives up on a cluster that lost the bus's topics meanwhile.
    """
    settings.security.pseudonym_key_bytes()  # refuse to start without a key
    Keyring.from_settings(settings)  # every role reads the sealed webhook secrets
    plaintext = settings.kafka.plaintext_problem()
    if plaintext is not None and settings.mode == "production":
        raise ConfigurationError(f"refusing to start in production: {plaintext}")
    bus = Bus(settings, health or Health(stall_after_s=settings.health.stall_after_s))
    metrics.watch_health(bus.health)
    roles = _roles(role)
    for name in roles:
        bus.health.role(name)  # "starting" until it started
    steps = ["preparing"]
    try:
        try:
            async with asyncio.timeout(settings.kafka.start_timeout_s):
                await prepare_topics(settings, steps.append)
                steps.append("reading the subscription set")
                bus.store = SubscriptionStore(settings, name=f"store-{role}", health=bus.health)
                await bus.store.start()
                await bus.store.ready()
        except TimeoutError as exc:
            raise KafkaUnavailable(
                f"the bus did not start within {settings.kafka.start_timeout_s:.0f}s "
                f"(kafka.start_timeout_s): still {steps[-1]}"
            ) from exc
        await _serve(bus, roles)
        topics = [
            s.name for s in bus_topics(settings.kafka, registry().types(), _publishers(settings))
        ]
        bus.watch = ClusterWatch(settings, bus.health, topics)
        await bus.watch.start()
        if "worker" in roles:
            bus.validator = Validator(settings, store=bus.store, health=bus.health)
            await bus.validator.start()
        if "delivery" in roles:
            bus.dispatcher = Dispatcher(settings, bus.store, health=bus.health)
            await bus.dispatcher.start()
    except BaseException:
        await stop(bus)
        raise
    for name in roles:
        bus.health.started(name)
    return bus


async def _serve(bus: Bus, roles: tuple[str, ...]) -> None:
    """The API with `/ready`, or for a process without it `/health`, `/ready`, `/metrics`."""
    settings = bus.settings
    if "api" in roles:
        assert bus.store is not None
        bus.producer = make_producer(settings, "api")
        await bus.producer.start()
        app = make_api(settings, producer=bus.producer, store=bus.store, health=bus.health)
        bus.auth = app[AUTHENTICATOR]
    else:

        async def serve_metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE}
            )

        app = health_app(bus.health, metrics=serve_metrics, settings=settings)
    # No access log: volgindicatie URLs carry a BSN.
    bus.runner = GuardedRunner(app, settings=settings, access_log=None)
    await bus.runner.setup()
    bus.site = web.TCPSite(bus.runner, settings.http.host, settings.http.port)
    await bus.site.start()
    log.info("%s listening on %s", "API" if "api" in roles else "health", bus.url)


async def stop(bus: Bus) -> None:
    """Stop what `start` started: HTTP first (no new input), then the streams."""
    if bus.runner is not None:
        await bus.runner.cleanup()
        bus.runner = bus.site = None
    if bus.watch is not None:
        await bus.watch.stop()
        bus.watch = None
    if bus.producer is not None:
        await bus.producer.stop()
        bus.producer = None
    if bus.dispatcher is not None:
        in_flight = max(1.0, bus.settings.run.grace_s - _STOP_MARGIN_S)
        await bus.dispatcher.stop(min(in_flight, STOP_DEADLINE_S))
        bus.dispatcher = None
    if bus.validator is not None:
        await bus.validator.stop()
        bus.validator = None
    if bus.store is not None:
        await bus.store.stop()
        bus.store = None


@asynccontextmanager
async def running_bus(settings: Settings, role: Role = "all") -> AsyncIterator[Bus]:
    """The bus, running for the duration of a `with` block (demo, tests, benchmarks)."""
    bus = await start(settings, role)
    try:
        yield bus
    finally:
        await stop(bus)


def reload_clients(bus: Bus, load: Callable[[], Settings]) -> tuple[bool, str]:
    """Apply the `clients` of a configuration read again by `load` to this running process
    (SIGHUP): grants on its subscription store (`SubscriptionStore.regrant`), clients of its
    API's authenticator. Whether they were applied, and the one line that says so or why
    not: an invalid configuration changes nothing. Other settings are not applied."""
    try:
        new = load()
        if bus.store is not None:
            bus.store.regrant(new)  # compiles every grant before it changes anything
    except ConfigurationError as exc:  # its message names keys, never their values
        return False, f"gemeentebus: configuration reload refused, the old one is kept: {exc}"
    if bus.auth is not None:
        bus.auth.reload(new)
    ignored = sorted(
        name
        for name in type(new).model_fields
        if name != "clients" and getattr(new, name) != getattr(bus.settings, name)
    )
    suspended = sum(1 for s in bus.store or () if s.suspension is not None)
    others = f"changed, kept until a restart: {', '.join(ignored)}" if ignored else "unchanged"
    return True, (
        f"configuration reloaded: {len(new.clients)} clients applied, {suspended} "
        f"subscriptions suspended; other settings are not reloaded ({others})"
    )


def settle_garbage_collector() -> None:
    """Keep full garbage collections short: everything built while starting (modules,
    schemas, clients, the subscription set) lives as long as the process, so it is collected
    once and frozen out of later collections. Unfrozen, each full collection walks it all:
    34 ms measured on a worker, a stall every ~16 s at 500 events/s that was most of the
    publish→webhook p99."""
    gc.collect()
    gc.freeze()


class _Watchdog:
    """Ends the process `grace_s` after it was armed, whatever its event loop is doing."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.grace_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        _exit_now(EXIT_LATE, f"did not stop within {self.grace_s:g}s (run.grace_s); exiting")


def _exit_now(code: int, message: str) -> None:
    # os.write: no lock a wedged main thread might hold; os._exit: no cleanup that might hang.
    with contextlib.suppress(OSError):
        os.write(2, f"gemeentebus: {message}\n".encode())
    os._exit(code)


def _logged(line: str, *, error: bool = False) -> None:
    log.log(logging.ERROR if error else logging.INFO, "%s", line)


async def run(
    settings: Settings,
    role: Role = "all",
    *,
    say: Say = _logged,
    reload: Callable[[], Settings] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, or until the process gives up; return the exit code.

    The first signal stops cleanly within `run.grace_s` (0), or exits `EXIT_LATE` at the
    deadline; a second exits at once (128 + signal). Giving up stops the same way and
    returns `EXIT_FAILED`. `say` hears the lines an operator watches for (running, gave up,
    stopped); the command line prints them. With `reload` (how the settings were read),
    SIGHUP applies the clients of the settings read again (`reload_clients`).
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    watchdog = _Watchdog(settings.run.grace_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A plain handler, not loop.add_signal_handler: it runs even when the loop is wedged.
        if watchdog.armed:
            _exit_now(128 + signum, f"{signal.Signals(signum).name} again: exiting at once")
        watchdog.arm()
        loop.call_soon_threadsafe(stopping.set)

    failed: list[str] = []

    def on_fail(reason: str) -> None:
        failed.append(reason)
        watchdog.arm()
        stopping.set()

    running: list[Bus] = []

    def reloaded(bus: Bus, load: Callable[[], Settings]) -> None:
        applied, line = reload_clients(bus, load)
        say(line, error=not applied)

    def too_early() -> None:
        say("gemeentebus: SIGHUP while starting: not reloaded; send it again", error=True)

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        assert reload is not None
        if running:
            loop.call_soon_threadsafe(reloaded, running[0], reload)
        else:
            loop.call_soon_threadsafe(too_early)

    health = Health(stall_after_s=settings.health.stall_after_s)
    health.on_fail.append(on_fail)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if reload is not None:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    stop_asked = asyncio.create_task(stopping.wait())
    try:
        starting = asyncio.create_task(start(settings, role, health=health))
        await asyncio.wait({starting, stop_asked}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # asked to stop while starting: `start` undoes itself
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return EXIT_FAILED if failed else 0
        bus = starting.result()
        running.append(bus)
        settle_garbage_collector()
        say(f"gemeentebus running (role {role}) on {bus.url}; Ctrl-C to stop")
        await stopping.wait()
        try:
            async with asyncio.timeout(settings.run.grace_s):
                await stop(bus)
        except TimeoutError:
            _exit_now(EXIT_LATE, f"did not stop within {settings.run.grace_s:g}s (run.grace_s)")
    finally:
        stop_asked.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        say(f"gemeentebus: gave up: {failed[0]}", error=True)
        return EXIT_FAILED
    say("gemeentebus stopped")
    return 0
