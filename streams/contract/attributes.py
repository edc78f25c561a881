"""What the bus derives from `data`: routing attributes, partition key, subject, BSN pseudonym.

SPEC §1: routing attributes are extension attributes the bus fills in from `data`; person
events are keyed by a keyed hash of the BSN, so no BSN reaches a Kafka key, header or log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from streams.exceptions import FieldError, UnknownSchema

__all__ = [
    "OVERLEDEN",
    "PERSON_TYPES",
    "ROUTING_ATTRIBUTES",
    "VERHUISD",
    "ZAAK_GEMUTEERD",
    "PseudonymKey",
    "partition_key",
    "pseudonym",
    "routing_attributes",
    "subject_for",
]

VERHUISD: Final = "nl.brp.persoon-verhuisd"
OVERLEDEN: Final = "nl.brp.persoon-overleden"
ZAAK_GEMUTEERD: Final = "nl.overheid.zaken.zaak-gemuteerd"
PERSON_TYPES: Final = frozenset({VERHUISD, OVERLEDEN})

# The routing attributes each type carries (a subscriber filters on these names).
ROUTING_ATTRIBUTES: Final[Mapping[str, tuple[str, ...]]] = {
    VERHUISD: ("gemeentevan", "gemeentenaar"),
    OVERLEDEN: ("gemeente",),
    ZAAK_GEMUTEERD: ("bronorganisatie", "zaaktype", "vertrouwelijkheid"),
}


def _unknown() -> UnknownSchema:
    return UnknownSchema([FieldError("type", "type_unknown", "the bus knows no such event type")])


def pseudonym(bsn: str, key: bytes) -> str:
    """The pseudonym of a BSN: HMAC-SHA-256 under the configured secret, as lower-case hex."""
    if not key:
        raise ValueError("the pseudonym key is empty")
    return hmac.new(key, bsn.encode("ascii"), hashlib.sha256).hexdigest()


class PseudonymKey:
    """The pseudonym secret with its HMAC state keyed once: `pseudonym` copies that state,
    which is cheaper than keying a new HMAC for every BSN. Same result as `pseudonym`."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key is empty")
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "PseudonymKey(...)"  # never the secret

    def pseudonym(self, bsn: str) -> str:
        """The pseudonym of a BSN under this key, as lower-case hex."""
        mac = self._keyed.copy()
        mac.update(bsn.encode("ascii"))
        return mac.hexdigest()


def _dutch_gemeentecode(adres: Any) -> str | None:
    # an address abroad has a land and routes on no gemeente
    if not isinstance(adres, Mapping) or adres.get("land") is not None:
        return None
    code = adres.get("gemeentecode")
    return code if isinstance(code, str) else None


def routing_attributes(event_type: str, data: Mapping[str, Any]) -> dict[str, str]:
    """The routing extension attributes of an event of `event_type` with this `data`."""
    if event_type == VERHUISD:
        attributes = {}
        if (van := _dutch_gemeentecode(data.get("vorigAdres"))) is not None:
            attributes["gemeentevan"] = van
        if (naar := _dutch_gemeentecode(data.get("nieuwAdres"))) is not None:
            attributes["gemeentenaar"] = naar
        return attributes
    if event_type == OVERLEDEN:
        gemeente = data.get("gemeenteVanInschrijving")
        return {"gemeente": gemeente} if isinstance(gemeente, str) else {}
    if event_type == ZAAK_GEMUTEERD:
        pairs = (
            ("bronorganisatie", data.get("bronorganisatie")),
            ("zaaktype", data.get("zaaktype")),
            ("vertrouwelijkheid", data.get("vertrouwelijkheidaanduiding")),
        )
        return {name: value for name, value in pairs if isinstance(value, str)}
    raise _unknown()


def partition_key(event_type: str, data: Mapping[str, Any], key: bytes | PseudonymKey) -> bytes:
    """The Kafka key: the BSN's pseudonym for person events, the zaak UUID for zaak events."""
    if event_type in PERSON_TYPES:
        bsn = str(data["bsn"])
        found = key.pseudonym(bsn) if isinstance(key, PseudonymKey) else pseudonym(bsn, key)
        return found.encode("ascii")
    if event_type == ZAAK_GEMUTEERD:
        return str(data["zaakUuid"]).encode("ascii")
    raise _unknown()


def subject_for(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The CloudEvents `subject`: the zaak UUID for zaak events, none for person events."""
    if event_type in PERSON_TYPES:
        return None  # a person's only identifier is the BSN, which never goes in `subject`
    if event_type == ZAAK_GEMUTEERD:
        return str(data["zaakUuid"])
    raise _unknown()
