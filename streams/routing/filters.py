"""Subscription filters: the CloudEvents Subscriptions API dialects, compiled once to predicates.

A filter expression is a JSON object with exactly one dialect key (CloudEvents Subscriptions
API §3.2.4.1.1): `exact`, `prefix` and `suffix` map attribute names to string values that must
all match; `all` and `any` hold a non-empty list of expressions; `not` holds one expression.
Attribute names are case-insensitive, values case-sensitive, and a missing attribute never
matches (SPEC §4). `compile_filters` turns the JSON into a `Filter` whose predicate reads a
plain `Mapping[str, str]` of event attributes, so no JSON is interpreted per event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from streams.exceptions import GemeentebusError

__all__ = [
    "CONTEXT_ATTRIBUTES",
    "DIALECTS",
    "Attributes",
    "Filter",
    "InvalidFilter",
    "Pin",
    "Predicate",
    "compile_filter",
    "compile_filters",
]

Attributes = Mapping[str, str]
Predicate = Callable[[Attributes], bool]
Pin = tuple[str, str]

# The CloudEvents context attributes a filter may name, whatever the event type.
CONTEXT_ATTRIBUTES: Final = frozenset(
    {
        "id",
        "source",
        "type",
        "subject",
        "time",
        "dataschema",
        "specversion",
        "datacontenttype",
        "sequence",
    }
)
DIALECTS: Final = ("exact", "prefix", "suffix", "all", "any", "not")

# Attributes every event of a type shares: pinning on them narrows nothing in a per-type index.
_UNSELECTIVE: Final = frozenset({"type", "specversion", "datacontenttype", "dataschema"})


class InvalidFilter(GemeentebusError, ValueError):
    """A filter expression breaks the dialect rules; `path` says where, e.g. `filters[1].any[0]`."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter expression.

    `pins` is a necessary condition for the index: every event the filter matches carries at
    least one of these (attribute, value) pairs. `None` means no such set is known; an empty
    set means the filter can never match.
    """

    predicate: Predicate
    pins: frozenset[Pin] | None
    attributes: frozenset[str]

    def __call__(self, attributes: Attributes) -> bool:
        return self.predicate(attributes)


def _always(_: Attributes) -> bool:
    return True


def _never(_: Attributes) -> bool:
    return False


_ALWAYS: Final = Filter(_always, None, frozenset())
_NEVER: Final = Filter(_never, frozenset(), frozenset())


def compile_filters(
    expressions: Sequence[object],
    *,
    extensions: Collection[str] = (),
    constants: Mapping[str, str] | None = None,
    path: str = "filters",
) -> Filter:
    """Compile a subscription's `filters` list: all must hold; an empty list matches everything.

    `extensions` are the extension attribute names a filter may use besides the context
    attributes; `constants` are attributes whose value is fixed for this subscription (e.g.
    `datacontenttype` by protocol) and are evaluated now, not per event.
    """
    if isinstance(expressions, str | bytes) or not isinstance(expressions, Sequence):
        raise InvalidFilter(path, "must be a list of filter expressions")
    known = CONTEXT_ATTRIBUTES | frozenset(name.lower() for name in extensions)
    compiled = [
        _compile(expression, known, constants or {}, f"{path}[{i}]")
        for i, expression in enumerate(expressions)
    ]
    return _conjunction(compiled)  # an absent or empty filter list implies true (§3.2.1)


def compile_filter(
    expression: object,
    *,
    extensions: Collection[str] = (),
    constants: Mapping[str, str] | None = None,
    path: str = "filter",
) -> Filter:
    """Compile one filter expression (see `compile_filters` for the arguments)."""
    known = CONTEXT_ATTRIBUTES | frozenset(name.lower() for name in extensions)
    return _compile(expression, known, constants or {}, path)


def _compile(
    expression: object, known: frozenset[str], constants: Mapping[str, str], path: str
) -> Filter:
    if not isinstance(expression, Mapping) or len(expression) != 1:
        raise InvalidFilter(path, "a filter expression is an object with exactly one dialect")
    ((dialect, argument),) = expression.items()
    if dialect not in DIALECTS:
        raise InvalidFilter(
            path, f"unknown filter dialect {dialect!r}; expected one of {', '.join(DIALECTS)}"
        )
    path = f"{path}.{dialect}"
    if dialect in ("exact", "prefix", "suffix"):
        return _leaf(dialect, argument, known, constants, path)
    if dialect == "not":
        inner = _compile(argument, known, constants, path)
        if inner is _ALWAYS or inner is _NEVER:
            return _NEVER if inner is _ALWAYS else _ALWAYS
        negated = inner.predicate
        return Filter(lambda attributes: not negated(attributes), None, inner.attributes)
    if isinstance(argument, str | bytes) or not isinstance(argument, Sequence):
        raise InvalidFilter(path, f"`{dialect}` takes a list of filter expressions")
    if not argument:
        # §3.2.4.1.1: "there MUST be at least one filter expression in the array"
        raise InvalidFilter(path, f"`{dialect}` needs at least one filter expression")
    children = [
        _compile(child, known, constants, f"{path}[{i}]") for i, child in enumerate(argument)
    ]
    return _conjunction(children) if dialect == "all" else _disjunction(children)


def _leaf(
    dialect: str, argument: object, known: frozenset[str], constants: Mapping[str, str], path: str
) -> Filter:
    if not isinstance(argument, Mapping) or not argument:
        raise InvalidFilter(path, f"`{dialect}` takes an object of attribute names to strings")
    pairs: dict[str, str] = {}
    for raw_name, value in argument.items():
        if not isinstance(raw_name, str) or not raw_name:
            raise InvalidFilter(path, "an attribute name must be a non-empty string")
        name = raw_name.lower()  # SPEC §4: attribute names are case-insensitive
        where = f"{path}.{name}"
        if name not in known:
            raise InvalidFilter(
                where,
                "unknown attribute: neither a context attribute nor a routing attribute"
                " of the subscribed types",
            )
        if name in pairs:
            raise InvalidFilter(where, "attribute named twice (names are case-insensitive)")
        if not isinstance(value, str) or not value:
            raise InvalidFilter(where, "the value must be a non-empty string")
        pairs[name] = value
    test = _TESTS[dialect]
    dynamic = {}
    for name, value in pairs.items():
        if name in constants:
            if not test(constants[name], value):
                return _NEVER
        else:
            dynamic[name] = value
    if not dynamic:
        return _ALWAYS
    pins = _best_pin(dynamic) if dialect == "exact" else None
    return Filter(_leaf_predicate(dialect, dynamic), pins, frozenset(dynamic))


def _exact(actual: str, wanted: str) -> bool:
    return actual == wanted


def _prefix(actual: str, wanted: str) -> bool:
    return actual.startswith(wanted)


def _suffix(actual: str, wanted: str) -> bool:
    return actual.endswith(wanted)


_TESTS: Final[Mapping[str, Callable[[str, str], bool]]] = {
    "exact": _exact,
    "prefix": _prefix,
    "suffix": _suffix,
}


def _leaf_predicate(dialect: str, pairs: Mapping[str, str]) -> Predicate:
    if dialect == "exact":
        if len(pairs) == 1:
            ((name, wanted),) = pairs.items()
            # a missing attribute reads as None, which equals no string
            return lambda attributes: attributes.get(name) == wanted
        items = tuple(pairs.items())
        return lambda attributes: all(attributes.get(n) == v for n, v in items)
    test = _TESTS[dialect]
    items = tuple(pairs.items())

    def matches(attributes: Attributes) -> bool:
        for name, wanted in items:
            actual = attributes.get(name)
            if actual is None or not test(actual, wanted):
                return False  # SPEC §4: a missing attribute never matches
        return True

    return matches


def _best_pin(pairs: Mapping[str, str]) -> frozenset[Pin]:
    # every pair of an `exact` is required, so any one of them is a necessary condition
    name = min(pairs, key=lambda n: (n in _UNSELECTIVE, n))
    return frozenset({(name, pairs[name])})


def _conjunction(children: Sequence[Filter]) -> Filter:
    if any(child is _NEVER for child in children):
        return _NEVER
    live = [child for child in children if child is not _ALWAYS]
    if not live:
        return _ALWAYS
    if len(live) == 1:
        return live[0]
    pinned = [child.pins for child in live if child.pins is not None]
    # each child's pins are necessary; the smallest set narrows the candidates most
    pins = min(pinned, key=_pin_cost) if pinned else None
    predicates = tuple(child.predicate for child in live)
    return Filter(
        lambda attributes: all(p(attributes) for p in predicates),
        pins,
        frozenset().union(*(child.attributes for child in live)),
    )


def _disjunction(children: Sequence[Filter]) -> Filter:
    if any(child is _ALWAYS for child in children):
        return _ALWAYS
    live = [child for child in children if child is not _NEVER]
    if not live:
        return _NEVER
    if len(live) == 1:
        return live[0]
    # a match satisfies some child, so it carries one of that child's pins: needs all pinned
    pins: frozenset[Pin] | None = None
    if all(child.pins is not None for child in live):
        pins = frozenset().union(*(child.pins or () for child in live))
    predicates = tuple(child.predicate for child in live)
    return Filter(
        lambda attributes: any(p(attributes) for p in predicates),
        pins,
        frozenset().union(*(child.attributes for child in live)),
    )


def _pin_cost(pins: frozenset[Pin]) -> tuple[int, int]:
    return (sum(name in _UNSELECTIVE for name, _ in pins), len(pins))
