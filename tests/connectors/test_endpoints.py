"""An endpoint's health: one probe at a time while it fails, everyone at once when it answers."""

from __future__ import annotations

import asyncio

from connectors.endpoints import Endpoint, Endpoints, Turn, origin


class Clock:
    """A clock that moves only when told; the endpoints it times look again at each move."""

    def __init__(self) -> None:
        self._now = 1000.0
        self.endpoints: list[Endpoint] = []

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value
        for ep in self.endpoints:
            ep.recheck()


def endpoint(clock: Clock, first_s: float = 1.0, max_s: float = 4.0) -> Endpoint:
    ep = Endpoint("http://127.0.0.1:1", first_s=first_s, max_s=max_s, clock=clock)
    clock.endpoints.append(ep)
    return ep


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_origin_is_scheme_host_and_port_only() -> None:
    assert origin("https://user:pw@zaken.example:8443/hook?x=1") == "https://zaken.example:8443"
    assert origin("http://127.0.0.1/a") == origin("http://127.0.0.1:80/b")
    assert origin("https://[::1]/x") == "https://::1:443"


def test_subscriptions_with_one_origin_share_its_endpoint() -> None:
    from streams.config import DeliverySettings

    endpoints = Endpoints(DeliverySettings())
    assert endpoints.get("http://127.0.0.1:9/a") is endpoints.get("http://127.0.0.1:9/b")
    assert endpoints.get("http://127.0.0.1:9/a") is not endpoints.get("http://127.0.0.1:10/a")


async def test_healthy_goes_at_once_or_at_its_own_backoff() -> None:
    clock, stop = Clock(), asyncio.Event()
    ep = endpoint(clock)
    assert await ep.turn(object(), not_before=0, until=2000, stopping=stop) is Turn.GO
    waiting = asyncio.ensure_future(
        ep.turn(object(), not_before=clock.now + 0.05, until=2000, stopping=stop)
    )
    await settle()
    assert not waiting.done()  # its own backoff, the endpoint being healthy
    clock.now += 0.05
    assert await asyncio.wait_for(waiting, 1) is Turn.GO


async def test_one_failure_between_successes_never_makes_it_failing() -> None:
    """One event the endpoint refuses (a 500 for it alone) holds back no other key."""
    ep = endpoint(Clock())
    bad, good = object(), object()
    for _ in range(10):
        ep.failed(bad, None)
        ep.succeeded(good)
    assert not ep.failing and ep.outages == 0


async def test_while_failing_one_probe_at_a_time_backing_off_then_all_go_at_once() -> None:
    clock, stop = Clock(), asyncio.Event()
    ep = endpoint(clock, first_s=1.0, max_s=4.0)
    first, second = object(), object()
    ep.failed(first, None)
    ep.failed(second, None)
    assert ep.failing and ep.outages == 1
    records = [object() for _ in range(20)]
    turns = [
        asyncio.ensure_future(ep.turn(r, not_before=0, until=clock.now + 3600, stopping=stop))
        for r in records
    ]
    await settle()
    assert not any(t.done() for t in turns)  # the first probe waits one step
    for step_s in (1.0, 2.0, 4.0, 4.0):  # doubling, capped at max_s
        clock.now += step_s - 0.01
        await asyncio.sleep(0.02)
        assert not any(t.done() for t in turns)  # not yet
        clock.now += 0.01
        await asyncio.sleep(0.05)
        done = [i for i, t in enumerate(turns) if t.done()]
        assert len(done) == 1 and turns[done[0]].result() is Turn.PROBE  # one probe, no more
        (i,) = done
        ep.failed(records[i], None)  # still down: that record asks again, at the back
        turns[i] = asyncio.ensure_future(
            ep.turn(records[i], not_before=0, until=clock.now + 3600, stopping=stop)
        )
    assert ep.probes == 4
    clock.now += 4.0
    await asyncio.sleep(0.05)
    probe = next(t for t in turns if t.done())
    ep.succeeded(records[turns.index(probe)])  # it answers again
    results = await asyncio.wait_for(asyncio.gather(*turns), 1)  # everyone, at once
    assert not ep.failing
    assert results.count(Turn.PROBE) == 1 and results.count(Turn.GO) == len(records) - 1


async def test_the_probe_rotates_so_one_refused_event_cannot_stand_for_the_others() -> None:
    clock, stop = Clock(), asyncio.Event()
    ep = endpoint(clock, first_s=0.5, max_s=0.5)
    a, b = object(), object()
    ep.failed(a, None)
    ep.failed(b, None)
    ta = asyncio.ensure_future(ep.turn(a, not_before=0, until=clock.now + 60, stopping=stop))
    await settle()
    tb = asyncio.ensure_future(ep.turn(b, not_before=0, until=clock.now + 60, stopping=stop))
    clock.now += 0.5
    await asyncio.sleep(0.05)
    assert ta.done() and not tb.done()  # a waited longest
    ep.failed(a, None)
    ta = asyncio.ensure_future(ep.turn(a, not_before=0, until=clock.now + 60, stopping=stop))
    clock.now += 0.5
    await asyncio.sleep(0.05)
    assert tb.done() and not ta.done()  # then b, not a again
    ep.succeeded(b)
    assert await asyncio.wait_for(ta, 1) is Turn.GO


async def test_retry_after_sets_the_next_probe_and_the_window_still_ends() -> None:
    clock, stop = Clock(), asyncio.Event()
    ep = endpoint(clock, first_s=1.0, max_s=2.0)
    x, y = object(), object()
    ep.failed(x, None)
    ep.failed(y, 30.0)  # Retry-After: 30
    t = asyncio.ensure_future(ep.turn(x, not_before=0, until=clock.now + 10, stopping=stop))
    clock.now += 5
    await asyncio.sleep(0.05)
    assert not t.done()  # 30 s asked, not the 1 s step
    clock.now += 5
    assert await asyncio.wait_for(t, 1) is Turn.EXPIRED  # its window ended first


async def test_stopping_wakes_every_waiter_and_a_leaving_head_passes_the_probe_on() -> None:
    clock, stop = Clock(), asyncio.Event()
    ep = endpoint(clock)
    ep.failed(object(), None)
    ep.failed(object(), None)
    head, nxt = object(), object()
    th = asyncio.ensure_future(ep.turn(head, not_before=0, until=clock.now + 60, stopping=stop))
    await settle()
    tn = asyncio.ensure_future(ep.turn(nxt, not_before=0, until=clock.now + 60, stopping=stop))
    await settle()
    th.cancel()  # its lane was revoked
    await asyncio.sleep(0.01)
    clock.now += 1.0
    await asyncio.sleep(0.05)
    assert tn.done() and tn.result() is Turn.PROBE
    ep.released(nxt)
    other = asyncio.ensure_future(
        ep.turn(object(), not_before=0, until=clock.now + 60, stopping=stop)
    )
    await settle()
    stop.set()
    assert await asyncio.wait_for(other, 1) in (Turn.STOPPED, Turn.PROBE)
