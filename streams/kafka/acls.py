"""Who may read and write what on the cluster: the ACLs of the bus's roles and clients.

One principal per role (`kafka.principals`: api, worker, delivery, operator), each allowed
only what its code does (`role_grants`, the table below), and per client:
- a KAFKA subscriber (`kafka_principal` of the subscription's owner) reads its own
  `<prefix>.deliver.<id>` topics (literal: no other subscription's, not `<id>x`'s, not its
  `.dlq`, no events topic) with consumer groups under `<prefix>.sub.<client id>.` only
  (`Settings` refuses client ids `a` and `a.b` both with a principal: that prefix of `a`
  would cover `a.b`'s groups);
- a Kafka publisher (a publish grant and a `kafka_principal`) writes its own
  `<prefix>.ingress.<client id>` alone.

Every role may DESCRIBE (and DESCRIBE_CONFIGS) every topic under the prefix: `run` checks at
start and all the time that the bus's topics are there and replicated as they should be
(`streams.kafka.topics`, `streams.kafka.watch`), and a topic a principal may not describe
is missing to it. That is topic names and settings, never records. READ and WRITE imply
DESCRIBE (Kafka's rule), so no grant below repeats it.

Per-subscription topics are granted to the roles by prefix: `<prefix>.deliver.` covers
every deliver topic *and* its `.dlq` (Kafka's prefixes cannot tell `deliver.<id>` from
`deliver.<id>.dlq` apart), so the worker could write a DLQ and the delivery role a deliver
topic. Everything else is named literally: the worker reads the subscription set and cannot
write it, the delivery role writes only the retirements (a `410 Gone`, never a subscription
record), and each subscriber's deliver topics are its own, so none sees another's.

`desired_acls` computes the whole set; `plan` compares it with the cluster's: what to
create, and which ACLs the bus made before that are no longer wanted (an ALLOW of a
principal the bus manages, on a topic or group under the prefix). Anything else (other
principals, DENY rules, other prefixes) is never touched. `AclAdmin` speaks the Kafka admin
API (CreateAcls, DescribeAcls, DeleteAcls v1: Kafka 4 removed v0, KIP-896) through
aiokafka's admin client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Any, Final, NamedTuple

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    SecurityDisabled,
    for_code,
)
from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    DeleteAclsRequest_v1,
    DescribeAclsRequest,
)
from aiokafka.protocol.api import Request

from streams.config import KafkaSettings, Settings
from streams.exceptions import ConfigurationError, KafkaUnavailable
from streams.kafka.clients import make_admin
from streams.kafka.topics import Groups, Topics
from streams.kafka.transport import check_access

__all__ = [
    "ROLES",
    "Acl",
    "AclAdmin",
    "AclPlan",
    "Desired",
    "Grant",
    "KafkaSubscription",
    "Operation",
    "PatternType",
    "Permission",
    "ResourceType",
    "desired_acls",
    "managed_principals",
    "plan",
    "role_grants",
]

ROLES: Final = ("api", "worker", "delivery", "operator")


# The codes of Kafka's protocol (org.apache.kafka.common.acl / resource).
class ResourceType(IntEnum):
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class PatternType(IntEnum):
    ANY = 1
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Permission(IntEnum):
    ANY = 1
    DENY = 2
    ALLOW = 3


@dataclass(frozen=True, order=True, slots=True)
class Acl:
    """One ACL binding: `principal` may (or may not) do `operation` on a resource."""

    principal: str
    resource: ResourceType
    name: str
    pattern: PatternType
    operation: Operation
    permission: Permission = Permission.ALLOW
    host: str = "*"

    def __str__(self) -> str:
        star = "*" if self.pattern == PatternType.PREFIXED else ""
        deny = "" if self.permission == Permission.ALLOW else f"{self.permission.name} "
        host = "" if self.host == "*" else f" from {self.host}"
        where = f"{self.resource.name.lower()} {self.name}{star}"
        return f"{self.principal} {deny}{self.operation.name} {where}{host}"


@dataclass(frozen=True, slots=True)
class Grant:
    """A row of the role table: `operations` on one topic or group, or on a name prefix."""

    resource: ResourceType
    name: str
    operations: tuple[Operation, ...]
    prefixed: bool = False

    def acls(self, principal: str) -> list[Acl]:
        pattern = PatternType.PREFIXED if self.prefixed else PatternType.LITERAL
        return [Acl(principal, self.resource, self.name, pattern, op) for op in self.operations]


def _topic(name: str, *operations: Operation, prefixed: bool = False) -> Grant:
    return Grant(ResourceType.TOPIC, name, operations, prefixed)


def _group(name: str, *operations: Operation, prefixed: bool = False) -> Grant:
    return Grant(ResourceType.GROUP, name, operations, prefixed)


def role_grants(prefix: str) -> dict[str, tuple[Grant, ...]]:
    """The role table: what each role's code reads, writes and creates, under `prefix`."""
    t, g = Topics(prefix), Groups(prefix)
    R, W, C = Operation.READ, Operation.WRITE, Operation.CREATE
    every = f"{prefix}."
    events, deliver = t.events_prefix, t.deliver("")  # deliver.<id> and deliver.<id>.dlq
    seen = _topic(every, Operation.DESCRIBE, Operation.DESCRIBE_CONFIGS, prefixed=True)
    return {
        # POST /events and ZGW: events and their deliver records (rejects to invalid);
        # subscriptions (new ones get their deliver and .dlq topics); replays (events →
        # deliver, progress in replays), reconciliation and person audits (deliveries);
        # the pull endpoint and DLQ list/redrive (deliver, .dlq); the audit trail (audit:
        # every audited route writes it, GET /audit reads it).
        "api": (
            seen,
            _topic(t.subscriptions, R, W),
            _topic(t.retirements, R),
            _topic(events, R, W, prefixed=True),
            _topic(deliver, R, W, C, prefixed=True),
            _topic(t.invalid, W),
            _topic(t.deliveries, R, W),
            _topic(t.replays, R, W),
            _topic(t.audit, R, W),
            _group(g.dlq_redrive(""), R, prefixed=True),
        ),
        # ingress (and each Kafka publisher's own) → events, deliver | invalid; the
        # subscription set is read, never written.
        "worker": (
            seen,
            _topic(t.ingress, R),
            _topic(t.publisher_ingress(""), R, prefixed=True),
            _topic(t.subscriptions, R),
            _topic(t.retirements, R),
            _topic(events, W, prefixed=True),
            _topic(deliver, W, prefixed=True),
            _topic(t.invalid, W),
            _group(g.validator, R),
        ),
        # deliver.<id> → webhooks, one group for all subscriptions; .dlq, the delivery
        # log; a 410 retires its subscription: a record in retirements, the subscription
        # set itself is read, never written.
        "delivery": (
            seen,
            _topic(deliver, R, W, prefixed=True),
            _topic(t.deliveries, W),
            _topic(t.subscriptions, R),
            _topic(t.retirements, R, W),
            _group(g.delivery, R),
            # where each subscription's own courier group of earlier versions left off,
            # read once when the delivery group first takes a partition (`connectors.reader`)
            _group(g.deliver(""), R, prefixed=True),
        ),
        # The command line: topics create, subscriptions, publish, replay, reconcile,
        # dlq list/redrive, and the audit trail of each (`gemeentebus audit` reads it).
        # Not `acls apply`: that needs ALTER on the cluster (a super user).
        "operator": (
            seen,
            _topic(every, C, prefixed=True),
            _topic(t.ingress, W),
            _topic(t.subscriptions, R, W),
            _topic(t.retirements, R),
            _topic(events, R, prefixed=True),
            _topic(deliver, R, W, prefixed=True),
            _topic(t.deliveries, R, W),
            _topic(t.replays, R, W),
            _topic(t.audit, R, W),
            _group(g.dlq_redrive(""), R, prefixed=True),
        ),
    }


