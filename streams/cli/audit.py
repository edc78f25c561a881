"""`gemeentebus audit`: the audit trail (`streams.operations.audit`) as JSON lines, oldest first."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

from streams.cli.operations import rfc3339_time
from streams.config import Settings
from streams.operations.audit import read_trail

__all__ = ["add_audit_commands"]


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    async def show() -> int:
        found = read_trail(
            settings,
            since=args.since,
            until=args.until,
            actor=args.actor,
            action=args.action,
            target=args.target,
            limit=args.limit,
        )
        count = 0
        async with contextlib.aclosing(found) as entries:
            async for entry in entries:
                print(json.dumps(entry, ensure_ascii=False, separators=(",", ":")), flush=True)
                count += 1
        return count

    asyncio.run(show())
    return 0


def add_audit_commands(commands: Any, *, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `audit` on the `gemeentebus` subparsers."""
    audit = commands.add_parser(
        "audit",
        help="print the audit trail (every change and operator action) as JSON lines",
        description="Print the records of the audit trail (the topic <prefix>.audit), oldest "
        "first, one JSON object a line: action, actor, at, via, target, outcome, code, status, "
        "requestId, details. Reading it is not itself recorded.",
        parents=parents,
    )
    audit.add_argument(
        "--since", type=rfc3339_time, help="records at or after this time (RFC 3339)"
    )
    audit.add_argument(
        "--until", type=rfc3339_time, help="records at or before this time (RFC 3339)"
    )
    audit.add_argument("--actor", help="only this actor; a shell pattern, e.g. 'cli:*'")
    audit.add_argument("--action", help="only this action; a shell pattern, e.g. 'subscription_*'")
    audit.add_argument("--target", help="only records about this target (a subscription id)")
    audit.add_argument("--limit", type=int, help="at most this many records")
    audit.set_defaults(func=cmd_audit)
