"""`gemeentebus acls apply|list`: the bus's Kafka ACLs on a terminal. What they are and how
they are made is `streams.kafka.acls` and `streams.operations.acls`; this module prints."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from streams.config import Settings
from streams.kafka.acls import Acl, AclPlan
from streams.operations.acls import apply_acls, plan_acls
from streams.operations.audit import audited

__all__ = ["acl_lines", "add_acl_commands", "summary"]


def acl_lines(done: AclPlan, *, dry_run: bool = False) -> list[str]:
    """One line per ACL created or deleted, then the ACLs not the bus's, then the notes."""
    created, deleted = ("would create", "would delete") if dry_run else ("created", "deleted")
    lines = [f"{created}  {acl}" for acl in done.create]
    lines += [f"{deleted}  {acl}" for acl in done.delete]
    lines += [f"left alone (not the bus's)  {acl}" for acl in done.foreign]
    lines += [f"note: {note}" for note in done.notes]
    return lines


def summary(done: AclPlan, *, dry_run: bool = False) -> str:
    counts = f"{len(done.create)} to create, {len(done.delete)} to delete" if dry_run else (
        f"{len(done.create)} created, {len(done.delete)} deleted"
    )  # fmt: skip
    tail = " (dry run: nothing changed)" if dry_run else ""
    return f"{counts}, {len(done.keep)} in place{tail}"


def _table(done: AclPlan) -> str:
    states: list[tuple[Acl, str]] = [(a, "in place") for a in done.keep]
    states += [(a, "missing: acls apply creates it") for a in done.create]
    states += [(a, "stale: acls apply deletes it") for a in done.delete]
    states += [(a, "not the bus's: left alone") for a in done.foreign]
    rows = [("PRINCIPAL", "ACL", "STATE")]
    for acl, state in sorted(states):
        rows.append((acl.principal, str(acl).removeprefix(acl.principal + " "), state))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{p.ljust(widths[0])}  {a.ljust(widths[1])}  {s}" for p, a, s in rows)


def cmd_acls_apply(args: argparse.Namespace, settings: Settings) -> int:
    async def applied() -> AclPlan:
        if args.dry_run:  # changes nothing: nothing to record
            return await apply_acls(settings, dry_run=True)
        async with audited(settings, "acls_apply") as note:
            done = await apply_acls(settings)
            note.add(created=len(done.create), deleted=len(done.delete), kept=len(done.keep))
            return done

    done = asyncio.run(applied())
    for line in acl_lines(done, dry_run=args.dry_run):
        print(line)
    print(summary(done, dry_run=args.dry_run))
    return 0


def cmd_acls_list(args: argparse.Namespace, settings: Settings) -> int:
    done = asyncio.run(plan_acls(settings))
    print(_table(done))
    for note in done.notes:
        print(f"note: {note}")
    return 0


def add_acl_commands(commands: Any, *, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `acls ACTION` on the `gemeentebus` subparsers."""
    acls = commands.add_parser(
        "acls",
        help="the Kafka ACLs of the bus's roles and clients (needs a super user)",
        description="Least privilege on a secured cluster: one principal per role "
        "(kafka.principals), each KAFKA subscriber reading only its own deliver topics, each "
        "Kafka publisher writing only its own ingress topic.",
    )
    acls_sub = acls.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = acls_sub.add_parser(
        "apply",
        help="create the ACLs the configuration and subscriptions want, delete stale ones",
        description="Compute the ACLs from the configuration and the subscription set, create "
        "the missing ones and delete those the bus made that are no longer wanted (never "
        "another principal's, never a DENY). Idempotent. Run it after adding a KAFKA "
        "subscription or a client.",
        parents=parents,
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="show what would change, change nothing"
    )
    apply.set_defaults(func=cmd_acls_apply)
    listing = acls_sub.add_parser(
        "list",
        help="the cluster's ACLs on the bus's topics and groups, and what apply would change",
        parents=parents,
    )
    listing.set_defaults(func=cmd_acls_list)
