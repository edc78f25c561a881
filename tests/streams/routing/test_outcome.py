"""A bug in the bus never loses a record: it becomes a dead letter with code internal_error."""

from __future__ import annotations

import pytest

from streams.contract.headers import ERROR_HEADER
from streams.contract.record import KafkaRecord
from streams.ingress.gate import Gate, Rejected
from streams.kafka.topics import Topics
from streams.routing.worker import outcome_for


def test_an_unexpected_error_dead_letters_the_record(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(Topics("t"), b"key")

    def broken(record: KafkaRecord, **options: object) -> object:
        raise RuntimeError("999993653 in a message that must not reach a log")

    monkeypatch.setattr(gate, "from_record", broken)
    record = KafkaRecord(key=b"k", headers=(("ce_type", b"nl.brp.persoon-verhuisd"),), value=b"x")
    outcome = outcome_for(gate, record)
    assert isinstance(outcome, Rejected)
    assert outcome.topic == "t.invalid"
    assert dict(outcome.record.headers)[ERROR_HEADER] == b"internal_error"
    assert outcome.record.value == b"x"
    assert b"999993653" not in b"".join(v for _, v in outcome.record.headers)
    assert "RuntimeError" in caplog.text and "999993653" not in caplog.text
