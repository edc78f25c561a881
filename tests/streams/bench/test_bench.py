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
from streams.bench.runner import DEFAULT_SCENARIOS
from streams.bench.subscribers import Plan, subscriptions
from streams.config import ENV, Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.kafka.topics import existing_topics
from streams.routing.matching import SubscriptionIndex

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


# The national simulation at a test's size: its QUICK size, with more BRP events than the
# real mix has (about 1 in 400), so every kind of subscription gets some.
NATIONAL = Size(
    events_per_type=1,
    repeats=1,
    kafka_records=1,
    national_municipalities=10,
    national_zaaksystemen=5,
    national_rate=40,
    national_steps=2,
    national_s=3.0,
    national_mix=(2.0, 1.0, 3.0),
)


def test_the_national_simulation_runs_only_when_named() -> None:
    assert "national" in {s.name for s in SCENARIOS}
    assert "national" not in {s.name for s in DEFAULT_SCENARIOS}
    assert [s.name for s in DEFAULT_SCENARIOS] == [s.name for s in SCENARIOS][:-1]


def test_the_national_plan_expects_what_the_bus_filters_match() -> None:
    plan = Plan.national(municipalities=342, zaaksystemen=300, registries=3)
    subscribed = subscriptions(plan, "http://127.0.0.1:1/hooks")
    index = SubscriptionIndex(subscribed)
    factory = EventFactory(9, today=dutch_today())
    made = [factory.verhuisd() for _ in range(300)] + [factory.overleden() for _ in range(100)]
    made += [factory.zaak_gemuteerd() for _ in range(1_000)]

    for event in made:
        matched = {s.id for s in index.match(event, None, factory.today)}
        assert plan.expected(event) == matched, event.type

    ids = [s.id for s in subscribed]
    assert len(ids) == len(set(ids)) == 342 + 3 + 300
    assert sum(1 for s in subscribed if s.types == (VERHUISD, OVERLEDEN)) == 342 + 2
    assert sum(1 for s in subscribed if s.types == (OVERLEDEN,)) == 1
    assert sum(1 for s in subscribed if s.types == (ZAAK_GEMUTEERD,)) == 300
    # large municipalities' zaaksystemen are reached: most zaak notifications match one
    reached = sum(1 for e in made if e.type == ZAAK_GEMUTEERD and plan.expected(e))
    assert reached > 0.8 * 1_000


@pytest.mark.kafka
@pytest.mark.plaintext_session  # spawns bus processes: the bench speaks plaintext only
def test_national_scenario_delivers_each_event_to_exactly_its_subscriptions(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)
    chosen = [s for s in SCENARIOS if s.name == "national"]
    lines: list[str] = []

    result = run_bench(
        settings,
        quick=True,
        output=tmp_path / "r.json",
        progress=lines.append,
        scenarios=chosen,
        size=NATIONAL,
    )

    figures = {f["name"]: f for f in result["figures"]}
    assert all(set(f) == FIGURE_KEYS for f in result["figures"])
    recall, precision = (
        f for name, f in figures.items() if "(target all)" in name
    )  # every expected delivery arrived, and nothing arrived that was not expected
    assert recall["baseline"] > 0 and recall["value"] == recall["baseline"] and recall["met"]
    assert precision["value"] == precision["baseline"] and precision["met"]
    processes = {"worker-1", "worker-2", "delivery-1", "delivery-2", "bench"}
    cpu = {n.removeprefix("national: CPU of ").split()[0] for n in figures if "CPU of" in n}
    rss = {n.removeprefix("national: RSS of ").split()[0] for n in figures if "RSS of" in n}
    assert cpu == rss == processes
    assert all(f["value"] > 0 for n, f in figures.items() if "RSS of" in n)
    (events_in,) = [f for n, f in figures.items() if n.startswith("national: events/s in")]
    assert events_in["unit"] == "events/s" and events_in["value"] > 0
    assert "18 subscriptions" in events_in["name"]  # 10 + 3 registries + 5 zaaksystemen
    units = {n.split(" (")[0].split(" vs ")[0]: f["unit"] for n, f in figures.items()}
    assert units["national: publish→webhook p99"] == "ms"
    assert units["national: max ingress lag"] == "records"
    assert units["national: max deliver-topic lag"] == "records"
    assert all(f["target"] is None for f in result["figures"] if f not in (recall, precision))
    steps = [line for line in lines if "offered:" in line]
    assert 1 <= len(steps) <= 2
    assert any("workers on" in line and "delivery processes" in line for line in lines)
    assert asyncio.run(_left_after_deletion(settings, "-natl.")) == []


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


