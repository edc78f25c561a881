"""Filters against the CloudEvents Subscriptions API §3.2.4 dialects and SPEC §4."""

from __future__ import annotations

from typing import Any

import pytest

from streams.routing.filters import InvalidFilter, compile_filter, compile_filters

ROUTING = ("gemeentevan", "gemeentenaar", "gemeente")

MOVE = {
    "id": "8f1c0d2e",
    "source": "urn:nld:oin:00000001823288444000:systeem:BRP-component",
    "type": "nl.brp.persoon-verhuisd",
    "specversion": "1.0",
    "time": "2024-05-01T10:00:00.000Z",
    "dataschema": "urn:gemeentebus:schema:nl.brp.persoon-verhuisd:1",
    "gemeentevan": "0363",
    "gemeentenaar": "0344",
}


def matches(expression: Any, attributes: dict[str, str] = MOVE) -> bool:
    return compile_filter(expression, extensions=ROUTING)(attributes)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # exact: every named attribute equals its value
        ({"exact": {"gemeentevan": "0363"}}, True),
        ({"exact": {"gemeentevan": "0363", "gemeentenaar": "0344"}}, True),
        ({"exact": {"gemeentevan": "0363", "gemeentenaar": "0363"}}, False),
        ({"exact": {"gemeentevan": "036"}}, False),
        # prefix and suffix, all pairs must hold
        ({"prefix": {"type": "nl.brp."}}, True),
        ({"prefix": {"type": "nl.brp.", "source": "urn:nld:oin:"}}, True),
        ({"prefix": {"type": "nl.overheid."}}, False),
        ({"suffix": {"type": "-verhuisd"}}, True),
        ({"suffix": {"type": "-verhuisd", "gemeentenaar": "44"}}, True),
        ({"suffix": {"type": "-overleden"}}, False),
        ({"prefix": {"time": "2024-05"}}, True),
        # all / any / not
        ({"all": [{"exact": {"gemeentevan": "0363"}}, {"prefix": {"type": "nl.brp"}}]}, True),
        ({"all": [{"exact": {"gemeentevan": "0363"}}, {"prefix": {"type": "nl.zgw"}}]}, False),
        ({"any": [{"exact": {"gemeentevan": "0599"}}, {"exact": {"gemeentenaar": "0344"}}]}, True),
        ({"any": [{"exact": {"gemeentevan": "0599"}}, {"exact": {"gemeentenaar": "0599"}}]}, False),
        ({"not": {"exact": {"gemeentevan": "0363"}}}, False),
        ({"not": {"exact": {"gemeentevan": "0599"}}}, True),
        # nesting: all inside any inside not
        (
            {
                "not": {
                    "any": [
                        {"all": [{"exact": {"gemeentevan": "0363"}}, {"suffix": {"type": "d"}}]},
                        {"exact": {"gemeentenaar": "0599"}},
                    ]
                }
            },
            False,
        ),
        (
            {
                "not": {
                    "any": [
                        {"all": [{"exact": {"gemeentevan": "0363"}}, {"suffix": {"type": "x"}}]},
                        {"exact": {"gemeentenaar": "0599"}},
                    ]
                }
            },
            True,
        ),
        # attribute names are case-insensitive, values case-sensitive (SPEC §4)
        ({"exact": {"GemeenteVan": "0363"}}, True),
        ({"prefix": {"TYPE": "nl.brp."}}, True),
        ({"prefix": {"type": "NL.BRP."}}, False),
        ({"suffix": {"type": "-VERHUISD"}}, False),
    ],
)
def test_dialects(expression: Any, expected: bool) -> None:
    assert matches(expression) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # a missing attribute never matches, in every leaf dialect
        ({"exact": {"gemeente": "0363"}}, False),
        ({"prefix": {"subject": "a"}}, False),
        ({"suffix": {"sequence": "1"}}, False),
        ({"exact": {"gemeentevan": "0363", "gemeente": "0363"}}, False),
        # `not` inverts the nested result (§3.2.4.1.1), so it holds when the attribute is missing
        ({"not": {"exact": {"gemeente": "0363"}}}, True),
        ({"not": {"prefix": {"subject": "a"}}}, True),
    ],
)
def test_missing_attribute(expression: Any, expected: bool) -> None:
    assert matches(expression) is expected