class KafkaSubscription(NamedTuple):
    """An active subscription with protocol KAFKA: its id and its owner's client id."""

    id: str
    owner: str


def _role_principals(kafka: KafkaSettings) -> dict[str, str]:
    return {role: getattr(kafka.principals, role) for role in ROLES}


def managed_principals(settings: Settings) -> set[str]:
    """The principals whose ACLs under the prefix the bus owns: its roles', its clients'."""
    clients = {c.kafka_principal for c in settings.clients if c.kafka_principal is not None}
    return set(_role_principals(settings.kafka).values()) | clients


@dataclass(frozen=True, slots=True)
class Desired:
    """The ACLs the configuration and the subscription set call for, and what is amiss."""

    acls: frozenset[Acl]
    notes: tuple[str, ...] = ()


def desired_acls(settings: Settings, subscriptions: Iterable[KafkaSubscription]) -> Desired:
    """Every ACL the bus wants: the role table for each role's principal, each Kafka
    publisher's ingress topic, each KAFKA subscription's deliver topic and its owner's
    group prefix. `notes` names KAFKA subscriptions nobody may read (no principal)."""
    prefix = settings.kafka.topic_prefix
    t, g = Topics(prefix), Groups(prefix)
    acls: set[Acl] = set()
    grants = role_grants(prefix)
    for role, principal in _role_principals(settings.kafka).items():
        for grant in grants[role]:
            acls.update(grant.acls(principal))
    clients = {c.id: c for c in settings.clients}
    for client in settings.clients:
        if client.publish is not None and client.kafka_principal is not None:
            topic = _topic(t.publisher_ingress(client.id), Operation.WRITE)
            acls.update(topic.acls(client.kafka_principal))
    notes = []
    for sub in sorted(subscriptions):
        owner = clients.get(sub.owner)
        if owner is None or owner.kafka_principal is None:
            why = "is not configured" if owner is None else "has no kafka_principal"
            notes.append(
                f"KAFKA subscription {sub.id}: its owner {sub.owner} {why}, so no client "
                f"may read {t.deliver(sub.id)}"
            )
            continue
        principal = owner.kafka_principal
        acls.update(_topic(t.deliver(sub.id), Operation.READ).acls(principal))
        acls.update(_group(g.subscriber(sub.owner), Operation.READ, prefixed=True).acls(principal))
    return Desired(frozenset(acls), tuple(notes))


