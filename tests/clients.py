"""The clients the tests' `settings` configure: owners whose grant covers what tests subscribe.

Routing binds every subscription to its owner's current grant (`streams.routing.grants`), so
a subscription a test puts in a store needs a configured owner; these may receive every type,
every field and set volgindicaties. A test about grants configures its own clients.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

from streams.config import ClientConfig, Settings, SubscribeGrant

__all__ = ["OWNER", "SUBSCRIBERS", "clients_env", "subscriber"]

# The owner of a test's subscriptions when the test is not about who owns them.
OWNER: Final = "test"


def subscriber(client_id: str, **grant: object) -> ClientConfig:
    """A subscriber whose token is its id (tests only), granted every type unless `grant`
    says otherwise."""
    fields = {"types": ("*",), "volgindicaties": True, **grant}
    return ClientConfig(
        id=client_id,
        token_sha256=hashlib.sha256(client_id.encode()).hexdigest(),
        subscribe=SubscribeGrant.model_validate(fields),
    )


SUBSCRIBERS: Final = tuple(
    subscriber(i) for i in (OWNER, "gemeente-0363", "gemeente-0344", "gemeente-0599", "brp")
)


def clients_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `gemeentebus` process the clients of `settings`."""
    clients = [c.model_dump(mode="json", exclude_none=True) for c in settings.clients]
    return {"GEMEENTEBUS_CLIENTS": json.dumps(clients)}
