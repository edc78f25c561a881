"""Configuration: one YAML file, every key overridable by `GEMEENTEBUS_<SECTION>__<KEY>`.

Precedence, highest first: explicit arguments, environment, the YAML file, defaults.
Secrets (`SecretStr`) come from the environment or from files named by `*_file` keys,
never from the repository. Every environment variable the bus reads is named in `ENV`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streams.exceptions import ConfigurationError

__all__ = [
    "ENV",
    "ClientConfig",
    "DeliverySettings",
    "HealthSettings",
    "HttpSettings",
    "KafkaPrincipals",
    "KafkaSettings",
    "LimitsSettings",
    "LocalKafkaSettings",
    "PublishGrant",
    "ReplaySettings",
    "RunSettings",
    "SecuritySettings",
    "Settings",
    "SubscribeGrant",
    "load_settings",
]

# Every environment variable gemeentebus reads, in one place.
ENV = {
    "config_file": "GEMEENTEBUS_CONFIG",
    "prefix": "GEMEENTEBUS_",
    "bootstrap": "KAFKA_BOOTSTRAP_SERVERS",
    "pseudonym_key": "GEMEENTEBUS_SECURITY__PSEUDONYM_KEY",
    "kafka_security_protocol": "GEMEENTEBUS_KAFKA__SECURITY_PROTOCOL",
    "kafka_sasl_password": "GEMEENTEBUS_KAFKA__SASL_PASSWORD",
    "kafka_sasl_password_file": "GEMEENTEBUS_KAFKA__SASL_PASSWORD_FILE",
    "cache_home": "XDG_CACHE_HOME",
    "state_home": "XDG_STATE_HOME",
    "secrets_key": "GEMEENTEBUS_SECURITY__SECRETS_KEY",
    "previous_keys": "GEMEENTEBUS_SECURITY__PREVIOUS_KEYS",
    "metrics_token": "GEMEENTEBUS_HTTP__METRICS_TOKEN",
}

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback) / "gemeentebus"


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
# A Kafka principal as the broker's authorizer names it; never the wildcard `User:*`.
PRINCIPAL = r"^User:[^\s*;]{1,255}$"


class KafkaPrincipals(BaseModel):
    """The Kafka principal each role of the bus runs as (a SCRAM user `gemeentebus-worker`
    is `User:gemeentebus-worker`): what `gemeentebus acls apply` grants each role
    (`streams.kafka.acls`). A process of one role logs in as that role's principal; one
    principal for several roles (`run --role all`) gets the union of their ACLs."""

    model_config = _FROZEN

    api: str = Field(default="User:gemeentebus-api", pattern=PRINCIPAL)
    worker: str = Field(default="User:gemeentebus-worker", pattern=PRINCIPAL)
    delivery: str = Field(default="User:gemeentebus-delivery", pattern=PRINCIPAL)
    operator: str = Field(default="User:gemeentebus-operator", pattern=PRINCIPAL)


SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


# The fields of `KafkaSettings.transport`.
_TRANSPORT = ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username",
              "sasl_password", "sasl_password_file", "ssl_cafile", "ssl_certfile",
              "ssl_keyfile", "ssl_check_hostname")  # fmt: skip


class KafkaSettings(BaseModel):
    """How to reach the broker and how the bus's topics are made.

    The transport (`security_protocol`, `sasl_*`, `ssl_*`) goes into every client through
    one factory, `streams.kafka.clients.security_options`. In production a transport without
    TLS (PLAINTEXT, SASL_PLAINTEXT) is refused unless `allow_plaintext` says so.
    """

    model_config = _FROZEN

    bootstrap_servers: str = "localhost:9092"
    client_id: str = "gemeentebus"
    # Namespace of every topic and consumer group; SPEC §3 names are under the default.
    topic_prefix: str = Field(default="gemeentebus", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    partitions: int = Field(default=6, ge=1)
    # Per subscription: its deliver topic and its dead-letter topic. One each by default,
    # because a national bus holds thousands of subscriptions and every partition costs:
    # the brokers make a log directory and its files for each, replicate it and keep it
    # open, and a delivery process's fetch requests list every deliver partition it reads
    # (aiokafka has no incremental fetch sessions); creation is measured by `gemeentebus
    # bench --only subscriptions`. Per-key order holds with any count; a subscriber's
    # concurrency comes from the courier's lanes per key, not from partitions; delivery
    # processes share the load by subscriptions. Raise `deliver_partitions` (for every
    # subscription created after) only when one subscription is too busy for one delivery
    # process; a topic keeps the count it was made with (changing it moves keys).
    deliver_partitions: int = Field(default=1, ge=1)
    dlq_partitions: int = Field(default=1, ge=1)
    # A cluster's defaults: one broker may be lost without losing an acknowledged record.
    replication_factor: int = Field(default=3, ge=1)
    min_insync_replicas: int = Field(default=2, ge=1)
    # Production refuses topics with one replica unless this says so (one-node brokers).
    allow_single_replica: bool = False
    ingress_retention_days: int = Field(default=7, ge=1)
    events_retention_days: int = Field(default=400, ge=1)
    invalid_retention_days: int = Field(default=30, ge=1)
    deliver_retention_days: int = Field(default=14, ge=1)
    # The audit trail (`gemeentebus.audit`): kept for years, never compacted (an auditor
    # needs every record; it holds no personal data).
    audit_retention_days: int = Field(default=3650, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)
    # How long `run` waits at start for the cluster to answer and its topics to be there.
    start_timeout_s: float = Field(default=30.0, gt=0)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None  # or sasl_password_file: the file's first line
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None  # the CA of the brokers' certificates (default: the system's)
    ssl_certfile: Path | None = None  # a client certificate (mTLS), with ssl_keyfile
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    # Production refuses PLAINTEXT and SASL_PLAINTEXT unless this says so.
    allow_plaintext: bool = False
    principals: KafkaPrincipals = KafkaPrincipals()

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"kafka.min_insync_replicas ({self.min_insync_replicas}) exceeds "
                f"kafka.replication_factor ({self.replication_factor}): no write could succeed"
            )
        return self

    @model_validator(mode="after")
    def _transport_complete(self) -> KafkaSettings:
        protocol = self.security_protocol
        has_password = self.sasl_password is not None or self.sasl_password_file is not None
        if self.uses_sasl:
            if not self.sasl_username:
                raise ValueError(f"kafka.security_protocol {protocol} needs kafka.sasl_username")
            if not has_password:
                raise ValueError(
                    f"kafka.security_protocol {protocol} needs kafka.sasl_password "
                    f"({ENV['kafka_sasl_password']}) or kafka.sasl_password_file"
                )
        elif self.sasl_username is not None or has_password:
            raise ValueError(
                f"kafka.sasl_username and kafka.sasl_password are used only with "
                f"kafka.security_protocol SASL_SSL or SASL_PLAINTEXT, not {protocol}"
            )
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set kafka.sasl_password or kafka.sasl_password_file, not both")
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile}
        files["ssl_keyfile"] = self.ssl_keyfile
        if not self.uses_tls and any(v is not None for v in files.values()):
            named = ", ".join(f"kafka.{k}" for k, v in files.items() if v is not None)
            raise ValueError(
                f"{named} set, but kafka.security_protocol {protocol} uses no TLS "
                "(SSL or SASL_SSL does)"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("kafka.ssl_keyfile needs kafka.ssl_certfile (the client certificate)")
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether the transport is encrypted (SSL, SASL_SSL)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """Whether clients authenticate with a user name and password (SASL_*)."""
        return self.security_protocol in ("SASL_SSL", "SASL_PLAINTEXT")

    def sasl_password_value(self) -> str:
        """The SASL password, from `sasl_password` or the first line of `sasl_password_file`."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is None:
            raise ConfigurationError(
                f"no Kafka password: set {ENV['kafka_sasl_password']} or kafka.sasl_password_file"
            )
        try:
            lines = self.sasl_password_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigurationError(
                f"kafka.sasl_password_file {self.sasl_password_file} cannot be read: {exc.strerror}"
            ) from exc
        if not lines or not lines[0]:
            raise ConfigurationError(f"kafka.sasl_password_file {self.sasl_password_file} is empty")
        return lines[0]

    def plaintext_problem(self) -> str | None:
        """Why production refuses this transport, or None (TLS, or `allow_plaintext`)."""
        if self.uses_tls or self.allow_plaintext:
            return None
        return (
            f"kafka.security_protocol is {self.security_protocol}: every record, BSNs "
            "included, crosses the network unencrypted. Use SSL or SASL_SSL, or set "
            "kafka.allow_plaintext: true (GEMEENTEBUS_KAFKA__ALLOW_PLAINTEXT=true) for a "
            "broker reached only over a trusted network"
        )

    def transport(self) -> dict[str, Any]:
        """The settings that say how to reach the cluster (bootstrap servers, protocol,
        credentials), not how its topics are made: to build other settings on."""
        return {name: getattr(self, name) for name in _TRANSPORT}

    @classmethod
    def single_node(cls, **values: Any) -> KafkaSettings:
        """Settings for a one-broker cluster (demo, tests, benchmarks): one replica, allowed."""
        return cls(replication_factor=1, min_insync_replicas=1, allow_single_replica=True, **values)


