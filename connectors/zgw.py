"""The ZGW Notificaties bridge: a VNG Notificaties API 1.0 `notificatie` becomes a CloudEvent.

Open Zaak and its peers POST notificaties unchanged to `/api/v1/notificaties`; a notificatie
on kanaal `zaken` becomes `nl.overheid.zaken.zaak-gemuteerd` (schema version 1):

    hoofdObject -> zaakUrl, and its last path segment -> zaakUuid (also subject and key)
    resource, resourceUrl, actie, aanmaakdatum -> the fields of the same name
    kenmerken.{bronorganisatie, zaaktype, vertrouwelijkheidaanduiding} -> the same names
    aanmaakdatum -> time (data keeps milliseconds, as the schema does)

`id` is a UUIDv5 of (hoofdObject, resourceUrl, actie, aanmaakdatum), so a notificatie sent
twice keeps its id and dedupes downstream. A notificatie names no system, so `source` is
derived: `urn:nld:oin:00000001<bronorganisatie>000:systeem:<client id>`. The OIN-stelsel gives
an organisation with an RSIN the OIN `00000001` + RSIN + `000`, and the client id names the
component that sent it. When bronorganisatie is no RSIN, the placeholder OIN of twenty zeros
is used so that only that one error is reported. Because the source speaks for that
organisation, the API lets a client notify only for the RSINs of its grant (`publish.rsins`,
`streams.auth.authorize_bronorganisatie`).

Errors are reported in the Notificaties API's shape (`invalidParams`), named after the
notificatie's own fields. Pure: no HTTP or Kafka here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from streams.contract import values
from streams.contract.attributes import ZAAK_GEMUTEERD
from streams.contract.codec import format_time, parse_time
from streams.contract.envelope import CloudEvent
from streams.contract.schemas import dataschema_urn
from streams.exceptions import FieldError, InvalidEvent

__all__ = [
    "KANAAL",
    "NOTIFICATIE_NAMESPACE",
    "PLACEHOLDER_OIN",
    "echo",
    "event_id",
    "invalid_params",
    "notificatie_name",
    "problem",
    "source_for",
    "to_event",
]

KANAAL: Final = "zaken"
# The namespace of notificatie ids; fixed forever, or re-sent notificaties stop deduping.
NOTIFICATIE_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:gemeentebus:zgw:notificatie")
PLACEHOLDER_OIN: Final = "0" * 20
# The mapping fills schema version 1; a later version gets its own mapping.
DATASCHEMA: Final = dataschema_urn(ZAAK_GEMUTEERD, 1)

_FIELDS: Final = ("kanaal", "hoofdObject", "resource", "resourceUrl", "actie", "aanmaakdatum")
_KENMERKEN: Final = ("bronorganisatie", "zaaktype", "vertrouwelijkheidaanduiding")
# The Notificaties API's fields, echoed back in a 201 as Open Notificaties does.
_ECHOED: Final = (*_FIELDS, "kenmerken", "source")
_NON_FIELD: Final = "nonFieldErrors"
# Where an error of the event lies in the notificatie.
_NAMES: Final[Mapping[str, str]] = {
    "data.zaakUrl": "hoofdObject",
    "data.zaakUuid": "hoofdObject",
    "subject": "hoofdObject",
    "data.resource": "resource",
    "data.resourceUrl": "resourceUrl",
    "data.actie": "actie",
    "data.aanmaakdatum": "aanmaakdatum",
    "time": "aanmaakdatum",
    **{f"data.{k}": f"kenmerken.{k}" for k in _KENMERKEN},
}
# status -> (the error class the ZGW APIs name in `type`, title)
_FOUTEN: Final[Mapping[int, tuple[str, str]]] = {
    400: ("ValidationError", "Invalid input."),
    401: ("NotAuthenticated", "Authentication credentials were not provided or are invalid."),
    403: ("PermissionDenied", "You do not have permission to perform this action."),
    413: ("RequestEntityTooLarge", "Request entity too large."),
    415: ("UnsupportedMediaType", "Unsupported media type."),
    503: ("ServiceUnavailable", "Service temporarily unavailable."),
}


def source_for(bronorganisatie: Any, client_id: str) -> str:
    """The CloudEvents source of a notificatie from this organisation, sent by this client."""
    rsin = bronorganisatie if isinstance(bronorganisatie, str) else ""
    oin = f"00000001{rsin}000" if values.is_nine_digits(rsin) else PLACEHOLDER_OIN
    return f"urn:nld:oin:{oin}:systeem:{client_id}"


def event_id(hoofd_object: str, resource_url: str, actie: str, aanmaakdatum: datetime) -> str:
    """The deterministic id of a notificatie: the same notificatie always gets the same id."""
    name = "\n".join((hoofd_object, resource_url, actie, format_time(aanmaakdatum)))
    return str(uuid.uuid5(NOTIFICATIE_NAMESPACE, name))


def _required(obj: Mapping[str, Any], names: Iterable[str], prefix: str) -> list[FieldError]:
    errors = []
    for name in names:
        value = obj.get(name)
        if value is None:
            errors.append(FieldError(prefix + name, "required", "this field is required"))
        elif not isinstance(value, str):
            errors.append(FieldError(prefix + name, "invalid", "expected a string"))
        elif not value:
            errors.append(FieldError(prefix + name, "blank", "this field may not be blank"))
    return errors


def _structure(notificatie: Any) -> list[FieldError]:
    """The notificatie's shape, before anything of the event contract."""
    if not isinstance(notificatie, Mapping):
        return [FieldError(_NON_FIELD, "invalid", "expected a JSON object")]
    kanaal = notificatie.get("kanaal")
    if isinstance(kanaal, str) and kanaal and kanaal != KANAAL:
        # Other kanalen carry other kenmerken: their shape is not ours to judge.
        return [FieldError("kanaal", "message_kanaal", f"the bus accepts kanaal {KANAAL} only")]
    errors = _required(notificatie, _FIELDS, "")
    kenmerken = notificatie.get("kenmerken")
    if kenmerken is None:
        errors.append(FieldError("kenmerken", "required", "this field is required"))
    elif not isinstance(kenmerken, Mapping):
        errors.append(FieldError("kenmerken", "invalid", "expected an object"))
    else:
        errors += _required(kenmerken, _KENMERKEN, "kenmerken.")
    aanmaakdatum = notificatie.get("aanmaakdatum")
    if isinstance(aanmaakdatum, str) and aanmaakdatum:
        try:
            parse_time(aanmaakdatum)
        except ValueError:
            message = "expected an RFC 3339 date-time with a time zone"
            errors.append(FieldError("aanmaakdatum", "invalid", message))
    return errors