def _under_prefix(acl: Acl, prefix: str) -> bool:
    """Whether the ACL is about a topic or group of the bus's namespace."""
    kinds = (ResourceType.TOPIC, ResourceType.GROUP)
    return acl.resource in kinds and acl.name.startswith(f"{prefix}.")


@dataclass(frozen=True, slots=True)
class AclPlan:
    """What `acls apply` does: create the missing, delete the stale, keep the rest.

    `foreign` are ACLs on the bus's topics and groups that are not the bus's to change
    (other principals, DENY rules): listed so an operator sees who else has access.
    """

    create: tuple[Acl, ...]
    delete: tuple[Acl, ...]
    keep: tuple[Acl, ...]
    foreign: tuple[Acl, ...]
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.create or self.delete)


def plan(settings: Settings, desired: Desired, existing: Collection[Acl]) -> AclPlan:
    """Compare the wanted ACLs with the cluster's (`existing`, all of them)."""
    prefix, managed = settings.kafka.topic_prefix, managed_principals(settings)
    present = set(existing)
    ours = {
        a
        for a in present
        if a.permission == Permission.ALLOW and a.principal in managed and _under_prefix(a, prefix)
    }
    foreign = {a for a in present if _under_prefix(a, prefix)} - ours
    return AclPlan(
        create=tuple(sorted(desired.acls - present)),
        delete=tuple(sorted(ours - desired.acls)),
        keep=tuple(sorted(desired.acls & present)),
        foreign=tuple(sorted(foreign)),
        notes=desired.notes,
    )


# -- the admin API ------------------------------------------------------------------------


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # aiokafka: untyped
    """CreateAcls v1 with many creations (aiokafka's builder sends one)."""

    API_KEY = 30

    def __init__(self, acls: Iterable[Acl]) -> None:
        self._acls = list(acls)

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(
            [
                (a.resource, a.name, a.pattern, a.principal, a.host, a.operation, a.permission)
                for a in self._acls
            ]
        )


