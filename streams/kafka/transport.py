"""How a client reaches the cluster: TLS, SASL, and what a refusal means.

`security_options` turns `kafka.security_protocol`, `kafka.sasl_*` and `kafka.ssl_*` into
aiokafka's options (an `ssl.SSLContext` from `aiokafka.helpers.create_ssl_context`, the
SASL mechanism and credentials), `faust_credentials` into Faust's `broker_credentials`,
which Faust hands to the same aiokafka options; every client of `streams.kafka.clients`
is made with them. `check_access` turns a rejected password or certificate into one line
naming the setting (aiokafka itself only says it could not bootstrap).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from aiokafka import errors
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import SaslHandShakeRequest
from aiokafka.protocol.metadata import MetadataRequest
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from streams.config import KafkaSettings, Settings
from streams.exceptions import ConfigurationError

__all__ = ["check_access", "faust_credentials", "security_options", "ssl_context"]


def _kafka(settings: Settings | KafkaSettings) -> KafkaSettings:
    return settings.kafka if isinstance(settings, Settings) else settings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The TLS context of `settings`: the CA (default: the system's), a client certificate
    for mTLS, the host name check."""
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigurationError(f"kafka.{name} {path} is not a readable file")
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=settings.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"kafka.ssl_cafile cannot be loaded: {exc}") from exc
    if settings.ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"kafka.ssl_certfile / kafka.ssl_keyfile cannot be loaded: {exc}"
            ) from exc
    # aiokafka's helper always checks the host name; off, the chain is still verified.
    context.check_hostname = settings.ssl_check_hostname
    return context


def security_options(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's options for the configured transport: `security_protocol`, and
    `ssl_context` and `sasl_*` where the protocol uses them. Every client is made with these."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.uses_tls:
        options["ssl_context"] = ssl_context(settings)
    if settings.uses_sasl:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password_value()
    return options


def faust_credentials(settings: KafkaSettings) -> CredentialsT | None:
    """Faust's `broker_credentials` for the configured transport (None for PLAINTEXT).

    Faust turns them into the same aiokafka options as `security_options` for its consumer
    and producer (`faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth`).
    """
    if settings.uses_sasl:
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password_value(),
            ssl_context=ssl_context(settings) if settings.uses_tls else None,
            mechanism=settings.sasl_mechanism,
        )
    if settings.uses_tls:
        return SSLCredentials(ssl_context(settings))
    return None


# OpenSSL's verify code for a certificate whose names do not include the host.
_HOSTNAME_MISMATCH = 62


async def check_access(settings: Settings | KafkaSettings, *, timeout_s: float = 10.0) -> None:
    """Raise `ConfigurationError` when a bootstrap broker refuses this client's transport or
    credentials, naming the setting to fix; return when a broker lets it in, or when none
    answers at all (a cluster that is away is the caller's to wait for).

    aiokafka only logs such a refusal and then reports that it could not bootstrap, which
    looks the same as a cluster that is down; `run` and the topic commands ask this instead.
    """
    kafka = _kafka(settings)
    options = security_options(kafka)
    refusal: ConfigurationError | None = None
    for host, port, _family in collect_hosts(kafka.bootstrap_servers, randomize=False):
        where = f"{host}:{port}"
        try:
            conn = await create_conn(
                host,
                port,
                client_id=f"{kafka.client_id}-check",
                request_timeout_ms=int(timeout_s * 1000),
                **options,
            )
            try:  # what every client asks first; a SASL listener answers no one unauthenticated
                await conn.send(MetadataRequest([]))
            finally:
                conn.close()
        except errors.SaslAuthenticationFailed as exc:
            refusal = ConfigurationError(
                f"kafka.sasl_password refused by {where}: {kafka.sasl_mechanism} "
                f"authentication failed for kafka.sasl_username {kafka.sasl_username!r} "
                "(wrong password, or no such user)"
            )
            refusal.__cause__ = exc
        except errors.UnsupportedSaslMechanismError as exc:
            refusal = ConfigurationError(
                f"kafka.sasl_mechanism {kafka.sasl_mechanism} is not enabled on {where}: {exc}"
            )
            refusal.__cause__ = exc
        except ssl.SSLCertVerificationError as exc:
            setting = (
                "kafka.ssl_check_hostname"
                if exc.verify_code == _HOSTNAME_MISMATCH
                else "kafka.ssl_cafile"
            )
            refusal = ConfigurationError(
                f"{setting}: the certificate of {where} does not verify ({exc.verify_message})"
            )
            refusal.__cause__ = exc
        except (OSError, TimeoutError, errors.KafkaError) as exc:  # ssl.SSLError too
            tls = await _tls_handshake(host, port, timeout_s)
            if not kafka.uses_tls and tls is True:
                refusal = ConfigurationError(
                    f"kafka.security_protocol is {kafka.security_protocol}, but {where} "
                    "expects TLS: set SSL or SASL_SSL (and kafka.ssl_cafile)"
                )
                refusal.__cause__ = exc
            elif kafka.uses_tls and tls is False:
                refusal = ConfigurationError(
                    f"kafka.security_protocol is {kafka.security_protocol}, but {where} "
                    "does not speak TLS: set PLAINTEXT or SASL_PLAINTEXT, or the TLS port"
                )
                refusal.__cause__ = exc
            elif not kafka.uses_sasl and await _wants_sasl(host, port, options, timeout_s):
                sasl = "SASL_SSL" if kafka.uses_tls else "SASL_PLAINTEXT (or SASL_SSL)"
                refusal = ConfigurationError(
                    f"kafka.security_protocol is {kafka.security_protocol}, but {where} "
                    f"expects SASL: set {sasl}, kafka.sasl_username and kafka.sasl_password"
                )
                refusal.__cause__ = exc
            continue  # not reached, or not answering: another broker may
        else:
            return
    if refusal is not None:
        raise refusal


async def _tls_handshake(host: str, port: int, timeout_s: float) -> bool | None:
    """Whether `host:port` speaks TLS: True when a handshake completes (the certificate not
    judged), False when it connects but the handshake fails, None when it does not connect
    or does not answer in time (nothing learnt)."""
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(timeout_s):
            await writer.start_tls(probe)
        answer: bool | None = True
    except TimeoutError:
        answer = None
    except OSError:  # ssl.SSLError, a reset: it answered, not in TLS
        answer = False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return answer


async def _wants_sasl(host: str, port: int, options: dict[str, Any], timeout_s: float) -> bool:
    """Whether `host:port` offers SASL mechanisms (a listener without SASL offers none)."""
    try:
        conn = await create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **options)
    except (OSError, TimeoutError, errors.KafkaError):
        return False
    try:
        answer = await conn.send(SaslHandShakeRequest("SCRAM-SHA-512"))
    except (OSError, TimeoutError, errors.KafkaError):
        return False
    finally:
        conn.close()
    return bool(answer.enabled_mechanisms)
