"""The gemeenten (municipalities) of the Netherlands and the dates they existed.

Reference data in `streams/contract/data/` (provenance in its `SOURCE.md`): the current list
with the date each code took effect, and the codes retired since 2019. Code 1999 is the RNI
(Registratie Niet-ingezetenen), valid on every date. Read once, on first use.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path

__all__ = [
    "RNI",
    "Gemeente",
    "current_codes",
    "exists_on",
    "gemeente",
    "naam",
]

RNI = "1999"
_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, slots=True)
class Gemeente:
    """One gemeentecode and the dates it was valid: from `geldig_vanaf` (None: long before
    our records) until the day before `opgeheven_per` (None: still exists)."""

    code: str
    naam: str
    geldig_vanaf: date | None = None
    opgeheven_per: date | None = None
    opgegaan_in: tuple[str, ...] = ()

    def exists_on(self, day: date) -> bool:
        """Whether this code was a valid gemeentecode on `day`."""
        if self.geldig_vanaf is not None and day < self.geldig_vanaf:
            return False
        return self.opgeheven_per is None or day < self.opgeheven_per


def _date_or_none(text: str) -> date | None:
    return date.fromisoformat(text) if text else None


def _rows(name: str) -> list[dict[str, str]]:
    with (_DATA / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@cache
def _register() -> dict[str, Gemeente]:
    register = {RNI: Gemeente(code=RNI, naam="Registratie Niet-ingezetenen")}
    for row in _rows("gemeenten.csv"):
        code = row["gemeentecode"]
        register[code] = Gemeente(
            code=code, naam=row["gemeentenaam"], geldig_vanaf=_date_or_none(row["geldig_vanaf"])
        )
    for row in _rows("gemeenten-opgeheven.csv"):
        code = row["gemeentecode"]
        if code in register:  # a code is never reused; if the data ever says so, fail loudly
            raise ValueError(f"gemeentecode {code} is both current and retired")
        register[code] = Gemeente(
            code=code,
            naam=row["gemeentenaam"],
            opgeheven_per=date.fromisoformat(row["opgeheven_per"]),
            opgegaan_in=tuple(row["opgegaan_in"].split(";")),
        )
    return register


def gemeente(code: str) -> Gemeente | None:
    """The gemeente with this code (current, retired since 2019, or the RNI), if known."""
    return _register().get(code)


def exists_on(code: str, day: date) -> bool:
    """Whether `code` was a valid gemeentecode on `day` (the RNI, 1999, always is)."""
    found = _register().get(code)
    return found is not None and found.exists_on(day)


def naam(code: str) -> str:
    """The name of the gemeente with this code; KeyError when the code is unknown."""
    return _register()[code].naam


@cache
def current_codes() -> tuple[str, ...]:
    """Every gemeentecode in use today, sorted, without the RNI (for generators and tests)."""
    return tuple(
        sorted(code for code, g in _register().items() if g.opgeheven_per is None and code != RNI)
    )