class _DeleteAcls(Request[DeleteAclsRequest_v1]):  # type: ignore[misc]  # aiokafka: untyped
    """DeleteAcls v1, one exact filter per ACL (nothing else can match it)."""

    API_KEY = 31

    def __init__(self, acls: Iterable[Acl]) -> None:
        self._acls = list(acls)

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class(
            [
                (a.resource, a.name, a.pattern, a.principal, a.host, a.operation, a.permission)
                for a in self._acls
            ]
        )


_REFUSED = (
    "kafka.sasl_username {user!r} may not {what} the cluster's ACLs: `acls` needs a principal "
    "with DESCRIBE and ALTER on the cluster (a super user, such as the local broker's admin)"
)


class AclAdmin:
    """The cluster's ACLs through the admin API; `async with AclAdmin(settings) as admin`."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._client = make_admin(settings, "acls")

    async def __aenter__(self) -> AclAdmin:
        await check_access(self.settings)
        try:
            await self._client.start()
        except KafkaError as exc:
            await self._client.close()
            raise KafkaUnavailable(
                f"cannot reach the Kafka cluster at {self.settings.bootstrap_servers}: {exc}"
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()

    async def _send(self, request: Request[Any]) -> dict[str, Any]:
        # the admin client's own request path (any broker: KRaft forwards to the controller)
        response = await self._client._send_request(request)
        answer: dict[str, Any] = response.to_object()
        return answer

    def _refused(self, what: str, code: int, message: str | None) -> Exception:
        if code == ClusterAuthorizationFailedError.errno:
            return ConfigurationError(_REFUSED.format(user=self.settings.sasl_username, what=what))
        if code == SecurityDisabled.errno:
            return ConfigurationError(
                f"the cluster at {self.settings.bootstrap_servers} has no authorizer "
                "(authorizer.class.name): it keeps no ACLs, every client may do anything"
            )
        error: Exception = for_code(code)(message or what)
        return error

    async def describe(self) -> set[Acl]:
        """Every ACL of the cluster."""
        request = DescribeAclsRequest(
            resource_type=ResourceType.ANY,
            resource_name=None,  # null: any
            resource_pattern_type_filter=PatternType.ANY,
            principal=None,
            host=None,
            operation=Operation.ANY,
            permission_type=Permission.ANY,
        )
        response = await self._send(request)
        if response["error_code"] != 0:
            raise self._refused("describe", response["error_code"], response["error_message"])
        found = set()
        for resource in response["resources"]:
            for acl in resource["acls"]:
                found.add(
                    Acl(
                        principal=acl["principal"],
                        resource=ResourceType(resource["resource_type"]),
                        name=resource["resource_name"],
                        pattern=PatternType(resource["resource_pattern_type"]),
                        operation=Operation(acl["operation"]),
                        permission=Permission(acl["permission_type"]),
                        host=acl["host"],
                    )
                )
        return found

    async def create(self, acls: Collection[Acl]) -> None:
        """Create `acls` (an existing one is no error: Kafka keeps one of each)."""
        if not acls:
            return
        response = await self._send(_CreateAcls(acls))
        for acl, r in zip(acls, response["creation_responses"], strict=True):
            if r["error_code"]:
                raise self._refused("alter", r["error_code"], f"{acl}: {r['error_message']}")

    async def delete(self, acls: Collection[Acl]) -> None:
        """Delete exactly `acls` (each filter matches one binding, or none)."""
        if not acls:
            return
        response = await self._send(_DeleteAcls(acls))
        for acl, r in zip(acls, response["filter_responses"], strict=True):
            if r["error_code"]:
                raise self._refused("alter", r["error_code"], f"{acl}: {r['error_message']}")

    async def settled(self, present: Collection[Acl], absent: Collection[Acl]) -> None:
        """Wait until this broker's authorizer has `present` and lacks `absent` (ACLs travel
        through the metadata log to every broker), at most the request timeout."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        while True:
            now = await self.describe()
            if set(present) <= now and not now & set(absent):
                return
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"the ACLs written to {self.settings.bootstrap_servers} did not show within "
                    f"{self.settings.request_timeout_s:.0f}s (kafka.request_timeout_s)"
                )
            await asyncio.sleep(0.2)
