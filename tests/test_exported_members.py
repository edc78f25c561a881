"""The public names of `streams`: what `__all__` lists is exactly what the package offers."""

from __future__ import annotations

from types import ModuleType

import streams


def test_all_lists_every_public_member_and_nothing_else() -> None:
    members = {
        name
        for name, value in vars(streams).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, ModuleType)  # subpackages, set by importing them
    }
    assert sorted(streams.__all__) == sorted(members)
    assert len(set(streams.__all__)) == len(streams.__all__)


def test_every_exported_member_says_it_belongs_to_streams() -> None:
    for name in streams.__all__:
        if name == "__version__":
            assert isinstance(streams.__version__, str) and streams.__version__
            continue
        assert getattr(streams, name).__module__.startswith("streams."), name
