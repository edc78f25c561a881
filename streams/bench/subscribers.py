"""Who subscribes in the national simulation, what each should get, and where it arrives.

`Plan.national`: each municipality subscribes to the moves and deaths of its own
inhabitants (filtered on its gemeentecode, as the demo's municipalities are), a few national
registries to every BRP event (or every death), and the zaaksystemen to zaak notifications,
filtered on their municipality's RSIN (`bronorganisatie`) or, for the large municipalities'
specialised systems, on one zaaktype. `Plan.expected` says which of them an event should
reach, read from its data by these rules and not by the bus's filters, so a routing mistake
shows as a delivery missing or one too many. `Hooks` is every subscriber at once: one
aiohttp server on 127.0.0.1, a path per subscription, noting when each event arrived where.
"""

from __future__ import annotations

import json
import secrets
import time
from base64 import b64encode
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from streams.bench.broker import BENCH_OWNER
from streams.contract import gemeenten
from streams.contract.attributes import OVERLEDEN, VERHUISD, ZAAK_GEMUTEERD
from streams.contract.envelope import CloudEvent
from streams.demo.generators import EventFactory, rsin, weight, zaaktypen
from streams.routing.subscriptions import Subscription

__all__ = ["Hooks", "Plan", "events", "subscriptions"]

_GEHEIM: Final = ("geheim", "zeer_geheim")
_MUNICIPAL_FIELDS: Final = ("bsn", "soort", "nieuwAdres", "datumAanvangAdreshouding",
                            "datumOverlijden", "gemeenteVanInschrijving")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    """The subscriptions of the simulation, and which of them an event matches.

    `expected` is judged from the event's data, apart from the bus's filters, so a routing
    mistake shows as a delivery missing or one too many.
    """

    bodies: tuple[dict[str, Any], ...]
    by_code: dict[str, str]  # gemeentecode -> the municipality's subscription
    by_rsin: dict[str, str]  # bronorganisatie -> its zaaksysteem
    by_zaaktype: dict[str, str]  # zaaktype URL -> its specialised zaaksysteem
    registries: dict[str, tuple[str, ...]]  # event type -> the registries that take all of it

    @classmethod
    def national(cls, municipalities: int, zaaksystemen: int, registries: int) -> Plan:
        """The first `municipalities` by share of events (large ones first), `registries`
        national subscriptions, `zaaksystemen` zaak subscriptions."""
        codes = sorted(gemeenten.current_codes(), key=lambda c: (-weight(c), c))
        bodies: list[dict[str, Any]] = []
        by_code = {code: f"gemeente-{code}" for code in codes[:municipalities]}
        for code, sid in by_code.items():
            bodies.append({"id": sid, "types": [VERHUISD, OVERLEDEN], "fields": list(
                _MUNICIPAL_FIELDS), "filters": [{"any": [{"exact": {"gemeentevan": code}},
                {"exact": {"gemeentenaar": code}}, {"exact": {"gemeente": code}}]}]})  # fmt: skip
        taking: dict[str, list[str]] = {VERHUISD: [], OVERLEDEN: []}
        for i in range(registries):
            # two of three take every BRP event (the BRP's own afnemers), one every death
            types = [OVERLEDEN] if i % 3 == 2 else [VERHUISD, OVERLEDEN]
            sid = f"landelijk-{i:02d}"
            bodies.append({"id": sid, "types": types})
            for t in types:
                taking[t].append(sid)
        # zaaksystemen: one per municipality (its RSIN), the large ones also one per zaaktype
        large = [c for c in codes if weight(c) > 1]
        candidates = [("rsin", c, 0) for c in large]
        candidates += [("zaaktype", c, n) for c in large for n in range(len(zaaktypen(c)))]
        candidates += [("rsin", c, 0) for c in codes if weight(c) == 1]
        by_rsin: dict[str, str] = {}
        by_zaaktype: dict[str, str] = {}
        for kind, code, n in candidates[:zaaksystemen]:
            if kind == "rsin":
                sid = f"zaken-{code}"
                by_rsin[rsin(code)] = sid
                wanted: dict[str, Any] = {
                    "all": [
                        {"exact": {"bronorganisatie": rsin(code)}},
                        {"not": {"any": [{"exact": {"vertrouwelijkheid": v}} for v in _GEHEIM]}},
                    ]
                }
            else:  # fmt: skip
                sid = f"zaken-{code}-zaaktype-{n}"
                by_zaaktype[zaaktypen(code)[n]] = sid
                wanted = {"exact": {"zaaktype": zaaktypen(code)[n]}}
            bodies.append({"id": sid, "types": [ZAAK_GEMUTEERD], "filters": [wanted]})
        return cls(
            bodies=tuple(bodies),
            by_code=by_code,
            by_rsin=by_rsin,
            by_zaaktype=by_zaaktype,
            registries={t: tuple(s) for t, s in taking.items()},
        )

    def expected(self, event: CloudEvent) -> frozenset[str]:
        """The ids of the subscriptions `event` should reach, read from its data."""
        data, found = event.data, set(self.registries.get(event.type, ()))
        if event.type == VERHUISD:
            for adres in (data["vorigAdres"], data["nieuwAdres"]):
                if (code := adres.get("gemeentecode")) in self.by_code:
                    found.add(self.by_code[code])
        elif event.type == OVERLEDEN:
            if (code := data.get("gemeenteVanInschrijving")) in self.by_code:
                found.add(self.by_code[code])
        elif event.type == ZAAK_GEMUTEERD:
            if data["vertrouwelijkheidaanduiding"] not in _GEHEIM and (
                sid := self.by_rsin.get(data["bronorganisatie"])
            ):
                found.add(sid)
            if sid := self.by_zaaktype.get(data["zaaktype"]):
                found.add(sid)
        return frozenset(found)


class Hooks:
    """One aiohttp server on 127.0.0.1; `POST /hooks/<subscription>` notes the first arrival
    of each event there, and counts the ones that came again (at least once)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.duplicates = 0
        self.bytes = 0
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{subscription}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}/hooks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        where = (request.match_info["subscription"], json.loads(body)["id"])
        if where in self.at:
            self.duplicates += 1
        else:
            self.at[where] = now
            self.bytes += len(body)
        return web.Response(status=204)


def events(factory: EventFactory, n: int, mix: tuple[float, float, float]) -> list[CloudEvent]:
    """`n` events, moves : deaths : zaak notifications in the proportions of `mix`."""
    factory.population = max(factory.population, 200)
    makers = (factory.verhuisd, factory.overleden, factory.zaak_gemuteerd)
    return [factory.rng.choices(makers, mix)[0]() for _ in range(n)]


def subscriptions(plan: Plan, base: str) -> list[Subscription]:
    secret = "whsec_" + b64encode(secrets.token_bytes(24)).decode()
    return [
        Subscription.model_validate({**body, "sink": f"{base}/{body['id']}", "protocol": "HTTP",
                                     "owner": BENCH_OWNER, "purpose": "bench: national simulation",
                                     "signingSecret": secret})
        for body in plan.bodies
    ]  # fmt: skip
