"""`gemeentebus chaos`: every fault scenario, its counts, and a verdict that fails CI.

Each scenario runs the bus as deployed (separate api, worker and delivery processes) on
brokers of this run alone, on loopback, with real webhook receivers. Results go to JSON
(`chaos/results.json` by default) and the same table as Markdown beside it. The exit status
is non-zero when a scenario lost or reordered anything, failed a check, or could not run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from streams.chaos.brokers import broker_kill_scenario, broker_stop_scenario
from streams.chaos.core import FULL, QUICK, ChaosContext, Outcome, Scenario, Size
from streams.chaos.kills import kill_scenario, sigterm_scenario
from streams.chaos.operations import replay_kill_scenario, volg_race_scenario
from streams.chaos.poison import poison_scenario
from streams.chaos.spread import delivery_kill_scenario
from streams.chaos.subscribers import subscriber_down_scenario
from streams.config import Settings

__all__ = ["DEFAULT_OUTPUT", "SCENARIOS", "markdown", "run_chaos", "scenario_result"]

DEFAULT_OUTPUT: Final = Path("chaos/results.json")

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("kill", kill_scenario),
    Scenario("poison", poison_scenario),
    Scenario("subscriber-down", subscriber_down_scenario),
    Scenario("replay-kill", replay_kill_scenario),
    Scenario("volg-race", volg_race_scenario),
    Scenario("sigterm", sigterm_scenario),
    Scenario("delivery-kill", delivery_kill_scenario),
    Scenario("broker-stop", broker_stop_scenario),
    Scenario("broker-kill", broker_kill_scenario),
)

_COLUMNS: Final = ("published", "accepted", "delivered", "lost", "duplicated", "reordered")


def scenario_result(name: str, outcome: Outcome, seconds: float) -> dict[str, Any]:
    """One scenario as the JSON holds it: totals, per subscriber, checks, pass or fail."""
    totals = {c: sum(getattr(t, c) for t in outcome.tallies) for c in _COLUMNS}
    recovers = [t.recover_s for t in outcome.tallies if t.recover_s is not None]
    return {
        "name": name,
        "ok": outcome.ok,
        "duration_s": round(seconds, 1),
        "error": outcome.error,
        **totals,
        "recover_s": max(recovers) if recovers and len(recovers) == len(outcome.tallies) else None,
        "subscribers": [t.as_dict() for t in outcome.tallies],
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in outcome.checks],
        "faults": outcome.faults,
    }


def _cell(ok: bool | None) -> str:
    return "info" if ok is None else ("pass" if ok else "**FAIL**")


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per scenario and subscriber, then checks."""
    lines = [
        "# gemeentebus chaos",
        "",
        f"{result['started']}, {'quick' if result['quick'] else 'full'} run, "
        f"{result['duration_s']:.0f} s; {result['passed']}/{len(result['scenarios'])} "
        "scenarios passed.",
        "",
        "| scenario | subscriber | published | accepted | delivered | lost | duplicated "
        "| reordered | recover s | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in result["scenarios"]:
        rows = s["subscribers"] or [None]
        for row in rows:
            if row is None:
                lines.append(f"| {s['name']} | — | | | | | | | | {_cell(s['ok'])} |")
                continue
            counts = " | ".join(str(row[c]) for c in _COLUMNS)
            recover = "—" if row["recover_s"] is None else f"{row['recover_s']:.1f}"
            lines.append(
                f"| {s['name']} | {row['subscriber']} | {counts} | {recover} | {_cell(row['ok'])} |"
            )
    lines += [
        "",
        "| scenario | duration s | check | verdict | detail |",
        "|---|---:|---|:---:|---|",
    ]
    for s in result["scenarios"]:
        if s["error"]:
            lines.append(f"| {s['name']} | {s['duration_s']:.0f} | could not run | **FAIL** "
                         f"| {s['error'].splitlines()[0][:200]} |")  # fmt: skip
        for c in s["checks"]:
            detail = c["detail"].replace("|", "/").replace("\n", " ")[:300]
            lines.append(f"| {s['name']} | {s['duration_s']:.0f} | {c['name']} "
                         f"| {_cell(c['ok'])} | {detail} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


async def _run_all(
    scenarios: Sequence[Scenario],
    ctx: ChaosContext,
    written: Callable[[list[dict[str, Any]]], object],
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    try:
        for scenario in scenarios:
            began = time.monotonic()
            ctx.progress(f"[chaos] {scenario.name} ...")
            try:
                outcome = await scenario.run(ctx)
            except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a failed result
                outcome = Outcome(error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            seconds = time.monotonic() - began
            result = scenario_result(scenario.name, outcome, seconds)
            results.append(result)
            written(results)  # a long run shows what it found so far
            verdict = "pass" if result["ok"] else "FAIL"
            ctx.progress(
                f"[chaos] {scenario.name}: {verdict} in {seconds:.0f} s; "
                f"lost {result['lost']}, reordered {result['reordered']}, "
                f"duplicated {result['duplicated']}"
                + (f"; error {result['error'].splitlines()[0]}" if result["error"] else "")
            )
    finally:
        await ctx.close()
    return results


def run_chaos(
    settings: Settings,
    *,
    quick: bool,
    output: Path = DEFAULT_OUTPUT,
    scenarios: Sequence[Scenario] = SCENARIOS,
    progress: Callable[[str], None] = print,
    keep: bool = False,
    size: Size | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the scenarios; write `output` (JSON) and the Markdown table beside it.

    `size` overrides what QUICK or FULL implies; `keep` keeps the logs and broker data;
    `workdir` is where they go (a new temporary folder by default)."""
    started, clock = datetime.now(UTC), time.monotonic()
    # this process's own clients (publishers, readers) meet dead brokers on purpose
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def write(found: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - clock, 1),
            "quick": quick,
            "passed": sum(1 for s in found if s["ok"]),
            "ok": len(found) == len(scenarios) and all(s["ok"] for s in found),
            "scenarios": found,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        output.with_suffix(".md").write_text(markdown(result))
        return result

    folder = Path(tempfile.mkdtemp(prefix="gemeentebus-chaos-", dir=workdir))
    try:
        ctx = ChaosContext(
            local=settings.local_kafka, quick=quick, size=size or (QUICK if quick else FULL),
            folder=folder, progress=progress,
        )  # fmt: skip
        found = asyncio.run(_run_all(scenarios, ctx, write))
    finally:
        if keep:
            progress(f"[chaos] logs and broker data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return write(found)
