"""This process's hold on the replays it runs: their statuses, written with a lease.

A `Replayer` runs replays; `Leases` is how it owns them in the replays topic (the rule every
process applies is `streams.operations.replay_log.supersedes`). Each status this process
writes carries its `owner` and a lease; `renew` writes the last saved status of each
unfinished replay again with a fresh lease, `claim` takes over the unfinished replays whose
lease ran out (the first claim in the topic wins), `release` gives every lease up at once.
A write counts only once the replays reader has read it back and it took effect (`confirm`);
when a status of another owner takes effect, the replay leaves `mine` and its worker stops
(`Lost`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition

from streams.operations.replay_log import ReplayLog, ReplayStatus

__all__ = ["Leases", "Lost"]

log = logging.getLogger(__name__)


class Lost(Exception):
    """This process no longer owns the replay it was running (another took it over)."""


class Leases:
    """The replays this process runs or ran (`mine`, their live statuses), and its leases on
    the unfinished ones, over the `ReplayLog` it follows."""

    def __init__(self, replay_log: ReplayLog, *, lease: timedelta) -> None:
        self.replays, self.lease = replay_log, lease
        # which process runs a replay, for operators: no personal data in it
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.mine: dict[str, ReplayStatus] = {}  # what this process runs or ran (live)
        self._saved: dict[str, ReplayStatus] = {}  # the last status written of each unfinished
        self._writing = asyncio.Lock()  # one status write queued at a time: they keep order
        replay_log.lost.append(self._taken_over)

    async def save(self, status: ReplayStatus) -> dict[TopicPartition, int]:
        """Write a status of a replay this process runs, with a fresh lease while unfinished;
        returns once the broker has it (the offsets to `confirm` with)."""
        async with self._writing:
            now = datetime.now(UTC)
            status.owner, status.saved_at = self.owner, now
            status.lease_until = now + self.lease if status.unfinished else None
            snapshot = status.model_copy(deep=True)
            if status.unfinished:
                self._saved[status.id] = snapshot
            else:
                self._saved.pop(status.id, None)
            sent = await self.replays.send(snapshot)
        offsets = await sent
        async with self.replays.changed:
            self.replays.changed.notify_all()
        return offsets

    async def confirm(self, status: ReplayStatus, offsets: dict[TopicPartition, int]) -> None:
        """`Lost` unless this process's status write took effect (it owns the replay)."""
        await self.replays.applied(offsets)
        current = self.replays.statuses.get(status.id)
        if current is None or current.owner != self.owner:
            if self.mine.get(status.id) is status:
                del self.mine[status.id]
                self._saved.pop(status.id, None)
            raise Lost(status.id)

    async def renew(self, only: ReplayStatus | None = None) -> None:
        """Write each unfinished replay's last status again with a fresh lease (`only`: that
        one, raising `Lost` if it is no longer this process's)."""
        sent = []
        async with self._writing:
            now = datetime.now(UTC)
            for replay_id, saved in list(self._saved.items()):
                mine = self.mine.get(replay_id)
                if mine is None or not mine.unfinished or only not in (None, mine):
                    continue
                renewed = saved.model_copy(
                    update={"saved_at": now, "lease_until": now + self.lease}
                )
                self._saved[replay_id] = renewed
                mine.saved_at, mine.lease_until = renewed.saved_at, renewed.lease_until
                sent.append((mine, await self.replays.send(renewed)))
        if only is not None and not sent:
            raise Lost(only.id)
        for mine, future in sent:
            try:
                await self.confirm(mine, await future)
            except Lost:
                if only is not None:
                    raise
                # otherwise the worker sees it and stops

    async def claim(self, resume: Callable[[ReplayStatus], None]) -> None:
        """Take over every unfinished replay whose lease ran out, oldest request first, and
        `resume` each claim that won."""
        now = datetime.now(UTC)
        orphans = [
            s for s in self.replays.statuses.values()
            if s.unfinished and s.id not in self.mine and s.expired(now)
        ]  # fmt: skip
        for orphan in sorted(orphans, key=lambda s: s.requested_at):
            claimed = orphan.model_copy(deep=True)
            self.mine[claimed.id] = claimed
            try:
                await self.confirm(claimed, await self.save(claimed))
            except Lost:
                continue  # another process was first
            log.info(
                "resuming replay %s of %s (owner %s gone): %d of %d records scanned",
                claimed.id, claimed.subscription, orphan.owner, claimed.scanned, claimed.total,
            )  # fmt: skip
            resume(claimed)

    async def release(self) -> None:
        """Give up the lease of every unfinished replay this process holds (another process
        takes each over at once) and forget them."""
        now, sent = datetime.now(UTC), []
        async with self._writing:
            for replay_id, saved in list(self._saved.items()):
                mine = self.mine.pop(replay_id, None)
                if mine is not None and mine.unfinished:
                    released = saved.model_copy(update={"saved_at": now, "lease_until": now})
                    sent.append(await self.replays.send(released))
            self._saved.clear()
        await asyncio.gather(*sent)

    def _taken_over(self, replay_id: str, status: ReplayStatus) -> None:
        mine = self.mine.get(replay_id)
        if mine is not None and mine.unfinished and status.owner != self.owner:
            log.warning("replay %s was taken over by %s", replay_id, status.owner)
            del self.mine[replay_id]
            self._saved.pop(replay_id, None)
