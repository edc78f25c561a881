"""The records of the compacted subscriptions topic, and the subscription set they add up to.

Two kinds of record, so that no change is a read-modify-write of a whole subscription:
- key `<id>`: the subscription (`Subscription.record_dict()` as JSON) without its
  volgindicaties; a tombstone deletes it;
- key `<id>/volgindicatie/<pseudonym>`: one followed person, value `{"einddatum": ...}`
  (`null`: no end); a tombstone stops following. The key holds the BSN's pseudonym, as
  the person's events' keys do, never the BSN.

Two API processes that add volgindicaties to one subscription at once write different
keys, so none is lost (a whole-record write would keep only the last one's view). A
subscription record written before this split may still carry volgindicaties: they count
as well (a volgindicatie record for the same person wins), and the next write of that
subscription moves them into records of their own.

Secrets are sealed (`streams.routing.sealing`): `put` seals the access token and signing
secret of a subscription record, `apply` opens them and refuses (`SealRefused`, changing
nothing) a record whose secret does not open.

A subscription whose webhook answered `410 Gone` is retired by a record of another topic
(`streams.routing.retirements`, written by the delivery role): `retire` folds one in. The
set then hands the subscription out as `retired` for as long as its record is the version
the retirement names (`versions`, made from the record's place in the topic and its value);
a retirement changes nothing but that status.

`Records.apply` folds one record into the set: the subscription a reader hands out is its
record plus its volgindicaties, kept in one mapping per subscription that a volgindicatie
record changes in place, so following one more person costs the same for ten followed
persons as for a hundred thousand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from pydantic import TypeAdapter

from streams.routing.grants import Grants
from streams.routing.retirements import Retirement, version_of
from streams.routing.sealing import Keyring, open_record, seal_record
from streams.routing.subscriptions import Subscription

__all__ = ["Applied", "Records", "volgindicatie_key"]

MARK: Final = "/volgindicatie/"
_PSEUDONYM = re.compile(r"^[0-9a-f]{64}$")
_EINDDATUM = TypeAdapter(date | None)


def volgindicatie_key(subscription_id: str, pseudonym: str) -> bytes:
    """The key of one volgindicatie's record."""
    return f"{subscription_id}{MARK}{pseudonym}".encode()


@dataclass(frozen=True, slots=True)
class Applied:
    """What one record changed: a subscription (None: deleted), or one of its volgindicaties
    (`pseudonym` set; `following`: whether the subscription follows that person now)."""

    subscription_id: str
    subscription: Subscription | None
    pseudonym: str | None = None
    following: bool = False


