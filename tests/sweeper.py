"""Deletes the topics of finished tests from the session broker, in the background.

Every test's topics carry a prefix of its own (the `topics` fixture). Left in place, a full
run of the suite leaves thousands of partitions on one broker: the shared development broker
once died at ~19,800 partitions, its open-files limit (20,000). The sweeper runs in a thread
with an event loop of its own, so it never touches a test's loop; it deletes in batches, and
whatever it has not deleted when the session ends goes with the session's broker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from aiokafka.errors import KafkaError

from streams.config import KafkaSettings
from streams.kafka.clients import make_admin

SWEEP_EVERY_S = 10.0
DELETE_CHUNK = 200


class Sweeper:
    """`finished(prefix)` queues a test's namespace; a thread deletes its topics."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self.deleted = 0
        self.failures: list[str] = []  # what a sweep could not do: said at the session's end
        self._thread = threading.Thread(target=self._run, name="topic-sweeper", daemon=True)
        self._thread.start()

    def finished(self, prefix: str) -> None:
        with self._lock:
            self._pending.add(prefix)

    def close(self, within_s: float = 30.0) -> None:
        """One last sweep, waited for at most `within_s`."""
        self._closing = True
        self._wake.set()
        self._thread.join(within_s)

    def _run(self) -> None:
        while True:
            self._wake.wait(SWEEP_EVERY_S)
            with self._lock:
                prefixes, self._pending = self._pending, set()
            if prefixes:
                try:
                    self.deleted += asyncio.run(self._sweep(prefixes))
                except (KafkaError, OSError) as exc:  # the broker is busy or gone: said at the end
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            if self._closing:
                return

    async def _sweep(self, prefixes: Iterable[str]) -> int:
        heads = tuple(f"{p}." for p in prefixes) + tuple(f"{p}-" for p in prefixes)
        admin = make_admin(self._kafka, name="test-sweeper")
        await admin.start()
        try:
            names = sorted(t for t in await admin.list_topics() if t.startswith(heads))
            for start in range(0, len(names), DELETE_CHUNK):
                await admin.delete_topics(names[start : start + DELETE_CHUNK])
            return len(names)
        finally:
            await admin.close()
