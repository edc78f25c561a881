"""Pure checks on single values: elfproef, postcode, dates, codes and URLs.

No I/O and no knowledge of events; `streams.contract.rules` decides which check applies where.
Every pattern is compiled once, at import (compiling is no side effect anyone can see).
"""

from __future__ import annotations

import re
from datetime import date
from operator import mul
from urllib.parse import urlsplit

__all__ = [
    "EARLIEST_DATE",
    "check_digit",
    "elfproef",
    "is_country_code",
    "is_extension_name",
    "is_gemeentecode_format",
    "is_http_url",
    "is_huisletter",
    "is_huisnummer",
    "is_huisnummertoevoeging",
    "is_nine_digits",
    "is_nummeraanduiding_id",
    "is_postcode",
    "is_real_past_date",
    "is_source",
    "is_type",
    "is_uuid",
    "last_path_segment",
]

# The BRP holds no date of a living or recently deceased person before this one.
EARLIEST_DATE = date(1800, 1, 1)

_ELFPROEF_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2)
_NINE_DIGITS = re.compile(r"[0-9]{9}")
_POSTCODE = re.compile(r"[1-9][0-9]{3} ?[A-Z]{2}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_GEMEENTECODE = re.compile(r"[0-9]{4}")
# BAG id: 4 digits gemeentecode, object type 20 (nummeraanduiding), 10 digits serial number.
_NUMMERAANDUIDING = re.compile(r"[0-9]{4}20[0-9]{10}")
_HUISLETTER = re.compile(r"[A-Za-z]")
_HUISNUMMERTOEVOEGING = re.compile(r"[A-Za-z0-9]{1,4}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# scheme, a host (letters, digits, dots, hyphens, optional port), then no whitespace
_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][^\s]*)?")
_SOURCE = re.compile(r"urn:nld:oin:[0-9]{20}:systeem:[A-Za-z0-9._-]+")
_TYPE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+(\.v[0-9]+)?")
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")


def is_nine_digits(value: str) -> bool:
    """Exactly nine ASCII digits (BSN and RSIN; leading zeros kept)."""
    return _NINE_DIGITS.fullmatch(value) is not None


def elfproef(nine_digits: str) -> bool:
    """The elfproef of BSN and RSIN: sum(d_i * (9..2)) - d_9 is a multiple of 11, not all zeros."""
    if not is_nine_digits(nine_digits) or nine_digits == "000000000":
        return False
    total: int = sum(map(mul, map(int, nine_digits[:8]), _ELFPROEF_WEIGHTS))
    return (total - int(nine_digits[8])) % 11 == 0


def check_digit(eight_digits: str) -> int | None:
    """The ninth digit that makes `eight_digits` pass the elfproef, or None when there is none."""
    if len(eight_digits) != 8 or not eight_digits.isdigit():
        raise ValueError("check_digit needs eight digits")
    total: int = sum(map(mul, map(int, eight_digits), _ELFPROEF_WEIGHTS))
    digit = total % 11
    return digit if digit < 10 else None


def is_postcode(value: str) -> bool:
    """A Dutch postcode: `1234AB` or `1234 AB`, first digit not 0, capital letters."""
    return _POSTCODE.fullmatch(value) is not None


def is_country_code(value: str) -> bool:
    """An ISO 3166-1 alpha-2 shaped code of a country abroad (two capitals, not NL)."""
    return value != "NL" and _COUNTRY.fullmatch(value) is not None


def is_gemeentecode_format(value: str) -> bool:
    """Four digits, leading zeros kept (whether it exists: `gemeenten`)."""
    return _GEMEENTECODE.fullmatch(value) is not None


def is_nummeraanduiding_id(value: str) -> bool:
    """A BAG nummeraanduiding identificatie: 16 digits, object type code 20 at positions 5-6."""
    return _NUMMERAANDUIDING.fullmatch(value) is not None


def is_huisnummer(value: int) -> bool:
    """A BAG huisnummer: 1 to 99999."""
    return 1 <= value <= 99999


def is_huisletter(value: str) -> bool:
    """A BAG huisletter: one letter."""
    return _HUISLETTER.fullmatch(value) is not None


def is_huisnummertoevoeging(value: str) -> bool:
    """A BAG huisnummertoevoeging: one to four letters or digits."""
    return _HUISNUMMERTOEVOEGING.fullmatch(value) is not None


def is_real_past_date(value: date, today: date) -> bool:
    """A plausible date that is not after `today` (a `date` is always a real calendar day)."""
    return EARLIEST_DATE <= value <= today


def is_uuid(value: str) -> bool:
    """A UUID in its canonical lower-case 8-4-4-4-12 form."""
    return _UUID.fullmatch(value) is not None


def is_http_url(value: str) -> bool:
    """An absolute http or https URL with a host name (no user info, no whitespace)."""
    return _HTTP_URL.fullmatch(value) is not None


def last_path_segment(url: str) -> str:
    """The last non-empty path segment of a URL (a ZGW resource URL ends in its UUID)."""
    path = urlsplit(url).path.rstrip("/")
    return path.rsplit("/", 1)[-1]


def is_source(value: str) -> bool:
    """An NL GOV source: `urn:nld:oin:<20 digits>:systeem:<name>`."""
    return _SOURCE.fullmatch(value) is not None


def is_type(value: str) -> bool:
    """A reverse-DNS event type with an optional `.v<N>` suffix."""
    return _TYPE.fullmatch(value) is not None


def is_extension_name(value: str) -> bool:
    """A CloudEvents extension attribute name: a-z and 0-9, one to twenty characters."""
    return _EXTENSION_NAME.fullmatch(value) is not None
