"""Webhook secrets sealed at rest: AES-GCM over each secret field of a subscription record.

The compacted subscriptions topic holds every subscription as JSON; its access token
(`sinkCredential.accessToken`) and signing secret (`signingSecret`) are stored sealed:

    {"sealed": "v1", "kid": "<8 hex>", "nonce": "<base64, 12 bytes>", "ct": "<base64>"}

under `security.secrets_key` (`kid`: the first 8 hex digits of the key's SHA-256), with the
subscription id and the field's name as associated data, so a sealed value copied into
another subscription or another field does not open. Keys in `security.previous_keys` still
open (rotation: `gemeentebus secrets rotate`); only the current key seals.

A value that does not open is a `SealRefused` with a stable code (`SEAL_REASONS`) and the
subscription id, never the value. A clear-text secret is refused too (`clear_secret`): every
writer seals, so one comes from an old version (`secrets rotate` seals those) or from
someone writing the topic past the API.

Outside production a missing key is derived from the pseudonym key (HKDF), so the demo's and
the tests' separate processes open each other's records; production refuses to start without
`security.secrets_key`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from streams.config import ENV, Settings
from streams.exceptions import ConfigurationError

__all__ = [
    "CLEAR",
    "SEALED_FIELDS",
    "SEAL_REASONS",
    "Keyring",
    "SealRefused",
    "key_id",
    "new_key",
    "open_record",
    "seal_record",
]

log = logging.getLogger(__name__)

VERSION: Final = "v1"
# The secret fields of a subscription record, as paths into its JSON.
SEALED_FIELDS: Final = (("sinkCredential", "accessToken"), ("signingSecret",))
# Why a record was refused: the codes a log line and the metric carry.
SEAL_REASONS: Final = ("clear_secret", "malformed_seal", "unknown_key", "not_verified")
CLEAR: Final = "clear"  # the "kid" of a clear-text value that `open_record` let through
_NONCE_BYTES = 12
_DERIVE_INFO = b"gemeentebus secrets key, outside production only"


class SealRefused(ValueError):
    """A secret field that does not open; `code` is one of `SEAL_REASONS`."""

    def __init__(self, subscription_id: str, field: str, code: str) -> None:
        super().__init__(f"subscription {subscription_id}: {field} refused ({code})")
        self.subscription_id = subscription_id
        self.field = field
        self.code = code


def new_key() -> str:
    """A fresh key for `security.secrets_key`: 32 random bytes, base64."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def key_id(key: bytes) -> str:
    """A key's id: the first 8 hex digits of its SHA-256 (says which key, reveals nothing)."""
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True, slots=True, repr=False)
class _Key:
    kid: str
    aead: AESGCM


