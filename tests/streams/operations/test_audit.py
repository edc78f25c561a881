"""The audit trail's rules that need no broker: request ids, actors, outcomes, the record."""

from __future__ import annotations

import asyncio
import getpass
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from streams.auth import Forbidden
from streams.exceptions import KafkaUnavailable
from streams.operations.audit import AuditRecord, cli_actor, request_id_from, verdict
from streams.operations.replay_request import BeyondRetention, ReplayRequest
from streams.operations.subscription_set import InvalidSubscriptions


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-1", True),
        ("3f2b9c1e-0d4a-4c1b-9a77-5e2f1c0b8d6a", True),
        ("call 1", False),  # a space
        ("x" * 65, False),
        ("bsn-999993653", False),  # nine digits in a row: maybe a BSN, never kept
        ("", False),
        (None, False),
    ],
)
def test_a_callers_request_id_is_kept_only_when_plain(given: str | None, kept: bool) -> None:
    found = request_id_from(given)
    assert (found == given) is kept
    assert found and len(found) <= 64


def test_the_cli_actor_is_the_os_user() -> None:
    assert cli_actor() == f"cli:{getpass.getuser()}"


def _invalid() -> BaseException:
    try:
        ReplayRequest.model_validate({"from": "yesterday"})
    except ValidationError as exc:
        return exc
    raise AssertionError("a bad replay request validated")


@pytest.mark.parametrize(
    ("exc", "outcome", "code"),
    [
        (Forbidden("not_an_operator", "no"), "refused", "not_an_operator"),
        (InvalidSubscriptions(["[0]: owner"]), "refused", "invalid_subscriptions"),
        (BeyondRetention(datetime(2026, 1, 1, tzinfo=UTC)), "refused", "beyond_retention"),
        (_invalid(), "refused", "invalid_input"),
        (KafkaUnavailable("down"), "failed", "kafka_unavailable"),
        (KeyboardInterrupt(), "failed", "interrupted"),
        (asyncio.CancelledError(), "failed", "interrupted"),
        (RuntimeError("bug"), "failed", "runtime_error"),
    ],
)
def test_how_an_action_ended(exc: BaseException, outcome: str, code: str) -> None:
    assert verdict(exc) == (outcome, code)


def test_a_record_is_plain_json_in_utc() -> None:
    at = datetime(2026, 12, 6, 22, 0, tzinfo=UTC)
    record = AuditRecord(
        action="reconcile", actor="cli:ops", via="cli", outcome="ok", at=at, target="s1"
    )
    assert json.loads(record.encoded()) == {
        "action": "reconcile", "actor": "cli:ops", "at": "2026-12-06T22:00:00+00:00",
        "via": "cli", "target": "s1", "outcome": "ok", "code": None, "status": None,
        "requestId": None, "details": {},
    }  # fmt: skip
