"""The one factory every Kafka client comes from: the transport it gives, and that nothing
in the packages makes a client without it."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol, SASLMechanism

from connectors.kafka_credentials import LocalCredentials
from streams.config import KafkaSettings, Settings
from streams.exceptions import ConfigurationError
from streams.kafka.clients import make_app
from streams.kafka.transport import faust_credentials, security_options

CHECKOUT = Path(__file__).resolve().parents[3]
FACTORY = CHECKOUT / "streams" / "kafka" / "clients.py"
TRANSPORT = CHECKOUT / "streams" / "kafka" / "transport.py"  # its probes open connections
# Every class that opens a connection to Kafka: aiokafka's, Faust's app, kafka-python's.
CLIENTS = {
    "AIOKafkaProducer",
    "AIOKafkaConsumer",
    "AIOKafkaAdminClient",
    "AIOKafkaClient",
    "App",
    "KafkaProducer",
    "KafkaConsumer",
    "KafkaAdminClient",
    "create_conn",
}


def _constructed(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in CLIENTS:
                found.append(f"{path.relative_to(CHECKOUT)}:{node.lineno} {name}(...)")
    return found


def test_no_kafka_client_is_made_outside_the_factory() -> None:
    sources = [*(CHECKOUT / "streams").rglob("*.py"), *(CHECKOUT / "connectors").rglob("*.py")]
    outside = [
        hit for path in sources if path not in (FACTORY, TRANSPORT) for hit in _constructed(path)
    ]
    assert outside == [], "make these with streams.kafka.clients (make_producer, ...)"
    assert _constructed(FACTORY)  # the check sees constructions where they are


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> LocalCredentials:
    made = LocalCredentials(tmp_path_factory.mktemp("tls") / "credentials")
    made.ensure()
    return made


def _sasl_ssl(credentials: LocalCredentials, **values: object) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "security_protocol": "SASL_SSL",
            "sasl_username": "admin",
            "sasl_password_file": credentials.password_file("admin"),
            "ssl_cafile": credentials.ca_file,
            **values,
        }
    )


def test_plaintext_is_said_explicitly() -> None:
    assert security_options(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(KafkaSettings()) is None


def test_sasl_ssl_gives_scram_over_a_verifying_tls_context(credentials: LocalCredentials) -> None:
    options = security_options(_sasl_ssl(credentials))
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "admin",
        "sasl_plain_password": credentials.password("admin"),
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    unchecked = security_options(_sasl_ssl(credentials, ssl_check_hostname=False))
    assert unchecked["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain still counts
    assert not unchecked["ssl_context"].check_hostname


def test_faust_gets_the_same_credentials(credentials: LocalCredentials) -> None:
    creds = faust_credentials(_sasl_ssl(credentials, sasl_mechanism="SCRAM-SHA-256"))
    assert isinstance(creds, SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_SSL
    assert creds.mechanism is SASLMechanism.SCRAM_SHA_256
    assert (creds.username, creds.password) == ("admin", credentials.password("admin"))
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    tls = faust_credentials(KafkaSettings(security_protocol="SSL", ssl_cafile=credentials.ca_file))
    assert isinstance(tls, SSLCredentials)
    app = make_app(Settings(mode="test", kafka=_sasl_ssl(credentials)), "check")
    assert isinstance(app.conf.broker_credentials, SASLCredentials)


def test_unreadable_files_name_their_setting(credentials: LocalCredentials, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"kafka\.ssl_cafile .* is not a readable file"):
        security_options(_sasl_ssl(credentials, ssl_cafile=tmp_path / "absent.crt"))
    not_a_cert = tmp_path / "garbage.crt"
    not_a_cert.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match=r"kafka\.ssl_cafile cannot be loaded"):
        security_options(_sasl_ssl(credentials, ssl_cafile=not_a_cert))
    with pytest.raises(ConfigurationError, match=r"kafka\.ssl_certfile / kafka\.ssl_keyfile"):
        security_options(_sasl_ssl(credentials, ssl_certfile=not_a_cert))
    with pytest.raises(ConfigurationError, match=r"kafka\.sasl_password_file .* cannot be read"):
        security_options(_sasl_ssl(credentials, sasl_password_file=tmp_path / "absent"))


def test_a_client_certificate_is_loaded_for_mtls(credentials: LocalCredentials) -> None:
    settings = _sasl_ssl(
        credentials, ssl_certfile=credentials.broker_chain, ssl_keyfile=credentials.broker_key
    )
    assert isinstance(security_options(settings)["ssl_context"], ssl.SSLContext)
