"""The intake rules of a subscription, as the API and the CLI apply them. No broker needed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from streams.auth import Authenticator, Forbidden
from streams.config import ClientConfig, Settings
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD
from streams.routing.intake import (
    SERVER_FIELDS,
    check_purpose,
    client_of,
    new_signing_secret,
    purpose_of,
    server_owned,
    validation_errors,
)
from streams.routing.subscriptions import Subscription

PURPOSE = "bijhouden basisregistratie personen"


def _settings() -> Settings:
    clients = (
        ClientConfig(
            id="gemeente-0363",
            token_sha256="0" * 64,
            subscribe={"types": ["nl.brp.persoon-verhuisd"], "purpose": PURPOSE},  # type: ignore[arg-type]
        ),
        ClientConfig(
            id="buur",
            token_sha256="1" * 64,
            subscribe={"types": ["nl.brp.*"]},  # type: ignore[arg-type]
        ),
        ClientConfig(id="beheer", token_sha256="2" * 64, operator=True),
    )
    return Settings(mode="test", clients=clients)


def _body(**changes: Any) -> dict[str, Any]:
    return {
        "sink": "https://gemeente.example/notificaties",
        "protocol": "HTTP",
        "types": [VERHUISD],
        "filters": [{"exact": {"gemeentevan": "0363"}}],
        **changes,
    }


def _errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    server = {"id": "s-1", "owner": "gemeente-0363", "purpose": PURPOSE}
    with pytest.raises(ValidationError) as caught:
        Subscription.model_validate({**body, **server})
    return validation_errors(caught.value, body)


def test_a_signing_secret_is_32_fresh_random_bytes() -> None:
    secret = new_signing_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_signing_secret() != secret


def test_client_of_finds_a_configured_client_with_its_grants() -> None:
    settings = _settings()
    owner = client_of(settings, "gemeente-0363")
    assert owner is not None
    assert owner.id == "gemeente-0363"
    assert owner.subscribe is not None
    assert owner.subscribe.types == ("nl.brp.persoon-verhuisd",)
    assert client_of(settings, "onbekend") is None


def test_the_purpose_is_the_configured_one_or_the_client_id() -> None:
    settings = _settings()
    gemeente, buur = client_of(settings, "gemeente-0363"), client_of(settings, "buur")
    assert gemeente is not None and buur is not None
    assert purpose_of(gemeente) == PURPOSE
    assert purpose_of(buur) == "buur"


def test_types_outside_the_purpose_binding_are_forbidden() -> None:
    settings = _settings()
    auth = Authenticator(settings)
    gemeente, beheer = client_of(settings, "gemeente-0363"), client_of(settings, "beheer")
    assert gemeente is not None and beheer is not None
    check_purpose(auth, gemeente, [VERHUISD])
    with pytest.raises(Forbidden) as caught:
        check_purpose(auth, gemeente, [VERHUISD, ZAAK_GEMUTEERD])
    assert caught.value.code == "type_not_granted"
    assert ZAAK_GEMUTEERD in caught.value.message
    check_purpose(auth, beheer, [ZAAK_GEMUTEERD])  # an operator without a binding
    check_purpose(auth, gemeente, "not a list")  # malformed: left to validation
    check_purpose(auth, gemeente, [1, 2])


def test_server_owned_fields_are_named_in_either_case() -> None:
    assert {"id", "owner", "signingSecret"} <= SERVER_FIELDS
    assert server_owned("signingSecret")
    assert server_owned("signing_secret")
    assert server_owned("volgindicaties")
    assert not server_owned("sink")
    assert not server_owned("types")


@pytest.mark.parametrize(
    ("changes", "path", "code"),
    [
        ({"filters": [{"regex": {"gemeentevan": "0363"}}]}, "filters[0]", "unknown_dialect"),
        ({"filters": [{"exact": {"postcode": "1012LG"}}]}, "filters[0].exact.postcode", None),
        ({"types": [VERHUISD, "nl.brp.bestaat-niet"]}, "types[1]", "unknown_type"),
        ({"filters": [], "fields": ["soort", "geheim"]}, "fields[1]", "unknown_field"),
        ({"sinkCredential": {"accessToken": ""}}, "sinkCredential.accessToken", None),
    ],
)
def test_validation_errors_name_the_path_and_never_the_value(
    changes: dict[str, Any], path: str, code: str | None
) -> None:
    errors = _errors(_body(**changes))
    assert [e["path"] for e in errors] == [path]
    if code is not None:
        assert errors[0]["code"] == code
    text = json.dumps(errors)
    for value in ("regex", "bestaat-niet", "geheim", "1012LG"):
        assert value not in text


def test_every_unknown_type_and_field_is_listed_by_position() -> None:
    types = ["nl.brp.bestaat-niet", VERHUISD, "nl.brp.ook-niet"]
    assert [e["path"] for e in _errors(_body(types=types))] == ["types[0]", "types[2]"]
    fields = ["geheim", "soort", "ook-geheim"]
    found = _errors(_body(types=[VERHUISD, OVERLEDEN], filters=[], fields=fields))
    assert [e["path"] for e in found] == ["fields[0]", "fields[2]"]
    assert all(e["code"] == "unknown_field" for e in found)
