"""The invalid corpus: one event per error code of `streams.contract.rules`, each breaking
exactly that rule and nothing else, made from the realistic events of `EventFactory`.

The demo publishes it, the fault-injection suite poisons with it, and the tests of the rules,
the worker and ingress check that every code is found and dead-lettered with its reason.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from streams.contract.attributes import routing_attributes, subject_for
from streams.contract.envelope import CloudEvent
from streams.demo.generators import EventFactory

__all__ = ["invalid_corpus"]


def _redo(event: CloudEvent, data: dict[str, Any]) -> CloudEvent:
    """The event with other data; subject and routing attributes derived again, as the bus does."""
    return replace(
        event,
        data=data,
        subject=subject_for(event.type, data),
        extensions=routing_attributes(event.type, data),
    )


def _change(event: CloudEvent, **changes: Any) -> CloudEvent:
    return _redo(event, {**event.data, **changes})


def _change_adres(event: CloudEvent, which: str, **changes: Any) -> CloudEvent:
    return _change(event, **{which: {**event.data[which], **changes}})


def _break_elfproef(number: str) -> str:
    # the check digit is unique: any other last digit fails the elfproef
    return f"{number[:8]}{(int(number[8]) + 1) % 10}"


def invalid_corpus(seed: int = 0, *, today: date | None = None) -> list[tuple[str, CloudEvent]]:
    """One event per error code of `streams.contract.rules`, each breaking exactly that rule."""
    f = EventFactory(seed, today=today)
    v = f.verhuisd(soort="INTERGEMEENTELIJK")
    e = f.verhuisd(soort="EMIGRATIE")
    o = f.overleden()
    o = _change(o, gemeenteVanOverlijden="0363", landVanOverlijden=None,
                gemeenteVanInschrijving="0363")  # fmt: skip
    z = f.zaak_gemuteerd()
    bsn, rsin = o.data["bsn"], z.data["bronorganisatie"]
    overlijden: date = o.data["datumOverlijden"]
    zonder_wijze = {k: value for k, value in o.data.items() if k != "wijzeVanAangifte"}
    andere_zaak = z.data["zaakUrl"].rsplit("/", 1)[0] + "/" + f.uuid()
    return [
        ("specversion_unsupported", replace(v, specversion="0.3")),
        ("id_format", replace(v, id="")),
        ("source_format", replace(v, source="urn:nld:oin:1823288444:systeem:BRP")),
        ("type_format", replace(v, type="NL.BRP.PersoonVerhuisd")),
        ("type_unknown", replace(v, type="nl.brp.persoon-geboren")),
        ("dataschema_mismatch", replace(v, dataschema=o.dataschema)),
        ("time_format", replace(v, time=v.time.replace(tzinfo=None))),
        ("time_in_future", replace(v, time=f._end + timedelta(days=2))),
        ("subject_bsn", replace(v, subject=v.data["bsn"])),
        ("subject_mismatch", replace(z, subject=f.uuid())),
        ("subject_not_allowed", replace(v, subject=f.uuid())),
        ("extension_name", v.with_extensions(Gemeente_Code="0363")),
        ("routing_mismatch", v.with_extensions(gemeentenaar=v.data["vorigAdres"]["gemeentecode"])),
        ("field_required", _redo(o, zonder_wijze)),
        ("field_unexpected", _change(o, geboortedatum=date(1950, 1, 1))),
        ("field_type", _change_adres(v, "nieuwAdres", huisnummer="12")),
        ("enum_symbol", _change(o, wijzeVanAangifte="POST")),
        ("bsn_format", _change(o, bsn=bsn[:8])),
        ("bsn_elfproef", _change(o, bsn=_break_elfproef(bsn))),
        ("rsin_format", _change(z, bronorganisatie=rsin[2:])),
        ("rsin_elfproef", _change(z, bronorganisatie=_break_elfproef(rsin))),
        ("postcode_format", _change_adres(v, "nieuwAdres", postcode="0123 AB")),
        ("gemeentecode_unknown", _change_adres(v, "nieuwAdres", gemeentecode="0999")),
        ("land_format", _change_adres(e, "nieuwAdres", land="NL")),
        ("nummeraanduiding_format", _change_adres(v, "nieuwAdres",
                                                  nummeraanduidingIdentificatie="12345")),
        ("huisnummer_range", _change_adres(v, "nieuwAdres", huisnummer=0)),
        ("huisletter_format", _change_adres(v, "nieuwAdres", huisletter="AB")),
        ("huisnummertoevoeging_format", _change_adres(v, "nieuwAdres",
                                                      huisnummertoevoeging="toevoeging")),
        ("adresregels_format", _change_adres(e, "nieuwAdres", adresregels=["a", "b", "c", "d"])),
        ("adres_incomplete", _change_adres(v, "nieuwAdres", straat=None)),
        ("adres_mixed", _change_adres(e, "nieuwAdres", postcode="1011AB")),
        ("soort_inconsistent", _change(v, soort="BINNENGEMEENTELIJK")),
        ("date_in_future", _change(o, datumAangifte=f.today + timedelta(days=1))),
        ("date_implausible", _change(o, datumOverlijden=date(1799, 12, 31))),
        ("overlijdensplaats_exclusive", _change(o, landVanOverlijden="BE")),
        ("aangifte_before_overlijden", _change(o, datumAangifte=overlijden - timedelta(days=1))),
        ("url_format", _change(z, zaaktype="ftp://catalogi.example/zaaktypen/1")),
        ("uuid_format", _change(z, zaakUuid=z.data["zaakUuid"].upper())),
        ("zaak_uuid_mismatch", _change(z, zaakUrl=andere_zaak)),
    ]  # fmt: skip
