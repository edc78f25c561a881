"""Which gemeentecodes existed on which day: current list, retired codes, the RNI."""

from __future__ import annotations

from datetime import date

import pytest

from streams.contract import gemeenten


@pytest.mark.parametrize(
    ("code", "day", "exists"),
    [
        ("0457", date(2022, 3, 23), True),  # Weesp, the day before it joined Amsterdam
        ("0457", date(2022, 3, 24), False),
        ("0363", date(2022, 3, 23), True),
        ("0363", date(2022, 3, 24), True),
        ("0398", date(2021, 12, 31), True),  # Heerhugowaard ...
        ("0398", date(2022, 1, 1), False),
        ("1980", date(2021, 12, 31), False),  # ... became Dijk en Waard
        ("1980", date(2022, 1, 1), True),
        ("0788", date(2020, 12, 31), True),  # Haaren, split over four gemeenten
        ("0788", date(2021, 1, 1), False),
        ("1999", date(1900, 1, 1), True),  # the RNI is valid on every day
        ("1999", date(2100, 1, 1), True),
        ("0999", date(2024, 1, 1), False),
        ("363", date(2024, 1, 1), False),
        ("", date(2024, 1, 1), False),
    ],
)
def test_exists_on(code: str, day: date, exists: bool) -> None:
    assert gemeenten.exists_on(code, day) is exists


def test_a_current_code_without_start_date_existed_long_ago() -> None:
    assert gemeenten.exists_on("0518", date(1850, 1, 1))


def test_naam() -> None:
    assert gemeenten.naam("0363") == "Amsterdam"
    assert gemeenten.naam("0518") == "'s-Gravenhage"
    assert gemeenten.naam("0457") == "Weesp"
    with pytest.raises(KeyError):
        gemeenten.naam("0999")


def test_retired_codes_know_where_they_went() -> None:
    weesp = gemeenten.gemeente("0457")
    assert weesp is not None and weesp.opgegaan_in == ("0363",)
    haaren = gemeenten.gemeente("0788")
    assert haaren is not None and len(haaren.opgegaan_in) == 4


def test_current_codes() -> None:
    codes = gemeenten.current_codes()
    assert len(codes) == 342  # the indeling of 2026-01-01
    assert {"0363", "0344", "0599", "0518"} <= set(codes)
    assert "0457" not in codes and gemeenten.RNI not in codes
    assert all(len(c) == 4 and c.isdigit() for c in codes)
    assert list(codes) == sorted(codes)
