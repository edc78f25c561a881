"""The README's first command, as a test: the demo tells the whole story and ends cleanly."""

from __future__ import annotations

import pytest
from kafka_reading import transport_env

from streams.config import Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD
from streams.demo.run import run_demo

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_demo_delivers_to_every_subscriber(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in transport_env(settings).items():  # the session broker, as it is
        monkeypatch.setenv(name, value)
    report = await run_demo(events=400, seed=7)

    assert report.sent_valid + report.sent_invalid == 400
    assert sum(report.accepted.values()) == report.sent_valid
    receivers = {r.name: r for r in report.receivers}
    persons = report.accepted[VERHUISD] + report.accepted[OVERLEDEN]
    assert receivers["brp"].total == persons  # the BRP receives every person event
    assert 0 < receivers["zaaksysteem"].total <= report.accepted[ZAAK_GEMUTEERD]
    assert set(receivers["zaaksysteem"].received) == {ZAAK_GEMUTEERD}
    for name in ("gemeente-0363", "gemeente-0344"):
        assert 0 < receivers[name].total < persons
    # Utrecht was down for a while: it answered 503s, and still got everything.
    assert receivers["gemeente-0344"].failures_sent > 0
    assert all(r.bad_signatures == 0 and r.duplicates == 0 for r in report.receivers)
