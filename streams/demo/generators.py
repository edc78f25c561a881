"""Realistic, seeded events for tests, demos and benchmarks.

`EventFactory(seed)` keeps a small population: a person's next move starts at the address
where the last one ended, the dead do not move, and a zaak goes through its statuses in
order. BSNs and RSINs pass the elfproef but are drawn at random; gemeentecodes, streets and
postcodes are real-looking, weighted towards the large gemeenten. Events that break a rule
are made from these by `streams.demo.invalid`.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from streams.contract import gemeenten, values
from streams.contract.attributes import (
    OVERLEDEN,
    VERHUISD,
    ZAAK_GEMUTEERD,
    routing_attributes,
    subject_for,
)
from streams.contract.envelope import CloudEvent
from streams.contract.rules import TIMEZONE, dutch_today

__all__ = ["BRP_SOURCE", "EventFactory", "rsin", "weight", "zaaktypen"]

# RvIG's OIN: the BRP's events come from one system.
BRP_SOURCE: Final = "urn:nld:oin:00000001823288444000:systeem:BRP-component"

# Large gemeenten get a bigger share, with real streets, woonplaats and postcode ranges (PC4).
_GROOT: Final[dict[str, tuple[int, str, tuple[int, int], tuple[str, ...]]]] = {
    "0363": (40, "Amsterdam", (1011, 1109), ("Damrak", "Kinkerstraat", "Javastraat",
             "Van Woustraat", "Bos en Lommerweg", "Osdorpplein", "Ferdinand Bolstraat")),
    "0599": (30, "Rotterdam", (3011, 3089), ("Coolsingel", "Nieuwe Binnenweg", "Beijerlandselaan",
             "Zwart Janstraat", "Groene Hilledijk", "Schiedamseweg")),
    "0518": (25, "'s-Gravenhage", (2491, 2599), ("Laan van Meerdervoort", "Weimarstraat",
             "Fahrenheitstraat", "Hoefkade", "Thorbeckelaan")),
    "0344": (18, "Utrecht", (3511, 3585), ("Amsterdamsestraatweg", "Biltstraat", "Kanaalstraat",
             "Oudegracht", "Vleutenseweg")),
    "0772": (12, "Eindhoven", (5611, 5658), ("Kruisstraat", "Woenselse Markt", "Boschdijk")),
    "0014": (12, "Groningen", (9711, 9747), ("Oosterstraat", "Paterswoldseweg", "Korreweg")),
    "0855": (11, "Tilburg", (5011, 5049), ("Piusstraat", "Ringbaan-West", "Korvelseweg")),
    "0034": (11, "Almere", (1311, 1363), ("Grote Markt", "Randstad", "Sumatraweg")),
}  # fmt: skip
_STRATEN: Final = ("Kerkstraat", "Dorpsstraat", "Molenweg", "Stationsweg", "Schoolstraat",
                   "Julianastraat", "Wilhelminastraat", "Beatrixlaan", "Nieuwstraat", "Markt",
                   "Kastanjelaan", "Eikenlaan", "Prins Bernhardlaan", "Zuiderweg")  # fmt: skip
# Letters Dutch postcodes use (no F, I, O, Q, U, Y) and pairs PostNL leaves out.
_PC_LETTERS: Final = "ABCDEGHJKLMNPRSTVWXZ"
_PC_SKIP: Final = frozenset({"SA", "SD", "SS"})
_BUITENLAND: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "BE": (("Rue de la Loi 16", "1000 Bruxelles"), ("Meir 50", "2000 Antwerpen")),
    "DE": (("Königsallee 12", "40212 Düsseldorf"), ("Hohe Straße 41", "50667 Köln")),
    "ES": (("Calle Mayor 8, 2º", "03001 Alicante"),),
    "GB": (("10 Baker Street", "London", "NW1 6XE"),),
    "TR": (("Atatürk Caddesi 21", "35210 İzmir"),),
    "SR": (("Domineestraat 14", "Paramaribo"),),
    "US": (("350 Fifth Avenue", "New York, NY 10118"),),
}
_RESOURCES: Final = {  # ZGW Zaken API resource name -> collection in its URL
    "status": "statussen",
    "rol": "rollen",
    "zaakinformatieobject": "zaakinformatieobjecten",
    "zaakobject": "zaakobjecten",
    "resultaat": "resultaten",
}
_SOORTEN: Final = ("BINNENGEMEENTELIJK", "INTERGEMEENTELIJK", "EMIGRATIE")
_STATUSSEN: Final = ("Ontvangen", "In behandeling", "Afgehandeld")
_VERTROUWELIJK: Final = ("openbaar", "intern", "zaakvertrouwelijk", "vertrouwelijk")
_ZAAKTYPEN: Final = 4  # zaaktypen per gemeente


def _slug(naam: str) -> str:
    ascii_naam = unicodedata.normalize("NFKD", naam).encode("ascii", "ignore").decode()
    return "".join(c if c.isalnum() else "-" for c in ascii_naam.lower()).strip("-")


def weight(gemeentecode: str) -> int:
    """How many times more often than a small gemeente this one is drawn (its share of events)."""
    return _GROOT[gemeentecode][0] if gemeentecode in _GROOT else 1


def rsin(gemeentecode: str) -> str:
    """The gemeente's RSIN, the `bronorganisatie` of its zaken: fictitious, derived from the
    gemeentecode, passing the elfproef."""
    body = f"00{int(gemeentecode) * 37 % 1000000:06d}"
    while (digit := values.check_digit(body)) is None:
        body = f"{body[:2]}{(int(body[2:]) + 1) % 1000000:06d}"
    return f"{body}{digit}"


def zaaktypen(gemeentecode: str) -> tuple[str, ...]:
    """The URLs of the gemeente's zaaktypen: a few per catalogus, the same on every run."""
    base = _zaken_base(gemeentecode)
    return tuple(
        f"{base}/catalogi/api/v1/zaaktypen/{uuid.uuid5(uuid.NAMESPACE_URL, f'{base}/zaaktype/{n}')}"
        for n in range(_ZAAKTYPEN)
    )


