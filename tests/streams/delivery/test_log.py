"""The delivery log: who a deliver-topic record is, and an attempt's record, written and read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from streams.delivery.log import (
    CUT_MARK,
    decode_attempt,
    delivery_attempt,
    encode_attempt,
    event_ref,
    shortened,
)

SOURCE = "urn:nld:oin:00000001823288444000:systeem:BRP-component"
VERHUISD = "nl.brp.persoon-verhuisd"
ZAAK = "nl.overheid.zaken.zaak-gemuteerd"


def test_event_ref_reads_the_ce_headers() -> None:
    headers = (
        ("ce_id", b"e1"),
        ("ce_source", SOURCE.encode()),
        ("ce_type", VERHUISD.encode()),
        ("ce_time", b"2025-03-01T10:00:00+00:00"),
    )
    ref = event_ref(b"pseudo", headers, b"not json at all")
    assert (ref.id, ref.source, ref.type) == ("e1", SOURCE, VERHUISD)
    assert ref.time == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert ref.pseudonym == "pseudo"  # a person event: the key is the pseudonym
    assert ref.replay is False


def test_event_ref_falls_back_to_the_json_and_never_raises() -> None:
    body = {"id": "e2", "source": SOURCE, "type": ZAAK, "time": "x", "replay": "r1"}
    ref = event_ref(b"key", (("ce_id", None),), json.dumps(body).encode())
    assert (ref.id, ref.type, ref.time, ref.pseudonym, ref.replay) == ("e2", ZAAK, None, None, True)
    broken = event_ref(None, (), b"\xff[")
    assert (broken.id, broken.source, broken.type, broken.time) == ("", "", "", None)


def test_an_attempt_is_written_and_read_back() -> None:
    ref = event_ref(b"pseudo", (("ce_id", b"e1"), ("ce_type", VERHUISD.encode())), b"{}")
    attempt = delivery_attempt(
        subscription="sub-1", purpose="p", ref=ref, outcome="retry", attempt=2, status=500
    )
    key, value = encode_attempt(attempt)
    assert key == b"sub-1"
    assert decode_attempt(value) == attempt


def test_shortened_cuts_long_free_text() -> None:
    ref = event_ref(None, (("ce_id", b"x" * 500),), b"{}")
    attempt = delivery_attempt(
        subscription="s", purpose="p", ref=ref, outcome="delivered", attempt=1
    )
    cut = shortened(attempt)
    assert cut.event_id == "x" * 200 + CUT_MARK
    assert cut.subscription == "s"


def test_shortened_leaves_an_attempt_with_nothing_long_as_it_is() -> None:
    ref = event_ref(None, (("ce_id", b"e1"),), b"{}")
    attempt = delivery_attempt(
        subscription="s", purpose="p", ref=ref, outcome="delivered", attempt=1
    )
    assert shortened(attempt) is attempt
