"""Hypothesis strategies of bad input: CloudEvents over HTTP and records into ingress.

Every input drawn here is invalid by construction (a required attribute missing or of the
wrong kind, an unknown type, broken or trailing Avro, a rule broken, a body that is no JSON,
…), starting from realistic events of `EventFactory`, so "rejected with a reason" is what
must happen to each one. `collect` draws a list of them deterministically (derandomized, no
example database), so a failing run draws the same inputs again.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from streams.contract import codec
from streams.contract.attributes import partition_key
from streams.contract.envelope import CloudEvent
from streams.contract.rules import dutch_today
from streams.demo.generators import EventFactory
from streams.demo.invalid import invalid_corpus
from streams.exceptions import InvalidEvent

T = TypeVar("T")

TODAY = dutch_today()
EVENTS: list[CloudEvent] = EventFactory(11, today=TODAY).mixed(60)
BROKEN_RULES: list[CloudEvent] = [e for _, e in invalid_corpus(11, today=TODAY)]
REQUIRED = ("specversion", "id", "source", "type")
NOT_A_STRING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.lists(st.integers(), max_size=2), st.just({})
)
# text that cannot be a time, an event type the registry has, or specversion 1.0
JUNK = st.text(min_size=0, max_size=12)


def collect(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` examples of `strategy` (fewer only if it has no more to give)."""
    found: list[T] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(example: T) -> None:
        found.append(example)

    # Other threads of the test process (the topic sweeper's Kafka client picks its nodes with
    # `random`) move the global random state while examples are drawn, which hypothesis would
    # report as the strategies' own use of `random`; they use none.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HypothesisDeprecationWarning)
        draw()
    return found


# -- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpInput:
    kind: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _structured(kind: str, obj: Any) -> HttpInput:
    body = json.dumps(obj, default=str).encode()
    return HttpInput(kind, codec.STRUCTURED_CONTENT_TYPE, body)


