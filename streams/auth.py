"""Who is calling, and what they may do (SPEC §4, §7).

Two credentials, both as `Authorization: Bearer <credential>`:
- an opaque token, whose SHA-256 is compared in constant time against every client's stored
  hash (the token itself is never stored, logged or echoed);
- a ZGW JWT (HS256) whose `client_id` claim names the client; its secret comes from the
  environment variable the client's `jwt_secret_env` names, as Open Zaak and its peers send.
  It needs `iat`, is refused once `exp` passed or `iat` is `security.jwt_max_age_s` old,
  and may come from a clock up to `JWT_LEEWAY_S` ahead or behind.

A Kafka publisher is known by its principal instead: the broker authenticates it, and the
ACL on its own ingress topic (`<prefix>.ingress.<client id>`) lets no one else write there,
so a record in that topic is that client's (`kafka_publishers`).

Grants are glob patterns (`nl.brp.*`, `*`). `authorize_publish` is the one publish check,
for HTTP requests and Kafka records alike. `Unauthorized` (401) and `Forbidden` (403) say
why in a stable `code` and a `message` that never repeats the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final, Literal

import jwt

from streams.config import ClientConfig, PublishGrant, Settings, SubscribeGrant
from streams.exceptions import GemeentebusError

__all__ = [
    "JWT_LEEWAY_S",
    "AuthError",
    "Authenticator",
    "Client",
    "Forbidden",
    "Unauthorized",
    "authorize_bronorganisatie",
    "authorize_publish",
    "kafka_publishers",
    "matches",
]

log = logging.getLogger(__name__)

# Clocks of ZGW components may run this far ahead of ours (`iat`) or behind (`exp`).
JWT_LEEWAY_S: Final = 300
_JWT_ALGORITHMS: Final = ("HS256",)
# RFC 7518 §3.2: an HS256 key shorter than the hash is weak; warned once per client, not per call.
_MIN_SECRET_BYTES: Final = 32
# Compared when no client has a token: the loop below must cost the same either way.
_NO_HASH: Final = "0" * 64


class AuthError(GemeentebusError):
    """A request that may not proceed: `status`, a stable `code`, and why."""

    status: int = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unauthorized(AuthError):
    """Missing or wrong credentials (HTTP 401)."""

    status = 401


class Forbidden(AuthError):
    """Known client, not allowed to do this (HTTP 403)."""

    status = 403


@dataclass(frozen=True, slots=True, kw_only=True)
class Client:
    """An authenticated caller and its grants."""

    id: str
    via: Literal["token", "jwt", "kafka"]
    publish: PublishGrant | None = None
    subscribe: SubscribeGrant | None = None
    operator: bool = False


def matches(patterns: tuple[str, ...], value: str) -> bool:
    """Whether any glob pattern (`*` any run of characters) matches `value`, case-sensitively."""
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def authorize_publish(client: Client, event_type: str, source: str | None) -> None:
    """`Forbidden` unless `client` may publish `event_type` from `source` (None: any source).

    Codes: `not_a_publisher`, `type_not_granted`, `source_not_granted`; the message names
    the type or source (for the caller itself, never for a log of others)."""
    grant = client.publish
    if grant is None:
        raise Forbidden("not_a_publisher", f"client {client.id} may not publish events")
    if not matches(grant.types, event_type):
        raise Forbidden("type_not_granted", f"client {client.id} may not publish type {event_type}")
    if source is not None and not matches(grant.sources, source):
        raise Forbidden(
            "source_not_granted", f"client {client.id} may not publish from source {source}"
        )


def authorize_bronorganisatie(client: Client, rsin: str, *, required: bool) -> None:
    """`Forbidden` (`bronorganisatie_not_granted`) unless `client` may publish zaken of the
    organisation `rsin`: it is in the grant's `rsins`. A grant without `rsins` is unbound
    unless `required` (a ZGW notificatie: its source is made from this very RSIN)."""
    grant = client.publish
    rsins = grant.rsins if grant is not None else ()
    if rsin not in rsins and (rsins or required):
        raise Forbidden(
            "bronorganisatie_not_granted",
            f"client {client.id} may not publish zaken of bronorganisatie {rsin} "
            "(publish.rsins of its grant)",
        )


def kafka_publishers(settings: Settings) -> dict[str, Client]:
    """Every Kafka publisher by client id (`ClientConfig.kafka_publisher`), as a `Client`
    whose credential is its Kafka principal."""
    return {c.id: _client(c, "kafka") for c in settings.kafka_publishers()}


def _client(config: ClientConfig, via: Literal["token", "jwt", "kafka"]) -> Client:
    return Client(
        id=config.id,
        via=via,
        publish=config.publish,
        subscribe=config.subscribe,
        operator=config.operator,
    )


class Authenticator:
    """Checks credentials against the configured clients and their grants against a request."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.reload(settings)
        self._jwt_max_age_s = settings.security.jwt_max_age_s
        # Read at each request, so a rotated secret needs no restart.
        self._environ = environ if environ is not None else os.environ
        self._warned: set[str] = set()

    def reload(self, settings: Settings) -> None:
        """Know the clients of `settings.clients` from now on (a reloaded configuration): a
        removed client's token or JWT no longer authenticates. Nothing else is re-read."""
        hashed = tuple(
            (c, (c.token_sha256 or _NO_HASH).encode("ascii"), c.token_sha256 is not None)
            for c in settings.clients
        )
        by_id = {c.id: c for c in settings.clients if c.jwt_secret_env}
        self._hashed, self._by_id = hashed, by_id

    def authenticate(self, authorization: str | None) -> Client:
        """The client behind an `Authorization` header; `Unauthorized` saying why otherwise."""
        if not authorization or not authorization.strip():
            raise Unauthorized("missing_credentials", "send Authorization: Bearer <token>")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("invalid_scheme", "use the Bearer scheme: Bearer <token>")
        client = self._by_token(credential)
        if client is not None:
            return client
        if credential.count(".") == 2:
            return self._by_jwt(credential)
        raise Unauthorized("invalid_token", "the bearer token is not valid")

    def _by_token(self, token: str) -> Client | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest().encode()
        found: ClientConfig | None = None
        # Every hash is compared, with no early exit: timing tells nothing about which matched.
        for config, stored, has_token in self._hashed:
            equal = hmac.compare_digest(digest, stored)
            if equal and has_token and found is None:
                found = config
        return None if found is None else _client(found, "token")

    def _by_jwt(self, token: str) -> Client:
        invalid = Unauthorized("invalid_jwt", "the JWT is not valid for any client")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise invalid from None
        if header.get("alg") not in _JWT_ALGORITHMS:
            raise Unauthorized("invalid_jwt", "the JWT must be signed with HS256")
        client_id = claims.get("client_id")
        config = self._by_id.get(client_id) if isinstance(client_id, str) else None
        if config is None or config.jwt_secret_env is None:
            raise invalid  # same answer as a bad signature: client ids are not disclosed
        secret = self._environ.get(config.jwt_secret_env, "")
        if not secret:
            log.warning(
                "client %s: JWT secret variable %s is unset", config.id, config.jwt_secret_env
            )
            raise invalid
        self._warn_short(config, secret)
        iat_invalid = Unauthorized(
            "jwt_iat_invalid", "the JWT's iat is missing, not a number or in the future"
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                verified = jwt.decode(
                    token,
                    secret,
                    algorithms=list(_JWT_ALGORITHMS),
                    options={"require": ["iat", "client_id"], "verify_aud": False},
                    leeway=JWT_LEEWAY_S,
                )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("jwt_expired", "the JWT has expired (exp)") from None
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            raise iat_invalid from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized("jwt_claim_missing", f"the JWT has no {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise invalid from None
        iat = verified["iat"]
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise iat_invalid  # PyJWT takes "123" too
        # Without `exp` a JWT would hold forever: its age is bounded as Open Zaak bounds it.
        if iat < time.time() - self._jwt_max_age_s - JWT_LEEWAY_S:
            raise Unauthorized(
                "jwt_too_old",
                f"the JWT was issued (iat) more than {self._jwt_max_age_s:g} s ago; send a new one",
            )
        return _client(config, "jwt")

    def _warn_short(self, config: ClientConfig, secret: str) -> None:
        if len(secret.encode()) < _MIN_SECRET_BYTES and config.id not in self._warned:
            self._warned.add(config.id)
            log.warning("client %s: JWT secret shorter than %d bytes", config.id, _MIN_SECRET_BYTES)

    # -- grants -----------------------------------------------------------------------------

    def authorize_publish(self, client: Client, event_type: str, source: str | None) -> None:
        """`Forbidden` unless `client` may publish `event_type` from `source` (None: any)."""
        authorize_publish(client, event_type, source)

    def authorize_subscribe(self, client: Client, event_type: str) -> None:
        """`Forbidden` unless `client` may receive `event_type` (its purpose binding)."""
        grant = client.subscribe
        if grant is None:
            raise Forbidden("not_a_subscriber", f"client {client.id} may not subscribe")
        if not matches(grant.types, event_type):
            raise Forbidden(
                "type_not_granted", f"client {client.id} may not receive type {event_type}"
            )

    def require_operator(self, client: Client) -> None:
        """`Forbidden` unless `client` is an operator."""
        if not client.operator:
            raise Forbidden("not_an_operator", f"client {client.id} is no operator")
