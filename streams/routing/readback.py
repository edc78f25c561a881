"""Reading events back for one subscription, fast: what a replay writes for each record.

A replay reads records the gate wrote to the events topics and, for the ones the
subscription's current definition matches, writes the delivery record `Matcher` and
`delivery_record` would make. `Readback.deliverable` gives the same bytes at a fraction
of the cost, by decoding only what matching needs, in this order:

- the headers, once, into attribute text; a type the subscription does not take is no match,
  and nothing more is read;
- the filters, over the attributes (they never see `data`);
- `data`, only when the filters matched or a volgindicatie may (a person event and a
  subscription that follows someone): the Avro read, then the pseudonym;
- the JSON body built from the header text and the projected data, without the CloudEvent
  value and the checks of an event about to be written (the gate made these when it wrote
  the record).

Anything unusual for an events-topic record (a repeated or null header, a header in another
case, a missing attribute, an unknown schema, undecodable data) goes the slow, exact way
(`Matcher.match` + `delivery_record`), so an odd record is judged as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from json.encoder import encode_basestring as _quote  # how `_JSON` quotes a string
from typing import Any, Final

from aiokafka.structs import ConsumerRecord

from streams.contract import attributes
from streams.contract.avrodata import DataBinding, data_binding, read_data
from streams.contract.avronodes import format_time, parse_time
from streams.contract.codec import AVRO_CONTENT_TYPE, JSON_CONTENT_TYPE
from streams.contract.envelope import SPECVERSION
from streams.contract.record import KafkaRecord
from streams.contract.rules import dutch_today
from streams.contract.schemas import SchemaRegistry, SchemaVersion, registry
from streams.exceptions import InvalidEvent
from streams.routing.matching import Matcher
from streams.routing.router import _JSON, CONTENT_TYPE, delivery_record
from streams.routing.subscriptions import Subscription, projection

__all__ = ["Readback"]

# the writer's binding, the current version, its binding and the body's JSON from
# `datacontenttype` to `dataschema`
_Bindings = tuple[DataBinding, SchemaVersion, DataBinding, str]
# a set of attribute names: the extensions among them, and the body's pieces of extensions
# (a piece whole, or a piece and the attribute whose quoted text follows it)
_Shape = tuple[tuple[str, ...], tuple[tuple[str, str | None], ...]]
# sets of attribute names kept per readback (the gate writes a few; anything else is odd)
_SHAPES_KEPT: Final = 64

_AVRO: Final = AVRO_CONTENT_TYPE.encode()
_CONTENT_TYPE: Final = CONTENT_TYPE.encode()
_REQUIRED: Final = ("specversion", "id", "source", "type", "time", "dataschema")
# Context attributes, and names a header binding never reads as an extension.
_NOT_EXTENSIONS: Final = frozenset(
    {*_REQUIRED, "subject", "sequence", "data", "data_base64", "datacontenttype"}
)
_EXTENSION_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_BODY_START: Final = f'{{"specversion":{_quote(SPECVERSION)},"id":'


def _extension_name(name: str) -> bool:
    return 0 < len(name) <= 20 and _EXTENSION_CHARS.issuperset(name)


class Readback:
    """One subscription's current definition over records read back from events topics.

    `extensions` are added to every event written (a replay's `replay` id, also sent as a
    `ce_<name>` header). Not thread-safe; one per replay.
    """

    def __init__(
        self,
        subscription: Subscription,
        key: bytes,
        *,
        followed_since: Mapping[str, int] | None = None,
        extensions: Mapping[str, str] | None = None,
        reg: SchemaRegistry | None = None,
    ) -> None:
        self.subscription = subscription
        self._matcher = Matcher(subscription, key, followed_since=followed_since)
        self._pseudonyms = attributes.PseudonymKey(key)
        self._since = followed_since
        self._extra = dict(extensions or {})
        self._extra_headers = tuple((f"ce_{n}", v.encode()) for n, v in self._extra.items())
        self._reg = reg or registry()
        self._today: date = dutch_today()
        self._types = {t.encode(): t for t in subscription.types}
        # followed people count only for person events (and only those carry a bsn)
        self._follows = bool(subscription.volgindicaties)
        # per dataschema header: (writer binding, current version, current binding)
        self._bindings: dict[str, _Bindings | None] = {}
        self._shapes: dict[tuple[str, ...], _Shape] = {}
        self._type_json = {t: f',"type":{_quote(t)}' for t in subscription.types}
        # read once: each is a pydantic attribute lookup per record otherwise
        # per type: its filters ANDed with its owner's grant's, and the grant's alone (they
        # bind a followed person's events too): `streams.routing.grants`
        self._filters = {t: subscription.filter_for(t) for t in subscription.types}
        self._required = {t: subscription.required_for(t) for t in subscription.types}
        self._source = subscription.source
        self._by_filters = not subscription.volgindicaties_only
        self._projections = {t: projection(subscription, t) for t in subscription.types}

    def deliverable(self, record: ConsumerRecord[bytes, bytes]) -> KafkaRecord | None:
        """The delivery record of this events-topic record for the subscription, or None
        when it does not match it (or is unreadable); never raises."""
        found: dict[str, bytes] = {}
        content_type: bytes | None = None
        for name, raw in record.headers:
            if not isinstance(raw, bytes) or name in found:
                return self._slow(record)
            if name.startswith("ce_"):
                found[name] = raw
            elif name == "content-type":
                if content_type is not None:
                    return self._slow(record)
                content_type = raw
            elif name.lower() == "content-type":
                return self._slow(record)
        event_type = self._types.get(found.get("ce_type", b""))
        if event_type is None:
            return None  # not a type it takes: neither filters nor volgindicaties match
        if content_type != _AVRO or not isinstance(record.value, bytes):
            return self._slow(record)
        try:
            attrs = {name[3:]: raw.decode() for name, raw in found.items()}
        except UnicodeDecodeError:
            return self._slow(record)
        if any(not attrs.get(n) for n in _REQUIRED) or attrs["specversion"] != SPECVERSION:
            return self._slow(record)
        bindings = self._binding(attrs["dataschema"], event_type)
        if bindings is None:
            return self._slow(record)
        writer, current, out_binding, schema_json = bindings
        shape = self._shapes.get(tuple(attrs))
        if shape is None:
            shape = self._shape(attrs)
            if shape is None:
                return self._slow(record)
        names, body_extensions = shape
        extensions = {name: attrs[name] for name in names}
        subject, sequence = attrs.get("subject"), attrs.get("sequence")
        if subject == "" or sequence == "":
            return self._slow(record)
        text = attrs["time"]
        try:
            moment = parse_time(text)
        except ValueError:
            return self._slow(record)
        # what the gate writes (milliseconds, Z) is already as `format_time` writes it
        canonical = len(text) == 24 and text[10] == "T" and text[19] == "." and text[-1] == "Z"
        time = text if canonical else format_time(moment)
        seen = dict(extensions)  # the attributes filters see (`event_attributes`)
        seen.update(
            id=attrs["id"],
            source=attrs["source"],
            type=event_type,
            time=time,
            dataschema=current.dataschema,
            specversion=SPECVERSION,
        )
        if subject is not None:
            seen["subject"] = subject
        if sequence is not None:
            seen["sequence"] = sequence
        by_source = self._source is None or self._source == attrs["source"]
        matched = by_source and self._by_filters and self._filters[event_type](seen)
        maybe_followed = self._follows and by_source and event_type in attributes.PERSON_TYPES
        required = self._required[event_type]
        if maybe_followed and not matched and required is not None and not required(seen):
            maybe_followed = False
        if not matched and not maybe_followed:
            return None
        try:
            data = read_data(writer, current, record.value)
        except InvalidEvent:
            return None  # undecodable: the slow way says no match too
        if not matched and not self._followed(data, record.timestamp):
            return None
        # the JSON `_JSON.encode` makes of the CloudEvent's body, written piece by piece
        # (the same keys in the same order, each string quoted the way `_JSON` quotes it)
        body = [_BODY_START, _quote(attrs["id"]), ',"source":', _quote(attrs["source"])]
        body += (self._type_json[event_type], ',"time":', _quote(time))
        if subject is not None:
            body += (',"subject":', _quote(subject))
        body.append(schema_json)
        if sequence is not None:
            body += (',"sequence":', _quote(sequence))
        for piece, name in body_extensions:
            body.append(piece if name is None else piece + _quote(attrs[name]))
        data_json = _JSON.encode(out_binding.root.to_json(self._projections[event_type](data)))
        body += (',"data":', data_json, "}")
        headers = (
            ("content-type", _CONTENT_TYPE),
            ("ce_id", found["ce_id"]),
            ("ce_source", found["ce_source"]),
            ("ce_type", found["ce_type"]),
            ("ce_time", time.encode() if not canonical else found["ce_time"]),
            *self._extra_headers,
        )
        key = None if record.key is None else bytes(record.key)
        return KafkaRecord(key=key, headers=headers, value="".join(body).encode())

    def _shape(self, attrs: Mapping[str, str]) -> _Shape | None:
        """For a set of attribute names: the extensions among them, and the body's pieces of
        the extensions and this readback's own (sorted, its own winning a clash); None when
        one is no extension name (the slow way judges it). Kept per set of names."""
        names = tuple(n for n in attrs if n not in _NOT_EXTENSIONS)
        if not all(_extension_name(n) for n in names):
            return None
        merged: dict[str, str | None] = dict.fromkeys(names)
        merged.update(self._extra)
        pieces = tuple(
            (f",{_quote(n)}:", n) if text is None else (f",{_quote(n)}:{_quote(text)}", None)
            for n, text in sorted(merged.items())
        )
        found = (names, pieces)
        if len(self._shapes) < _SHAPES_KEPT:
            self._shapes[tuple(attrs)] = found
        return found

    def _followed(self, data: Mapping[str, Any], timestamp: int) -> bool:
        """Whether a volgindicatie makes this person event the subscription's (active, and
        set no later than the event was recorded)."""
        bsn = data.get("bsn")
        if bsn is None:
            return False
        person = self._pseudonyms.pseudonym(str(bsn))
        if not self.subscription.volgindicatie_active(person, self._today):
            return False
        if self._since is None:
            return True
        since = self._since.get(person)
        return since is not None and timestamp >= since

    def _binding(self, dataschema: str, event_type: str) -> _Bindings | None:
        if dataschema in self._bindings:
            return self._bindings[dataschema]
        found = None
        try:
            version = self._reg.by_dataschema(dataschema)
        except InvalidEvent:
            version = None
        if version is not None and version.type == event_type:
            current = self._reg.current(event_type)
            schema_json = (
                f',"datacontenttype":{_quote(JSON_CONTENT_TYPE)}'
                f',"dataschema":{_quote(current.dataschema)}'
            )
            found = (data_binding(version), current, data_binding(current), schema_json)
        self._bindings[dataschema] = found
        return found

    def _slow(self, record: ConsumerRecord[bytes, bytes]) -> KafkaRecord | None:
        event = self._matcher.match(record)
        if event is None:
            return None
        out = delivery_record(event.with_extensions(**self._extra), record.key)
        return KafkaRecord(
            key=out.key, headers=(*out.headers, *self._extra_headers), value=out.value
        )