@st.composite
def _broken_event(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A structured event with one thing broken, and what was broken."""
    obj = codec.to_json(draw(st.sampled_from(EVENTS)))
    how = draw(
        st.sampled_from(
            [
                "missing",
                "not_a_string",
                "unknown_type",
                "specversion",
                "time",
                "extension_name",
                "datacontenttype",
                "data_base64",
                "data_not_object",
                "data_field_type",
            ]
        )
    )
    if how == "missing":
        obj.pop(draw(st.sampled_from([*REQUIRED, "data"])))
    elif how == "not_a_string":
        obj[draw(st.sampled_from(REQUIRED))] = draw(NOT_A_STRING)
    elif how == "unknown_type":
        obj["type"] = "nl.fuzz." + draw(JUNK)
    elif how == "specversion":
        obj["specversion"] = draw(JUNK.filter(lambda v: v != "1.0"))
    elif how == "time":
        obj["time"] = "geen tijd " + draw(JUNK)
    elif how == "extension_name":
        obj["Fuzz-" + draw(st.text(alphabet="ABC_-!", max_size=5))] = "x"
    elif how == "datacontenttype":
        obj["datacontenttype"] = draw(
            st.one_of(st.sampled_from(["application/xml", "text/plain"]), NOT_A_STRING)
        )
    elif how == "data_base64":
        obj["data_base64"] = "AAAA"
    elif how == "data_not_object":
        obj["data"] = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.none())))
    else:  # a field of data that is not what the schema says
        field = draw(st.sampled_from(sorted(k for k, v in obj["data"].items() if v is not None)))
        current = obj["data"][field]
        if isinstance(current, str):
            wrong: Any = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=2)))
        else:
            wrong = "x" + draw(JUNK)
        obj["data"][field] = wrong
    return how, obj


def _as_json(event: CloudEvent) -> dict[str, Any]:
    try:
        return codec.to_json(event)
    except InvalidEvent:  # not expressible: what a broken publisher would send
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "time": event.time,
            "dataschema": event.dataschema,
            "datacontenttype": "application/json",
            "data": dict(event.data),
        }


def _binary(obj: dict[str, Any], drop: str | None, kind: str) -> HttpInput:
    headers = tuple(
        (f"ce-{k}", str(v))
        for k, v in obj.items()
        if k not in ("data", "datacontenttype") and k != drop
    )
    body = json.dumps(obj.get("data"), default=str).encode()
    return HttpInput(kind, codec.JSON_CONTENT_TYPE, body, headers)


@st.composite
def http_inputs(draw: st.DrawFn, max_event_bytes: int) -> HttpInput:
    """One bad request to `POST /events`."""
    shape = draw(
        st.sampled_from(
            ["structured", "rule", "batch", "binary", "not_json", "not_an_event", "media", "large"]
        )
    )
    if shape == "structured":
        how, obj = draw(_broken_event())
        return _structured(f"structured.{how}", obj)
    if shape == "rule":
        return _structured("rule", _as_json(draw(st.sampled_from(BROKEN_RULES))))
    if shape == "batch":  # one bad event spoils the batch: nothing of it is published
        _, bad = draw(_broken_event())
        good = [codec.to_json(e) for e in draw(st.lists(st.sampled_from(EVENTS), max_size=3))]
        at = draw(st.integers(0, len(good)))
        body = json.dumps([*good[:at], bad, *good[at:]], default=str).encode()
        return HttpInput("batch", codec.BATCH_CONTENT_TYPE, body)
    if shape == "binary":
        obj = codec.to_json(draw(st.sampled_from(EVENTS)))
        return _binary(obj, draw(st.sampled_from(REQUIRED)), "binary.missing")
    if shape == "not_json":
        junk = b"\xff" + draw(st.binary(max_size=40))
        content_type = draw(
            st.sampled_from([codec.STRUCTURED_CONTENT_TYPE, codec.BATCH_CONTENT_TYPE])
        )
        return HttpInput("not_json", content_type, junk)
    if shape == "not_an_event":
        value = draw(
            st.one_of(
                st.integers(), st.text(max_size=8), st.none(), st.lists(st.integers(), max_size=2)
            )
        )
        return HttpInput("not_an_event", codec.STRUCTURED_CONTENT_TYPE, json.dumps(value).encode())
    if shape == "media":
        content_type = draw(
            st.sampled_from(["text/plain", "application/xml", "application/octet-stream"])
        )
        return HttpInput("media", content_type, json.dumps(codec.to_json(EVENTS[0])).encode())
    obj = codec.to_json(draw(st.sampled_from(EVENTS)))
    obj["data"] = {**obj["data"], "opvulling": "x" * (max_event_bytes + 1)}
    return _structured("large", obj)


# -- Kafka --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaInput:
    kind: str
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def _record(event: CloudEvent) -> tuple[tuple[tuple[str, bytes | None], ...], bytes]:
    record = codec.to_kafka(event, key=partition_key(event.type, event.data, b"fuzz"))
    assert record.value is not None
    return tuple(record.headers), record.value


def _set(
    headers: tuple[tuple[str, bytes | None], ...], name: str, value: bytes | None
) -> tuple[tuple[str, bytes | None], ...]:
    if all(k != name for k, _ in headers):
        return (*headers, (name, value))
    return tuple((k, value if k == name else v) for k, v in headers)


def _encodable(events: list[CloudEvent]) -> list[CloudEvent]:
    out = []
    for event in events:
        try:
            codec.to_kafka(event, key=None)
        except InvalidEvent:
            continue
        out.append(event)
    return out


BROKEN_RULES_AVRO = _encodable(BROKEN_RULES)
REQUIRED_HEADERS = tuple(f"ce_{a}" for a in REQUIRED)


@st.composite
def kafka_inputs(draw: st.DrawFn, max_event_bytes: int) -> KafkaInput:
    """One bad record for the ingress topic."""
    headers, value = _record(draw(st.sampled_from(EVENTS)))
    how = draw(
        st.sampled_from(
            [
                "header_null",
                "header_not_utf8",
                "header_missing",
                "unknown_type",
                "specversion",
                "time",
                "content_type",
                "truncated",
                "trailing",
                "random_value",
                "tombstone",
                "large",
                "rule",
            ]
        )
    )
    name = draw(st.sampled_from(REQUIRED_HEADERS))
    if how == "header_null":
        return KafkaInput(how, value, _set(headers, name, None))
    if how == "header_not_utf8":
        return KafkaInput(how, value, _set(headers, name, b"\xff" + draw(st.binary(max_size=6))))
    if how == "header_missing":
        return KafkaInput(how, value, tuple(h for h in headers if h[0] != name))
    if how == "unknown_type":
        return KafkaInput(how, value, _set(headers, "ce_type", ("nl.fuzz." + draw(JUNK)).encode()))
    if how == "specversion":
        version = draw(JUNK.filter(lambda v: v != "1.0")).encode()
        return KafkaInput(how, value, _set(headers, "ce_specversion", version))
    if how == "time":
        return KafkaInput(
            how, value, _set(headers, "ce_time", ("geen tijd " + draw(JUNK)).encode())
        )
    if how == "content_type":
        kind = draw(st.sampled_from([b"application/json", b"text/plain", b""]))
        return KafkaInput(how, value, _set(headers, "content-type", kind))
    if how == "truncated":
        return KafkaInput(how, value[: draw(st.integers(0, len(value) - 1))], headers)
    if how == "trailing":
        return KafkaInput(how, value + draw(st.binary(min_size=1, max_size=8)), headers)
    if how == "random_value":
        return KafkaInput(how, b"\xff" + draw(st.binary(max_size=30)), headers)
    if how == "tombstone":
        return KafkaInput(how, None, headers)
    if how == "large":
        return KafkaInput(how, value + b"\x00" * (max_event_bytes + 1), headers)
    rule_headers, rule_value = _record(draw(st.sampled_from(BROKEN_RULES_AVRO)))
    return KafkaInput(how, rule_value, rule_headers)


Maker = Callable[[int], st.SearchStrategy[Any]]
