"""The `gemeentebus` command: a thin layer over the library; it holds no logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from connectors.kafka_credentials import LocalCredentials, scram_user
from connectors.kafka_local import LocalKafka
from streams.cli.acls import add_acl_commands
from streams.cli.audit import add_audit_commands
from streams.cli.operations import add_operation_commands
from streams.cli.secrets import add_secrets_commands
from streams.cli.subscriptions import add_subscription_commands
from streams.config import ENV, Settings, load_settings
from streams.exceptions import GemeentebusError
from streams.kafka.acls import ROLES
from streams.operations.audit import audited

__all__ = ["main", "parse", "settings_for"]

Command = Callable[[argparse.Namespace, Settings], int]
CONFIG_HELP = "YAML configuration file (default: gemeentebus.yaml when present)"


def _local_kafka(
    settings: Settings,
    nodes: int,
    port: int | None = None,
    *,
    secure: bool = False,
    users: tuple[str, ...] = (),
) -> LocalKafka:
    local = settings.local_kafka
    return LocalKafka(
        data_dir=local.data_dir / f"{nodes}-node{'-secure' if secure else ''}",
        cache_dir=local.cache_dir,
        nodes=nodes,
        port=port or local.port,
        heap_mb=local.heap_mb if nodes == 1 else max(256, local.heap_mb * 3 // 4),
        start_timeout_s=local.start_timeout_s,
        secure=secure,
        users=users,
    )


def _role_users(settings: Settings) -> dict[str, str]:
    """The SCRAM user of each role's principal (`kafka.principals`), for the local broker."""
    principals = settings.kafka.principals
    return {role: scram_user(getattr(principals, role)) for role in ROLES}


def _clusters(args: argparse.Namespace, settings: Settings) -> list[LocalKafka]:
    sizes = [args.nodes] if args.nodes else [1, 3]
    kinds = [True] if args.secure else [False, True]
    return [_local_kafka(settings, n, args.port, secure=s) for n in sizes for s in kinds]


def cmd_kafka_up(args: argparse.Namespace, settings: Settings) -> int:
    roles = _role_users(settings) if args.secure else {}
    users = tuple(roles.values())
    kafka = _local_kafka(settings, args.nodes or 1, args.port, secure=args.secure, users=users)
    bootstrap = kafka.up(progress=lambda line: print(line, file=sys.stderr))
    if not args.secure:
        print(bootstrap)
        return 0
    print("# the client settings of this cluster (user admin); eval \"$(gemeentebus kafka up "
          "--secure)\" puts them in your shell")  # fmt: skip
    for key, value in kafka.client_settings().items():
        print(f"export {ENV['prefix']}KAFKA__{key.upper()}={shlex.quote(value)}")
    print("# each role as its own user: the same, with these two (run `gemeentebus topics "
          "create` and `gemeentebus acls apply` as admin first)")  # fmt: skip
    for role, user in roles.items():
        creds = kafka.client_settings(user)
        env = (f"{ENV['prefix']}KAFKA__{key.upper()}={shlex.quote(creds[key])}"
               for key in ("sasl_username", "sasl_password_file"))  # fmt: skip
        print(f"#   {role}: {' '.join(env)}")
    return 0


def cmd_kafka_down(args: argparse.Namespace, settings: Settings) -> int:
    for kafka in _clusters(args, settings):
        running = [s for s in kafka.status() if s.running]
        if running:
            print(f"stopping {len(running)} Kafka node(s) on {kafka.bootstrap_servers}")
            kafka.down()
    return 0


def cmd_kafka_status(args: argparse.Namespace, settings: Settings) -> int:
    any_running = False
    for kafka in _clusters(args, settings):
        for node in kafka.status():
            state = f"running (pid {node.pid})" if node.running else "stopped"
            kind = "secure " if kafka.secure else ""
            print(
                f"{kafka.nodes}-node {kind}cluster  node {node.node_id}  localhost:{node.port}  "
                f"{state}"
            )
            any_running |= node.running
    return 0 if any_running else 3


def cmd_kafka_certs(args: argparse.Namespace, settings: Settings) -> int:
    users = (*_role_users(settings).values(), *args.user)
    creds = LocalCredentials(args.folder, users=users, hosts=tuple(args.host))
    made = creds.ensure()
    print(f"{creds.folder}: the CA ({creds.ca_file.name}), the broker's certificate and key, "
          "and a password per user:")  # fmt: skip
    for user in creds.all_users:
        state = "new" if user in made else "kept"
        print(f"  {user}: {creds.password_file(user)} ({state})")
    return 0


