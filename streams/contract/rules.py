"""The semantic layer of the event contract: every rule of SPEC §1, every broken one reported.

`validate` returns one `FieldError` per broken rule (path, stable code, message). Messages are
fixed per code and never repeat the offending value: it may be a BSN, postcode or name.
Checks only read the values they can: a field of the wrong shape gets its structural error
(from the generated pydantic models) and no semantic errors on top. Data that is exactly the
Avro-python form of the current schema (`is_exact` of its binding: exact types, no more) is
structurally valid for the models too, so only other data is handed to pydantic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

import pydantic

from streams.contract import gemeenten, values
from streams.contract.attributes import (
    OVERLEDEN,
    PERSON_TYPES,
    ROUTING_ATTRIBUTES,
    VERHUISD,
    ZAAK_GEMUTEERD,
    routing_attributes,
)
from streams.contract.avrodata import DataBinding, data_binding
from streams.contract.envelope import SPECVERSION, CloudEvent
from streams.contract.models import MODELS
from streams.contract.schemas import registry
from streams.exceptions import FieldError

__all__ = [
    "CLOCK_SKEW",
    "ERROR_CODES",
    "TIMEZONE",
    "Verdict",
    "dutch_today",
    "examine",
    "validate",
]

# Dates in the BRP and ZGW are Dutch calendar days.
TIMEZONE: Final = ZoneInfo("Europe/Amsterdam")
# Sources' clocks may run this far ahead of ours before `time` counts as "in the future".
CLOCK_SKEW: Final = timedelta(minutes=5)


def dutch_today() -> date:
    """Today's calendar day in the Netherlands: the day date rules are judged against (an
    hour or two ahead of UTC's, which `date.today()` gives on a UTC machine)."""
    return datetime.now(TIMEZONE).date()


# Every code `validate` can return, with its message (fixed: never the offending value).
ERROR_CODES: Final[Mapping[str, str]] = {
    "specversion_unsupported": "specversion must be 1.0",
    "id_format": "id must be a non-empty string of at most 256 characters",
    "source_format": "source must be urn:nld:oin:<OIN of 20 digits>:systeem:<name>",
    "type_format": "type must be reverse-DNS: lower-case dotted segments, optional .v<N> suffix",
    "type_unknown": "the bus knows no such event type",
    "dataschema_mismatch": "dataschema must be urn:gemeentebus:schema:<this type>:<version>",
    "time_format": "time must be a timezone-aware timestamp",
    "time_in_future": "time lies in the future (beyond the allowed clock skew)",
    "subject_bsn": "subject must never be a BSN",
    "subject_mismatch": "subject of a zaak event must be the zaak UUID",
    "subject_not_allowed": "person events carry no subject",
    "extension_name": "extension attribute names are a-z and 0-9, at most 20 characters",
    "routing_mismatch": "routing attribute disagrees with data (the bus derives it from data)",
    "field_required": "required field is missing",
    "field_unexpected": "field is not in the schema",
    "field_type": "value does not have the type the schema requires",
    "enum_symbol": "value is not one of the schema's enum symbols",
    "bsn_format": "BSN must be exactly 9 digits",
    "bsn_elfproef": "BSN does not pass the elfproef",
    "rsin_format": "RSIN must be exactly 9 digits, leading zeros kept",
    "rsin_elfproef": "RSIN does not pass the elfproef",
    "postcode_format": "postcode must be 4 digits (first not 0), optional space, 2 capitals",
    "gemeentecode_unknown": "gemeentecode is no municipality that existed on the event's date",
    "land_format": "land must be an ISO 3166-1 alpha-2 code of a country other than NL",
    "nummeraanduiding_format": "BAG nummeraanduiding id must be 16 digits with object type 20",
    "huisnummer_range": "huisnummer must be 1 to 99999",
    "huisletter_format": "huisletter must be one letter",
    "huisnummertoevoeging_format": "huisnummertoevoeging must be 1 to 4 letters or digits",
    "adresregels_format": "an address abroad has at most three non-empty address lines",
    "adres_incomplete": "a Dutch address needs straat, huisnummer, postcode, woonplaats and "
    "gemeentecode",
    "adres_mixed": "a Dutch address has no land or address lines; an address abroad has no "
    "Dutch address fields",
    "soort_inconsistent": "soort does not agree with the gemeenten of vorigAdres and nieuwAdres",
    "date_in_future": "date lies in the future",
    "date_implausible": "date lies before 1800",
    "overlijdensplaats_exclusive": "exactly one of gemeenteVanOverlijden and landVanOverlijden "
    "must be given",
    "aangifte_before_overlijden": "datumAangifte lies before datumOverlijden",
    "url_format": "value must be an absolute http(s) URL",
    "uuid_format": "value must be a lower-case UUID",
    "zaak_uuid_mismatch": "zaakUuid must be the last path segment of zaakUrl",
}

