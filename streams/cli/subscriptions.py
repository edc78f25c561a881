"""`gemeentebus subscriptions list|add|remove|apply`: the subscription set, as an operator sees
it on a terminal. The rules live in `streams.operations.subscription_set`; this module parses
the arguments and writes the tables and lines."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.operations import subscription_set as subs
from streams.operations.audit import audited
from streams.routing.subscriptions import Subscription

__all__ = ["add_subscription_commands", "describe", "dumps", "table"]


def table(subscriptions: Iterable[Subscription]) -> str:
    """The subscriptions as an aligned text table, one line each."""
    header = ("ID", "OWNER", "PROTOCOL", "STATUS", "TYPES", "SINK")
    rows = [header] + [
        (s.id, s.owner, s.protocol, _status(s), ",".join(s.types), s.sink)
        for s in sorted(subscriptions, key=lambda s: (s.owner, s.id))
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _status(subscription: Subscription) -> str:
    suspension = subscription.suspension
    shown = subscription.shown_status
    return f"{shown} ({suspension.code})" if suspension and shown == "suspended" else shown


def describe(applied: subs.Applied) -> str:
    """One line for the operator; a new subscription's signing secret is shown this once."""
    line = f"{applied.action} {applied.subscription.id}"
    if applied.signing_secret is not None:
        line += f"  signingSecret {applied.signing_secret} (shown once)"
    return line


def dumps(subscription: Subscription) -> str:
    """The public JSON of a subscription, indented."""
    return json.dumps(subscription.public_dict(), indent=2, ensure_ascii=False)


def cmd_subscriptions_list(args: argparse.Namespace, settings: Settings) -> int:
    async def listed() -> str:
        async with subs.opened(settings) as store:
            return table(store)

    print(asyncio.run(listed()))
    return 0


def cmd_subscriptions_add(args: argparse.Namespace, settings: Settings) -> int:
    entry = subs.read_entries(args.file)

    async def added() -> subs.Applied:
        async with audited(settings, "subscription_add") as note, subs.opened(settings) as store:
            applied = await subs.add(store, settings, entry)
            note.target = applied.subscription.id
            note.add(result=applied.action)
            return applied

    applied = asyncio.run(added())
    print(dumps(applied.subscription))
    print(describe(applied))
    return 0


def cmd_subscriptions_remove(args: argparse.Namespace, settings: Settings) -> int:
    async def removed() -> bool:
        async with (
            audited(settings, "subscription_delete", target=args.id) as note,
            subs.opened(settings) as store,
        ):
            found = await subs.remove(store, args.id)
            if not found:
                note.refuse("not_found")
            return found

    if not asyncio.run(removed()):
        print(f"gemeentebus: no subscription {args.id}", file=sys.stderr)
        return 1
    print(f"removed {args.id}")
    return 0


def cmd_subscriptions_apply(args: argparse.Namespace, settings: Settings) -> int:
    entries = subs.read_entries(args.file)

    async def applied() -> list[subs.Applied]:
        async with audited(settings, "subscriptions_apply") as note, subs.opened(settings) as store:
            try:
                plans = await subs.apply(store, settings, entries)
            except subs.PartlyApplied as exc:
                note.add(**_changes(exc.applied), refused=sorted(exc.refused.not_written))
                note.fail("topics_refused")
                raise
            note.add(**_changes(plans))
            return plans

    try:
        plans = asyncio.run(applied())
    except subs.PartlyApplied as exc:
        for plan in exc.applied:  # their secrets are shown now or never
            print(describe(plan))
        print(f"gemeentebus: {exc}", file=sys.stderr)
        return 1
    for plan in plans:
        print(describe(plan))
    return 0


def _changes(plans: Sequence[subs.Applied]) -> dict[str, Any]:
    """What `apply` changed, for the audit trail: the ids created and updated."""
    return {
        "created": sorted(p.subscription.id for p in plans if p.action == "created"),
        "updated": sorted(p.subscription.id for p in plans if p.action == "updated"),
        "unchanged": sum(1 for p in plans if p.action == "unchanged"),
    }


def add_subscription_commands(
    commands: Any, *, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Register `subscriptions ACTION` on the `gemeentebus` subparsers; every action gets the
    options of `parents` (`--config`)."""
    subscriptions = commands.add_parser(
        "subscriptions", help="the subscription set, with operator rights (needs the broker)"
    )
    subscriptions_sub = subscriptions.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = subscriptions_sub.add_parser(
        "list",
        help="print every subscription as a table",
        description="Print a table of all.",
        parents=parents,
    )
    listing.set_defaults(func=cmd_subscriptions_list)
    add = subscriptions_sub.add_parser(
        "add",
        help="add one subscription from a JSON or YAML file",
        description="Add (or replace) the subscription in FILE: the API's JSON shape plus "
        "`owner`, and `id` if it replaces one. A new one's signing secret is printed once.",
        parents=parents,
    )
    add.add_argument("file", type=Path, metavar="FILE", help="JSON or YAML file")
    add.set_defaults(func=cmd_subscriptions_add)
    remove = subscriptions_sub.add_parser(
        "remove",
        help="retire and delete a subscription",
        description="Retire and delete the subscription ID; its topics stay. Exit 1 if unknown.",
        parents=parents,
    )
    remove.add_argument("id", metavar="ID", help="the subscription id")
    remove.set_defaults(func=cmd_subscriptions_remove)
    apply = subscriptions_sub.add_parser(
        "apply",
        help="make the subscriptions in a YAML list so (idempotent)",
        description="Validate every entry of FILE (a YAML list; each with `id` and `owner`); "
        "if all are valid, put the new and changed ones and print what changed. The new ones' "
        "topics are created first, in a few requests; one whose topic the cluster refuses is "
        "not written and is named (exit 1), the others are. Subscriptions not in FILE are "
        "left alone.",
        parents=parents,
    )
    apply.add_argument("file", type=Path, metavar="FILE", help="YAML list of subscriptions")
    apply.set_defaults(func=cmd_subscriptions_apply)
