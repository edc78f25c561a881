"""SIGTERM to a command that starts brokers and processes of its own (demo, chaos, bench)
stops what it started on the way out, like Ctrl-C: it left brokers and bus processes
running before (seen with `gemeentebus chaos`)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The command's work is replaced by one that says when it runs and when it cleans up.
_SCRIPT = """
import asyncio, importlib, sys
from pathlib import Path
cli = importlib.import_module("streams.cli.main")

def command(args, settings):
    async def work():
        try:
            print("started", flush=True)
            await asyncio.sleep(60)
        finally:
            Path(sys.argv[1]).write_text("stopped what it started")
    asyncio.run(work())
    return 0

cli.cmd_{name} = command
sys.exit(cli.main(["{name}"]))
"""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("name", ["demo", "chaos"])
# SIGINT ignored: as a command started with `&` by a script inherits it; SIGTERM did nothing then
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_what_the_command_started(name: str, sigint: str, tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    with subprocess.Popen(
        [sys.executable, "-c", _SCRIPT.replace("{name}", name), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if sigint == "ignored" else None,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
    assert marker.read_text() == "stopped what it started"
    assert code == 130  # as after Ctrl-C: interrupted, not a success
