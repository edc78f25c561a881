"""The fault-injection suite: `gemeentebus chaos [--quick] [--only NAME,...] [--output FILE]`."""

from streams.chaos.runner import DEFAULT_OUTPUT, SCENARIOS, run_chaos

__all__ = ["DEFAULT_OUTPUT", "SCENARIOS", "run_chaos"]
