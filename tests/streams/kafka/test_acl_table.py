"""The ACLs the bus wants, computed (no broker): the role table, KAFKA subscribers, Kafka
publishers, and what `acls apply` creates, deletes and leaves alone."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.config import ClientConfig, KafkaSettings, Settings
from streams.kafka.acls import (
    Acl,
    KafkaSubscription,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    desired_acls,
    plan,
)

TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
LITERAL, PREFIXED = PatternType.LITERAL, PatternType.PREFIXED
READ, WRITE, CREATE = Operation.READ, Operation.WRITE, Operation.CREATE
WORKER, DELIVERY, API = (
    "User:gemeentebus-worker",
    "User:gemeentebus-delivery",
    "User:gemeentebus-api",
)
OPERATOR = "User:gemeentebus-operator"


def _settings(*clients: dict[str, object], **kafka: object) -> Settings:
    return Settings(
        mode="test",
        kafka=KafkaSettings(**kafka),  # type: ignore[arg-type]
        clients=tuple(
            ClientConfig.model_validate({"token_sha256": "0" * 64, **c}) for c in clients
        ),
    )


GRANT = {"types": ["nl.brp.persoon-verhuisd"], "purpose": "bijhouding"}
SUBSCRIBER = {"id": "gemeente-0363", "kafka_principal": "User:gemeente-0363", "subscribe": GRANT}
OTHER = {**SUBSCRIBER, "id": "gemeente-0344", "kafka_principal": "User:gemeente-0344"}
PUBLISHER = {"id": "brp", "kafka_principal": "User:brp",
             "publish": {"types": ["nl.brp.*"], "sources": ["*"]}}  # fmt: skip


def _of(acls: frozenset[Acl], principal: str) -> set[tuple[str, str, str, str]]:
    """(operation, resource, name, pattern) of every ACL of `principal`."""
    return {
        (a.operation.name, a.resource.name, a.name, a.pattern.name)
        for a in acls
        if a.principal == principal
    }


def test_the_worker_reads_ingress_and_writes_events_and_deliver_but_not_the_subscriptions() -> None:
    worker = _of(desired_acls(_settings(), []).acls, WORKER)
    assert worker == {
        ("DESCRIBE", "TOPIC", "gemeentebus.", "PREFIXED"),
        ("DESCRIBE_CONFIGS", "TOPIC", "gemeentebus.", "PREFIXED"),
        ("READ", "TOPIC", "gemeentebus.ingress", "LITERAL"),
        ("READ", "TOPIC", "gemeentebus.ingress.", "PREFIXED"),
        ("READ", "TOPIC", "gemeentebus.subscriptions", "LITERAL"),
        ("READ", "TOPIC", "gemeentebus.retirements", "LITERAL"),
        ("WRITE", "TOPIC", "gemeentebus.events.", "PREFIXED"),
        ("WRITE", "TOPIC", "gemeentebus.deliver.", "PREFIXED"),
        ("WRITE", "TOPIC", "gemeentebus.invalid", "LITERAL"),
        ("READ", "GROUP", "gemeentebus.validator", "LITERAL"),
    }


def test_who_may_write_the_subscription_set_and_the_events() -> None:
    acls = desired_acls(
        _settings(SUBSCRIBER, PUBLISHER), [KafkaSubscription("s1", SUBSCRIBER["id"])]
    ).acls
    writers = {
        a.principal for a in acls if a.name == "gemeentebus.subscriptions" and a.operation == WRITE
    }
    assert writers == {API, OPERATOR}  # the delivery role records a 410 elsewhere
    event_writers = {
        a.principal for a in acls if a.name == "gemeentebus.events." and a.operation == WRITE
    }
    assert event_writers == {API, WORKER}
    readers = {a.principal for a in acls if a.name == "gemeentebus.events." and a.operation == READ}
    assert readers == {API, OPERATOR}  # replays and reconciliation; no client, no delivery
    creators = {a.principal for a in acls if a.operation == CREATE}
    assert creators == {API, OPERATOR}  # a new subscription's topics; topics create


def test_only_the_delivery_role_writes_retirements_and_every_role_reads_them() -> None:
    acls = desired_acls(_settings(SUBSCRIBER), [KafkaSubscription("s1", SUBSCRIBER["id"])]).acls
    on_it = [a for a in acls if a.name == "gemeentebus.retirements"]
    assert {a.pattern for a in on_it} == {LITERAL}
    assert {a.principal for a in on_it if a.operation == WRITE} == {DELIVERY}
    assert {a.principal for a in on_it if a.operation == READ} == {API, WORKER, DELIVERY, OPERATOR}
    assert ("WRITE", "TOPIC", "gemeentebus.subscriptions", "LITERAL") not in _of(acls, DELIVERY)
    assert ("READ", "TOPIC", "gemeentebus.subscriptions", "LITERAL") in _of(acls, DELIVERY)


def test_a_kafka_subscriber_gets_its_own_deliver_topics_and_group_prefix_only() -> None:
    subs = [KafkaSubscription("s1", "gemeente-0363"), KafkaSubscription("s2", "gemeente-0363"),
            KafkaSubscription("s3", "gemeente-0344")]  # fmt: skip
    acls = desired_acls(_settings(SUBSCRIBER, OTHER), subs).acls
    assert _of(acls, "User:gemeente-0363") == {
        ("READ", "TOPIC", "gemeentebus.deliver.s1", "LITERAL"),
        ("READ", "TOPIC", "gemeentebus.deliver.s2", "LITERAL"),
        ("READ", "GROUP", "gemeentebus.sub.gemeente-0363.", "PREFIXED"),
    }
    assert _of(acls, "User:gemeente-0344") == {
        ("READ", "TOPIC", "gemeentebus.deliver.s3", "LITERAL"),
        ("READ", "GROUP", "gemeentebus.sub.gemeente-0344.", "PREFIXED"),
    }
    # a subscriber without KAFKA subscriptions gets nothing at all
    assert _of(desired_acls(_settings(SUBSCRIBER), []).acls, "User:gemeente-0363") == set()


def test_a_kafka_subscription_nobody_may_read_is_noted() -> None:
    no_principal = {**SUBSCRIBER, "kafka_principal": None}
    subs = [KafkaSubscription("s1", "gemeente-0363"), KafkaSubscription("s2", "gone")]
    desired = desired_acls(_settings(no_principal), subs)
    assert not [a for a in desired.acls if "deliver.s" in a.name]
    assert desired.notes == (
        "KAFKA subscription s1: its owner gemeente-0363 has no kafka_principal, so no client "
        "may read gemeentebus.deliver.s1",
        "KAFKA subscription s2: its owner gone is not configured, so no client may read "
        "gemeentebus.deliver.s2",
    )


def test_a_kafka_publisher_writes_its_own_ingress_topic_only() -> None:
    no_grant = {**PUBLISHER, "id": "idle", "kafka_principal": "User:idle", "publish": None}
    acls = desired_acls(_settings(PUBLISHER, no_grant), []).acls
    assert _of(acls, "User:brp") == {("WRITE", "TOPIC", "gemeentebus.ingress.brp", "LITERAL")}
    assert _of(acls, "User:idle") == set()
    writers = {
        a.principal
        for a in acls
        if a.name.startswith("gemeentebus.ingress") and a.operation == WRITE
    }
    assert writers == {"User:brp", OPERATOR}  # the operator: `gemeentebus publish`


def test_every_acl_is_an_allow_under_the_prefix() -> None:
    settings = _settings(SUBSCRIBER, PUBLISHER, topic_prefix="bus-a")
    acls = desired_acls(settings, [KafkaSubscription("s1", "gemeente-0363")]).acls
    assert acls and all(a.name.startswith("bus-a.") for a in acls)
    assert all(a.permission == Permission.ALLOW and a.host == "*" for a in acls)
    assert all(a.resource in (TOPIC, GROUP) for a in acls)  # no cluster ACL (KIP-679)


def test_one_principal_for_all_roles_gets_the_union() -> None:
    one = "User:gemeentebus"
    principals = {"api": one, "worker": one, "delivery": one, "operator": one}
    shared = desired_acls(_settings(principals=principals), []).acls
    apart = desired_acls(_settings(), []).acls
    assert {(a.operation, a.name, a.pattern) for a in shared} == {
        (a.operation, a.name, a.pattern) for a in apart
    }
    assert {a.principal for a in shared} == {one}


def test_the_plan_deletes_only_the_bus_s_own_stale_acls() -> None:
    settings = _settings(SUBSCRIBER)
    desired = desired_acls(settings, [KafkaSubscription("s1", "gemeente-0363")])
    stale = Acl("User:gemeente-0363", TOPIC, "gemeentebus.deliver.old", LITERAL, READ)
    monitoring = Acl("User:monitoring", TOPIC, "gemeentebus.events.", PREFIXED, READ)
    deny = Acl(WORKER, TOPIC, "gemeentebus.audit", LITERAL, WRITE, Permission.DENY)
    elsewhere = Acl(WORKER, TOPIC, "other.ingress", LITERAL, READ)  # another bus's namespace
    cluster_wide = Acl(WORKER, ResourceType.CLUSTER, "kafka-cluster", LITERAL, Operation.ALTER)
    kept = sorted(desired.acls)[:5]
    existing = {stale, monitoring, deny, elsewhere, cluster_wide, *kept}
    done = plan(settings, desired, existing)
    assert done.delete == (stale,)
    assert set(done.keep) == set(kept)
    assert set(done.create) == desired.acls - set(kept)
    assert set(done.foreign) == {monitoring, deny}  # listed, never touched
    again = plan(settings, desired, (existing - {stale}) | desired.acls)
    assert not again.changes


def test_a_subscriber_removed_from_the_set_loses_its_acls_on_the_next_plan() -> None:
    settings = _settings(SUBSCRIBER)
    before = desired_acls(settings, [KafkaSubscription("s1", "gemeente-0363")])
    after = desired_acls(settings, [])
    done = plan(settings, after, before.acls)
    assert {(a.name, a.resource) for a in done.delete} == {
        ("gemeentebus.deliver.s1", TOPIC),
        ("gemeentebus.sub.gemeente-0363.", GROUP),
    }


@pytest.mark.parametrize(
    ("clients", "kafka", "message"),
    [
        ([{**SUBSCRIBER, "kafka_principal": "User:*"}], {}, "kafka_principal"),
        ([SUBSCRIBER, {**OTHER, "kafka_principal": SUBSCRIBER["kafka_principal"]}], {},
         "is given to more than one client"),
        ([{**SUBSCRIBER, "kafka_principal": WORKER}], {},
         "is kafka.principals.worker: a client never runs as a role"),
        ([], {"principals": {"worker": "User:*"}}, "principals.worker"),
        ([], {"principals": {"api": "gemeentebus-api"}}, "principals.api"),
    ],
)  # fmt: skip
def test_principals_that_would_widen_access_are_refused(
    clients: list[dict[str, object]], kafka: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(*clients, **kafka)


def test_an_acl_reads_as_a_line() -> None:
    assert str(Acl(WORKER, TOPIC, "gemeentebus.events.", PREFIXED, WRITE)) == (
        "User:gemeentebus-worker WRITE topic gemeentebus.events.*"
    )
    assert str(Acl("User:x", GROUP, "g", LITERAL, READ, Permission.DENY, "10.0.0.1")) == (
        "User:x DENY READ group g from 10.0.0.1"
    )
