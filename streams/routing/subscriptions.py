"""Subscriptions: who receives which events, in the shape of the Logius Notificatieservices draft.

A `Subscription` is a frozen, validated value: every type is known to the schema registry,
every `fields` entry names a field of one of its types, its filters compile (once, here).
`projection` strips from an event's data every field the subscriber may not see.
Volgindicaties (BRP afnemersindicaties) are stored only as BSN pseudonyms, never as BSNs; a
followed person's events reach the subscription whatever its filters, and a subscription with
`volgindicatiesOnly` receives nothing else (the BRP afnemer who follows named persons only).

A subscription as the subscription set hands it out is *bound* to its owner's current grant
(`streams.routing.grants`, `Binding`): per type, the grant's required filters ANDed with its
own (`filter_for`, `required_for`) and the fields it receives (`fields_for`); or it is
suspended (`suspension`), and then not `active`: nothing is routed, replayed or delivered.
A binding is never stored: `record_dict` is what the client and the operator gave.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from streams.contract.attributes import ROUTING_ATTRIBUTES
from streams.contract.schemas import registry
from streams.routing.filters import Filter, compile_filters

__all__ = [
    "CONTENT_TYPES",
    "Binding",
    "Projection",
    "SinkCredential",
    "Subscription",
    "Suspension",
    "new_subscription_id",
    "projection",
    "schema_fields",
]

Projection = Callable[[Mapping[str, Any]], dict[str, Any]]

# SPEC §1: Avro on Kafka, JSON over HTTP; a filter on `datacontenttype` sees this value.
CONTENT_TYPES: Final[Mapping[str, str]] = {"HTTP": "application/json", "KAFKA": "application/avro"}
MASK: Final = "********"

_PSEUDONYM = re.compile(r"^[0-9a-f]{64}$")  # HMAC-SHA-256 hex: nothing a BSN could pass as
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# A projection tree: field name -> None (keep whole) or the tree of its sub-fields to keep.
_Tree = dict[str, "_Tree | None"]

_MODEL_CONFIG = ConfigDict(
    frozen=True,
    extra="forbid",
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
    hide_input_in_errors=True,  # input may hold a token or a BSN sent by mistake
)


def new_subscription_id() -> str:
    """A fresh server-assigned subscription id."""
    return str(uuid.uuid4())


class SinkCredential(BaseModel):
    """An access token the bus sends as `Authorization: Bearer` (Subscriptions API §3.2.3)."""

    model_config = _MODEL_CONFIG

    credential_type: Literal["ACCESSTOKEN"] = "ACCESSTOKEN"
    access_token: SecretStr = Field(min_length=1)
    access_token_type: str = "bearer"  # noqa: S105 - the OAuth token type, no secret
    access_token_expires_utc: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspension:
    """Why a subscription receives nothing now: its owner's current grant does not cover it.
    `code` is stable (`owner_unknown`, `not_a_subscriber`, `type_not_granted`,
    `fields_not_granted`, `volgindicaties_not_granted`); `message` names no personal data."""

    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """What the owner's current grant makes of a subscription, per event type: `filters` the
    subscription's own ANDed with the grant's, `required` the grant's alone (they bind a
    volgindicatie's events too), `fields` what it receives (None: the whole record).
    A type missing from a mapping is unbound. `suspension` set: it receives nothing."""

    filters: Mapping[str, Filter] = dataclasses.field(default_factory=dict)
    required: Mapping[str, Filter] = dataclasses.field(default_factory=dict)
    fields: Mapping[str, tuple[str, ...] | None] = dataclasses.field(default_factory=dict)
    suspension: Suspension | None = None


class Subscription(BaseModel):
    """One subscription; build it with `Subscription.model_validate(json)` or keywords."""

    model_config = _MODEL_CONFIG

    id: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    sink: str = Field(min_length=1)
    protocol: Literal["HTTP", "KAFKA"]
    sink_credential: SinkCredential | None = None
    source: str | None = Field(default=None, min_length=1)
    types: tuple[str, ...] = Field(min_length=1)
    filters: tuple[dict[str, Any], ...] = ()
    subscriber_reference: str | None = None
    fields: tuple[str, ...] | None = None
    owner: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    # true: a test event is POSTed to an HTTP sink when the subscription is written;
    # "handshake": the CloudEvents webhook validation handshake (OPTIONS) instead; false: none
    callback_check: bool | Literal["handshake"] = True
    volgindicaties: dict[str, date | None] = Field(default_factory=dict)
    volgindicaties_only: bool = False
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    status: Literal["active", "retired"] = "active"
    # Standard Webhooks secret (`whsec_…`): shown once when created, never in `public_dict`.
    signing_secret: SecretStr | None = None

    _filter: Filter = PrivateAttr()
    _projections: dict[str, Projection] = PrivateAttr(default_factory=dict)
    _binding: Binding | None = PrivateAttr(default=None)

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: tuple[str, ...]) -> tuple[str, ...]:
        known = registry().types()
        unknown = [t for t in types if t not in known]
        if unknown:
            raise ValueError(f"unknown event type(s): {', '.join(unknown)}")
        if len(set(types)) != len(types):
            raise ValueError("an event type is listed twice")
        return types

    @field_validator("volgindicaties")
    @classmethod
    def _pseudonyms_only(cls, volgindicaties: dict[str, date | None]) -> dict[str, date | None]:
        if any(not _PSEUDONYM.match(key) for key in volgindicaties):
            # never echo the key: it may be a BSN sent by mistake
            raise ValueError("volgindicaties are keyed by BSN pseudonym (64 hex digits) only")
        return volgindicaties

    @field_validator("created")
    @classmethod
    def _aware(cls, created: datetime) -> datetime:
        if created.utcoffset() is None:
            raise ValueError("created needs a time zone")
        return created

    @model_validator(mode="after")
    def _check_and_compile(self) -> Subscription:
        if self.protocol == "HTTP":
            parts = urlsplit(self.sink)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("sink: an HTTP subscription needs an absolute http(s) URL")
        if self.volgindicaties_only and self.filters:
            # such a subscription receives followed persons' events, which ignore filters
            raise ValueError("filters have no effect on a volgindicatiesOnly subscription")
        if self.fields is not None:
            _check_fields(self.fields, self.types)
        extensions = {name for t in self.types for name in ROUTING_ATTRIBUTES.get(t, ())}
        self._filter = compile_filters(
            self.filters,
            extensions=extensions,
            constants={"datacontenttype": CONTENT_TYPES[self.protocol]},
        )
        return self

    @property
    def filter(self) -> Filter:
        """The compiled `filters` (all ANDed), evaluated over event attributes."""
        return self._filter

    @property
    def active(self) -> bool:
        """Whether the subscription receives events at all (not retired, not suspended)."""
        return self.status == "active" and self.suspension is None

    @property
    def suspension(self) -> Suspension | None:
        """Why the owner's current grant suspends it (None: it does not)."""
        return self._binding.suspension if self._binding is not None else None

    @property
    def shown_status(self) -> str:
        """The status its owner and operators see: `suspended` while the owner's grant does
        not cover it (never stored), else `status`."""
        return (
            "suspended" if self.suspension is not None and self.status == "active" else self.status
        )

    def bound(self, binding: Binding) -> Subscription:
        """A copy bound to its owner's current grant (sharing the live volgindicaties)."""
        copy = self.model_copy()
        copy._binding, copy._projections = binding, {}
        return copy

    def filter_for(self, event_type: str) -> Filter:
        """The filter an event of this type must pass: its own, ANDed with the grant's."""
        if self._binding is not None and event_type in self._binding.filters:
            return self._binding.filters[event_type]
        return self._filter

    def required_for(self, event_type: str) -> Filter | None:
        """The grant's required filter of this type alone (None: there is none)."""
        return self._binding.required.get(event_type) if self._binding is not None else None

    def fields_for(self, event_type: str) -> tuple[str, ...] | None:
        """The fields of an event of this type it receives (None: the whole record): its
        own `fields`, or, asking for none, the grant's set."""
        if self._binding is not None and event_type in self._binding.fields:
            return self._binding.fields[event_type]
        return self.fields

    def volgindicatie_active(self, pseudonym: str, today: date) -> bool:
        """Whether this subscription follows the person with this pseudonym on `today`."""
        if pseudonym not in self.volgindicaties:
            return False
        einddatum = self.volgindicaties[pseudonym]
        return einddatum is None or einddatum >= today

    def with_volgindicatie(self, pseudonym: str, einddatum: date | None = None) -> Subscription:
        """A copy that follows one more person (by pseudonym), until `einddatum` if given."""
        return self._replace(volgindicaties={**self.volgindicaties, pseudonym: einddatum})

    def without_volgindicatie(self, pseudonym: str) -> Subscription:
        """A copy that no longer follows this person."""
        rest = {key: end for key, end in self.volgindicaties.items() if key != pseudonym}
        return self._replace(volgindicaties=rest)

    def retired(self) -> Subscription:
        """A copy with status `retired` (after a 410 or a DELETE)."""
        return self._replace(status="retired")

    def public_dict(self) -> dict[str, Any]:
        """The JSON a client sees: token masked; signing secret, volgindicaties left out."""
        public = self.model_dump(mode="json", exclude={"volgindicaties", "signing_secret"})
        if self.sink_credential is not None:
            public["sinkCredential"]["accessToken"] = MASK
        suspension = self.suspension
        if suspension is not None and self.shown_status == "suspended":
            public["status"] = "suspended"
            public["suspension"] = {"code": suspension.code, "message": suspension.message}
        return public

    def record_dict(self) -> dict[str, Any]:
        """Everything, the token and signing secret in clear: what the bus keeps in memory, and
        stores once `streams.routing.records` has sealed the two (`streams.routing.sealing`)."""
        record = self.model_dump(mode="json")
        if self.sink_credential is not None:
            token = self.sink_credential.access_token.get_secret_value()
            record["sinkCredential"]["accessToken"] = token
        if self.signing_secret is not None:
            record["signingSecret"] = self.signing_secret.get_secret_value()
        return record

    def _replace(self, **changes: Any) -> Subscription:
        # validate again: a copy must obey every rule the original did
        return type(self).model_validate({**dict(self), **changes})