_DUTCH_FIELDS: Final = ("straat", "huisnummer", "postcode", "woonplaats", "gemeentecode")
_DUTCH_ONLY: Final = (
    *_DUTCH_FIELDS,
    "nummeraanduidingIdentificatie",
    "huisletter",
    "huisnummertoevoeging",
)
_DATASCHEMA_PREFIX: Final = {t: f"urn:gemeentebus:schema:{t}:" for t in MODELS}
# (field, check, code, the type the check reads) for the optional fields of a Dutch address
_DUTCH_VALUE_CHECKS: Final[tuple[tuple[str, Callable[[Any], bool], str, type], ...]] = (
    ("postcode", values.is_postcode, "postcode_format", str),
    (
        "nummeraanduidingIdentificatie",
        values.is_nummeraanduiding_id,
        "nummeraanduiding_format",
        str,
    ),
    ("huisnummer", values.is_huisnummer, "huisnummer_range", int),
    ("huisletter", values.is_huisletter, "huisletter_format", str),
    ("huisnummertoevoeging", values.is_huisnummertoevoeging, "huisnummertoevoeging_format", str),
)
_PYDANTIC_CODES: Final = {
    "missing": "field_required",
    "extra_forbidden": "field_unexpected",
    "literal_error": "enum_symbol",
}

Errors = list[FieldError]


@lru_cache(maxsize=4096)  # bounded: extension names in paths come from outside
def _error(path: str, code: str) -> FieldError:
    return FieldError(path, code, ERROR_CODES[code])


class _Clock:
    """`today` (a Dutch calendar day) and the latest acceptable timestamp."""

    __slots__ = ("latest", "today")

    def __init__(self, today: date | None, now: datetime | None) -> None:
        if now is None:
            now = (
                datetime.now(UTC)
                if today is None
                else datetime.combine(today + timedelta(days=1), time(), TIMEZONE)
            )
        self.today = today if today is not None else now.astimezone(TIMEZONE).date()
        self.latest = now + CLOCK_SKEW


# -- values ---------------------------------------------------------------------------------


def _nine_digits(value: Any, path: str, kind: str, errors: Errors) -> None:
    if not isinstance(value, str):
        return
    if not values.is_nine_digits(value):
        errors.append(_error(path, f"{kind}_format"))
    elif not values.elfproef(value):
        errors.append(_error(path, f"{kind}_elfproef"))


def _date(value: Any, path: str, clock: _Clock, errors: Errors) -> date | None:
    """Check a date field; return it when it is usable for further checks."""
    if not isinstance(value, date) or isinstance(value, datetime):
        return None
    if value > clock.today:
        errors.append(_error(path, "date_in_future"))
    elif value < values.EARLIEST_DATE:
        errors.append(_error(path, "date_implausible"))
    return value


def _gemeentecode(value: Any, path: str, day: date | None, errors: Errors) -> None:
    if isinstance(value, str) and day is not None and not gemeenten.exists_on(value, day):
        errors.append(_error(path, "gemeentecode_unknown"))


