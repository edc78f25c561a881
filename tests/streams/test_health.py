"""Readiness as an operator and a supervisor see it: `Health`, `/health`, `/ready`, `/metrics`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from streams.config import HttpSettings, Settings
from streams.health import Health, add_health_routes, health_app
from streams.ingress import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_role_is_ready_only_after_it_started() -> None:
    health = Health()
    health.role("worker")
    assert health.ready() == (False, {"worker": ["worker: starting"]})
    health.started("worker")
    assert health.ready() == (True, {"worker": []})


def test_no_role_is_not_ready() -> None:
    assert Health().ready()[0] is False


def test_waiting_input_without_progress_is_a_stall() -> None:
    clock = Clock()
    health = Health(stall_after_s=30, clock=clock)
    health.started("delivery")
    courier = health.part("delivery", "courier gemeente-0363")
    courier.waiting(12)
    clock.now += 29
    assert health.ready()[0] is True
    clock.now += 2
    ready, problems = health.ready()
    assert not ready
    assert problems["delivery"] == [
        "courier gemeente-0363: no progress for 31s with 12 records waiting"
    ]
    courier.advanced()  # progress clears it
    assert health.ready()[0] is True


def test_idle_is_not_stalled() -> None:
    clock = Clock()
    health = Health(stall_after_s=30, clock=clock)
    health.started("worker")
    health.part("worker", "stream").waiting(0)
    clock.now += 3600
    assert health.ready()[0] is True


def test_a_shared_part_belongs_to_every_role() -> None:
    health = Health()
    for role in ("api", "worker"):
        health.started(role)
    kafka = health.shared("kafka")
    kafka.broken("the Kafka cluster at localhost:9092 does not answer")
    assert health.ready()[1] == {
        role: ["kafka: the Kafka cluster at localhost:9092 does not answer"]
        for role in ("api", "worker")
    }
    kafka.mended()
    assert health.ready()[0] is True


def test_failing_tells_every_listener_once() -> None:
    health = Health()
    health.started("worker")
    heard: list[str] = []
    health.on_fail.append(heard.append)
    health.fail("subscriptions: topic x.subscriptions is gone from the cluster")
    health.fail("something later")
    assert heard == ["subscriptions: topic x.subscriptions is gone from the cluster"]
    report = health.report()
    assert report["ready"] is False
    assert report["roles"]["worker"]["problems"][0].startswith("failed: subscriptions")


@pytest.fixture
async def served() -> AsyncIterator[tuple[Health, str]]:
    health = Health()

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render())

    app = health_app(health, metrics=serve_metrics, settings=Settings(mode="test"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    metrics.watch_health(health)
    try:
        yield health, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_ready_answers_503_with_reasons_then_200(served: tuple[Health, str]) -> None:
    health, url = served
    health.role("worker")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/ready") as response:
            assert response.status == 503
            assert await response.json() == {
                "ready": False,
                "roles": {"worker": {"ready": False, "problems": ["worker: starting"]}},
            }
        health.started("worker")
        async with http.get(f"{url}/ready") as response:
            assert response.status == 200
            assert await response.json() == {
                "ready": True,
                "roles": {"worker": {"ready": True, "problems": []}},
            }
        async with http.get(f"{url}/health") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}


async def test_liveness_fails_once_the_process_gave_up(served: tuple[Health, str]) -> None:
    health, url = served
    health.started("delivery")
    health.fail("kafka: topics gone from the cluster: t.ingress")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/health") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "failed"
        async with http.get(f"{url}/ready") as response:
            assert response.status == 503


async def test_metrics_show_lag_and_time_since_progress_per_role(
    served: tuple[Health, str],
) -> None:
    health, url = served
    health.started("delivery")
    health.part("delivery", "courier a").waiting(7)
    health.part("delivery", "courier b").waiting(5)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    assert 'gemeentebus_role_lag{role="delivery"} 12.0' in text
    assert 'gemeentebus_role_ready{role="delivery"} 1.0' in text
    assert 'gemeentebus_role_seconds_since_progress{role="delivery"}' in text


async def test_the_api_answers_ready_with_its_own_health() -> None:
    app = web.Application()
    health = Health()
    add_health_routes(app, health, liveness=False)
    assert [r.resource.canonical for r in app.router.routes() if r.method == "GET"] == ["/ready"]


async def test_a_worker_or_delivery_process_guards_its_metrics_in_production(
    tmp_path: Path,
) -> None:
    """As `run --role worker` serves them: public outside production, else behind a token."""
    token_file = tmp_path / "metrics-token"
    token_file.write_text("scrape-me-7a2c\n")
    health = Health()

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render())

    async def status(settings: Settings, authorization: str | None) -> int:
        app = health_app(health, metrics=serve_metrics, settings=settings)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
        headers = {"Authorization": authorization} if authorization else {}
        try:
            async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as answer:
                return answer.status
        finally:
            await runner.cleanup()

    guarded = Settings(mode="production", http=HttpSettings(metrics_token_file=token_file))
    assert await status(guarded, None) == 401
    assert await status(guarded, "Bearer scrape-me-7a2") == 401
    assert await status(guarded, "Basic scrape-me-7a2c") == 401
    assert await status(guarded, "Bearer scrape-me-7a2c") == 200
    assert await status(Settings(mode="production"), "Bearer scrape-me-7a2c") == 401
    assert await status(Settings(mode="demo"), None) == 200
    assert await status(Settings(mode="production", http={"public_metrics": True}), None) == 200  # type: ignore[arg-type]