def projection(subscription: Subscription, event_type: str) -> Projection:
    """The function that strips an event's data to the fields this subscription may see.

    The fields are `Subscription.fields_for` the type: None keeps the whole record; otherwise
    only listed fields stay, nested records keep only their listed sub-fields, and `bsn`
    goes unless listed. Compiled once per (subscription, type).
    """
    cached = subscription._projections.get(event_type)
    if cached is not None:
        return cached
    fields = subscription.fields_for(event_type)
    if fields is None:
        compiled: Projection = dict
    else:
        known = schema_fields(event_type)
        tree = _tree(path for path in fields if path in known)
        compiled = _compile_tree(tree)
    subscription._projections[event_type] = compiled
    return compiled


def schema_fields(event_type: str) -> frozenset[str]:
    """Every dotted field path of the current Avro schema of a type (nested records included)."""
    raw = registry().current(event_type).raw
    return frozenset(_paths(raw, "", {}))


def _check_fields(fields: tuple[str, ...], types: tuple[str, ...]) -> None:
    known = frozenset().union(*(schema_fields(t) for t in types))
    for path in fields:
        if not _FIELD_PATH.match(path):
            raise ValueError(f"fields: {path!r} is not a dotted field path")
        if path not in known:
            raise ValueError(f"fields: {path!r} is no field of {' or '.join(types)}")


