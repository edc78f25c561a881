"""`gemeentebus --config FILE COMMAND` and `gemeentebus COMMAND --config FILE` (SPEC §7):
the settings a command runs with, read without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streams.cli.main import parse, settings_for
from streams.config import ConfigurationError


def config(tmp_path: Path, name: str, grace_s: float) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"run": {"grace_s": grace_s}}))
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "{file}", "run"],
        ["run", "--config", "{file}"],
        ["run", "--role", "api", "--config", "{file}"],
    ],
    ids=["before", "after", "after-options"],
)
def test_run_reads_the_config_file_before_or_after_the_command(
    tmp_path: Path, argv: list[str]
) -> None:
    file = config(tmp_path, "bus.yaml", 7.5)
    args = parse([part.format(file=file) for part in argv])
    assert args.config == file
    assert settings_for(args).run.grace_s == 7.5


def test_the_one_after_the_command_wins(tmp_path: Path) -> None:
    before, after = config(tmp_path, "before.yaml", 3.0), config(tmp_path, "after.yaml", 9.0)
    args = parse(["--config", str(before), "run", "--config", str(after)])
    assert settings_for(args).run.grace_s == 9.0


@pytest.mark.parametrize(
    "command",
    [
        ["kafka", "status"],
        ["topics", "create"],
        ["subscriptions", "list"],
        ["subscriptions", "remove", "sub-1"],
        ["publish", "events.json"],
        ["replay", "sub-1", "--from", "2026-01-05"],
        ["reconcile", "sub-1", "--from", "2026-01-05", "--to", "2026-01-06"],
        ["dlq", "list", "sub-1"],
        ["dlq", "redrive", "sub-1"],
        ["bench", "--quick"],
        ["chaos", "--quick"],
    ],
    ids=" ".join,
)
def test_every_command_that_reads_settings_takes_config_after_it(
    tmp_path: Path, command: list[str]
) -> None:
    file = config(tmp_path, "bus.yaml", 4.0)
    args = parse([*command, "--config", str(file)])
    assert settings_for(args).run.grace_s == 4.0
    assert parse(command).config is None  # without one: the default file, when present


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    args = parse(["run", "--config", str(tmp_path / "absent.yaml")])
    with pytest.raises(ConfigurationError, match="does not exist"):
        settings_for(args)
