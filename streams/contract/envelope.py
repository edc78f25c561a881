"""The event envelope: one frozen CloudEvent value that no Kafka or HTTP client owns.

Bindings (`streams.contract.codec`) turn it into Kafka records or HTTP bodies and back; validation
(`streams.contract.rules`) checks it; everything between ingress and delivery passes this value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

__all__ = ["SPECVERSION", "CloudEvent"]

SPECVERSION = "1.0"


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudEvent:
    """A CloudEvent 1.0 following the NL GOV profile (SPEC §1).

    `data` is the Avro record as fastavro reads it: `date` fields are `datetime.date`,
    `timestamp-millis` fields are aware UTC `datetime`, `uuid` fields are `str`.
    `extensions` holds extension attributes (routing attributes, `replay`), names lower-case.
    Treat every mapping in it as read-only.
    """

    id: str
    source: str
    type: str
    time: datetime
    dataschema: str
    data: Mapping[str, Any]
    subject: str | None = None
    sequence: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)
    specversion: str = SPECVERSION

    @property
    def key(self) -> tuple[str, str]:
        """The dedupe key everywhere: `source` + `id`."""
        return (self.source, self.id)

    def with_extensions(self, **attributes: str) -> CloudEvent:
        """A copy with these extension attributes added or replaced."""
        return replace(self, extensions={**self.extensions, **attributes})

    def with_data(self, data: Mapping[str, Any]) -> CloudEvent:
        """A copy carrying other data (a projection for one subscriber)."""
        return replace(self, data=data)