def _paths(schema: Any, prefix: str, named: dict[str, Any]) -> Iterator[str]:
    """Yield the dotted paths below a record schema, resolving named types and unions."""
    for branch in _branches(schema, named):
        if not isinstance(branch, Mapping) or branch.get("type") not in ("record", "error"):
            continue
        for field in branch["fields"]:
            path = f"{prefix}{field['name']}"
            yield path
            yield from _paths(field["type"], f"{path}.", named)


def _branches(schema: Any, named: dict[str, Any]) -> Iterator[Any]:
    """The concrete schemas a field type stands for: union branches, array items, named types."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _branches(branch, named)
    elif isinstance(schema, str):
        if schema in named:
            yield named[schema]
    elif isinstance(schema, Mapping):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            name = schema["name"]
            namespace = schema.get("namespace")
            fullname = name if "." in name or not namespace else f"{namespace}.{name}"
            named[fullname] = named[name] = schema
            yield schema
        elif kind == "array":
            yield from _branches(schema["items"], named)  # project each element of the list
        elif isinstance(kind, list | Mapping):
            yield from _branches(kind, named)
        elif isinstance(kind, str) and kind in named:
            yield named[kind]


def _tree(paths: Iterator[str]) -> _Tree:
    tree: _Tree = {}
    for path in sorted(paths, key=lambda p: p.count(".")):  # a whole record beats its parts
        node: _Tree | None = tree
        *parents, leaf = path.split(".")
        for name in parents:
            if node is None:
                break
            if name not in node:
                node[name] = {}
            node = node[name]
        if node is not None and leaf not in node:
            node[leaf] = None
    return tree


def _compile_tree(tree: _Tree) -> Projection:
    keep = tuple(name for name, sub in tree.items() if sub is None)
    nested = tuple((name, _compile_tree(sub)) for name, sub in tree.items() if sub is not None)

    def project(data: Mapping[str, Any]) -> dict[str, Any]:
        out = {name: data[name] for name in keep if name in data}
        for name, inner in nested:
            if name in data:
                out[name] = _apply(inner, data[name])
        return out

    return project


def _apply(inner: Projection, value: Any) -> Any:
    if isinstance(value, Mapping):
        return inner(value)
    if isinstance(value, list):
        return [_apply(inner, item) for item in value]
    return value  # None of an optional record stays None
