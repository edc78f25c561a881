"""The Faust parts the bus's app uses instead of Faust's defaults, through Faust's own
settings (`TableManager`, `Monitor`) and its transport: the same consumer group, partition
assignment, flow control and manual acks, less work per message.

- `Tableless`: Faust's table manager waits a fixed second at start for tables to register;
  an app without tables (ours) starts without that wait.
- `LeanMonitor`: keeps what Faust itself reads (`stream_inbound_time`, the stream-stall
  check; end and committed offsets) and none of the per-message statistics.
- `Transport` / `Consumer`: Faust hands each fetched message to the conductor in a
  `wait_first` of its own (four tasks a message, so a rebalance can cut a waiting hand-off
  short). `Consumer._drain_messages` hands a whole fetch over in one such wait, message by
  message in the same order, with the same offset, gap and commit bookkeeping; a rebalance
  still cuts it short (what is not handed over is fetched again from the committed offsets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from faust.sensors.monitor import Monitor
from faust.tables.manager import TableManager
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT, Message, StreamT

__all__ = ["Consumer", "LeanMonitor", "Tableless", "Transport"]

# Faust's own: give the loop a turn after this many messages handed over.
_YIELD_EVERY = 100


class Tableless(TableManager):
    """Faust's table manager without the second it sleeps at start when there are no tables."""

    async def on_start(self) -> None:
        if len(self):  # tables registered: Faust's own start, with its wait
            await super().on_start()
            return
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class LeanMonitor(Monitor):
    """Faust's monitor without its per-message statistics (nothing of the bus reads them)."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        return None

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        self.stream_inbound_time[tp] = self.time()  # Faust's stream-stall check reads it
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        return None


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing each fetch to the conductor in one wait."""

    async def _drain_messages(self, fetcher: Any) -> None:
        service = cast(Any, self)
        consumer_should_stop = service._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = self.getmany(timeout=1.0)
                await self.sleep(0)  # Faust's: getmany may return at once, again and again
                if not self.should_stop:
                    messages = [pair async for pair in fetched]
                    if messages:
                        await self.wait_first(self._hand_over(messages), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over(self, messages: Sequence[tuple[TP, Message]]) -> None:
        """Faust's per-message step of `_drain_messages`, for a whole fetch in order."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        since_yield = 0
        for tp, message in messages:
            since_yield += 1
            if since_yield > _YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue  # Faust drops what it has read already
            gap = offset - (r_offset or 0)
            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            await callback(message)
            read_offset[tp] = offset


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with `Consumer`."""

    Consumer = Consumer
