"""`gemeentebus acls apply|list`: the ACLs of the configuration and the subscription set,
made so on the cluster (the table and the rules are in `streams.kafka.acls`).

`apply` reads the subscription set (for the KAFKA subscriptions), compares what the
configuration wants with every ACL of the cluster, creates what is missing and deletes
what the bus made before and no longer wants, then waits until the broker shows the
result. Twice in a row the second changes nothing. It needs a principal that may describe
and alter the cluster's ACLs (a super user), and read the subscription set.
"""

from __future__ import annotations

from streams.config import Settings
from streams.kafka.acls import AclAdmin, AclPlan, KafkaSubscription, desired_acls, plan
from streams.routing.store import SubscriptionStore

__all__ = ["apply_acls", "kafka_subscriptions", "plan_acls"]


async def kafka_subscriptions(settings: Settings) -> list[KafkaSubscription]:
    """The active KAFKA subscriptions of the subscription set, with their owners."""
    store = SubscriptionStore(settings, name="acls")
    await store.start()
    try:
        await store.ready()
        return sorted(
            KafkaSubscription(s.id, s.owner) for s in store if s.protocol == "KAFKA" and s.active
        )
    finally:
        await store.stop()


async def plan_acls(settings: Settings) -> AclPlan:
    """What `apply_acls` would do now."""
    return await apply_acls(settings, dry_run=True)


async def apply_acls(settings: Settings, *, dry_run: bool = False) -> AclPlan:
    """Make the cluster's ACLs for the bus what the configuration and the subscription set
    want; return the plan carried out (with `dry_run`, only made)."""
    desired = desired_acls(settings, await kafka_subscriptions(settings))
    async with AclAdmin(settings.kafka) as admin:
        done = plan(settings, desired, await admin.describe())
        if dry_run or not done.changes:
            return done
        await admin.create(done.create)
        await admin.delete(done.delete)
        await admin.settled(present=done.create, absent=done.delete)
    return done