class LocalKafkaSettings(BaseModel):
    """The broker `gemeentebus kafka up` assembles from Maven Central jars."""

    model_config = _FROZEN

    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "kafka")
    data_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state") / "kafka")
    port: int = Field(default=9092, ge=1024, le=65000)
    heap_mb: int = Field(default=512, ge=128)
    start_timeout_s: float = Field(default=90.0, gt=0)


class SecuritySettings(BaseModel):
    """Secrets. The BSN pseudonym key is required outside the demo; the key that seals webhook
    secrets in the subscriptions topic (`streams.routing.sealing`) is required in production.

    `secrets_key` (or `secrets_key_file`) is 32 random bytes, base64 (`gemeentebus secrets
    new-key`); `previous_keys` (or `previous_keys_file`, one a line) are the keys still opened,
    never sealed with, while `gemeentebus secrets rotate` moves every record to the current one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    pseudonym_key: SecretStr | None = None
    pseudonym_key_file: Path | None = None
    secrets_key: SecretStr | None = None
    secrets_key_file: Path | None = None
    previous_keys: tuple[SecretStr, ...] = ()
    previous_keys_file: Path | None = None
    # A ZGW JWT older than this (`iat`) is refused even without `exp` (Open Zaak's JWT_EXPIRY).
    jwt_max_age_s: float = Field(default=3600.0, gt=0)

    def pseudonym_key_bytes(self) -> bytes:
        """The HMAC key for BSN pseudonyms; raises ConfigurationError when unset."""
        if self.pseudonym_key is not None and self.pseudonym_key.get_secret_value():
            return self.pseudonym_key.get_secret_value().encode()
        if self.pseudonym_key_file is not None:
            try:
                return self.pseudonym_key_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigurationError(
                    f"security.pseudonym_key_file cannot be read: {exc.strerror}"
                ) from exc
        raise ConfigurationError(
            f"no BSN pseudonym key: set {ENV['pseudonym_key']} "
            "or security.pseudonym_key_file (the bus refuses to start without one)"
        )

    def secrets_key_bytes(self) -> bytes | None:
        """The 32-byte key that seals webhook secrets, or None when neither setting is given;
        ConfigurationError naming the setting for a key that is not 32 bytes of base64."""
        if self.secrets_key is not None and self.secrets_key.get_secret_value():
            if self.secrets_key_file is not None:
                raise ConfigurationError(
                    "set security.secrets_key or security.secrets_key_file, not both"
                )
            return _key_of(self.secrets_key.get_secret_value(), "security.secrets_key")
        if self.secrets_key_file is not None:
            lines = _lines_of(self.secrets_key_file, "security.secrets_key_file")
            if len(lines) != 1:
                raise ConfigurationError(
                    f"security.secrets_key_file must hold one key, it holds {len(lines)} lines"
                )
            return _key_of(lines[0], "security.secrets_key_file")
        return None

    def previous_keys_bytes(self) -> tuple[bytes, ...]:
        """The keys that only open (`previous_keys`, then the lines of `previous_keys_file`)."""
        keys = [
            _key_of(key.get_secret_value(), f"security.previous_keys[{i}]")
            for i, key in enumerate(self.previous_keys)
        ]
        if self.previous_keys_file is not None:
            lines = _lines_of(self.previous_keys_file, "security.previous_keys_file")
            keys += [
                _key_of(line, f"security.previous_keys_file line {i + 1}")
                for i, line in enumerate(lines)
            ]
        return tuple(keys)


def _lines_of(path: Path, setting: str) -> list[str]:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not base64 text"
        raise ConfigurationError(f"{setting} {path} cannot be read: {why}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _key_of(text: str, setting: str) -> bytes:
    """32 bytes from standard base64; the error names the setting, never the value."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{setting} is not base64 (make one with `gemeentebus secrets new-key`)"
        ) from None
    if len(key) != 32:
        raise ConfigurationError(
            f"{setting} is {len(key)} bytes, not 32 (make one with `gemeentebus secrets new-key`)"
        )
    return key


