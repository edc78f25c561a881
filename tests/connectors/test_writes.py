"""The courier's writes: a delivery-log record and the copy written when it is refused."""

from __future__ import annotations

from connectors.writes import log_write
from streams.delivery.log import (
    CUT_MARK,
    DeliveryAttempt,
    decode_attempt,
    delivery_attempt,
    event_ref,
)


def _attempt(event_id: bytes) -> DeliveryAttempt:
    ref = event_ref(None, (("ce_id", event_id),), b"{}")
    return delivery_attempt(subscription="s", purpose="p", ref=ref, outcome="delivered", attempt=1)


def test_a_log_record_with_long_fields_falls_back_to_a_cut_copy() -> None:
    write = log_write("deliveries", _attempt(b"x" * 500))
    assert write.fallback is not None and write.fallback.value is not None
    assert decode_attempt(write.fallback.value).event_id == "x" * 200 + CUT_MARK
    assert write.value is not None and decode_attempt(write.value).event_id == "x" * 500


def test_a_log_record_with_nothing_to_cut_has_no_copy_to_fall_back_to() -> None:
    # the copy would be the same record: refused as well, so it is not made per delivery
    write = log_write("deliveries", _attempt(b"e1"))
    assert write.fallback is None
    assert write.value is not None and decode_attempt(write.value).event_id == "e1"
