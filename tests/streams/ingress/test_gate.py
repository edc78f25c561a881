"""The gate judges a Kafka publisher's record against its publish grant before all else. No
broker needed."""

from __future__ import annotations

from dataclasses import replace

from streams.auth import Client
from streams.config import PublishGrant
from streams.contract import codec
from streams.contract.attributes import VERHUISD
from streams.contract.envelope import CloudEvent
from streams.contract.headers import DETAIL_HEADER, ERROR_HEADER, REDACTED
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.demo.generators import BRP_SOURCE, EventFactory
from streams.ingress.gate import Accepted, Gate, Rejected
from streams.kafka.topics import Topics

TODAY = dutch_today()
OTHER_SOURCE = "urn:nld:oin:00000001234567890000:systeem:ander-systeem"
BRP = Client(
    id="brp",
    via="kafka",
    publish=PublishGrant(types=(VERHUISD,), sources=(BRP_SOURCE,)),
)


def _record(event: CloudEvent) -> KafkaRecord:
    return codec.to_kafka(event, key=b"k")


def _gate() -> Gate:
    return Gate(Topics("t"), b"test-pseudonym-key")


def test_a_record_inside_the_grant_is_accepted() -> None:
    outcome = _gate().from_record(_record(EventFactory(1, today=TODAY).verhuisd()), publisher=BRP)
    assert isinstance(outcome, Accepted)
    assert outcome.topic == f"t.events.{VERHUISD}"


def test_a_type_or_source_outside_the_grant_is_a_dead_letter_with_its_code() -> None:
    factory = EventFactory(2, today=TODAY)
    death = _record(factory.overleden())  # valid, but not this publisher's to send
    elsewhere = _record(replace(factory.verhuisd(), source=OTHER_SOURCE))
    gate = _gate()
    for record, code, path in (
        (death, "type_not_granted", "type"),
        (elsewhere, "source_not_granted", "source"),
    ):
        outcome = gate.from_record(record, publisher=BRP)
        assert isinstance(outcome, Rejected)
        assert outcome.topic == "t.invalid"
        assert [(e.path, e.code) for e in outcome.errors] == [(path, code)]
        headers = dict(outcome.record.headers)
        assert headers[ERROR_HEADER] == code.encode()
        detail = headers[DETAIL_HEADER]
        message = f"client brp may not publish this {path} (its publish grant)"
        assert detail == f"{path}: {code}: {message}".encode()  # no claimed value in it
        # byte for byte, without the publisher's key
        assert outcome.record.value == record.value
        assert outcome.record.key is None
        # the same record from the shared ingress topic: its trusted writers have no grant
        assert isinstance(gate.from_record(record), Accepted)


def test_the_grant_comes_before_validation() -> None:
    """As over HTTP (a 403 before any 400): an ungranted publisher learns that first."""
    broken = _record(EventFactory(3, today=TODAY).overleden())
    broken = KafkaRecord(key=broken.key, headers=broken.headers, value=broken.value[:5])
    outcome = _gate().from_record(broken, publisher=BRP)
    assert isinstance(outcome, Rejected)
    assert outcome.code == "type_not_granted"
    assert isinstance(_gate().from_record(broken), Rejected)  # invalid anyway


def test_a_dead_letter_keeps_no_header_value_that_may_be_a_bsn() -> None:
    event = EventFactory(4, today=TODAY).zaak_gemuteerd()
    record = _record(event)
    bsn = "123456782"
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sent = (
        *record.headers,
        ("ce_traceparent", traceparent),
        ("ce_tracestate", bsn.encode()),
        ("x-klant", bsn.encode()),
        (f"ce_{bsn}", b"1"),  # an extension named like a BSN
    )
    outcome = _gate().reject(replace(record, headers=sent), [])
    kept = dict(outcome.record.headers)
    assert kept["ce_id"] == event.id.encode()
    assert event.subject is not None
    assert kept["ce_subject"] == event.subject.encode()  # a zaak's UUID, no BSN
    assert kept["ce_traceparent"] == traceparent
    assert kept["ce_tracestate"] == kept["x-klant"] == kept["redacted"] == REDACTED
    assert kept["ce_bronorganisatie"] == REDACTED  # any extension: 9 digits, like a BSN
    assert all(bsn not in name and bsn.encode() not in value for name, value in kept.items())
    # a subject that is no UUID goes too
    person = replace(record, headers=(*record.headers, ("ce_subject", bsn.encode())))
    assert dict(_gate().reject(person, []).record.headers)["ce_subject"] == REDACTED