def _land(value: Any, path: str, errors: Errors) -> None:
    if isinstance(value, str) and not values.is_country_code(value):
        errors.append(_error(path, "land_format"))


def _url(value: Any, path: str, errors: Errors) -> bool:
    if not isinstance(value, str):
        return False
    if not values.is_http_url(value):
        errors.append(_error(path, "url_format"))
        return False
    return True


# -- addresses ------------------------------------------------------------------------------


def _is_dutch(adres: Mapping[str, Any]) -> bool:
    return adres.get("land") is None


def _adres(adres: Any, path: str, day: date | None, errors: Errors) -> None:
    if not isinstance(adres, Mapping):
        return
    if not _is_dutch(adres):
        _land(adres.get("land"), f"{path}.land", errors)
        errors.extend(
            _error(f"{path}.{name}", "adres_mixed")
            for name in _DUTCH_ONLY
            if adres.get(name) is not None
        )
        regels = adres.get("adresregels")
        if isinstance(regels, list) and (len(regels) > 3 or not all(regels)):
            errors.append(_error(f"{path}.adresregels", "adresregels_format"))
        return
    errors.extend(
        _error(f"{path}.{name}", "adres_incomplete")
        for name in _DUTCH_FIELDS
        if adres.get(name) is None
    )
    if adres.get("adresregels"):
        errors.append(_error(f"{path}.adresregels", "adres_mixed"))
    _dutch_values(adres, path, errors)
    _gemeentecode(adres.get("gemeentecode"), f"{path}.gemeentecode", day, errors)


def _dutch_values(adres: Mapping[str, Any], path: str, errors: Errors) -> None:
    for name, check, code, kind in _DUTCH_VALUE_CHECKS:
        value = adres.get(name)
        if isinstance(value, kind) and not isinstance(value, bool) and not check(value):
            errors.append(_error(f"{path}.{name}", code))


def _soort_agrees(soort: str, vorig: Mapping[str, Any], nieuw: Mapping[str, Any]) -> bool | None:
    """Whether soort agrees with the two addresses; None when the addresses cannot tell."""
    vorig_nl, nieuw_nl = _is_dutch(vorig), _is_dutch(nieuw)
    if soort == "EMIGRATIE":
        return vorig_nl and not nieuw_nl
    if soort == "IMMIGRATIE":
        return not vorig_nl and nieuw_nl
    if not (vorig_nl and nieuw_nl):
        return False
    van, naar = vorig.get("gemeentecode"), nieuw.get("gemeentecode")
    if not (isinstance(van, str) and isinstance(naar, str)):
        return None  # adres_incomplete or field_type already says why
    return (van == naar) == (soort == "BINNENGEMEENTELIJK")


# -- the data of each type ------------------------------------------------------------------


def _verhuisd(data: Mapping[str, Any], clock: _Clock, errors: Errors) -> None:
    _nine_digits(data.get("bsn"), "data.bsn", "bsn", errors)
    day = _date(data.get("datumAanvangAdreshouding"), "data.datumAanvangAdreshouding", clock,
                errors)  # fmt: skip
    vorig, nieuw = data.get("vorigAdres"), data.get("nieuwAdres")
    _adres(vorig, "data.vorigAdres", day, errors)
    _adres(nieuw, "data.nieuwAdres", day, errors)
    soort = data.get("soort")
    if (
        isinstance(soort, str)
        and isinstance(vorig, Mapping)
        and isinstance(nieuw, Mapping)
        and _soort_agrees(soort, vorig, nieuw) is False
    ):
        errors.append(_error("data.soort", "soort_inconsistent"))