# The delivery scenarios of issue 16, at sizes that say nothing of speed: only the shape.
DELIVERY_TINY = Size(
    events_per_type=1,
    repeats=1,
    kafka_records=1,
    delivery_rate=20,
    delivery_s=1.0,
    delivery_burst=40,
    crowd_idle=8,
    crowd_window_s=1.0,
    crowd_rate=20,
    crowd_s=1.0,
    fan_out=5,
    outage_s=2.0,
)


def _run_tiny(settings: Settings, tmp_path: Path, name: str, lines: list[str]) -> dict[str, dict]:
    chosen = [s for s in SCENARIOS if s.name == name]
    result = run_bench(
        settings,
        quick=True,
        output=tmp_path / "r.json",
        progress=lines.append,
        scenarios=chosen,
        size=DELIVERY_TINY,
    )
    return {f["name"]: f for f in result["figures"]}


@pytest.mark.kafka
@pytest.mark.plaintext_session  # spawns bus processes: the bench speaks plaintext only
def test_delivery_scenario_compares_the_burst_with_a_bare_client(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)

    figures = _run_tiny(settings, tmp_path, "delivery", [])

    (bare,) = [f for name, f in figures.items() if "bare aiohttp client" in name]
    assert bare["name"].startswith("delivery from the deliver topic: 40 routed events")
    assert (bare["unit"], bare["target"]) == ("events/s", 0.5)
    assert bare["value"] > 0 and bare["baseline"] > 0 and isinstance(bare["met"], bool)
    assert asyncio.run(_left_after_deletion(settings, "-deliv.")) == []


@pytest.mark.kafka
@pytest.mark.plaintext_session  # spawns bus processes: the bench speaks plaintext only
def test_crowd_scenario_measures_idle_cost_latency_and_fan_out(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)

    figures = _run_tiny(settings, tmp_path, "crowd", [])

    by = {name.split(" vs ")[0]: f for name, f in figures.items()}
    cpu = by["idle cost: delivery CPU with 8 idle subscriptions"]
    rss = by["idle cost: delivery RSS with 8 idle subscriptions"]
    assert (cpu["unit"], cpu["target"], rss["unit"], rss["target"]) == ("cores", 1.0, "MB", 1.0)
    assert cpu["baseline"] >= 0.05 and rss["baseline"] > 100  # none's + the budget
    assert cpu["value"] >= 0 and rss["value"] > 0
    assert by["idle cost: delivery CPU with 2 idle subscriptions"]["target"] is None
    assert by["idle cost: delivery→broker bytes/s with 8 idle subscriptions"]["value"] > 0
    segments = by["idle cost: delivery→broker data segments/s (≈ requests/s) with 8 idle "
                  "subscriptions"]  # fmt: skip
    assert segments["unit"] == "segments/s" and segments["value"] > 0
    (broker,) = [f for name, f in by.items() if name.startswith("idle cost: broker CPU")]
    assert broker["unit"] == "cores" and broker["target"] is None
    for cut in ("p50", "p99"):
        latency = by[f"beside the crowd: publish→webhook {cut} with 8 idle subscriptions"]
        assert latency["unit"] == "ms" and latency["target"] == pytest.approx(1 / 1.2)
        assert latency["value"] > 0 and latency["baseline"] > 0
    fan = by["fan-out: one event to 5 subscriptions, until the last receipt,"]
    assert fan["unit"] == "ms" and fan["value"] > 0 and fan["target"] is None
    # every topic of the run deleted: the bus's, and 2 of each of the 1 + 8 + 5 subscriptions
    assert asyncio.run(_left_after_deletion(settings, "-crowd.")) == []


@pytest.mark.kafka
@pytest.mark.plaintext_session  # spawns bus processes: the bench speaks plaintext only
def test_recovery_scenario_counts_the_503s_and_the_seconds_after_recovery(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV["bootstrap"], kafka_bootstrap)
    lines: list[str] = []

    figures = _run_tiny(settings, tmp_path, "recovery", lines)

    seconds, refused = figures.values()
    assert seconds["name"].startswith("recovery: seconds from the receiver's recovery after a 2 s")
    assert (seconds["unit"], seconds["baseline"], seconds["target"]) == ("s", 5.0, 1.0)
    assert seconds["value"] > 0
    # 2 s of backoff 1 s then 2 s: the failing step and one probe, + 8 in flight
    assert refused["name"] == (
        "recovery: 503s sent during a 2 s outage vs 2 probe steps + 8 in flight"
    )
    assert (refused["unit"], refused["baseline"], refused["target"]) == ("requests", 10, 1.0)
    assert refused["value"] >= 2  # two failures in a row before the endpoint counts as failing
    assert any("20 zaken" in line for line in lines)
    assert asyncio.run(_left_after_deletion(settings, "-recov.")) == []
