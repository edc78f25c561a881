"""The chaos suite: its checker on hand-made arrivals, and one tiny scenario end to end."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

from streams.chaos import SCENARIOS, run_chaos
from streams.chaos.checker import Arrival, Ledger, Sent, latencies, reorders, tally
from streams.chaos.core import Check, Outcome, Size
from streams.chaos.runner import markdown, scenario_result
from streams.chaos.spread import suffixes
from streams.config import Settings


def _ledger(*events: tuple[str, str], accept: tuple[str, ...] | None = None) -> Ledger:
    """Events (id, key) offered in this order and accepted in `accept` order (all by default)."""
    ledger = Ledger()
    for event_id, key in events:
        ledger.offer(Sent(event_id, "urn:test", "t.a" if key != "z" else "t.b", key, "kafka"))
    for number, event_id in enumerate(accept if accept is not None else [e for e, _ in events]):
        ledger.accept(event_id, at=100.0 + number)
    return ledger


def _arrivals(*ids: str, start: float = 200.0) -> list[Arrival]:
    return [Arrival(event_id, start + n) for n, event_id in enumerate(ids)]


def test_everything_once_in_order_is_clean() -> None:
    ledger = _ledger(("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b"))
    found = tally("s", ledger, _arrivals("b1", "a1", "a2", "b2"), healed_at=201.0)
    assert (found.published, found.accepted, found.delivered) == (4, 4, 4)
    assert (found.lost, found.duplicated, found.reordered, found.unexpected) == (0, 0, 0, 0)
    assert found.ok and found.recover_s == 2.0


def test_an_expected_event_that_never_arrives_is_lost() -> None:
    ledger = _ledger(("a1", "a"), ("a2", "a"), ("a3", "a"))
    found = tally("s", ledger, _arrivals("a1", "a3"), healed_at=0.0)
    assert found.lost == 1 and found.lost_ids == ("a2",) and found.delivered == 2
    assert not found.ok and found.recover_s is None


def test_an_event_never_accepted_is_not_lost() -> None:
    ledger = _ledger(("a1", "a"), ("a2", "a"), accept=("a1",))
    found = tally("s", ledger, _arrivals("a1"))
    assert (found.published, found.accepted, found.lost) == (2, 1, 0)


def test_second_arrivals_are_duplicates_and_do_not_count_as_reorders() -> None:
    ledger = _ledger(("a1", "a"), ("a2", "a"))
    found = tally("s", ledger, _arrivals("a1", "a2", "a1", "a2", "a1"))
    assert found.duplicated == 3 and found.reordered == 0 and found.delivered == 2


def test_a_later_event_of_the_key_overtaking_is_a_reorder() -> None:
    ledger = _ledger(("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"))
    found = tally("s", ledger, _arrivals("a2", "b1", "a1", "a3"))
    assert found.reordered == 1 and found.lost == 0 and not found.ok


def test_order_is_per_key_not_across_keys() -> None:
    ledger = _ledger(("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b"))
    assert tally("s", ledger, _arrivals("b1", "b2", "a1", "a2")).reordered == 0


def test_order_is_judged_by_acceptance_not_by_offering() -> None:
    # a2 was offered second but its first send failed: accepted after a3, so a3 first is fine
    ledger = _ledger(("a1", "a"), ("a2", "a"), ("a3", "a"), accept=("a1", "a3", "a2"))
    assert tally("s", ledger, _arrivals("a1", "a3", "a2")).reordered == 0
    assert tally("s", ledger, _arrivals("a1", "a2", "a3")).reordered == 1


def test_the_subscription_filter_decides_what_is_expected() -> None:
    ledger = _ledger(("a1", "a"), ("z1", "z"), ("a2", "a"))
    found = tally("s", ledger, _arrivals("a1", "z1", "a2"), lambda s: s.type == "t.a")
    assert (found.published, found.accepted, found.delivered, found.unexpected) == (2, 2, 2, 1)


def test_reorders_counts_each_overtaken_event_once() -> None:
    assert reorders([3, 1, 2, 4], ["k"] * 4) == 2
    assert reorders([None, 0, 1], ["k"] * 3) == 0


def test_latency_is_acceptance_to_first_arrival() -> None:
    ledger = _ledger(("a1", "a"), ("a2", "a"))  # accepted at 100 and 101
    assert latencies(ledger, _arrivals("a1", "a1", "a2", start=100.5)) == [0.5, 1.5]
    assert latencies(ledger, _arrivals("a1", "a2", start=102.0), since=101.0) == [2.0]


def test_a_scenario_fails_on_loss_a_failed_check_or_an_error_not_on_information() -> None:
    ledger = _ledger(("a1", "a"))
    clean = Outcome(tallies=[tally("s", ledger, _arrivals("a1"))], checks=[Check("x", None)])
    assert clean.ok
    assert not Outcome(tallies=[tally("s", ledger, [])]).ok
    assert not Outcome(checks=[Check("x", False)]).ok
    assert not Outcome(error="broke").ok


def test_results_and_table_show_every_count_and_verdict() -> None:
    ledger = _ledger(("a1", "a"), ("a2", "a"))
    outcome = Outcome(tallies=[tally("s1", ledger, _arrivals("a2", "a1", "a1"))])
    outcome.check("replay finishes", False, "running | stuck")
    found = scenario_result("kill", outcome, 12.34)
    assert (found["lost"], found["duplicated"], found["reordered"], found["ok"]) == (0, 1, 1, False)
    table = markdown({"started": "now", "quick": True, "duration_s": 12.3, "passed": 0,
                      "scenarios": [found]})  # fmt: skip
    assert "| kill | s1 | 2 | 2 | 2 | 0 | 1 | 1 | — | **FAIL** |" in table
    assert "| kill | 12 | replay finishes | **FAIL** | running / stuck |" in table


def test_every_scenario_of_the_issue_has_a_name() -> None:
    assert [s.name for s in SCENARIOS] == [
        "kill", "poison", "subscriber-down", "replay-kill", "volg-race", "sigterm",
        "delivery-kill", "broker-stop", "broker-kill",
    ]  # fmt: skip


def test_the_crowd_subscriptions_split_the_event_ids_between_them() -> None:
    for n in (1, 16, 200, 2000):
        picked = suffixes(n)
        assert len(set(picked)) == n and len({len(p) for p in picked}) == 1
    rng = random.Random(5)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(4000)]
    for n in (200, 2000):  # an event id matches one crowd subscription at most
        matches = [sum(i.endswith(p) for p in suffixes(n)) for i in ids]
        assert max(matches) == 1
        assert 0.4 < sum(matches) / len(ids) < 0.9  # about 200/256, 2000/4096 of the events


TINY = Size(
    kill_events=300, kills_per_role=1, kill_roles=("delivery",), rate=100.0, outage_s=5.0,
    load_events=300, replay_events=300, settle_s=60.0, stall_s=30.0,
)  # fmt: skip


@pytest.mark.slow
def test_a_delivery_process_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """End to end on a private broker: the bus as three processes, four subscribers."""
    output = tmp_path / "chaos" / "results.json"
    kill = next(s for s in SCENARIOS if s.name == "kill")
    lines: list[str] = []

    result = run_chaos(
        Settings(mode="test"), quick=True, output=output, scenarios=[kill], size=TINY,
        progress=lines.append, workdir=tmp_path,
    )  # fmt: skip

    assert json.loads(output.read_text()) == result
    assert output.with_suffix(".md").is_file()
    (scenario,) = result["scenarios"]
    assert scenario["error"] is None, scenario["error"]
    assert [s["subscriber"] for s in scenario["subscribers"]] == [
        "gemeente-a", "gemeente-b", "flaky", "brp",
    ]  # fmt: skip
    assert scenario["faults"] and "SIGKILL delivery" in scenario["faults"][0]
    for row in scenario["subscribers"]:
        assert row["accepted"] > 0 and row["lost"] == 0 and row["reordered"] == 0, row
    assert result["ok"]