def _zaken_base(gemeentecode: str) -> str:
    return f"https://openzaak.{_slug(_woonplaats(gemeentecode))}.nl"


def _woonplaats(code: str) -> str:
    if code in _GROOT:
        return _GROOT[code][1]
    return gemeenten.naam(code).split(" (")[0]  # "Bergen (NH.)" lives in woonplaats Bergen


@dataclass
class _Persoon:
    bsn: str
    adres: dict[str, Any]
    sinds: date


@dataclass
class _Zaak:
    url: str
    uuid: str
    base: str
    source: str
    bronorganisatie: str
    zaaktype: str
    vertrouwelijkheid: str
    identificatie: str
    stappen: list[tuple[str, str]] = field(default_factory=list)
    status: str | None = None


class EventFactory:
    """Valid events of every type, reproducible from `seed`; dates up to the day before `today`."""

    def __init__(self, seed: int = 0, *, today: date | None = None) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - test data, reproducible by design
        self.today = today if today is not None else dutch_today()
        self._end = datetime.combine(self.today, time(), TIMEZONE).astimezone(UTC)
        self._clock = self._end - timedelta(days=30)
        self._codes = gemeenten.current_codes()
        self._weights = [weight(c) for c in self._codes]
        self._personen: dict[str, _Persoon] = {}
        self._bsns: set[str] = set()
        self._zaken: list[_Zaak] = []
        self._zaak_count = 0
        self.population = 50  # persons alive at once before new ones stop being added

    # -- building blocks ------------------------------------------------------------------

    def uuid(self) -> str:
        """A random (version 4) UUID from this factory's generator."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def elfproef_number(self, prefix: str = "") -> str:
        """Nine digits passing the elfproef, starting with `prefix` (BSN: none, RSIN: "00")."""
        while True:
            body = prefix + "".join(str(self.rng.randrange(10)) for _ in range(8 - len(prefix)))
            digit = values.check_digit(body)
            if digit is not None and body != "00000000":
                return f"{body}{digit}"

    def bsn(self) -> str:
        """A new BSN (unique within this factory)."""
        while (bsn := self.elfproef_number(str(self.rng.randrange(1, 7)))) in self._bsns:
            pass
        self._bsns.add(bsn)
        return bsn

    def gemeentecode(self, on: date, *, not_: str | None = None) -> str:
        """A gemeentecode that existed on `on`, weighted by size."""
        while True:
            code = self.rng.choices(self._codes, self._weights)[0]
            if code != not_ and gemeenten.exists_on(code, on):
                return code

    def adres(self, gemeentecode: str) -> dict[str, Any]:
        """A Dutch address in that gemeente, as fastavro reads an `Adres`."""
        rng = self.rng
        groot = _GROOT.get(gemeentecode)
        pc4 = rng.randint(*groot[2]) if groot else rng.randint(1000, 9999)
        while (letters := "".join(rng.choices(_PC_LETTERS, k=2))) in _PC_SKIP:
            pass
        serial = rng.randrange(10**9, 10**10)
        return {
            "nummeraanduidingIdentificatie": f"{gemeentecode}20{serial}",
            "straat": rng.choice(groot[3] if groot else _STRATEN),
            "huisnummer": rng.choice((rng.randint(1, 60), rng.randint(1, 400))),
            "huisletter": rng.choice("ABC") if rng.random() < 0.1 else None,
            "huisnummertoevoeging": rng.choice(("1", "2", "3", "H", "bis"))
            if rng.random() < 0.12
            else None,
            "postcode": f"{pc4}{letters}",
            "woonplaats": _woonplaats(gemeentecode),
            "gemeentecode": gemeentecode,
            "land": None,
            "adresregels": [],
        }

    def adres_buitenland(self) -> dict[str, Any]:
        """An address abroad: a country code and free address lines."""
        land = self.rng.choice(sorted(_BUITENLAND))
        empty = dict.fromkeys(("nummeraanduidingIdentificatie", "straat", "huisnummer",
                               "huisletter", "huisnummertoevoeging", "postcode", "woonplaats",
                               "gemeentecode"))  # fmt: skip
        return {**empty, "land": land, "adresregels": list(self.rng.choice(_BUITENLAND[land]))}

    def _tick(self) -> datetime:
        # time moves forward, never reaching `today`: every event lies in the past
        step = timedelta(seconds=self.rng.expovariate(1 / 600))
        self._clock = min(self._clock + step, self._clock + (self._end - self._clock) / 2)
        return self._clock.replace(microsecond=self._clock.microsecond // 1000 * 1000)

    def _event(
        self, event_type: str, source: str, data: dict[str, Any], at: datetime
    ) -> CloudEvent:
        return CloudEvent(
            id=self.uuid(),
            source=source,
            type=event_type,
            time=at,
            dataschema=f"urn:gemeentebus:schema:{event_type}:1",
            data=data,
            subject=subject_for(event_type, data),
            extensions=routing_attributes(event_type, data),
        )

    def _persoon(self, abroad: bool | None = None) -> _Persoon:
        """A living person of the population (abroad or not, if asked), or a new one."""
        if self._personen and (len(self._personen) >= self.population or self.rng.random() < 0.7):
            for _ in range(20):
                persoon = self._personen[self.rng.choice(list(self._personen))]
                if abroad is None or bool(persoon.adres["land"]) == abroad:
                    return persoon
        sinds = self._end.date() - timedelta(days=self.rng.randint(60, 20 * 365))
        if abroad is None:
            abroad = self.rng.random() < 0.06
        adres = self.adres_buitenland() if abroad else self.adres(self.gemeentecode(sinds))
        persoon = _Persoon(bsn=self.bsn(), adres=adres, sinds=sinds)
        self._personen[persoon.bsn] = persoon
        return persoon

    # -- events ---------------------------------------------------------------------------

    def verhuisd(self, *, soort: str | None = None, at: datetime | None = None) -> CloudEvent:
        """A `nl.brp.persoon-verhuisd` of a person of the population (or a new one)."""
        at = at or self._tick()
        persoon = self._persoon(None if soort is None else soort == "IMMIGRATIE")
        vorig = persoon.adres
        dag = max(persoon.sinds, at.astimezone(TIMEZONE).date() - timedelta(self.rng.randint(0, 4)))
        if soort is None:
            soort = "IMMIGRATIE" if vorig["land"] else self.rng.choices(_SOORTEN, (55, 38, 7))[0]
        if soort == "BINNENGEMEENTELIJK":
            nieuw = self.adres(vorig["gemeentecode"])
        elif soort == "EMIGRATIE":
            nieuw = self.adres_buitenland()
        else:
            nieuw = self.adres(self.gemeentecode(dag, not_=vorig["gemeentecode"]))
        persoon.adres, persoon.sinds = nieuw, dag
        data = {"bsn": persoon.bsn, "soort": soort, "vorigAdres": vorig, "nieuwAdres": nieuw,
                "datumAanvangAdreshouding": dag}  # fmt: skip
        return self._event(VERHUISD, BRP_SOURCE, data, at)

    def overleden(self, *, at: datetime | None = None) -> CloudEvent:
        """A `nl.brp.persoon-overleden`; the person leaves the population."""
        at = at or self._tick()
        persoon = self._persoon()
        del self._personen[persoon.bsn]
        melding = at.astimezone(TIMEZONE).date()
        overlijden = max(persoon.sinds, melding - timedelta(self.rng.randint(1, 6)))
        aangifte = overlijden + timedelta(self.rng.randint(0, (melding - overlijden).days))
        land = persoon.adres["land"]
        if land:
            gemeente, inschrijving = None, gemeenten.RNI
        else:
            inschrijving = persoon.adres["gemeentecode"]
            local = self.rng.random() < 0.8
            gemeente = inschrijving if local else self.gemeentecode(overlijden)
        data = {
            "bsn": persoon.bsn,
            "datumOverlijden": overlijden,
            "gemeenteVanOverlijden": gemeente,
            "landVanOverlijden": land,
            "gemeenteVanInschrijving": inschrijving,
            "datumAangifte": aangifte,
            "wijzeVanAangifte": self.rng.choice(("DIGITAAL", "BALIE")),
        }
        return self._event(OVERLEDEN, BRP_SOURCE, data, at)

    def _nieuwe_zaak(self, at: datetime) -> _Zaak:
        code = self.gemeentecode(at.date())
        base = _zaken_base(code)
        organisatie = rsin(code)
        zaak_uuid = self.uuid()
        self._zaak_count += 1
        zaaktype = zaaktypen(code)[self.rng.randrange(_ZAAKTYPEN)]
        zaak = _Zaak(
            url=f"{base}/zaken/api/v1/zaken/{zaak_uuid}",
            uuid=zaak_uuid,
            base=base,
            source=f"urn:nld:oin:00000001{organisatie}000:systeem:open-zaak",
            bronorganisatie=organisatie,
            zaaktype=zaaktype,
            vertrouwelijkheid=self.rng.choice(_VERTROUWELIJK),
            identificatie=f"ZAAK-{at.year}-{self._zaak_count:010d}",
        )
        steps = [("zaak", "create"), ("status", "create"), ("rol", "create")]
        steps += [("zaakinformatieobject", "create")] * self.rng.randint(0, 3)
        steps += [("status", "create"), ("zaak", "partial_update"), ("resultaat", "create")]
        steps += [("status", "create")]
        if self.rng.random() < 0.03:
            steps.append(("zaak", "destroy"))
        zaak.stappen = steps[::-1]  # popped from the end
        self._zaken.append(zaak)
        return zaak

    def zaak_gemuteerd(self, *, at: datetime | None = None) -> CloudEvent:
        """A `nl.overheid.zaken.zaak-gemuteerd`: a new zaak or the next step of an open one."""
        at = at or self._tick()
        if not self._zaken or self.rng.random() < 0.25:
            zaak = self._nieuwe_zaak(at)
        else:
            zaak = self.rng.choice(self._zaken)
        resource, actie = zaak.stappen.pop()
        if not zaak.stappen:
            self._zaken.remove(zaak)
        if resource == "zaak":
            resource_url = zaak.url
        else:
            resource_url = f"{zaak.base}/zaken/api/v1/{_RESOURCES[resource]}/{self.uuid()}"
        if resource == "status":
            done = _STATUSSEN.index(zaak.status) + 1 if zaak.status else 0
            zaak.status = _STATUSSEN[min(done, len(_STATUSSEN) - 1)]
        data = {
            "zaakUrl": zaak.url,
            "zaakUuid": zaak.uuid,
            "resource": resource,
            "resourceUrl": resource_url,
            "actie": actie,
            "bronorganisatie": zaak.bronorganisatie,
            "zaaktype": zaak.zaaktype,
            "vertrouwelijkheidaanduiding": zaak.vertrouwelijkheid,
            "aanmaakdatum": at,
            "identificatie": zaak.identificatie,
            "statusOmschrijving": zaak.status,
        }
        return self._event(ZAAK_GEMUTEERD, zaak.source, data, at)

    def mixed(self, n: int) -> list[CloudEvent]:
        """`n` events of every type in time order, between the last event and `today`."""
        self.population = max(self.population, n // 4)
        span = (self._end - timedelta(milliseconds=1) - self._clock).total_seconds()
        offsets = sorted(self.rng.uniform(0, span) for _ in range(n))
        makers = (self.verhuisd, self.overleden, self.zaak_gemuteerd)
        events = []
        for offset in offsets:
            at = self._clock + timedelta(seconds=offset)
            at = at.replace(microsecond=at.microsecond // 1000 * 1000)
            events.append(self.rng.choices(makers, (50, 8, 42))[0](at=at))
        if events:
            self._clock = events[-1].time
        return events
