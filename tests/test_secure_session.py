"""With GEMEENTEBUS_TEST_SECURE_KAFKA=1 the session broker is the secured one, so the tests
run beside this one prove the bus over SASL_SSL: a client without credentials gets nothing."""

from __future__ import annotations

import pytest

from streams.config import KafkaSettings
from streams.exceptions import ConfigurationError
from streams.kafka.transport import check_access

pytestmark = [pytest.mark.kafka, pytest.mark.secure_session]


async def test_the_session_broker_speaks_sasl_ssl_only(kafka_cluster: KafkaSettings) -> None:
    assert kafka_cluster.security_protocol == "SASL_SSL"
    await check_access(kafka_cluster)  # the suite's own credentials are let in
    plaintext = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers)
    with pytest.raises(ConfigurationError, match="expects TLS"):
        await check_access(plaintext)
