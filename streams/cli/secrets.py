"""`gemeentebus secrets new-key|rotate`: the key that seals webhook secrets at rest. The work is
in `streams.operations.rotation` and `streams.routing.sealing`; this module prints."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from streams.config import Settings
from streams.operations.audit import audited
from streams.operations.rotation import CLEAR, Rotation, rotate
from streams.routing.sealing import new_key

__all__ = ["add_secrets_commands", "report"]


def report(done: Rotation) -> list[str]:
    """The lines `secrets rotate` prints: counts per key, then each refused subscription."""
    moved = sum(done.resealed.values())
    origins = ", ".join(
        f"{count} {'in clear text' if kid == CLEAR else f'from key {kid}'}"
        for kid, count in sorted(done.resealed.items(), key=lambda item: (item[0] == CLEAR, item))
    )
    lines = [
        f"{done.total} subscriptions read; current key {done.kid}",
        f"resealed {moved}" + (f" ({origins})" if origins else ""),
        f"already under {done.kid}: {done.current}",
        f"without secrets: {done.without_secrets}",
        f"refused: {len(done.refused)}",
    ]
    lines += [
        f"  {sub_id}: {reason} (left as it is)" for sub_id, reason in sorted(done.refused.items())
    ]
    return lines


def cmd_secrets_new_key(args: argparse.Namespace, settings: Settings) -> int:
    print(new_key())
    return 0


def cmd_secrets_rotate(args: argparse.Namespace, settings: Settings) -> int:
    async def rotated() -> Rotation:
        async with audited(settings, "secrets_rotate") as note:
            done = await rotate(settings)
            note.add(key=done.kid, resealed=sum(done.resealed.values()), refused=len(done.refused))
            return done

    done = asyncio.run(rotated())
    for line in report(done):
        print(line)
    return 1 if done.refused else 0


def add_secrets_commands(commands: Any, *, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register `secrets ACTION` on the `gemeentebus` subparsers."""
    secrets = commands.add_parser(
        "secrets", help="the key that seals webhook secrets in the subscriptions topic"
    )
    secrets_sub = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    fresh = secrets_sub.add_parser(
        "new-key",
        help="print a fresh key for security.secrets_key (32 random bytes, base64)",
        description="Print a fresh key for security.secrets_key; nothing is stored.",
    )
    fresh.set_defaults(func=cmd_secrets_new_key)
    rotating = secrets_sub.add_parser(
        "rotate",
        help="re-seal every subscription's secrets under the current key",
        description="Read every subscription record with security.secrets_key and "
        "security.previous_keys (and clear-text secrets from before sealing), write each one "
        "not sealed under the current key back to the subscriptions topic, print the counts. "
        "Exit 1 when a record opens under no key (it is named and left as it is).",
        parents=parents,
    )
    rotating.set_defaults(func=cmd_secrets_rotate)
