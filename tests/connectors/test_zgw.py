"""The ZGW Notificaties bridge: the mapping alone, and POST /api/v1/notificaties on a broker."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from kafka_reading import consume

from connectors import zgw
from streams.config import ClientConfig, Settings
from streams.contract import codec
from streams.contract.attributes import ZAAK_GEMUTEERD
from streams.contract.headers import ERROR_HEADER
from streams.contract.record import KafkaRecord
from streams.exceptions import InvalidEvent
from streams.http.api import make_api
from streams.ingress.gate import Gate
from streams.kafka.clients import make_producer
from streams.kafka.topics import Topics
from streams.routing.store import SubscriptionStore

SECRET = "open-zaak-notificaties-secret-32-bytes+"
ZAAK = "d4d4b4a2-7f8e-4c3a-9b1d-6a2f5e8c0b17"
BASE = "https://openzaak.utrecht.nl"
CATALOGUS = f"{BASE}/catalogi/api/v1/catalogussen/5c4c3b2a-1d0e-4f9a-8b7c-6d5e4f3a2b1c"
# Exactly what Open Zaak POSTs (notifications-api-common): kenmerken carry zaaktype.catalogus
# too, and aanmaakdatum is DRF's rendering of an aware UTC datetime.
NOTIFICATIE: dict[str, Any] = {
    "kanaal": "zaken",
    "hoofdObject": f"{BASE}/zaken/api/v1/zaken/{ZAAK}",
    "resource": "status",
    "resourceUrl": f"{BASE}/zaken/api/v1/statussen/7a3e5c1b-9d2f-4b8a-b6e4-3f1c8d0a2e95",
    "actie": "create",
    "aanmaakdatum": "2024-11-23T10:15:30.123456Z",
    "kenmerken": {
        "bronorganisatie": "002220647",
        "zaaktype": f"{BASE}/catalogi/api/v1/zaaktypen/0119dd4e-7be9-477e-bccf-75023b1453c1",
        "zaaktype.catalogus": CATALOGUS,
        "vertrouwelijkheidaanduiding": "zaakvertrouwelijk",
    },
}


def notificatie(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(NOTIFICATIE)
    out.update(changes)
    return out


# -- the mapping ----------------------------------------------------------------------------


def test_open_zaak_notificatie_becomes_a_valid_zaak_gemuteerd() -> None:
    event = zgw.to_event(NOTIFICATIE, client_id="open-zaak")
    assert event.type == ZAAK_GEMUTEERD
    assert event.source == "urn:nld:oin:00000001002220647000:systeem:open-zaak"
    assert event.subject == ZAAK
    assert event.time == datetime(2024, 11, 23, 10, 15, 30, 123456, tzinfo=UTC)
    assert event.dataschema == "urn:gemeentebus:schema:nl.overheid.zaken.zaak-gemuteerd:1"
    assert uuid.UUID(event.id).version == 5
    data = codec.to_json(event)["data"]
    assert data == {
        "zaakUrl": NOTIFICATIE["hoofdObject"],
        "zaakUuid": ZAAK,
        "resource": "status",
        "resourceUrl": NOTIFICATIE["resourceUrl"],
        "actie": "create",
        "bronorganisatie": "002220647",
        "zaaktype": NOTIFICATIE["kenmerken"]["zaaktype"],
        "vertrouwelijkheidaanduiding": "zaakvertrouwelijk",
        "aanmaakdatum": "2024-11-23T10:15:30.123Z",
        "identificatie": None,
        "statusOmschrijving": None,
    }
    accepted = Gate(Topics("t"), b"key").accept(event)  # the whole contract holds
    assert accepted.record.key == ZAAK.encode()


def test_the_same_notificatie_keeps_its_id() -> None:
    first = zgw.to_event(NOTIFICATIE, client_id="open-zaak")
    again = zgw.to_event(
        notificatie(aanmaakdatum="2024-11-23T11:15:30.123456+01:00"), client_id="open-zaak"
    )
    other = zgw.to_event(notificatie(actie="destroy"), client_id="open-zaak")
    assert first.id == again.id
    assert first.id != other.id


def test_no_rsin_gives_the_placeholder_oin() -> None:
    assert (
        zgw.source_for("12345", "open-zaak") == "urn:nld:oin:00000000000000000000:systeem:open-zaak"
    )


def _codes(payload: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidEvent) as caught:
        zgw.to_event(payload, client_id="open-zaak")
    return [(p["name"], p["code"]) for p in zgw.invalid_params(caught.value.errors)]


def test_another_kanaal_is_reported_alone() -> None:
    assert _codes(notificatie(kanaal="documenten", kenmerken={})) == [("kanaal", "message_kanaal")]


def test_missing_fields_are_all_reported() -> None:
    payload = notificatie(aanmaakdatum="gisteren")
    del payload["resourceUrl"]
    del payload["kenmerken"]["zaaktype"]
    assert _codes(payload) == [
        ("resourceUrl", "required"),
        ("kenmerken.zaaktype", "required"),
        ("aanmaakdatum", "invalid"),
    ]
    assert _codes([NOTIFICATIE]) == [("nonFieldErrors", "invalid")]


def test_contract_errors_are_named_after_notificatie_fields() -> None:
    event = zgw.to_event(
        notificatie(
            hoofdObject=f"{BASE}/zaken/api/v1/zaken/geen-uuid",
            kenmerken={
                **NOTIFICATIE["kenmerken"],
                "bronorganisatie": "002220648",
                "vertrouwelijkheidaanduiding": "topgeheim",
            },
        ),
        client_id="open-zaak",
    )
    with pytest.raises(InvalidEvent) as caught:
        Gate(Topics("t"), b"key").accept(event)
    names = {(p["name"], p["code"]) for p in zgw.invalid_params(caught.value.errors)}
    assert ("hoofdObject", "uuid_format") in names
    assert ("kenmerken.bronorganisatie", "rsin_elfproef") in names
    assert ("kenmerken.vertrouwelijkheidaanduiding", "enum_symbol") in names
    assert all(not n.startswith("data.") for n, _ in names)


# -- over HTTP, on a real broker ------------------------------------------------------------


def zgw_jwt(secret: str = SECRET, client_id: str = "open-zaak") -> str:
    """A JWT as Open Zaak sends it to its Notificaties API (zgw-consumers)."""
    claims = {
        "iss": client_id,
        "iat": int(time.time()),
        "client_id": client_id,
        "user_id": "",
        "user_representation": "",
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"client_identifier": client_id})


@pytest.fixture
async def api(
    settings: Settings, bus_topics: Topics, store: SubscriptionStore
) -> AsyncIterator[TestClient[Any, Any]]:
    clients = (
        ClientConfig(
            id="open-zaak",
            jwt_secret_env="OPENZAAK_JWT_SECRET",
            publish={  # type: ignore[arg-type]
                "types": ["nl.overheid.zaken.*"],
                "sources": ["*"],
                "rsins": [NOTIFICATIE["kenmerken"]["bronorganisatie"]],
            },
        ),
        ClientConfig(  # a ZGW client bound to no organisation: it may notify for none
            id="unbound",
            jwt_secret_env="OPENZAAK_JWT_SECRET",
            publish={"types": ["nl.overheid.zaken.*"], "sources": ["*"]},  # type: ignore[arg-type]
        ),
    )
    producer = make_producer(settings, "zgw-test")
    await producer.start()
    try:
        app = make_api(
            settings.model_copy(update={"clients": clients}),
            producer=producer,
            environ={"OPENZAAK_JWT_SECRET": SECRET},
            store=store,
        )
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as http:
            yield http
    finally:
        await producer.stop()


def _now() -> str:
    moment = datetime.now(UTC) - timedelta(seconds=5)
    return moment.isoformat().replace("+00:00", "Z")  # DRF's rendering


@pytest.mark.kafka
async def test_open_zaak_notificatie_with_jwt_lands_as_zaak_gemuteerd(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    sent = notificatie(aanmaakdatum=_now())
    response = await api.post(
        "/api/v1/notificaties", json=sent, headers={"Authorization": f"Bearer {zgw_jwt()}"}
    )
    assert response.status == 201, await response.text()
    assert await response.json() == sent  # echoed as Open Notificaties does

    [record] = await consume(
        settings, Topics(settings.kafka.topic_prefix).events(ZAAK_GEMUTEERD), 1
    )
    assert record.key == ZAAK.encode()
    kafka = KafkaRecord(key=record.key, headers=tuple(record.headers), value=record.value)
    event = codec.from_kafka(kafka)
    assert event.id == zgw.to_event(sent, client_id="open-zaak").id
    assert event.source == "urn:nld:oin:00000001002220647000:systeem:open-zaak"
    assert event.subject == ZAAK
    assert event.extensions["bronorganisatie"] == "002220647"
    assert event.extensions["vertrouwelijkheid"] == "zaakvertrouwelijk"
    assert event.data["resourceUrl"] == sent["resourceUrl"]


@pytest.mark.kafka
async def test_wrong_jwt_secret_is_401_in_the_notificaties_shape(
    api: TestClient[Any, Any],
) -> None:
    token = zgw_jwt(secret="not-the-secret-but-also-32-bytes-long")
    response = await api.post(
        "/api/v1/notificaties", json=NOTIFICATIE, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status == 401
    body = await response.json()
    assert {"type", "code", "title", "status", "detail"} <= body.keys()
    assert body["status"] == 401
    assert token not in await response.text()


@pytest.mark.kafka
async def test_kanaal_documenten_is_400_in_the_notificaties_shape(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    sent = notificatie(kanaal="documenten", aanmaakdatum=_now())
    response = await api.post(
        "/api/v1/notificaties", json=sent, headers={"Authorization": f"Bearer {zgw_jwt()}"}
    )
    assert response.status == 400
    body = await response.json()
    assert body["status"] == 400
    assert body["type"].endswith("/ref/fouten/ValidationError/")
    assert {"code", "title", "detail"} <= body.keys()
    assert body["invalidParams"] == [
        {"name": "kanaal", "code": "message_kanaal", "reason": body["invalidParams"][0]["reason"]}
    ]
    [dead] = await consume(settings, Topics(settings.kafka.topic_prefix).invalid, 1)
    headers = {k: bytes(v).decode() for k, v in dead.headers}
    assert headers[ERROR_HEADER] == "message_kanaal"
    assert headers["gemeentebus_via"] == "http"


@pytest.mark.kafka
async def test_contract_violation_is_400_with_invalid_params(api: TestClient[Any, Any]) -> None:
    kenmerken = {**NOTIFICATIE["kenmerken"], "bronorganisatie": "002220648"}
    sent = notificatie(aanmaakdatum=_now(), kenmerken=kenmerken)
    response = await api.post(
        "/api/v1/notificaties", json=sent, headers={"Authorization": f"Bearer {zgw_jwt()}"}
    )
    assert response.status == 400
    params = (await response.json())["invalidParams"]
    assert [(p["name"], p["code"]) for p in params] == [
        ("kenmerken.bronorganisatie", "rsin_elfproef")
    ]


# Another organisation's RSIN (it passes the elfproef): not among open-zaak's `rsins`.
OTHER_RSIN = "002220659"


@pytest.mark.kafka
async def test_a_zaaksysteem_may_not_notify_in_another_organisations_name(
    api: TestClient[Any, Any], settings: Settings
) -> None:
    kenmerken = {**NOTIFICATIE["kenmerken"], "bronorganisatie": OTHER_RSIN}
    sent = notificatie(aanmaakdatum=_now(), kenmerken=kenmerken)
    response = await api.post(
        "/api/v1/notificaties", json=sent, headers={"Authorization": f"Bearer {zgw_jwt()}"}
    )
    assert response.status == 403, await response.text()
    body = await response.json()
    assert body["code"] == "bronorganisatie_not_granted"
    assert body["type"].endswith("/ref/fouten/PermissionDenied/")
    # unbound: no RSIN at all, so not even the first organisation's
    token = zgw_jwt(client_id="unbound")
    response = await api.post(
        "/api/v1/notificaties",
        json=notificatie(aanmaakdatum=_now()),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 403
    assert (await response.json())["code"] == "bronorganisatie_not_granted"
    # its own organisation still goes through, and is the only event in the events topic
    own = notificatie(aanmaakdatum=_now())
    response = await api.post(
        "/api/v1/notificaties", json=own, headers={"Authorization": f"Bearer {zgw_jwt()}"}
    )
    assert response.status == 201
    [record] = await consume(
        settings, Topics(settings.kafka.topic_prefix).events(ZAAK_GEMUTEERD), 1
    )
    event = codec.from_kafka(
        KafkaRecord(key=record.key, headers=tuple(record.headers), value=record.value)
    )
    assert event.extensions["bronorganisatie"] == NOTIFICATIE["kenmerken"]["bronorganisatie"]


@pytest.mark.kafka
async def test_a_zgw_jwt_without_exp_ages_out(api: TestClient[Any, Any]) -> None:
    claims = {"iss": "open-zaak", "client_id": "open-zaak", "iat": int(time.time()) - 2 * 3600}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    response = await api.post(
        "/api/v1/notificaties",
        json=notificatie(aanmaakdatum=_now()),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status == 401
    assert (await response.json())["code"] == "jwt_too_old"
