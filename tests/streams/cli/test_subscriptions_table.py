"""`gemeentebus subscriptions list`'s table."""

from __future__ import annotations

from streams.cli.subscriptions import table
from streams.config import ClientConfig
from streams.contract.attributes import VERHUISD
from streams.routing.grants import Grants
from streams.routing.subscriptions import Subscription

GRANTS = Grants(
    (ClientConfig.model_validate({"id": "gemeente-0363", "token_sha256": "0" * 64,
                                  "subscribe": {"types": [VERHUISD]}}),)
)  # fmt: skip


def sub(sub_id: str, owner: str) -> Subscription:
    return Subscription(
        id=sub_id, sink="kafka", protocol="KAFKA", types=(VERHUISD,), owner=owner, purpose="x"
    )


def test_the_table_shows_a_suspension_and_its_code() -> None:
    shown = table([GRANTS.bind(sub("a", "vertrokken")), GRANTS.bind(sub("b", "gemeente-0363"))])
    lines = shown.splitlines()
    assert "suspended (owner_unknown)" in lines[2]  # sorted by owner: gemeente-0363 first
    assert " active " in lines[1]
