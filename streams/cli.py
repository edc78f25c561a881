"""The `gemeentebus` command: a thin layer over the library; it holds no logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from connectors.kafka_local import LocalKafka
from streams.config import Settings, load_settings
from streams.exceptions import GemeentebusError

__all__ = ["main"]

Command = Callable[[argparse.Namespace, Settings], int]


def _local_kafka(settings: Settings, nodes: int, port: int | None = None) -> LocalKafka:
    local = settings.local_kafka
    return LocalKafka(
        data_dir=local.data_dir / f"{nodes}-node",
        cache_dir=local.cache_dir,
        nodes=nodes,
        port=port or local.port,
        heap_mb=local.heap_mb if nodes == 1 else max(256, local.heap_mb * 3 // 4),
        start_timeout_s=local.start_timeout_s,
    )


def _clusters(args: argparse.Namespace, settings: Settings) -> list[LocalKafka]:
    sizes = [args.nodes] if args.nodes else [1, 3]
    return [_local_kafka(settings, n, args.port) for n in sizes]


def cmd_kafka_up(args: argparse.Namespace, settings: Settings) -> int:
    kafka = _local_kafka(settings, args.nodes or 1, args.port)
    bootstrap = kafka.up(progress=lambda line: print(line, file=sys.stderr))
    print(bootstrap)
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
            print(
                f"{kafka.nodes}-node cluster  node {node.node_id}  localhost:{node.port}  {state}"
            )
            any_running |= node.running
    return 0 if any_running else 3


def cmd_topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from streams.schemas import registry
    from streams.topics import bus_topics, create_topics

    specs = bus_topics(settings.kafka, registry().types())
    created = asyncio.run(create_topics(settings.kafka, specs))
    for name in created:
        print(f"created {name}")
    print(f"{len(specs)} topics present on {settings.kafka.bootstrap_servers}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemeentebus",
        description="The event bus of Dutch municipalities and base registries.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML configuration file (default: gemeentebus.yaml when present)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = commands.add_parser("kafka", help="the local Kafka broker (jars from Maven Central)")
    kafka_sub = kafka.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (
        ("up", cmd_kafka_up, "start the local broker; returns when it answers metadata"),
        ("down", cmd_kafka_down, "stop the local broker (SIGTERM, then wait)"),
        ("status", cmd_kafka_status, "report each node; exit 3 when none runs"),
    ):
        sub = kafka_sub.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--nodes",
            type=int,
            choices=(1, 3),
            default=None,
            help="1 (default for up) or 3 nodes on this host",
        )
        sub.add_argument("--port", type=int, default=None, help="client port of node 1")
        sub.set_defaults(func=func)

    topics = commands.add_parser("topics", help="the bus's Kafka topics")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = topics_sub.add_parser(
        "create",
        help="create the topics of SPEC §3 (idempotent)",
        description="Create the ingress, invalid, events and internal topics that are missing.",
    )
    create.set_defaults(func=cmd_topics_create)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gemeentebus` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        func: Command = args.func
        return func(args, settings)
    except GemeentebusError as exc:
        print(f"gemeentebus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
