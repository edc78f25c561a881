"""The operator's changes to the subscription set (`gemeentebus subscriptions`, in `streams.cli`).

These work on a `SubscriptionStore` directly, with operator rights, where the Kafka cluster is
reachable. An entry has the JSON shape of the HTTP API plus `id` (required for `apply`) and
`owner` (a configured client); `purpose` defaults as in the API. The owner's grant must cover
it (`streams.routing.grants`: types, fields, volgindicaties), as in the API. Fields only the
bus sets (`created`, `status`, `volgindicaties`, `signingSecret`) are ignored; an existing
subscription keeps them. No callback check is made.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from streams.auth import Authenticator, Forbidden
from streams.config import Settings
from streams.delivery.sinks import SinkPolicy, SinkRefused
from streams.exceptions import GemeentebusError, TopicsRefused
from streams.routing.grants import Grants
from streams.routing.intake import (
    check_purpose,
    client_of,
    new_signing_secret,
    purpose_of,
    server_owned,
    validation_errors,
)
from streams.routing.store import SubscriptionStore
from streams.routing.subscriptions import Subscription, new_subscription_id

__all__ = [
    "Applied",
    "InvalidSubscriptions",
    "PartlyApplied",
    "add",
    "apply",
    "opened",
    "prepare",
    "read_entries",
    "remove",
]


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class InvalidSubscriptions(GemeentebusError):
    """Entries that do not validate; `errors` lists every one, and nothing was applied."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} errors; nothing applied:\n{lines}")


class PartlyApplied(GemeentebusError):
    """`apply` wrote some subscriptions but not those whose topics the cluster refused:
    `applied` are the plans that were carried out (with the signing secrets, shown only
    now), `refused` the cluster's refusal naming each topic and subscription left out."""

    def __init__(self, applied: Sequence[Applied], refused: TopicsRefused) -> None:
        self.applied = list(applied)
        self.refused = refused
        super().__init__(str(refused))


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply` or `add` did with one subscription; `signing_secret` only when created."""

    action: Literal["created", "updated", "unchanged"]
    subscription: Subscription
    signing_secret: str | None = None


def read_entries(path: Path) -> Any:
    """The parsed YAML (or JSON) of a file, or `InvalidSubscriptions` saying why not."""
    try:
        # libyaml's safe loader where built in: five times faster on a list of thousands
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)  # noqa: S506
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidSubscriptions([f"{path}: cannot be read ({type(exc).__name__})"]) from None


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[SubscriptionStore]:
    """A started store that has read the whole subscription set."""
    store = SubscriptionStore(settings, name="cli")
    await store.start()
    try:
        await store.ready()
        yield store
    finally:
        await store.stop()


def prepare(
    settings: Settings,
    entries: object,
    existing: Mapping[str, Subscription],
    *,
    need_id: bool = True,
) -> list[Applied]:
    """What putting each entry would do; `InvalidSubscriptions` listing every error if any."""
    if not isinstance(entries, list):
        raise InvalidSubscriptions(["the file must hold a list of subscriptions"])
    auth = Authenticator(settings)
    grants = Grants.from_settings(settings)
    plans: list[Applied] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"[{index}]"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected a mapping")
            continue
        sub_id = entry.get("id") if "id" in entry or need_id else new_subscription_id()
        where += f" {sub_id}" if isinstance(sub_id, str) else ""
        if isinstance(sub_id, str) and sub_id in seen:
            errors.append(f"{where}: id: listed twice")
        seen.add(str(sub_id))
        found = _plan(settings, auth, grants, entry, sub_id, existing)
        if isinstance(found, Applied):
            plans.append(found)
        else:
            errors.extend(f"{where}: {e}" for e in found)
    if errors:
        raise InvalidSubscriptions(errors)
    return plans


def _plan(
    settings: Settings,
    auth: Authenticator,
    grants: Grants,
    entry: Mapping[str, Any],
    sub_id: object,
    existing: Mapping[str, Subscription],
) -> Applied | list[str]:
    owner_id = entry.get("owner")
    owner = client_of(settings, owner_id) if isinstance(owner_id, str) else None
    if owner is None:
        return ["owner: must name a configured client"]
    try:
        check_purpose(auth, owner, entry.get("types"))
    except Forbidden as exc:
        return [f"types: {exc.message}"]
    given = {k: v for k, v in entry.items() if not server_owned(k)}
    before = existing.get(sub_id) if isinstance(sub_id, str) else None
    secret = None
    server: dict[str, Any] = {"id": sub_id, "owner": owner.id}
    server["purpose"] = entry.get("purpose", purpose_of(owner))
    if before is None:
        secret = server["signingSecret"] = new_signing_secret()
    else:
        record = before.record_dict()
        kept = ("created", "volgindicaties", "signingSecret")
        server.update({name: record[name] for name in kept if name in record})
    try:
        subscription = Subscription.model_validate({**given, **server})
    except ValidationError as exc:
        found = validation_errors(exc, given)
        return [f"{e['path'] or 'subscription'}: {e['message']}" for e in found]
    try:  # the owner's grant binds the operator too (`streams.routing.grants`)
        grants.check(subscription)
    except Forbidden as exc:
        return [f"{exc.code}: {exc.message}"]
    if subscription.protocol == "HTTP":
        try:  # the API's rule (`streams.delivery.sinks`): operators are held to it too
            SinkPolicy.from_settings(settings).check_url(subscription.sink)
        except SinkRefused as exc:
            return [f"sink: {exc.reason} ({exc.code})"]
    if before is None:
        return Applied("created", subscription, secret)
    same = before.record_dict() == subscription.record_dict()
    return Applied("unchanged" if same else "updated", subscription)


async def apply(store: SubscriptionStore, settings: Settings, entries: object) -> list[Applied]:
    """Validate all entries, then put those that are new or changed, together (idempotent):
    the topics of the new ones in a few requests, then every record (`SubscriptionStore.
    put_many`). `PartlyApplied` when the cluster refused some topics."""
    existing = {s.id: s for s in store}
    plans = prepare(settings, entries, existing)
    try:
        await store.put_many([p.subscription for p in plans if p.action != "unchanged"])
    except TopicsRefused as exc:
        missing = set(exc.not_written)
        done = [p for p in plans if p.subscription.id not in missing]
        raise PartlyApplied(done, exc) from exc
    return plans


async def add(store: SubscriptionStore, settings: Settings, entry: object) -> Applied:
    """Add (or replace) one subscription; an entry without `id` gets a new one."""
    existing = {s.id: s for s in store}
    [plan] = prepare(settings, [entry], existing, need_id=False)
    if plan.action != "unchanged":
        await store.put(plan.subscription)
    return plan


async def remove(store: SubscriptionStore, subscription_id: str) -> bool:
    """Retire and delete a subscription; False when there is none with this id."""
    subscription = store.get(subscription_id)
    if subscription is None:
        return False
    if subscription.active:
        await store.put(subscription.retired())
    await store.delete(subscription_id)
    return True
