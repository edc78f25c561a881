"""`gemeentebus bench`: throughput and latency figures, each against a baseline of the same run.

`run_bench` runs the `SCENARIOS` (or the ones given) and writes JSON plus a Markdown table.
"""

from streams.bench.core import FULL, QUICK, BenchContext, Figure, Scenario, Size
from streams.bench.runner import DEFAULT_OUTPUT, SCENARIOS, run_bench

__all__ = [
    "DEFAULT_OUTPUT",
    "FULL",
    "QUICK",
    "SCENARIOS",
    "BenchContext",
    "Figure",
    "Scenario",
    "Size",
    "run_bench",
]
