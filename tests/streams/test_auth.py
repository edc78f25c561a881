"""Credentials and grants: bearer tokens, ZGW JWTs, glob patterns. No broker needed."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import jwt
import pytest

from streams import auth as auth_module
from streams.auth import Authenticator, Client, Forbidden, Unauthorized, matches
from streams.config import ClientConfig, Settings

SECRET = "open-zaak-secret-of-at-least-32-bytes!"
ENV = {"OPENZAAK_JWT_SECRET": SECRET}


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _settings() -> Settings:
    clients = (
        ClientConfig(
            id="brp-component",
            token_sha256=_sha("brp-token"),
            publish={"types": ["nl.brp.*"], "sources": ["urn:nld:oin:*:systeem:BRP-component"]},  # type: ignore[arg-type]
        ),
        ClientConfig(
            id="gemeente-0363",
            token_sha256=_sha("gemeente-token"),
            subscribe={"types": ["nl.brp.persoon-verhuisd"]},  # type: ignore[arg-type]
        ),
        ClientConfig(id="beheer", token_sha256=_sha("beheer-token"), operator=True),
        ClientConfig(
            id="open-zaak",
            jwt_secret_env="OPENZAAK_JWT_SECRET",
            publish={"types": ["nl.overheid.zaken.*"], "sources": ["*"]},  # type: ignore[arg-type]
        ),
    )
    return Settings(mode="test", clients=clients)


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(_settings(), environ=ENV)


def zgw_jwt(secret: str = SECRET, **claims: Any) -> str:
    """A JWT as Open Zaak (zgw-consumers) makes them: HS256, client_identifier in the header."""
    payload = {
        "iss": "open-zaak",
        "iat": int(time.time()),
        "client_id": "open-zaak",
        "user_id": "",
        "user_representation": "",
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"client_identifier": "open-zaak"}
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def test_bearer_token_finds_its_client(authenticator: Authenticator) -> None:
    client = authenticator.authenticate("Bearer brp-token")
    assert client.id == "brp-component"
    assert client.via == "token"
    assert client.publish is not None
    assert authenticator.authenticate("bearer   gemeente-token  ").id == "gemeente-0363"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_credentials"),
        ("", "missing_credentials"),
        ("Bearer", "invalid_scheme"),
        ("Basic YnJwOnRva2Vu", "invalid_scheme"),
        ("Bearer brp-token-but-wrong", "invalid_token"),
    ],
)
def test_missing_or_wrong_token_is_unauthorized(
    authenticator: Authenticator, header: str | None, code: str
) -> None:
    with pytest.raises(Unauthorized) as caught:
        authenticator.authenticate(header)
    assert caught.value.code == code
    assert caught.value.status == 401
    assert "brp-token" not in caught.value.message


def test_every_stored_hash_is_compared(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    authenticator.authenticate("Bearer brp-token")  # the first client matches
    assert len(compared) == 4  # ... and still every client is compared: no early exit
    compared.clear()
    with pytest.raises(Unauthorized):
        authenticator.authenticate("Bearer nobody")
    assert len(compared) == 4


def test_zgw_jwt_finds_its_client(authenticator: Authenticator) -> None:
    client = authenticator.authenticate(f"Bearer {zgw_jwt()}")
    assert client == Client(id="open-zaak", via="jwt", publish=client.publish)
    assert client.publish is not None


def test_zgw_jwt_with_exp_in_the_future_is_fine(authenticator: Authenticator) -> None:
    token = zgw_jwt(exp=int(time.time()) + 600)
    assert authenticator.authenticate(f"Bearer {token}").id == "open-zaak"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (lambda: zgw_jwt(secret="another-secret-that-is-32-bytes-long"), "invalid_jwt"),
        (lambda: zgw_jwt(client_id="unknown-client"), "invalid_jwt"),
        (lambda: zgw_jwt(client_id=None), "invalid_jwt"),
        (lambda: zgw_jwt(iat=int(time.time()) + 3600), "jwt_iat_invalid"),
        (lambda: zgw_jwt(iat=None), "jwt_claim_missing"),
        (lambda: zgw_jwt(iat=str(int(time.time()))), "jwt_iat_invalid"),
        # no exp: valid for the maximum age (1 h, plus the leeway) after iat, not forever
        (lambda: zgw_jwt(iat=int(time.time()) - 2 * 3600), "jwt_too_old"),
        (lambda: zgw_jwt(iat=int(time.time()) - 400 * 86400), "jwt_too_old"),
        # an exp far ahead does not lift the maximum age
        (lambda: zgw_jwt(iat=int(time.time()) - 7200, exp=int(time.time()) + 86400), "jwt_too_old"),
        (lambda: zgw_jwt(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "jwt_expired"),
        (
            lambda: jwt.encode(
                {"client_id": "open-zaak", "iat": int(time.time())}, None, algorithm="none"
            ),
            "invalid_jwt",
        ),
        (lambda: "not.a.jwt", "invalid_jwt"),
    ],
)
def test_bad_zgw_jwt_is_unauthorized(authenticator: Authenticator, token: Any, code: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        authenticator.authenticate(f"Bearer {token()}")
    assert caught.value.code == code


def test_jwt_max_age_is_a_setting_and_counts_from_iat() -> None:
    settings = _settings()
    security = settings.security.model_copy(update={"jwt_max_age_s": 60.0})
    authenticator = Authenticator(settings.model_copy(update={"security": security}), environ=ENV)
    leeway = auth_module.JWT_LEEWAY_S
    fresh = zgw_jwt(iat=int(time.time()) - leeway - 30)  # within 60 s plus the leeway
    assert authenticator.authenticate(f"Bearer {fresh}").id == "open-zaak"
    with pytest.raises(Unauthorized) as caught:
        authenticator.authenticate(f"Bearer {zgw_jwt(iat=int(time.time()) - leeway - 90)}")
    assert caught.value.code == "jwt_too_old"
    assert "60 s" in caught.value.message
    assert Settings().security.jwt_max_age_s == 3600  # Open Zaak's JWT_EXPIRY


def test_jwt_secret_missing_from_the_environment_is_unauthorized() -> None:
    authenticator = Authenticator(_settings(), environ={})
    with pytest.raises(Unauthorized):
        authenticator.authenticate(f"Bearer {zgw_jwt()}")


def test_short_jwt_secret_still_works_without_warnings() -> None:
    authenticator = Authenticator(_settings(), environ={"OPENZAAK_JWT_SECRET": "kort"})
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        token = zgw_jwt(secret="kort")  # the sender's side warns; ours does not
    assert authenticator.authenticate(f"Bearer {token}").id == "open-zaak"


# -- grants ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "value", "expected"),
    [
        (("nl.brp.*",), "nl.brp.persoon-verhuisd", True),
        (("nl.brp.*",), "nl.brpx.persoon-verhuisd", False),
        (("*",), "anything", True),
        (("nl.brp.persoon-verhuisd",), "nl.brp.persoon-verhuisd.v2", False),
        ((), "nl.brp.persoon-verhuisd", False),
        (("NL.BRP.*",), "nl.brp.persoon-verhuisd", False),
    ],
)
def test_glob_patterns(patterns: tuple[str, ...], value: str, expected: bool) -> None:
    assert matches(patterns, value) is expected


def test_publish_grants(authenticator: Authenticator) -> None:
    brp = authenticator.authenticate("Bearer brp-token")
    source = "urn:nld:oin:00000001823288444000:systeem:BRP-component"
    authenticator.authorize_publish(brp, "nl.brp.persoon-overleden", source)
    with pytest.raises(Forbidden) as caught:
        authenticator.authorize_publish(brp, "nl.overheid.zaken.zaak-gemuteerd", source)
    assert caught.value.code == "type_not_granted"
    assert "nl.overheid.zaken.zaak-gemuteerd" in caught.value.message
    with pytest.raises(Forbidden) as caught:
        authenticator.authorize_publish(brp, "nl.brp.persoon-overleden", "urn:nld:oin:1:systeem:X")
    assert caught.value.code == "source_not_granted"
    assert caught.value.status == 403


def test_subscriber_and_operator_checks(authenticator: Authenticator) -> None:
    gemeente = authenticator.authenticate("Bearer gemeente-token")
    beheer = authenticator.authenticate("Bearer beheer-token")
    authenticator.authorize_subscribe(gemeente, "nl.brp.persoon-verhuisd")
    authenticator.require_operator(beheer)
    with pytest.raises(Forbidden, match="may not publish"):
        authenticator.authorize_publish(gemeente, "nl.brp.persoon-verhuisd", None)
    with pytest.raises(Forbidden):
        authenticator.authorize_subscribe(gemeente, "nl.brp.persoon-overleden")
    with pytest.raises(Forbidden):
        authenticator.authorize_subscribe(beheer, "nl.brp.persoon-verhuisd")
    with pytest.raises(Forbidden):
        authenticator.require_operator(gemeente)


def test_kafka_publishers_are_known_by_their_principal_not_over_http() -> None:
    settings = Settings(
        mode="test",
        clients=(
            ClientConfig(
                id="brp",
                kafka_principal="User:brp-publisher",
                publish={"types": ["nl.brp.persoon-verhuisd"], "sources": ["urn:x"]},  # type: ignore[arg-type]
            ),
            ClientConfig(id="beheer", token_sha256=_sha("beheer-token"), operator=True),
        ),
    )
    publishers = auth_module.kafka_publishers(settings)
    assert list(publishers) == ["brp"]
    brp = publishers["brp"]
    assert brp.via == "kafka"
    # the one publish check, for HTTP and Kafka alike
    auth_module.authorize_publish(brp, "nl.brp.persoon-verhuisd", "urn:x")
    with pytest.raises(Forbidden) as caught:
        auth_module.authorize_publish(brp, "nl.brp.persoon-overleden", "urn:x")
    assert caught.value.code == "type_not_granted"
    with pytest.raises(Forbidden) as caught:
        auth_module.authorize_publish(brp, "nl.brp.persoon-verhuisd", "urn:y")
    assert caught.value.code == "source_not_granted"
    # no HTTP credential: no token and no JWT finds it
    authenticator = Authenticator(settings, environ={})
    with pytest.raises(Unauthorized):
        authenticator.authenticate("Bearer User:brp-publisher")