class Records:
    """The subscription set as the records read so far make it (one reader owns it)."""

    def __init__(
        self, keyring: Keyring, *, accept_clear: bool = False, grants: Grants | None = None
    ) -> None:
        self.keyring = keyring
        # what it hands out is bound to its owner's current grant (None: unbound)
        self.grants = grants
        self._accept_clear = accept_clear  # clear-text secrets let through: `secrets rotate`
        self.subscriptions: dict[str, Subscription] = {}  # with their volgindicaties
        self.sealed_with: dict[str, frozenset[str]] = {}  # the key ids of each record's secrets
        self.versions: dict[str, str] = {}  # the version of each subscription's record
        self._retirements: dict[str, str] = {}  # id -> the version a 410 retired
        self._records: dict[str, Subscription] = {}  # as their own records hold them
        self._followed: dict[str, dict[str, date | None]] = {}  # from volgindicatie records

    # -- reading ----------------------------------------------------------------------------

    def apply(
        self, key: bytes | None, value: bytes | None, *, place: tuple[int, int] | None = None
    ) -> Applied:
        """Fold one record in (`place`: its partition and offset, which make its version);
        `SealRefused` for a secret that does not open, `ValueError` (or a pydantic
        `ValidationError`, a subclass) or `UnicodeDecodeError` for a record that is neither
        kind: both change nothing."""
        name = bytes(key or b"").decode("utf-8")
        subscription_id, mark, pseudonym = name.partition(MARK)
        if mark:
            return self._volgindicatie(subscription_id, pseudonym, value)
        subscription = None
        kids: frozenset[str] = frozenset()
        if value is not None:
            body = json.loads(value)
            if not isinstance(body, dict) or body.get("id") != subscription_id:
                raise ValueError("a subscription record is a JSON object keyed by its id")
            # sealed under this id: secrets moved from another subscription do not open
            opened, kids = open_record(
                body, self.keyring, subscription_id, accept_clear=self._accept_clear
            )
            subscription = Subscription.model_validate(opened)
        if subscription is None:
            self._records.pop(subscription_id, None)
            self.subscriptions.pop(subscription_id, None)
            self.sealed_with.pop(subscription_id, None)
            self.versions.pop(subscription_id, None)
            return Applied(subscription_id, None)
        self._records[subscription_id] = subscription
        self.sealed_with[subscription_id] = kids
        self.versions[subscription_id] = version_of(bytes(value or b""), place)
        followed = {**subscription.volgindicaties, **self._followed.get(subscription_id, {})}
        update = {"volgindicaties": followed, "status": self._status(subscription_id)}
        merged = self._bind(subscription.model_copy(update=update))
        self.subscriptions[subscription_id] = merged
        return Applied(subscription_id, merged)

    def regrant(self, grants: Grants) -> list[Subscription]:
        """Bind every subscription to `grants` from now on; those whose owner's grant changed,
        as handed out now."""
        before, self.grants = self.grants, grants
        changed = []
        for subscription_id, current in list(self.subscriptions.items()):
            if before is not None and before.owner(current.owner) == grants.owner(current.owner):
                continue  # the same grant binds it the same way
            rebound = grants.bind(current)
            self.subscriptions[subscription_id] = rebound
            changed.append(rebound)
        return changed

    def _bind(self, subscription: Subscription) -> Subscription:
        return subscription if self.grants is None else self.grants.bind(subscription)

    def retire(self, retirement: Retirement) -> Subscription | None:
        """Fold one retirement in (a `version` of None withdraws it); the subscription as
        handed out now when its status changed, else None."""
        subscription_id = retirement.subscription_id
        if retirement.version is None:
            self._retirements.pop(subscription_id, None)
        else:
            self._retirements[subscription_id] = retirement.version
        current = self.subscriptions.get(subscription_id)
        if current is None:  # not (or no longer) there: kept for when its record is read
            return None
        status = self._status(subscription_id)
        if current.status == status:
            return None
        # a shallow copy: it shares the live volgindicaties (see the module docstring)
        presented = current.model_copy(update={"status": status})
        self.subscriptions[subscription_id] = presented
        return presented

    def _status(self, subscription_id: str) -> str:
        """The status handed out: the record's, or `retired` when a 410 retired its version."""
        own = self._records[subscription_id].status
        retired = self._retirements.get(subscription_id)
        if retired is not None and retired == self.versions.get(subscription_id):
            return "retired"
        return own

    def _volgindicatie(self, subscription_id: str, pseudonym: str, value: bytes | None) -> Applied:
        if not _PSEUDONYM.match(pseudonym):
            raise ValueError("a volgindicatie record is keyed by a pseudonym")
        followed = self._followed.setdefault(subscription_id, {})
        if value is None:
            followed.pop(pseudonym, None)
        else:
            body = json.loads(value)
            if not isinstance(body, dict) or set(body) != {"einddatum"}:
                raise ValueError("a volgindicatie record holds {einddatum} only")
            followed[pseudonym] = _EINDDATUM.validate_python(body["einddatum"])
        if not followed:
            del self._followed[subscription_id]
        merged = self.subscriptions.get(subscription_id)
        if merged is None:  # its subscription is not (or no longer) there
            return Applied(subscription_id, None, pseudonym, following=False)
        live = merged.volgindicaties  # changed in place: see the module docstring
        if pseudonym in followed:
            live[pseudonym] = followed[pseudonym]
        elif pseudonym in self._records[subscription_id].volgindicaties:
            live[pseudonym] = self._records[subscription_id].volgindicaties[pseudonym]
        else:
            live.pop(pseudonym, None)
        if self.grants is not None and self.grants.volgindicaties_matter(merged):
            rebound = self.grants.bind(merged)  # followed persons its grant does not allow
            if rebound.suspension != merged.suspension:
                self.subscriptions[subscription_id] = rebound
                return Applied(subscription_id, rebound)
        return Applied(subscription_id, merged, pseudonym, following=pseudonym in live)

    # -- writing ----------------------------------------------------------------------------

    def put(self, subscription: Subscription) -> list[tuple[bytes, bytes | None]]:
        """The records that store `subscription`: a record for each volgindicatie it has that
        the set has not (or with another einddatum), one for each still held only in an old
        subscription record, then the subscription's own record. Never a removal: a
        volgindicatie goes only by `unfollow`, so a whole-subscription write made from an
        older view cannot undo another process's change."""
        known = self.subscriptions.get(subscription.id)
        have = known.volgindicaties if known is not None else {}
        old = self._records.get(subscription.id)
        kept = self._followed.get(subscription.id, {})
        writes = [
            self.follow(subscription.id, pseudonym, end)
            for pseudonym, end in (old.volgindicaties.items() if old is not None else ())
            if pseudonym not in kept
        ]
        writes += [
            self.follow(subscription.id, pseudonym, end)
            for pseudonym, end in subscription.volgindicaties.items()
            if pseudonym not in have or have[pseudonym] != end
        ]
        record = seal_record({**subscription.record_dict(), "volgindicaties": {}}, self.keyring)
        writes.append(
            (subscription.id.encode(), json.dumps(record, separators=(",", ":")).encode())
        )
        return writes

    def delete(self, subscription_id: str) -> list[tuple[bytes, bytes | None]]:
        """Tombstones for a subscription's volgindicatie records, then for the subscription."""
        writes: list[tuple[bytes, bytes | None]] = [
            (volgindicatie_key(subscription_id, pseudonym), None)
            for pseudonym in self._followed.get(subscription_id, {})
        ]
        writes.append((subscription_id.encode(), None))
        return writes

    @staticmethod
    def follow(
        subscription_id: str, pseudonym: str, einddatum: date | None
    ) -> tuple[bytes, bytes | None]:
        """The record of one volgindicatie."""
        end = einddatum.isoformat() if einddatum is not None else None
        return volgindicatie_key(subscription_id, pseudonym), json.dumps(
            {"einddatum": end}
        ).encode()

    def unfollow(self, subscription_id: str, pseudonym: str) -> list[tuple[bytes, bytes | None]]:
        """The records that stop following: a tombstone, after moving the volgindicaties of
        an old subscription record (which a tombstone cannot undo) into records of their own."""
        writes: list[tuple[bytes, bytes | None]] = []
        old = self._records.get(subscription_id)
        known = self.subscriptions.get(subscription_id)
        if old is not None and known is not None and pseudonym in old.volgindicaties:
            writes = [
                w for w in self.put(known) if w[0] != volgindicatie_key(subscription_id, pseudonym)
            ]
        writes.append((volgindicatie_key(subscription_id, pseudonym), None))
        return writes