class Keyring:
    """The current key (seals and opens) and the previous keys (open only)."""

    def __init__(self, current: bytes, previous: tuple[bytes, ...] = ()) -> None:
        self._current = _Key(key_id(current), AESGCM(current))
        self._keys = {k.kid: k for k in (_Key(key_id(p), AESGCM(p)) for p in previous)}
        self._keys[self._current.kid] = self._current

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """The keys of `settings.security`; in production without `secrets_key` a
        ConfigurationError naming the setting, elsewhere a key derived from the pseudonym key."""
        security = settings.security
        current = security.secrets_key_bytes()
        previous = security.previous_keys_bytes()
        if current is None:
            if settings.mode == "production":
                raise ConfigurationError(
                    f"no secrets key: set {ENV['secrets_key']} or security.secrets_key_file "
                    "(32 random bytes, base64: `gemeentebus secrets new-key`); in production "
                    "the bus refuses to start without one"
                )
            current = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVE_INFO
            ).derive(security.pseudonym_key_bytes())
            log.warning(
                "security.secrets_key is not set (mode %s): webhook secrets are sealed under a "
                "key derived from the pseudonym key; production refuses this",
                settings.mode,
            )
        return cls(current, previous)

    @property
    def kid(self) -> str:
        """The id of the key that seals."""
        return self._current.kid

    @property
    def kids(self) -> tuple[str, ...]:
        """The ids of every key that opens, the current one first."""
        return (self.kid, *(kid for kid in self._keys if kid != self.kid))

    def __repr__(self) -> str:
        return f"Keyring(kid={self.kid!r}, opens={list(self.kids)!r})"

    def seal(self, value: str, subscription_id: str, field: str) -> dict[str, str]:
        """The sealed form of one secret of one subscription."""
        nonce = os.urandom(_NONCE_BYTES)
        ct = self._current.aead.encrypt(
            nonce, value.encode("utf-8"), _associated(subscription_id, field)
        )
        return {"sealed": VERSION, "kid": self.kid, "nonce": _b64(nonce), "ct": _b64(ct)}

    def open(self, sealed: object, subscription_id: str, field: str) -> tuple[str, str]:
        """The secret and the id of the key that sealed it; `SealRefused` saying why not."""
        if isinstance(sealed, str):
            raise SealRefused(subscription_id, field, "clear_secret")
        if (
            not isinstance(sealed, Mapping)
            or set(sealed) != {"sealed", "kid", "nonce", "ct"}
            or sealed["sealed"] != VERSION
            or not all(isinstance(sealed[name], str) for name in ("kid", "nonce", "ct"))
        ):
            raise SealRefused(subscription_id, field, "malformed_seal")
        key = self._keys.get(sealed["kid"])
        if key is None:
            raise SealRefused(subscription_id, field, "unknown_key")
        try:
            nonce = base64.b64decode(sealed["nonce"], validate=True)
            ct = base64.b64decode(sealed["ct"], validate=True)
        except (binascii.Error, ValueError):
            raise SealRefused(subscription_id, field, "malformed_seal") from None
        if len(nonce) != _NONCE_BYTES:
            raise SealRefused(subscription_id, field, "malformed_seal")
        try:
            clear = key.aead.decrypt(nonce, ct, _associated(subscription_id, field))
            return clear.decode("utf-8"), key.kid
        except (InvalidTag, UnicodeDecodeError):
            raise SealRefused(subscription_id, field, "not_verified") from None


def seal_record(record: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
    """A copy of a subscription record (`Subscription.record_dict()`) with its secrets sealed."""
    sealed = dict(record)
    subscription_id = str(record["id"])
    for path in SEALED_FIELDS:
        holder = _holder(sealed, path)
        if holder is not None and isinstance(holder.get(path[-1]), str):
            holder[path[-1]] = keyring.seal(holder[path[-1]], subscription_id, ".".join(path))
    return sealed


def open_record(
    record: Mapping[str, Any],
    keyring: Keyring,
    subscription_id: str,
    *,
    accept_clear: bool = False,
) -> tuple[dict[str, Any], frozenset[str]]:
    """A copy of a stored record with its secrets opened, and the ids of the keys that had
    sealed them (`CLEAR` for a clear-text secret, let through only with `accept_clear`).
    `SealRefused` for the first secret that does not open."""
    opened = dict(record)
    kids: set[str] = set()
    for path in SEALED_FIELDS:
        holder = _holder(opened, path)
        if holder is None or holder.get(path[-1]) is None:
            continue
        value = holder[path[-1]]
        if accept_clear and isinstance(value, str):
            kids.add(CLEAR)
            continue
        holder[path[-1]], kid = keyring.open(value, subscription_id, ".".join(path))
        kids.add(kid)
    return opened, frozenset(kids)


def _holder(record: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The dict that holds the last name of `path` (its parents copied, so the caller's
    record is never changed), or None when a parent is absent."""
    holder = record
    for name in path[:-1]:
        inner = holder.get(name)
        if not isinstance(inner, Mapping):
            return None
        holder[name] = dict(inner)
        holder = holder[name]
    return holder


def _associated(subscription_id: str, field: str) -> bytes:
    return f"gemeentebus-seal-{VERSION}\x00{subscription_id}\x00{field}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