def _overleden(data: Mapping[str, Any], clock: _Clock, errors: Errors) -> None:
    _nine_digits(data.get("bsn"), "data.bsn", "bsn", errors)
    overlijden = _date(data.get("datumOverlijden"), "data.datumOverlijden", clock, errors)
    aangifte = _date(data.get("datumAangifte"), "data.datumAangifte", clock, errors)
    if overlijden is not None and aangifte is not None and aangifte < overlijden:
        errors.append(_error("data.datumAangifte", "aangifte_before_overlijden"))
    gemeente, land = data.get("gemeenteVanOverlijden"), data.get("landVanOverlijden")
    if (gemeente is None) == (land is None):
        errors.append(_error("data.gemeenteVanOverlijden", "overlijdensplaats_exclusive"))
    _gemeentecode(gemeente, "data.gemeenteVanOverlijden", overlijden, errors)
    _land(land, "data.landVanOverlijden", errors)
    inschrijving = data.get("gemeenteVanInschrijving")
    _gemeentecode(inschrijving, "data.gemeenteVanInschrijving", overlijden, errors)


def _zaak(data: Mapping[str, Any], clock: _Clock, errors: Errors) -> None:
    zaak_url_ok = _url(data.get("zaakUrl"), "data.zaakUrl", errors)
    _url(data.get("resourceUrl"), "data.resourceUrl", errors)
    _url(data.get("zaaktype"), "data.zaaktype", errors)
    uuid = data.get("zaakUuid")
    if isinstance(uuid, str):
        if not values.is_uuid(uuid):
            errors.append(_error("data.zaakUuid", "uuid_format"))
        elif zaak_url_ok and values.last_path_segment(data["zaakUrl"]) != uuid:
            errors.append(_error("data.zaakUuid", "zaak_uuid_mismatch"))
    _nine_digits(data.get("bronorganisatie"), "data.bronorganisatie", "rsin", errors)
    aangemaakt = data.get("aanmaakdatum")
    if (
        isinstance(aangemaakt, datetime)
        and aangemaakt.tzinfo is not None
        and aangemaakt > clock.latest
    ):
        errors.append(_error("data.aanmaakdatum", "date_in_future"))


_DATA_CHECKS: Final[Mapping[str, Callable[[Mapping[str, Any], _Clock, Errors], None]]] = {
    VERHUISD: _verhuisd,
    OVERLEDEN: _overleden,
    ZAAK_GEMUTEERD: _zaak,
}


def _exact_binding(event: CloudEvent, read: DataBinding | None) -> DataBinding | None:
    """The current schema's binding when `data` is exactly its Avro-python form, else None.

    `read`: the binding `data` was just read from Avro with, if it was; for the current
    schema, only what the reader leaves open is looked at (same answer, less work)."""
    current = registry().current(event.type)
    if event.dataschema != current.dataschema:
        return None  # an older version: the model describes the current one only
    if read is not None and read.version is current:
        return read if read.is_exact_read(event.data) else None
    binding = data_binding(current)
    return binding if binding.root.is_exact(event.data) else None


def _structure(event_type: str, data: Any, errors: Errors) -> None:
    """Structural errors from the generated pydantic model (Avro's shape, strictly)."""
    if not isinstance(data, dict):
        data = _plain(data)
    try:
        MODELS[event_type].model_validate(data)
    except pydantic.ValidationError as exc:
        for e in exc.errors(include_url=False, include_input=False):
            path = ".".join(["data", *(str(p) for p in e["loc"])])
            errors.append(_error(path, _PYDANTIC_CODES.get(e["type"], "field_type")))


def _plain(value: Any) -> Any:
    # pydantic's strict mode takes dicts only; a read-only Mapping becomes a dict
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- the envelope ---------------------------------------------------------------------------


