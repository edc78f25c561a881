"""Operator commands of the CLI: publish, replay, reconcile, dlq, bench. Thin, like `cli`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from streams.config import Settings
from streams.operations.audit import audited, cli_actor
from streams.operations.reconcile import Reconciliation
from streams.operations.subscription_set import opened

__all__ = ["add_operation_commands", "print_reconciliation", "rfc3339_time"]

Command = Callable[[argparse.Namespace, Settings], int]


def rfc3339_time(text: str) -> datetime:
    """An RFC 3339 time (a date alone means its start, UTC)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ids(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from streams.contract import codec
    from streams.contract.rules import dutch_today
    from streams.demo.generators import EventFactory
    from streams.ingress.client import KafkaPublisher

    if args.client is not None and args.client not in {c.id for c in settings.kafka_publishers()}:
        print(
            f"error: client {args.client} is no Kafka publisher in the configuration "
            "(it needs a publish grant and a kafka_principal)",
            file=sys.stderr,
        )
        return 2
    if args.generate:
        events = EventFactory(args.seed, today=dutch_today()).mixed(args.generate)
    else:
        raw = json.loads(Path(args.file).read_text()) if args.file else json.load(sys.stdin)
        events = [codec.from_json(obj) for obj in (raw if isinstance(raw, list) else [raw])]

    async def publish() -> str:
        async with KafkaPublisher(settings.kafka, client_id=args.client) as bus:
            for start in range(0, len(events), 500):
                await bus.publish(*events[start : start + 500])
                print(f"published {min(start + 500, len(events))}/{len(events)}", file=sys.stderr)
            return bus.topic

    topic = asyncio.run(publish())
    print(f"{len(events)} events in {topic}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from streams.operations.replay import replay_to_end
    from streams.operations.replay_log import ReplayStatus
    from streams.operations.replay_request import ReplayRequest

    ids = _ids(args.ids_file)
    request = ReplayRequest.model_validate(
        {"from": args.start, "to": args.end, "types": args.types or None,
         "ids": list(ids) if ids else None}
    )  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[n]}"))
    # Progress on stderr: stdout carries the result, for scripts.
    bar = Progress(*columns, TimeRemainingColumn(), transient=False, console=Console(stderr=True))
    task: TaskID | None = None

    def show(status: ReplayStatus) -> None:
        nonlocal task
        if task is None:  # the replay is queued: the bar appears
            bar.start()
            task = bar.add_task(f"replay into {args.subscription}", total=status.total or 1, n="")
        else:
            n = f"{status.written} written of {status.matched} matched"
            bar.update(task, completed=status.scanned, n=n)

    async def replayed() -> ReplayStatus:
        async with audited(settings, "replay", target=args.subscription) as note:
            note.add(request=request.model_dump(mode="json", by_alias=True, exclude_none=True))
            status = await replay_to_end(
                settings, args.subscription, request, actor=cli_actor(), progress=show
            )
            note.add(replay=status.id, state=status.state, written=status.written)
            if status.state != "done":
                note.fail(f"replay_{status.state}")
            return status

    try:
        status = asyncio.run(replayed())
        if task is not None:
            bar.update(task, completed=status.total or 1)
    finally:
        if task is not None:  # a bar that never appeared is not closed either (no blank line)
            bar.stop()
    print(json.dumps(status.public_dict(), default=str, indent=2))
    return 0 if status.state == "done" else 1


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from streams.operations.reconcile import reconcile

    held = _ids(args.held_file)

    async def run() -> Reconciliation:
        async with (
            audited(settings, "reconcile", target=args.subscription) as note,
            opened(settings) as store,
        ):
            found = await reconcile(settings, store, args.subscription, args.start, args.end, held)
            counts = {k: v for k, v in found.as_dict().items() if k in ("published", "delivered")}
            window = {"from": args.start.isoformat(), "to": args.end.isoformat()}
            held_count = None if held is None else len(held)
            note.add(window=window, held=held_count, consistent=found.consistent, **counts)
            return found

    result = asyncio.run(run())
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print_reconciliation(result)
    return 0 if result.consistent else 1


def print_reconciliation(result: Reconciliation, console: Console | None = None) -> None:
    """`gemeentebus reconcile`: the result as readable tables."""
    out = console or Console()
    data = result.as_dict()
    table = Table(title=f"reconciliation of {result.subscription}: {data['from']} – {data['to']}")
    table.add_column("side")
    table.add_column("events", justify="right")
    table.add_column("digest (SHA-256 of sorted ids)")
    for side in ("published", "delivered", "held"):
        if data[side] is not None:
            table.add_row(side, str(data[side]["count"]), data[side]["digest"][:16] + "…")
    out.print(table)
    missing = Table(title="missing")
    missing.add_column("what")
    missing.add_column("count", justify="right")
    missing.add_column("event ids (first 10)")
    labels = {
        "publishedNotDelivered": "published, not delivered",
        "deliveredNotPublished": "delivered, not published",
        "deliveredNotHeld": "delivered, not held by the subscriber",
        "publishedNotHeld": "published, not held by the subscriber",
    }
    for key, label in labels.items():
        ids = data["missing"][key]
        if ids is not None:
            missing.add_row(label, str(len(ids)), " ".join(ids[:10]))
    out.print(missing)
    if result.dead_lettered:
        out.print(f"{len(result.dead_lettered)} of the undelivered were dead-lettered")
    out.print("[green]consistent[/green]" if result.consistent else "[red]not consistent[/red]")


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from streams.delivery.dlq import list_dead_letters

    letters = asyncio.run(list_dead_letters(settings, args.subscription))
    for d in letters:
        print(
            f"{d.offset:>8}  {d.time}  {d.type}  {d.event_id}  {d.error}  "
            f"attempts={d.attempts}{'  (redriven)' if d.redriven else ''}"
        )
    print(f"{len(letters)} dead letter(s) for {args.subscription}", file=sys.stderr)
    return 0


def cmd_dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    from streams.delivery.dlq import redrive

    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task(f"redrive {args.subscription}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        async def redriven() -> int:
            async with audited(settings, "dlq_redrive", target=args.subscription) as note:
                count = await redrive(settings, args.subscription, progress=progress)
                note.add(redriven=count)
                return count

        count = asyncio.run(redriven())
    print(
        f"redriven {count} event(s) into {settings.kafka.topic_prefix}.deliver."
        f"{args.subscription}, in order"
    )
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from streams.bench import run_bench
    from streams.bench.runner import DEFAULT_SCENARIOS, SCENARIOS

    chosen = DEFAULT_SCENARIOS
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        known = {s.name: s for s in SCENARIOS}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(known)}")
            return 2
        chosen = tuple(known[name] for name in wanted)
    results = run_bench(settings, quick=args.quick, output=args.output, scenarios=chosen)
    met = sum(1 for f in results["figures"] if f["met"])
    print(
        f"{met}/{len(results['figures'])} targets met; results in {args.output} "
        f"({results['duration_s']:.0f}s)"
    )
    return 0  # timings never fail a run; a crash does


def add_operation_commands(
    commands: Any, *, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Register the operator commands on the `gemeentebus` subparsers; every command gets the
    options of `parents` (`--config`)."""
    publish = commands.add_parser(
        "publish",
        help="publish events into the ingress topic (validated first)",
        description="Publish structured-mode CloudEvents from a JSON file (one or a list) or "
        "stdin, or --generate N realistic events, with the Kafka publisher SDK.",
        parents=parents,
    )
    publish.add_argument("file", nargs="?", help="JSON file (default: stdin)")
    publish.add_argument("--generate", type=int, default=0, help="generate N events instead")
    publish.add_argument("--seed", type=int, default=1, help="seed for --generate")
    publish.add_argument(
        "--client",
        metavar="ID",
        help="as this Kafka publisher: into its own ingress topic, judged against its grant "
        "(default: the shared ingress topic)",
    )
    publish.set_defaults(func=cmd_publish)

    replay = commands.add_parser(
        "replay",
        help="replay events into one subscription (operator)",
        description="Replay a time window (optionally only some types) or a list of event ids "
        "from the events topics into a subscription, marked `replay`, with progress and ETA.",
        parents=parents,
    )
    replay.add_argument("subscription", help="subscription id")
    replay.add_argument("--from", dest="start", type=rfc3339_time, help="window start (RFC 3339)")
    replay.add_argument("--to", dest="end", type=rfc3339_time, help="window end (RFC 3339)")
    replay.add_argument("--types", nargs="*", help="only these event types")
    replay.add_argument("--ids-file", type=Path, help="file with one event id per line")
    replay.set_defaults(func=cmd_replay)

    reconcile = commands.add_parser(
        "reconcile",
        help="published vs delivered (vs held) for a subscription and window",
        description="Compare the events that matched a subscription in a window with the "
        "delivery log and, with --held-file, with the ids the subscriber holds. Exit 1 when "
        "anything is missing.",
        parents=parents,
    )
    reconcile.add_argument("subscription", help="subscription id")
    reconcile.add_argument("--from", dest="start", type=rfc3339_time, required=True)
    reconcile.add_argument("--to", dest="end", type=rfc3339_time, required=True)
    reconcile.add_argument("--held-file", type=Path, help="ids the subscriber holds, one a line")
    reconcile.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reconcile.set_defaults(func=cmd_reconcile)

    dlq = commands.add_parser("dlq", help="a subscription's dead letters")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = dlq_sub.add_parser(
        "list", help="list dead letters (no event data shown)", parents=parents
    )
    listing.add_argument("subscription", help="subscription id")
    listing.set_defaults(func=cmd_dlq_list)
    redrive = dlq_sub.add_parser(
        "redrive",
        help="deliver the dead letters again, in order, with a progress bar",
        parents=parents,
    )
    redrive.add_argument("subscription", help="subscription id")
    redrive.set_defaults(func=cmd_dlq_redrive)

    bench = commands.add_parser(
        "bench",
        help="benchmarks against the local broker; results as JSON",
        description="Run every benchmark scenario; write JSON and a Markdown table. Reports "
        "ratios to baselines measured in the same run; never fails on a timing.",
        parents=parents,
    )
    bench.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    bench.add_argument("--output", type=Path, default=Path("bench/results.json"))
    bench.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help="run only these scenarios (for profiling; `national` runs only when named)",
    )
    bench.set_defaults(func=cmd_bench)
