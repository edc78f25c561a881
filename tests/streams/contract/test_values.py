"""The single-value checks: elfproef, postcode, codes, dates, URLs and envelope formats."""

from __future__ import annotations

from datetime import date

import pytest

from streams.contract import values

TODAY = date(2026, 6, 15)


@pytest.mark.parametrize(
    "number",
    [
        "111222333",  # the classic test BSN
        "123456782",
        "999999990",
        "002564440",  # an RSIN: leading zeros kept and counted
        "002220647",
    ],
)
def test_elfproef_accepts_known_good_numbers(number: str) -> None:
    assert values.elfproef(number)


@pytest.mark.parametrize(
    "number",
    [
        "123456789",  # one digit off from 123456782
        "111222334",
        "000000000",  # passes the sum, but is no number
        "12345678",  # eight digits
        "1234567820",  # ten digits
        "2564440",  # an RSIN without its leading zeros
        "12345678a",
        "１２３４５６７８２",  # full-width digits are no ASCII digits
        "",
    ],
)
def test_elfproef_rejects_known_bad_numbers(number: str) -> None:
    assert not values.elfproef(number)


def test_check_digit_completes_the_elfproef() -> None:
    assert values.check_digit("12345678") == 2
    assert values.check_digit("00256444") == 0
    assert values.elfproef(f"11122233{values.check_digit('11122233')}")


def test_check_digit_is_none_when_no_digit_fits() -> None:
    # 5 * 2 = 10: no single digit d makes 10 - d a multiple of 11
    assert values.check_digit("00000005") is None
    with pytest.raises(ValueError):
        values.check_digit("1234567")


@pytest.mark.parametrize("postcode", ["1011AB", "1011 AB", "9999ZZ", "2491 CD"])
def test_postcode_accepts(postcode: str) -> None:
    assert values.is_postcode(postcode)


@pytest.mark.parametrize(
    "postcode", ["0123AB", "1011ab", "1011  AB", "1011A", "101AB", "1011 AB ", " 1011AB", "1011-AB"]
)
def test_postcode_rejects(postcode: str) -> None:
    assert not values.is_postcode(postcode)


@pytest.mark.parametrize(("land", "ok"), [("BE", True), ("DE", True), ("NL", False),
                                          ("be", False), ("BEL", False), ("B", False)])  # fmt: skip
def test_country_code(land: str, ok: bool) -> None:
    assert values.is_country_code(land) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("0363200000123456", True),
        ("0518200000654321", True),
        ("0363010000123456", False),  # object type 01 is a verblijfsobject
        ("036320000012345", False),
        ("03632000001234567", False),
        ("0363200000l23456", False),
    ],
)
def test_nummeraanduiding_id(value: str, ok: bool) -> None:
    assert values.is_nummeraanduiding_id(value) is ok


def test_huisnummer_and_friends() -> None:
    assert values.is_huisnummer(1) and values.is_huisnummer(99999)
    assert not values.is_huisnummer(0) and not values.is_huisnummer(100000)
    assert values.is_huisletter("a") and not values.is_huisletter("AB")
    assert values.is_huisnummertoevoeging("bis") and values.is_huisnummertoevoeging("2")
    assert not values.is_huisnummertoevoeging("toevoeging")
    assert not values.is_huisnummertoevoeging("")


def test_real_past_date() -> None:
    assert values.is_real_past_date(TODAY, TODAY)
    assert values.is_real_past_date(date(1900, 1, 1), TODAY)
    assert not values.is_real_past_date(date(2026, 6, 16), TODAY)
    assert not values.is_real_past_date(date(1799, 12, 31), TODAY)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://openzaak.utrecht.nl/zaken/api/v1/zaken/1", True),
        ("http://localhost:8000/zaken/api/v1/zaken/1", True),
        ("https://example.nl", True),
        ("ftp://example.nl/x", False),
        ("https://", False),
        ("https://exa mple.nl/", False),
        ("https://user:secret@example.nl/", False),
        ("example.nl/zaken", False),
    ],
)
def test_http_url(url: str, ok: bool) -> None:
    assert values.is_http_url(url) is ok


def test_last_path_segment_ignores_a_trailing_slash() -> None:
    assert values.last_path_segment("https://x.nl/zaken/api/v1/zaken/abc/") == "abc"
    assert values.last_path_segment("https://x.nl/zaken/api/v1/zaken/abc?x=1") == "abc"


def test_uuid_is_canonical_lower_case() -> None:
    assert values.is_uuid("2b491044-d5e3-4124-9c6e-433715ba2bdd")
    assert not values.is_uuid("2B491044-D5E3-4124-9C6E-433715BA2BDD")
    assert not values.is_uuid("2b491044d5e341249c6e433715ba2bdd")


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("urn:nld:oin:00000001823288444000:systeem:BRP-component", True),
        ("urn:nld:oin:00000001002564440000:systeem:open_zaak.v1", True),
        ("urn:nld:oin:1823288444:systeem:BRP", False),
        ("urn:nld:oin:00000001823288444000:systeem:", False),
        ("urn:nld:oin:00000001823288444000:systeem:BRP component", False),
        ("https://brp.example/", False),
    ],
)
def test_source(source: str, ok: bool) -> None:
    assert values.is_source(source) is ok


@pytest.mark.parametrize(
    ("event_type", "ok"),
    [
        ("nl.brp.persoon-verhuisd", True),
        ("nl.brp.persoon-verhuisd.v2", True),
        ("nl.overheid.zaken.zaak-gemuteerd", True),
        ("NL.BRP.PersoonVerhuisd", False),
        ("verhuisd", False),
        ("nl..brp", False),
        ("nl.brp.", False),
    ],
)
def test_type(event_type: str, ok: bool) -> None:
    assert values.is_type(event_type) is ok


def test_extension_name() -> None:
    assert values.is_extension_name("gemeentenaar")
    assert values.is_extension_name("a" * 20)
    assert not values.is_extension_name("a" * 21)
    assert not values.is_extension_name("gemeente_naar")
    assert not values.is_extension_name("Gemeente")
    assert not values.is_extension_name("")
