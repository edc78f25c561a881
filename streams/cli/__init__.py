"""The `gemeentebus` command: a thin surface over the library, and all of its presentation.

Parsing arguments, printing tables and progress bars, exit codes: here and nowhere else.
"""

from streams.cli.main import main

__all__ = ["main"]
