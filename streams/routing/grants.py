"""Grants that bind: what a subscription's owner may receive, checked and applied in one place.

A client's subscribe grant (`streams.config.SubscribeGrant`) names the types it may receive,
per type the most `fields` it may see and the `filters` every subscription of it must pass,
and whether it may set volgindicaties. `Grants` holds the grants as configured now and
- `check`s a subscription at intake (HTTP API, CLI): `Forbidden` with the code of the first
  rule it breaks; an operator writing a subscription for a client is held to that client's
  grant, as the owner is;
- `bind`s a subscription as the subscription set hands it out (`streams.routing.records`):
  the grant's required filters ANDed with its own, the grant's fields when it asks for none;
  or, when the owner's current grant no longer covers it (a client removed, a type or
  field withdrawn), suspended with the same code: routing, replay, reconciliation and
  delivery then pass it by, until a grant covers it again.

An operator without a subscribe grant is bound by nothing (the bus's own operators).
Codes: `owner_unknown`, `not_a_subscriber`, `type_not_granted`, `fields_not_granted`,
`volgindicaties_not_granted`. Messages name types and field paths, never personal data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from streams.auth import Forbidden, matches
from streams.config import ClientConfig, Settings, SubscribeGrant
from streams.contract.attributes import ROUTING_ATTRIBUTES
from streams.contract.schemas import registry
from streams.exceptions import ConfigurationError
from streams.routing.filters import Filter, InvalidFilter, compile_filters
from streams.routing.subscriptions import (
    CONTENT_TYPES,
    Binding,
    Subscription,
    Suspension,
    schema_fields,
)

__all__ = ["CODES", "Grants", "covered"]

CODES: Final = (
    "owner_unknown",
    "not_a_subscriber",
    "type_not_granted",
    "fields_not_granted",
    "volgindicaties_not_granted",
)

_UNBOUND: Final = Binding()


def covered(path: str, granted: Iterable[str]) -> bool:
    """Whether a field path lies within a granted set: it, or a record it is part of, is in
    it (`nieuw` grants `nieuw.gemeentecode`, not the other way round)."""
    return any(path == g or path.startswith(f"{g}.") for g in granted)


class Grants:
    """The subscribe grants of the configured clients, compiled once (`ConfigurationError`
    for a grant whose fields or filters do not fit its types)."""

    def __init__(self, clients: Iterable[ClientConfig]) -> None:
        self._clients = {c.id: c for c in clients}
        # (client id, type, protocol) -> the grant's required filter, compiled
        self._required: dict[tuple[str, str, str], Filter] = {}
        for client in self._clients.values():
            if client.subscribe is not None:
                self._compile(client.id, client.subscribe)

    @classmethod
    def from_settings(cls, settings: Settings) -> Grants:
        """The grants of `settings.clients`."""
        return cls(settings.clients)

    def _compile(self, client_id: str, grant: SubscribeGrant) -> None:
        known = registry().types()
        for event_type, fields in grant.fields.items():
            if event_type not in known:
                raise ConfigurationError(
                    f"client {client_id}: subscribe.fields names unknown type {event_type}"
                )
            wrong = [f for f in fields if f not in schema_fields(event_type)]
            if wrong:
                raise ConfigurationError(
                    f"client {client_id}: subscribe.fields of {event_type}: "
                    f"{', '.join(wrong)} is no field of it"
                )
        for event_type, expressions in grant.filters.items():
            if event_type not in known:
                raise ConfigurationError(
                    f"client {client_id}: subscribe.filters names unknown type {event_type}"
                )
            for protocol, content_type in CONTENT_TYPES.items():
                try:
                    compiled = compile_filters(
                        expressions,
                        extensions=ROUTING_ATTRIBUTES.get(event_type, ()),
                        constants={"datacontenttype": content_type},
                        path=f"subscribe.filters.{event_type}",
                    )
                except InvalidFilter as exc:
                    raise ConfigurationError(f"client {client_id}: {exc}") from None
                self._required[client_id, event_type, protocol] = compiled

    def owner(self, client_id: str) -> ClientConfig | None:
        """The configured client with this id, or None."""
        return self._clients.get(client_id)

    def suspension(self, subscription: Subscription) -> Suspension | None:
        """Why the owner's current grant does not cover `subscription` (None: it does)."""
        owner = self._clients.get(subscription.owner)
        if owner is None:
            return Suspension(
                code="owner_unknown",
                message=f"its owner {subscription.owner} is no configured client",
            )
        grant = owner.subscribe
        if grant is None:
            if owner.operator:
                return None
            return Suspension(
                code="not_a_subscriber", message=f"client {owner.id} may not subscribe"
            )
        for event_type in subscription.types:
            if not matches(grant.types, event_type):
                return Suspension(
                    code="type_not_granted",
                    message=f"client {owner.id} may not receive type {event_type}",
                )
        beyond = _fields_beyond(subscription, grant)
        if beyond:
            return Suspension(code="fields_not_granted", message=_fields_message(owner, beyond))
        if (subscription.volgindicaties or subscription.volgindicaties_only) and not (
            grant.volgindicaties
        ):
            return Suspension(
                code="volgindicaties_not_granted",
                message=f"client {owner.id} may not set volgindicaties",
            )
        return None

    def volgindicaties_matter(self, subscription: Subscription) -> bool:
        """Whether a change of its volgindicaties may change its suspension: its owner may
        not set them, or it is suspended for them (cheap: read per volgindicatie record)."""
        if subscription.suspension is not None:
            return subscription.suspension.code == "volgindicaties_not_granted"
        owner = self._clients.get(subscription.owner)
        grant = owner.subscribe if owner is not None else None
        return grant is not None and not grant.volgindicaties

    def check(self, subscription: Subscription) -> None:
        """`Forbidden` (403) with the code and message of the first rule the subscription
        breaks against its owner's grant (intake: the API and the CLI)."""
        found = self.suspension(subscription)
        if found is not None:
            raise Forbidden(found.code, found.message)

    def check_volgindicaties(self, subscription: Subscription) -> None:
        """`Forbidden` (`volgindicaties_not_granted`) unless the owner may follow persons."""
        owner = self._clients.get(subscription.owner)
        grant = owner.subscribe if owner is not None else None
        if owner is not None and grant is None and owner.operator:
            return
        if grant is None or not grant.volgindicaties:
            raise Forbidden(
                "volgindicaties_not_granted",
                f"client {subscription.owner} may not set volgindicaties",
            )

    def bind(self, subscription: Subscription) -> Subscription:
        """`subscription` bound to its owner's current grant (`Subscription.bound`)."""
        found = self.suspension(subscription)
        if found is not None:
            return subscription.bound(Binding(suspension=found))
        owner = self._clients[subscription.owner]
        grant = owner.subscribe
        if grant is None:  # an operator's own
            return subscription.bound(_UNBOUND)
        filters: dict[str, Filter] = {}
        required: dict[str, Filter] = {}
        fields: dict[str, tuple[str, ...] | None] = {}
        for event_type in subscription.types:
            needed = self._required.get((owner.id, event_type, subscription.protocol))
            if needed is not None:
                required[event_type] = needed
                filters[event_type] = _both(subscription, event_type, grant)
            if subscription.fields is None and event_type in grant.fields:
                fields[event_type] = grant.fields[event_type]
        return subscription.bound(Binding(filters=filters, required=required, fields=fields))


def _both(subscription: Subscription, event_type: str, grant: SubscribeGrant) -> Filter:
    """The subscription's own filters and the grant's for one type, as one (so the index
    pins on either)."""
    return compile_filters(
        (*subscription.filters, *grant.filters[event_type]),
        extensions=ROUTING_ATTRIBUTES.get(event_type, ()),
        constants={"datacontenttype": CONTENT_TYPES[subscription.protocol]},
    )


def _fields_beyond(subscription: Subscription, grant: SubscribeGrant) -> dict[str, list[str]]:
    """Per bounded type, the fields the subscription asks for beyond the grant's."""
    if subscription.fields is None:
        return {}
    beyond: dict[str, list[str]] = {}
    for event_type in subscription.types:
        granted = grant.fields.get(event_type)
        if granted is None:
            continue
        known = schema_fields(event_type)
        wanted = [p for p in subscription.fields if p in known and not covered(p, granted)]
        if wanted:
            beyond[event_type] = wanted
    return beyond


def _fields_message(owner: ClientConfig, beyond: Mapping[str, list[str]]) -> str:
    parts = [f"{', '.join(fields)} of {event_type}" for event_type, fields in beyond.items()]
    return f"client {owner.id} may not receive the field(s) {'; '.join(parts)}"