def cmd_topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from streams.contract.schemas import registry
    from streams.kafka.topics import bus_topics, create_topics

    publishers = [c.id for c in settings.kafka_publishers()]  # each has an ingress topic
    specs = bus_topics(settings.kafka, registry().types(), publishers)

    async def made() -> list[str]:
        created = await create_topics(settings.kafka, specs)  # the audit topic among them
        async with audited(settings, "topics_create") as note:
            note.add(created=len(created), present=len(specs))
        return created

    created = asyncio.run(made())
    for name in created:
        print(f"created {name}")
    print(f"{len(specs)} topics present on {settings.kafka.bootstrap_servers}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from streams.runner import run

    def with_grace(settings: Settings) -> Settings:
        if args.grace is None:
            return settings
        return settings.model_copy(
            update={"run": settings.run.model_copy(update={"grace_s": args.grace})}
        )

    def reread() -> Settings:  # SIGHUP: the same file, environment and options; clients apply
        return with_grace(settings_for(args))

    return asyncio.run(run(with_grace(settings), args.role, say=_say, reload=reread))


def _say(line: str, *, error: bool = False) -> None:
    print(line, file=sys.stderr if error else sys.stdout, flush=True)


def cmd_schemas_check(args: argparse.Namespace, settings: Settings) -> int:
    from streams.contract.evolution import check_registry
    from streams.contract.schemas import registry

    reg = registry()
    findings = check_registry(reg)
    for finding in findings:
        print(f"{finding.type}: {finding.message}")
    if not findings:
        for event_type in reg.types():
            print(f"{event_type}: {len(reg.versions(event_type))} version(s), compatible")
    return 1 if findings else 0


def cmd_schemas_publish(args: argparse.Namespace, settings: Settings) -> int:
    from streams.contract.evolution import publish_checked
    from streams.contract.schemas import registry

    reg = registry()
    refused = False
    for event_type in args.types or reg.source_types():
        version, problems = publish_checked(reg, event_type)
        for problem in problems:
            print(f"refused {problem.type}: {problem.message}")
        refused |= bool(problems)
        if version is not None:
            print(f"published {version.dataschema}")
    return 1 if refused else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo.run import run_demo

    asyncio.run(run_demo(events=args.events, seed=args.seed, secure=args.secure))
    return 0


def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    from streams.chaos import SCENARIOS, run_chaos

    known = {s.name: s for s in SCENARIOS}
    wanted = [n.strip() for n in (args.only or "").split(",") if n.strip()] or list(known)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    chosen = [known[n] for n in wanted]
    result = run_chaos(
        settings, quick=args.quick, output=args.output, scenarios=chosen, keep=args.keep
    )
    print(args.output.with_suffix(".md").read_text())
    print(f"{result['passed']}/{len(chosen)} scenarios passed in {result['duration_s']:.0f} s; "
          f"results in {args.output}")  # fmt: skip
    return 0 if result["ok"] else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemeentebus",
        description="The event bus of Dutch municipalities and base registries.",
    )
    parser.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    # `gemeentebus run --config FILE` (SPEC §7) too: given after the command, it wins; not
    # given there, it leaves the one before the command alone (no default of its own).
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    takes_config = [config]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = commands.add_parser("kafka", help="the local Kafka broker (jars from Maven Central)")
    kafka_sub = kafka.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (
        ("up", cmd_kafka_up, "start the local broker; returns when it answers metadata"),
        ("down", cmd_kafka_down, "stop the local broker (SIGTERM, then wait)"),
        ("status", cmd_kafka_status, "report each node; exit 3 when none runs"),
    ):
        sub = kafka_sub.add_parser(name, help=text, description=text, parents=takes_config)
        sub.add_argument(
            "--nodes",
            type=int,
            choices=(1, 3),
            default=None,
            help="1 (default for up) or 3 nodes on this host",
        )
        sub.add_argument("--port", type=int, default=None, help="client port of node 1")
        sub.add_argument(
            "--secure",
            action="store_true",
            help="TLS and SASL/SCRAM for clients, ACLs enforced (up: prints the client "
            "settings; down, status: only the secure cluster)",
        )
        sub.set_defaults(func=func)

    text = "make a CA, a broker certificate and SCRAM passwords (as `kafka up --secure`)"
    certs = kafka_sub.add_parser(
        "certs",
        help=text,
        description=text + " in a folder, for a broker started elsewhere "
        "(docker-compose.secure.yml mounts it). Users: admin, broker, each role's "
        "(kafka.principals) and --user. Made once: run again, it adds only new users' "
        "passwords.",
        parents=takes_config,
    )
    certs.add_argument("folder", type=Path, help="where (created 0700; keys, passwords 0600)")
    certs.add_argument(
        "--host", action="append", default=[], help="another name of the broker (repeatable)"
    )
    certs.add_argument(
        "--user", action="append", default=[], help="another SCRAM user (repeatable)"
    )
    certs.set_defaults(func=cmd_kafka_certs)

    topics = commands.add_parser("topics", help="the bus's Kafka topics")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = topics_sub.add_parser(
        "create",
        help="create the topics of SPEC §3 (idempotent)",
        description="Create the ingress (shared, and one per Kafka publisher of the "
        "configuration), invalid, events and internal topics that are missing.",
        parents=takes_config,
    )
    create.set_defaults(func=cmd_topics_create)

    run = commands.add_parser(
        "run",
        help="run the bus: HTTP API and stream workers",
        description="Run the bus until SIGTERM/SIGINT. Needs a BSN pseudonym key and, in "
        "production, security.secrets_key (`gemeentebus secrets new-key`). Every "
        "process serves GET /health and GET /ready (per role, with reasons) on http.host:"
        "http.port. Exit codes: 0 stopped cleanly; 1 gave up on a fault it cannot mend "
        "(a topic gone, the subscription reader dying); 2 could not start (configuration, "
        "cluster, topics: one line says why); 3 did not stop within the grace period; "
        "128+N a second signal N.",
        parents=takes_config,
    )
    run.add_argument(
        "--role",
        choices=("all", "api", "worker", "delivery"),
        default="all",
        help="all (default); api: the HTTP API; worker: validate and route; "
        "delivery: the webhook dispatcher",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop within this long after SIGTERM, else exit 3 (default run.grace_s: 25)",
    )
    run.set_defaults(func=cmd_run)

    schemas = commands.add_parser("schemas", help="the Avro schemas and their evolution")
    schemas_sub = schemas.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = schemas_sub.add_parser(
        "check",
        help="check published versions: unchanged, compatible, source published",
        description="Exit 1 and name every breaking change or unpublished source change.",
    )
    check.set_defaults(func=cmd_schemas_check)
    publish = schemas_sub.add_parser(
        "publish",
        help="publish changed sources as new versions (refused if breaking)",
        description="Write schemas/avro/published/<type>/<n+1>.avsc for each changed source.",
    )
    publish.add_argument("types", nargs="*", help="event types (default: all)")
    publish.set_defaults(func=cmd_schemas_publish)

    add_subscription_commands(commands, parents=takes_config)
    add_operation_commands(commands, parents=takes_config)
    add_secrets_commands(commands, parents=takes_config)
    add_acl_commands(commands, parents=takes_config)
    add_audit_commands(commands, parents=takes_config)

    chaos = commands.add_parser(
        "chaos",
        help="the fault-injection suite on private local brokers; results as JSON",
        description="Kill, stop and poison the bus as deployed; count what each subscriber "
        "lost, got twice or out of order. Exit 1 when anything was lost or reordered.",
        parents=takes_config,
    )
    chaos.add_argument("--quick", action="store_true", help="small counts (under 10 minutes)")
    chaos.add_argument("--only", metavar="NAME[,NAME]", help="run only these scenarios")
    chaos.add_argument("--output", type=Path, default=Path("chaos/results.json"))
    chaos.add_argument("--keep", action="store_true", help="keep the logs and broker data")
    chaos.set_defaults(func=cmd_chaos)

    demo = commands.add_parser(
        "demo",
        help="the bus with realistic traffic on a private local broker",
        description="Start a broker and the bus, publish events (some invalid), show counts, "
        "print a summary and stop everything.",
    )
    demo.add_argument("--events", type=int, default=2000, help="how many events (default 2000)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the event generator")
    demo.add_argument(
        "--secure",
        action="store_true",
        help="on a private broker secured like `kafka up --secure` (SASL_SSL, SCRAM, ACLs)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line (`argparse` exits on a bad one)."""
    return _parser().parse_args(argv)


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings a parsed command runs with: its `--config` file (before or after the
    command), the environment over it, demo mode for `demo`."""
    overrides = {"mode": "demo"} if args.command == "demo" else {}
    return load_settings(args.config, **overrides)


# Commands that start brokers and processes of their own and stop them when they end.
_OWNS_PROCESSES = frozenset({"demo", "chaos", "bench"})


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: asyncio cancels the command's main task, so what it started (its
    brokers, its bus processes) is stopped on the way out, not left running.

    A command started in the background by a script inherits SIGINT ignored (POSIX shells do
    that to `&` jobs): raising SIGINT would then do nothing, so the interrupt is raised here."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gemeentebus` console script."""
    args = parse(argv)
    if args.command in _OWNS_PROCESSES:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        settings = settings_for(args)
        func: Command = args.func
        return func(args, settings)
    except GemeentebusError as exc:
        print(f"gemeentebus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