def _envelope(event: CloudEvent, clock: _Clock, errors: Errors) -> None:
    if event.specversion != SPECVERSION:
        errors.append(_error("specversion", "specversion_unsupported"))
    if not isinstance(event.id, str) or not 0 < len(event.id) <= 256:
        errors.append(_error("id", "id_format"))
    if not isinstance(event.source, str) or not values.is_source(event.source):
        errors.append(_error("source", "source_format"))
    if not isinstance(event.type, str) or not values.is_type(event.type):
        errors.append(_error("type", "type_format"))
    elif event.type not in MODELS:
        errors.append(_error("type", "type_unknown"))
    elif not _dataschema_ok(event.type, event.dataschema):
        errors.append(_error("dataschema", "dataschema_mismatch"))
    if not isinstance(event.time, datetime) or event.time.tzinfo is None:
        errors.append(_error("time", "time_format"))
    elif event.time > clock.latest:
        errors.append(_error("time", "time_in_future"))
    errors.extend(
        _error(f"extensions.{name}", "extension_name")
        for name in event.extensions
        if not values.is_extension_name(name)
    )


@lru_cache(maxsize=256)  # bounded: the dataschema comes from outside
def _dataschema_ok(event_type: str, dataschema: Any) -> bool:
    prefix = _DATASCHEMA_PREFIX[event_type]
    if not isinstance(dataschema, str) or not dataschema.startswith(prefix):
        return False
    version = dataschema[len(prefix) :]
    return version.isascii() and version.isdigit() and not version.startswith("0")


def _subject(event: CloudEvent, errors: Errors) -> None:
    subject = event.subject
    if isinstance(subject, str) and values.is_nine_digits(subject):
        errors.append(_error("subject", "subject_bsn"))  # says it all; no second error on it
    elif event.type in PERSON_TYPES:
        if subject is not None:
            errors.append(_error("subject", "subject_not_allowed"))
    elif subject != event.data.get("zaakUuid"):
        errors.append(_error("subject", "subject_mismatch"))


def _routing(event: CloudEvent, derived: Mapping[str, str], errors: Errors) -> None:
    names = ROUTING_ATTRIBUTES[event.type]
    if not any(name in event.extensions for name in names):
        return  # not filled in yet: the bus derives them after validation
    errors.extend(
        _error(f"extensions.{name}", "routing_mismatch")
        for name in names
        if name in event.extensions and event.extensions[name] != derived.get(name)
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `examine` found in an event.

    `errors`: every broken rule (empty: valid). `routing`: the routing attributes `data`
    implies, when `data` could be read. `exact`: the binding of the current schema when `data`
    is exactly its Avro-python form, so writing it needs no further check.
    """

    errors: list[FieldError]
    routing: Mapping[str, str] | None = None
    exact: DataBinding | None = None


def validate(
    event: CloudEvent, *, today: date | None = None, now: datetime | None = None
) -> list[FieldError]:
    """Every broken rule of SPEC §1 in `event`; an empty list when the event is valid.

    `today` (a Dutch calendar day) and `now` fix the clock, for tests and replays; by default
    the wall clock. Given only `today`, any time on that day counts as past.
    """
    return examine(event, today=today, now=now).errors


def examine(
    event: CloudEvent,
    *,
    today: date | None = None,
    now: datetime | None = None,
    read: DataBinding | None = None,
) -> Verdict:
    """`validate`, and what the bus needs next: the routing attributes and the exact binding.

    `read`: the binding of the current schema when `event.data` is what `read_data` just read
    from Avro written with it (a Kafka record's value); the verdict is the same, for less."""
    clock = _Clock(today, now)
    errors: Errors = []
    _envelope(event, clock, errors)
    check = _DATA_CHECKS.get(event.type)
    if check is None:
        return Verdict(errors)  # no schema to check data against; type_* says why
    data: Any = event.data  # typed a Mapping, but it came from outside
    exact = _exact_binding(event, read)
    if exact is None:
        _structure(event.type, data, errors)
    if not isinstance(data, Mapping):
        return Verdict(errors)
    check(data, clock, errors)
    _subject(event, errors)
    derived = routing_attributes(event.type, data)
    _routing(event, derived, errors)
    return Verdict(errors, derived, exact)