def to_event(notificatie: Any, *, client_id: str) -> CloudEvent:
    """The `zaak-gemuteerd` event of a notificatie sent by `client_id`.

    Raises `InvalidEvent` with every structural error, paths named after the notificatie's
    fields (`kanaal`, `kenmerken.zaaktype`); the event contract is checked by the gate after.
    """
    errors = _structure(notificatie)
    if errors:
        raise InvalidEvent(errors)
    kenmerken = notificatie["kenmerken"]
    hoofd_object: str = notificatie["hoofdObject"]
    moment = parse_time(notificatie["aanmaakdatum"])
    zaak_uuid = values.last_path_segment(hoofd_object)
    data = {
        "zaakUrl": hoofd_object,
        "zaakUuid": zaak_uuid,
        "resource": notificatie["resource"],
        "resourceUrl": notificatie["resourceUrl"],
        "actie": notificatie["actie"],
        **{name: kenmerken[name] for name in _KENMERKEN},
        # timestamp-millis: what does not fit is dropped here, not on the way to Kafka
        "aanmaakdatum": moment.replace(microsecond=moment.microsecond // 1000 * 1000),
        "identificatie": None,
        "statusOmschrijving": None,
    }
    return CloudEvent(
        id=event_id(hoofd_object, notificatie["resourceUrl"], notificatie["actie"], moment),
        source=source_for(kenmerken["bronorganisatie"], client_id),
        type=ZAAK_GEMUTEERD,
        time=moment,
        dataschema=DATASCHEMA,
        data=data,
        subject=zaak_uuid,
    )


def notificatie_name(path: str) -> str:
    """The notificatie field an error path of its event points at (`nonFieldErrors` if none)."""
    if path in _FIELDS or path == "kenmerken" or path.startswith("kenmerken."):
        return path
    return _NAMES.get(path, _NON_FIELD)


def invalid_params(errors: Iterable[FieldError]) -> list[dict[str, str]]:
    """`invalidParams` of the Notificaties API: one per (field, code), in order."""
    errors = list(errors)
    # `time` is aanmaakdatum: when data.aanmaakdatum says what is wrong, `time` repeats it.
    if any(e.path == "data.aanmaakdatum" for e in errors):
        errors = [e for e in errors if e.path != "time"]
    seen: set[tuple[str, str]] = set()
    params = []
    for error in errors:
        name = notificatie_name(error.path)
        if (name, error.code) not in seen:
            seen.add((name, error.code))
            params.append({"name": name, "code": error.code, "reason": error.message})
    return params


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    base_url: str = "",
    params: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """An error body in the shape of the ZGW APIs (`Fout`, or `ValidatieFout` with params)."""
    kind, title = _FOUTEN.get(status, ("APIException", "Error."))
    body: dict[str, Any] = {
        "type": f"{base_url}/ref/fouten/{kind}/",
        "code": code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": f"urn:uuid:{uuid.uuid4()}",
    }
    if params is not None:
        body["invalidParams"] = params
    return body


def echo(notificatie: Mapping[str, Any]) -> dict[str, Any]:
    """The notificatie as Open Notificaties answers a 201: its API fields, unchanged."""
    return {name: notificatie[name] for name in _ECHOED if name in notificatie}
