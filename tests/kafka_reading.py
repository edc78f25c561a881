"""Reading a topic in a test: the first `count` records, failing loudly when fewer arrive."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from streams.config import Settings
from streams.kafka.clients import make_consumer


async def consume(settings: Settings, topic: str, count: int, within: float = 20.0) -> list[Any]:
    """The first `count` records of `topic`; TimeoutError when fewer arrive in time."""
    group = f"{settings.kafka.topic_prefix}.reader-{uuid.uuid4().hex[:6]}"
    consumer = make_consumer(settings, "test-reader", topic, group=group, fetch_max_wait_ms=500)
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(within):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(part)
    finally:
        await consumer.stop()
    return records


def transport_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a `gemeentebus` process reach the cluster as `settings`
    does (bootstrap servers and, on a secured cluster, transport and credentials)."""
    kafka = settings.kafka
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    values = {
        "SECURITY_PROTOCOL": kafka.security_protocol,
        "SASL_MECHANISM": kafka.sasl_mechanism if kafka.uses_sasl else None,
        "SASL_USERNAME": kafka.sasl_username,
        "SASL_PASSWORD": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        "SASL_PASSWORD_FILE": kafka.sasl_password_file,
        "SSL_CAFILE": kafka.ssl_cafile,
        "SSL_CERTFILE": kafka.ssl_certfile,
        "SSL_KEYFILE": kafka.ssl_keyfile,
    }
    env |= {f"GEMEENTEBUS_KAFKA__{k}": str(v) for k, v in values.items() if v is not None}
    return env


def transport_config(settings: Settings) -> dict[str, object]:
    """`settings`' way to the cluster as the `kafka:` section of a configuration file."""
    out: dict[str, object] = {}
    for name, value in settings.kafka.transport().items():
        if value is None:
            continue
        secret = getattr(value, "get_secret_value", None)
        out[name] = secret() if secret else value if isinstance(value, bool) else str(value)
    return out


async def limit_record_size(settings: Settings, topic: str, max_bytes: int) -> None:
    """Set `topic`'s `max.message.bytes` and wait until the broker applies it: a probe of 300
    bytes (not JSON) is refused under the limit, taken at or over it (and then in the topic)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import MessageSizeTooLargeError

    from streams.kafka.clients import make_admin, make_producer

    admin = make_admin(settings)
    await admin.start()
    try:
        configs = {"max.message.bytes": str(max_bytes)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()
    probe = make_producer(settings, "size-probe")
    await probe.start()
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await probe.send_and_wait(topic, b"p" * 300, key=b"probe")
                except MessageSizeTooLargeError:
                    if max_bytes < 300:
                        return
                else:
                    if max_bytes >= 300:
                        return
                await asyncio.sleep(0.1)
    finally:
        await probe.stop()
