"""`gemeentebus secrets rotate`: every subscription's webhook secrets sealed under the current key.

After `security.secrets_key` changed (the old key moved to `security.previous_keys`), records
written before still hold secrets sealed under the old key, and records from before sealing
hold them in clear. `rotate` reads the whole subscription set with every key (clear text let
through here alone), writes each subscription whose secrets are not under the current key
back to the compacted topic, and says how many it moved from which key. A record that opens
under no key is left as it is and reported (`refused`): add the key it needs to
`previous_keys` and run again.

Each subscription is read again just before it is written (`store.sync()`), so one changed by
the API meanwhile, which the API seals under the current key already, is left alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streams.config import Settings
from streams.routing.sealing import CLEAR
from streams.routing.store import SubscriptionStore

__all__ = ["CLEAR", "Rotation", "rotate"]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did."""

    kid: str  # the current key's id
    resealed: Counter[str] = field(default_factory=Counter)  # from key id (or CLEAR): records
    current: int = 0  # records already sealed under `kid` only
    without_secrets: int = 0  # records with no secret to seal (Kafka subscriptions)
    refused: dict[str, str] = field(default_factory=dict)  # subscription id: reason code

    @property
    def total(self) -> int:
        """Subscriptions read (refused ones included)."""
        return sum(self.resealed.values()) + self.current + self.without_secrets + len(self.refused)


async def rotate(settings: Settings) -> Rotation:
    """Re-seal under the current key every subscription record that is not (see the module)."""
    store = SubscriptionStore(settings, name="secrets-rotate", accept_clear=True)
    kid = store.keyring.kid
    resealed: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    await store.start()
    try:
        await store.ready()
        for subscription_id in sorted(s.id for s in store):
            await store.sync()
            subscription = store.get(subscription_id)
            kids = store.sealed_with(subscription_id)
            if subscription is None:
                continue  # deleted meanwhile
            if not kids:
                kinds["without_secrets"] += 1
            elif kids == {kid}:
                kinds["current"] += 1
            else:
                await store.put(subscription)
                resealed[",".join(sorted(kids - {kid}))] += 1
        refused = dict(store.refused)
    finally:
        await store.stop()
    return Rotation(
        kid=kid,
        resealed=resealed,
        current=kinds["current"],
        without_secrets=kinds["without_secrets"],
        refused=refused,
    )
