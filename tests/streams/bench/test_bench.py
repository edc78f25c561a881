"""The benchmark runner: what it writes, and the Kafka scenario against the session broker.

Never asserts on timing: the figures of a noisy machine are reported, not judged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from streams.bench import SCENARIOS, BenchContext, Figure, Scenario, Size, run_bench
from streams.config import ENV, Settings
from streams.kafka.topics import existing_topics

FIGURE_KEYS = {"name", "value", "baseline", "unit", "ratio", "target", "met"}
TINY = Size(
    events_per_type=20,
    repeats=1,
    kafka_records=300,
    route_events=20,
    replay_events=300,
)


async def _tiny(ctx: BenchContext) -> list[Figure]:
    return [
        Figure.of("tiny throughput", value=50.0, baseline=100.0, unit="events/s", target=0.5),
        Figure.of(
            "tiny latency", value=4.0, baseline=1.0, unit="s", target=0.5, higher_is_better=False
        ),
    ]


def test_results_have_the_documented_shape(tmp_path: Path) -> None:
    lines: list[str] = []
    output = tmp_path / "out" / "results.json"

    result = run_bench(
        Settings(mode="test"),
        quick=True,
        output=output,
        progress=lines.append,
        scenarios=[Scenario("tiny", _tiny)],
    )

    written = json.loads(output.read_text())
    assert written == result
    assert set(written) >= {"machine", "versions", "started", "duration_s", "quick", "figures"}
    assert set(written["machine"]) == {"cores", "memory_gb", "cpu_model", "python", "platform"}
    assert {"gemeentebus", "faust-streaming", "aiokafka", "fastavro"} <= set(written["versions"])
    assert written["quick"] is True
    throughput, latency = written["figures"]
    assert all(set(f) == FIGURE_KEYS for f in written["figures"])
    assert throughput["ratio"] == 0.5 and throughput["met"] is True
    assert latency["ratio"] == 0.25 and latency["met"] is False  # lower is better for times
    assert len(lines) == 1 and "tiny throughput" in lines[0]
    table = output.with_suffix(".md").read_text()
    assert "| tiny throughput |" in table and "| tiny latency |" in table


def test_codec_scenario_measures_every_type(tmp_path: Path) -> None:
    codec = next(s for s in SCENARIOS if s.name == "codec")
    result = run_bench(
        Settings(mode="test"),
        quick=True,
        output=tmp_path / "r.json",
        progress=lambda _: None,
        scenarios=[codec],
        size=TINY,
    )
    names = [f["name"] for f in result["figures"]]
    for event_type in ("nl.brp.persoon-verhuisd", "nl.brp.persoon-overleden"):
        assert f"validate+encode vs bare encode: {event_type}" in names
        assert f"decode vs bare decode: {event_type}" in names
    assert all(f["value"] > 0 and f["baseline"] > 0 for f in result["figures"])


@pytest.mark.kafka
def test_validator_scenario_against_the_broker(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)  # use the session broker, start none
    validator = next(s for s in SCENARIOS if s.name == "validator")

    result = run_bench(
        settings,
        quick=True,
        output=tmp_path / "r.json",
        progress=lambda _: None,
        scenarios=[validator],
        size=TINY,
    )

    *figures, ceiling = result["figures"]
    assert figures and all(f["name"].startswith("validator vs raw passthrough") for f in figures)
    assert all(f["value"] > 0 and f["baseline"] > 0 and f["ratio"] > 0 for f in figures)
    assert all(f["unit"] == "records/s" and f["target"] == 0.4 for f in figures)
    # the ceiling is what the gate's own cost leaves of the raw copy: below 1, informational
    assert ceiling["name"].startswith("validator ceiling")
    assert 0 < ceiling["ratio"] < 1 and ceiling["target"] is None and ceiling["met"] is None
    assert result["peak_rss_mb"] > 0


@pytest.mark.kafka
def test_router_and_replay_scenarios_at_tiny_sizes(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)
    chosen = [s for s in SCENARIOS if s.name in ("router", "replay")]

    result = run_bench(
        settings,
        quick=True,
        output=tmp_path / "r.json",
        progress=lambda _: None,
        scenarios=chosen,
        size=TINY,
    )

    figures = {f["name"]: f for f in result["figures"]}
    routing = [f for name, f in figures.items() if name.startswith("router: cost per event")]
    assert len(routing) == 4  # 3 (the baseline), 10, 100 and 1,000 subscriptions
    assert all(f["unit"] == "µs/event" and f["target"] == 0.8 for f in routing)
    (replay,) = [f for name, f in figures.items() if name.startswith("replay into")]
    assert replay["value"] > 0 and replay["baseline"] > 0 and replay["target"] == 0.25
    assert all(isinstance(f["met"], bool) for f in result["figures"])


@pytest.mark.kafka
def test_subscriptions_scenario_applies_them_and_leaves_no_topic(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)
    chosen = [s for s in SCENARIOS if s.name == "subscriptions"]
    lines: list[str] = []

    result = run_bench(
        settings,
        quick=True,
        output=tmp_path / "r.json",
        progress=lines.append,
        scenarios=chosen,
        size=Size(events_per_type=1, repeats=1, kafka_records=1, apply_subscriptions=30),
    )

    apply, one_by_one, topic_cost = result["figures"]
    assert apply["name"].startswith("subscriptions apply: 30 new vs the budget")
    assert (apply["unit"], apply["baseline"], apply["target"]) == ("s", 0.9, 1.0)  # 30 ms each
    assert apply["value"] > 0 and isinstance(apply["met"], bool)
    assert one_by_one["unit"] == "ms/subscription" and one_by_one["target"] is None
    assert topic_cost["unit"] == "ms/topic" and topic_cost["value"] > 0
    # every topic of the run deleted: 2 × 30 + 2 × 30 one by one + 2 × 30 sampled + its own
    assert any("deleted the run's" in line for line in lines)
    assert asyncio.run(_left_after_deletion(settings, "-subs.")) == []


async def _left_after_deletion(settings: Settings, role: str) -> list[str]:
    """The bench topics of `role` still in the cluster once deletion settled (the brokers
    drop deleted topics from the metadata a little later), polled up to 30 s."""
    head = f"{settings.kafka.topic_prefix[:16]}-bench-"
    left: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while left := await _bench_topics(settings, head, role):  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.2)
    return left


async def _bench_topics(settings: Settings, head: str, role: str) -> list[str]:
    return [n for n in await existing_topics(settings.kafka) if n.startswith(head) and role in n]
