"""What `gemeentebus reconcile` shows on a terminal, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from streams.cli.operations import print_reconciliation
from streams.operations.reconcile import Reconciliation, digest

START = datetime(2026, 1, 5, 9, tzinfo=UTC)
END = datetime(2026, 1, 5, 10, tzinfo=UTC)


def shown(result: Reconciliation) -> str:
    console = Console(record=True, width=200, color_system=None)
    print_reconciliation(result, console)
    return console.export_text()


def test_a_loss_is_shown_with_counts_digests_and_the_missing_ids() -> None:
    result = Reconciliation(
        subscription="sub-1",
        start=START,
        end=END,
        published=frozenset({"a", "b", "c"}),
        delivered=frozenset({"a", "b"}),
        dead_lettered=frozenset({"c"}),
        held=frozenset({"a"}),
    )
    text = shown(result)
    title = f"reconciliation of sub-1: {START.isoformat()} – {END.isoformat()}"
    assert title in " ".join(text.split())  # the title wraps to the table's width
    assert digest({"a", "b", "c"})[:16] + "…" in text
    lines = text.splitlines()
    assert any("published, not delivered" in line and " c" in line for line in lines)
    assert any("delivered, not held by the subscriber" in line and " b" in line for line in lines)
    assert "1 of the undelivered were dead-lettered" in text
    assert lines[-1] == "not consistent"


def test_a_consistent_window_says_so() -> None:
    ids = frozenset({"a", "b"})
    result = Reconciliation(
        subscription="sub-1",
        start=START,
        end=END,
        published=ids,
        delivered=ids,
        dead_lettered=frozenset(),
    )
    text = shown(result)
    assert "held" not in text.split("missing")[0]  # no held side when the subscriber sent none
    assert "dead-lettered" not in text
    assert text.splitlines()[-1] == "consistent"
