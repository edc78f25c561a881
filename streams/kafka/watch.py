"""Does the cluster answer, and does it still hold the bus's topics? Asked all the time.

A role whose broker is frozen or gone sees no input and fails nothing, so its own parts
look fine: `ClusterWatch` asks the cluster for its metadata every
`health.probe_interval_s` and reports the answer as the shared part `kafka` of `Health`.
It asks about the bus's topics alone (never creating one): the metadata of every topic of a
cluster of thousands of subscriptions is megabytes, and decoding it every probe was a good
part of an idle delivery process's CPU.
- no answer within `ANSWER_TIMEOUT_S`: not ready (the broker may come back: never fatal);
- a topic the bus needs is gone: not ready, and once that lasted `health.give_up_after_s`,
  `Health.fail` (the process exits non-zero: a supervisor restarts it, and the start says
  clearly what is missing) instead of a client logging "not found" in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka.errors import KafkaError, NodeNotReadyError
from aiokafka.protocol.metadata import MetadataRequest

from streams.config import Settings
from streams.health import Health
from streams.kafka.clients import make_client

__all__ = ["ANSWER_TIMEOUT_S", "ClusterWatch"]

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 5.0


class ClusterWatch:
    """Reports whether the cluster answers and holds `topics`; `start()`, then `stop()`."""

    def __init__(self, settings: Settings, health: Health, topics: Sequence[str]) -> None:
        self.settings = settings
        self.health = health
        self.topics = tuple(topics)
        self.part = health.shared("kafka")
        self._client = make_client(
            settings, "watch", request_timeout_ms=int(ANSWER_TIMEOUT_S * 1000)
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._client.bootstrap()
        self._task = asyncio.create_task(self._watch(), name="cluster-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.close()

    async def _present(self) -> set[str]:
        """Which of the bus's topics the cluster has (asked without creating any)."""
        node = self._client.get_random_node()
        if node is None:
            raise NodeNotReadyError("no broker known")
        request = MetadataRequest(list(self.topics), allow_auto_topic_creation=False)
        response = await self._client.send(node, request)
        return {t["topic"] for t in response.to_object()["topics"] if t["error_code"] == 0}

    async def _watch(self) -> None:
        missing_since: float | None = None
        where = self.settings.kafka.bootstrap_servers
        while True:
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT_S):
                    present = await self._present()
            except (KafkaError, OSError, TimeoutError) as exc:
                if self.part.broken_reason is None:
                    log.warning("the Kafka cluster at %s does not answer", where)
                self.part.broken(f"the Kafka cluster at {where} does not answer ({_name(exc)})")
            else:
                missing = [t for t in self.topics if t not in present]
                if not missing:
                    if self.part.broken_reason is not None:
                        log.warning("the Kafka cluster at %s answers again", where)
                    missing_since = None
                    self.part.mended()
                    self.part.advanced()
                else:
                    now = time.monotonic()
                    missing_since = now if missing_since is None else missing_since
                    reason = f"topics gone from the cluster: {', '.join(missing)}"
                    self.part.broken(reason)
                    if now - missing_since >= self.settings.health.give_up_after_s:
                        self.health.fail(f"kafka: {reason}")
                        return
            await asyncio.sleep(self.settings.health.probe_interval_s)


def _name(exc: BaseException) -> str:
    return "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