def test_filters_list_is_anded_and_empty_matches_everything() -> None:
    both = [{"exact": {"gemeentevan": "0363"}}, {"exact": {"gemeentenaar": "0344"}}]
    assert compile_filters(both, extensions=ROUTING)(MOVE)
    assert not compile_filters([*both, {"exact": {"id": "x"}}], extensions=ROUTING)(MOVE)
    # §3.2.1: "Absence of a filter or empty array implies a value of true"
    assert compile_filters([], extensions=ROUTING)(MOVE)
    assert compile_filters([])({})


def test_constants_are_evaluated_when_compiling() -> None:
    json_only = [{"exact": {"datacontenttype": "application/json"}}]
    assert compile_filters(json_only, constants={"datacontenttype": "application/json"})({})
    assert not compile_filters(json_only, constants={"datacontenttype": "application/avro"})({})
    negated = [{"not": {"prefix": {"datacontenttype": "application/"}}}]
    assert not compile_filters(negated, constants={"datacontenttype": "application/json"})({})


def test_pins_name_what_every_match_carries() -> None:
    amsterdam = [{"any": [{"exact": {"gemeentevan": "0363"}}, {"exact": {"gemeentenaar": "0363"}}]}]
    assert compile_filters(amsterdam, extensions=ROUTING).pins == {
        ("gemeentevan", "0363"),
        ("gemeentenaar", "0363"),
    }
    narrowed = [{"prefix": {"type": "nl."}}, {"exact": {"gemeente": "0344"}}]
    assert compile_filters(narrowed, extensions=ROUTING).pins == {("gemeente", "0344")}
    unpinnable = [{"any": [{"exact": {"gemeente": "0344"}}, {"prefix": {"source": "urn:"}}]}]
    assert compile_filters(unpinnable, extensions=ROUTING).pins is None
    assert (
        compile_filters([{"not": {"exact": {"gemeente": "0344"}}}], extensions=ROUTING).pins is None
    )


@pytest.mark.parametrize(
    ("filters", "path", "reason"),
    [
        ([{"regex": {"type": ".*"}}], "filters[0]", "unknown filter dialect 'regex'"),
        ([{"sql": "type = 'x'"}], "filters[0]", "unknown filter dialect 'sql'"),
        ([{}], "filters[0]", "exactly one dialect"),
        ([{"exact": {"type": "x"}, "prefix": {"type": "x"}}], "filters[0]", "exactly one"),
        (["exact"], "filters[0]", "exactly one dialect"),
        (
            [{"exact": {"type": "x"}}, {"any": [{"exact": {"gemeentecode": "0363"}}]}],
            "filters[1].any[0].exact.gemeentecode",
            "unknown attribute",
        ),
        (
            [{"not": {"all": [{"exact": {"type": "x"}}, {"prefix": {"bsn": "1"}}]}}],
            "filters[0].not.all[1].prefix.bsn",
            "unknown attribute",
        ),
        ([{"exact": {"gemeente": 363}}], "filters[0].exact.gemeente", "non-empty string"),
        ([{"exact": {"gemeente": ""}}], "filters[0].exact.gemeente", "non-empty string"),
        ([{"suffix": {"gemeente": None}}], "filters[0].suffix.gemeente", "non-empty string"),
        ([{"exact": {"": "0363"}}], "filters[0].exact", "non-empty string"),
        ([{"exact": {"Type": "a", "type": "b"}}], "filters[0].exact.type", "named twice"),
        ([{"exact": {}}], "filters[0].exact", "attribute names to strings"),
        ([{"exact": ["type"]}], "filters[0].exact", "attribute names to strings"),
        # §3.2.4.1.1: "there MUST be at least one filter expression in the array"
        ([{"all": []}], "filters[0].all", "at least one"),
        ([{"any": []}], "filters[0].any", "at least one"),
        ([{"any": {"exact": {"type": "x"}}}], "filters[0].any", "list of filter expressions"),
        ([{"not": [{"exact": {"type": "x"}}]}], "filters[0].not", "exactly one dialect"),
        ({"exact": {"type": "x"}}, "filters", "must be a list"),
    ],
)
def test_invalid_filters_are_rejected_with_their_path(filters: Any, path: str, reason: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        compile_filters(filters, extensions=ROUTING)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}: ")
    assert isinstance(caught.value, ValueError)


def test_routing_attribute_of_another_type_is_unknown() -> None:
    zaak_only = ("bronorganisatie", "zaaktype", "vertrouwelijkheid")
    with pytest.raises(InvalidFilter, match=r"filters\[0\]\.exact\.gemeente: unknown attribute"):
        compile_filters([{"exact": {"gemeente": "0363"}}], extensions=zaak_only)