class HttpSettings(BaseModel):
    """The HTTP server of a `run` process: the API, or in a `worker` or `delivery` process
    only `/health`, `/ready` and `/metrics`. Give each process on one host its own port."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_event_bytes: int = Field(default=64 * 1024, ge=1024)
    # slowloris: a request's headers, and its body, must arrive within these (else 408/closed)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    # `GET /metrics` answers anyone only when public (None: by `mode`, production: not);
    # else a scraper sends `Authorization: Bearer <metrics_token>` (or the file's first line).
    public_metrics: bool | None = None
    metrics_token: SecretStr | None = None
    metrics_token_file: Path | None = None

    def metrics_token_value(self) -> str | None:
        """The token `/metrics` asks for, or None when neither setting is given."""
        if self.metrics_token is not None and self.metrics_token.get_secret_value():
            if self.metrics_token_file is not None:
                raise ConfigurationError(
                    "set http.metrics_token or http.metrics_token_file, not both"
                )
            return self.metrics_token.get_secret_value()
        if self.metrics_token_file is None:
            return None
        lines = _lines_of(self.metrics_token_file, "http.metrics_token_file")
        if not lines:
            raise ConfigurationError(f"http.metrics_token_file {self.metrics_token_file} is empty")
        return lines[0]


class LimitsSettings(BaseModel):
    """Quotas and limits of the HTTP API (`streams.http.limits`), per authenticated client."""

    model_config = _FROZEN

    subscriptions_per_client: int = Field(default=100, ge=0)
    replays_per_client: int = Field(default=2, ge=1)  # running at once
    replays_total: int = Field(default=8, ge=1)  # running at once, all clients together
    requests_per_s: float = Field(default=100.0, gt=0)  # token bucket: refill rate
    burst: int = Field(default=200, ge=1)  # token bucket: size
    filter_max_depth: int = Field(default=16, ge=1)  # nesting of all/any/not
    filter_max_bytes: int = Field(default=16 * 1024, ge=64)  # `filters` as compact JSON
    max_page: int = Field(default=1000, ge=1)  # the largest `limit` of a paged read
    scan_max_records: int = Field(default=100_000, ge=1)  # read per call behind a paged read


class DeliverySettings(BaseModel):
    """Webhook delivery: timeouts, and the backoff and retry window the webhook retry policy is
    made of (`streams.retry.RetryPolicy.from_settings`)."""

    model_config = _FROZEN

    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)
    retry_window_s: float = Field(default=24 * 3600.0, gt=0)
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=600.0, gt=0)
    # while an endpoint fails, one probe at a time, at most this far apart
    # (`connectors.endpoints`): it is found answering again within this of recovering
    probe_max_interval_s: float = Field(default=2.0, gt=0)
    # the sink policy (`streams.delivery.sinks`); None: by `mode` (production: https only,
    # no private addresses; demo and test: http, and loopback)
    allow_http: bool | None = None
    allowed_private_sinks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    # what the bus calls itself in the CloudEvents webhook handshake (WebHook-Request-Origin):
    # its public DNS name, which a sink answers in WebHook-Allowed-Origin
    webhook_origin: str = Field(default="gemeentebus", pattern=r"^[A-Za-z0-9.-]{1,253}$")
    # the largest event a courier POSTs; a larger deliver-topic record is dead-lettered
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)


class ReplaySettings(BaseModel):
    """Replays: their pace, checkpoints, and the lease an API process holds on one it runs."""

    model_config = _FROZEN

    rate: float = Field(default=2000.0, gt=0)  # events written per second
    checkpoint_every: int = Field(default=1000, ge=1)  # records scanned between checkpoints
    lease_s: float = Field(default=30.0, gt=0)  # unrenewed this long: another process resumes


class RunSettings(BaseModel):
    """How `gemeentebus run` stops."""

    model_config = _FROZEN

    # SIGTERM to exit, inside a container orchestrator's 30 s; past it the exit is non-zero.
    grace_s: float = Field(default=25.0, gt=0)


class HealthSettings(BaseModel):
    """Readiness (`/ready`): when a role counts as stalled, and when the process gives up."""

    model_config = _FROZEN

    # Input waiting this long without progress makes a role not ready.
    stall_after_s: float = Field(default=60.0, gt=0)
    # A fault the process cannot mend itself (a topic it needs deleted, its subscription
    # reader dying again and again) ends it this long after it began: exit 1, for a
    # supervisor to restart it.
    give_up_after_s: float = Field(default=60.0, gt=0)
    # How often the cluster is asked whether it answers and has the bus's topics.
    probe_interval_s: float = Field(default=2.0, gt=0)


class PublishGrant(BaseModel):
    """What a publisher may publish: type patterns (`nl.brp.*`) and sources (`*` for any).

    `rsins` binds a ZGW client: the organisations (RSIN, 9 digits) whose zaken it may notify
    over `/api/v1/notificaties`; a notificatie for any other `bronorganisatie` is refused."""

    model_config = _FROZEN

    types: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    rsins: tuple[Annotated[str, Field(pattern=r"^[0-9]{9}$")], ...] = ()


class SubscribeGrant(BaseModel):
    """What a subscriber may receive: its purpose binding (`streams.routing.grants`).

    `types` are glob patterns. `fields` bounds, per event type (its exact name), the data
    fields (dotted paths) its subscriptions may see: one asking for more is refused, one asking
    for none gets these. `filters`, per event type, are filter expressions ANDed with every
    subscription's own (gemeente-0363 receives moves that involve 0363 only, whatever it
    sends). `volgindicaties`: whether it may follow persons (BRP afnemersindicaties)."""

    model_config = _FROZEN

    types: tuple[str, ...] = ()
    purpose: str = ""
    fields: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    filters: dict[str, tuple[dict[str, Any], ...]] = Field(default_factory=dict)
    volgindicaties: bool = False

    @model_validator(mode="after")
    def _bounds_granted_types(self) -> SubscribeGrant:
        for key in (*self.fields, *self.filters):
            if not any(fnmatchcase(key, pattern) for pattern in self.types):
                raise ValueError(f"subscribe: {key} has fields or filters but is not in types")
        return self


# A Kafka principal as `StandardAuthorizer` names a user (a SASL name, a certificate's
# distinguished name): `User:<name>`, never the wildcard `User:*`.
_PRINCIPAL = re.compile(PRINCIPAL)


class ClientConfig(BaseModel):
    """One client of the bus; the bearer token itself is never stored, only its SHA-256.

    A client is known by an HTTP credential (`token_sha256`, `jwt_secret_env`), by its Kafka
    principal (`kafka_principal`, `User:<name>` as the broker's authorizer names it), or
    both. A client with a `publish` grant and a Kafka principal is a Kafka publisher: it
    writes into its own ingress topic `<topic prefix>.ingress.<id>` (which only its principal
    may write, `gemeentebus acls apply`), and the worker judges every record there against
    that grant (`streams.routing.worker`).
    """

    model_config = _FROZEN

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    jwt_secret_env: str | None = None
    # The client's own Kafka principal (`User:gemeente-0363`): a KAFKA subscriber reads its
    # deliver topics with it, a Kafka publisher writes its own ingress topic with it.
    kafka_principal: str | None = None
    publish: PublishGrant | None = None
    subscribe: SubscribeGrant | None = None
    operator: bool = False

    @field_validator("kafka_principal")
    @classmethod
    def _principal(cls, principal: str | None) -> str | None:
        if principal is not None and not _PRINCIPAL.fullmatch(principal):
            raise ValueError(
                "must be User:<name> as the broker names it (e.g. User:brp-publisher; "
                "at most 255 characters, no space, '*' or ';')"
            )
        return principal

    @model_validator(mode="after")
    def _has_credentials(self) -> ClientConfig:
        if self.token_sha256 is None and self.jwt_secret_env is None and not self.kafka_principal:
            raise ValueError(
                f"client {self.id!r} needs token_sha256, jwt_secret_env or kafka_principal"
            )
        return self

    @property
    def kafka_publisher(self) -> bool:
        """Whether this client publishes into its own ingress topic."""
        return self.publish is not None and self.kafka_principal is not None


class Settings(BaseSettings):
    """All of gemeentebus's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV["prefix"],
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    mode: Literal["production", "demo", "test"] = "production"
    kafka: KafkaSettings = KafkaSettings()
    local_kafka: LocalKafkaSettings = LocalKafkaSettings()
    security: SecuritySettings = SecuritySettings()
    http: HttpSettings = HttpSettings()
    limits: LimitsSettings = LimitsSettings()
    delivery: DeliverySettings = DeliverySettings()
    replay: ReplaySettings = ReplaySettings()
    run: RunSettings = RunSettings()
    health: HealthSettings = HealthSettings()
    clients: tuple[ClientConfig, ...] = ()

    @field_validator("clients")
    @classmethod
    def _unique_client_ids(cls, clients: tuple[ClientConfig, ...]) -> tuple[ClientConfig, ...]:
        ids = [c.id for c in clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client ids must be unique")
        # One principal, one client: a principal shared by two publishers could write into
        # either ingress topic and so publish under the wider of the two grants.
        principals = [c.kafka_principal for c in clients if c.kafka_principal]
        if len(principals) != len(set(principals)):
            shared = sorted({p for p in principals if principals.count(p) > 1})
            raise ValueError(f"kafka_principal {shared[0]} is given to more than one client")
        # Kafka refuses a topic whose name differs from another's only in '.' against '_'.
        publishers = [c.id for c in clients if c.kafka_publisher]
        folded = [i.replace(".", "_") for i in publishers]
        if len(folded) != len(set(folded)):
            pair = sorted(i for i in publishers if folded.count(i.replace(".", "_")) > 1)
            raise ValueError(
                f"Kafka publishers {pair[0]} and {pair[1]} would get ingress topics Kafka "
                "cannot tell apart ('.' and '_' collide in topic names): rename one"
            )
        # A KAFKA subscriber's groups are the prefix `sub.<id>.`, which covers `sub.<id>.x.`.
        readers = {c.id for c in clients if c.kafka_principal}
        for longer in sorted(readers):
            parts = longer.split(".")
            for shorter in (".".join(parts[:k]) for k in range(1, len(parts))):
                if shorter in readers:
                    raise ValueError(
                        f"clients {shorter} and {longer} have Kafka principals, and "
                        f"{shorter}'s consumer groups (sub.{shorter}.*) would include "
                        f"{longer}'s (sub.{longer}.*): rename one"
                    )
        return clients

    def kafka_publishers(self) -> tuple[ClientConfig, ...]:
        """The clients that publish into their own ingress topic, in configuration order."""
        return tuple(c for c in self.clients if c.kafka_publisher)

    @model_validator(mode="after")
    def _client_principals_are_no_roles(self) -> Settings:
        roles = self.kafka.principals.model_dump()
        for client in self.clients:
            role = next((r for r, p in roles.items() if p == client.kafka_principal), None)
            if role is not None:
                raise ValueError(
                    f"client {client.id!r}: kafka_principal {client.kafka_principal} is "
                    f"kafka.principals.{role}: a client never runs as a role of the bus"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = os.environ.get(ENV["config_file"], "gemeentebus.yaml")
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),
        )


def _problems(error: ValidationError) -> str:
    """Each problem as `key: message` on one line, without the values given (a password
    given in the wrong place would otherwise be printed)."""
    parts = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        named = not where or f"{where}." in message
        parts.append(message if named else f"{where}: {message}")
    return "; ".join(parts)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the configuration; `KAFKA_BOOTSTRAP_SERVERS` names an existing broker.

    A missing file is fine (defaults and environment apply); a broken one is a
    ConfigurationError that says which key is wrong.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"configuration file {config_file} does not exist")
    previous = os.environ.get(ENV["config_file"])
    if config_file is not None:
        os.environ[ENV["config_file"]] = str(config_file)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(f"invalid configuration: {_problems(exc)}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"invalid configuration: {exc}") from exc
    except yaml.YAMLError as exc:  # where, not what: the text there may be a secret
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = f"invalid configuration: the file is no valid YAML{where}"
        raise ConfigurationError(problem) from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop(ENV["config_file"], None)
            else:
                os.environ[ENV["config_file"]] = previous
    bootstrap = os.environ.get(ENV["bootstrap"])
    has_explicit = "kafka" in overrides or "GEMEENTEBUS_KAFKA__BOOTSTRAP_SERVERS" in os.environ
    if bootstrap and not has_explicit:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
        settings = settings.model_copy(update={"kafka": kafka})
    return settings
