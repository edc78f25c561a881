"""Schemathesis hooks for the API fuzz run (loaded through `SCHEMATHESIS_HOOKS`).

A generated subscription may name any sink, and the bus would probe it (the callback
check): every sink is pointed at the loopback receiver named in `GEMEENTEBUS_FUZZ_SINK`, so
the fuzz run never makes the bus connect anywhere else. The sink policy has tests of its own.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    if isinstance(case.body, dict) and "sink" in case.body:
        case.body = {**case.body, "sink": os.environ["GEMEENTEBUS_FUZZ_SINK"]}
