"""Schema evolution as operators run it: `gemeentebus schemas check` and `schemas publish`.

Every published version is checked against its predecessors under the type's compatibility
mode (`schemas/avro/compatibility.json`); published files never change (SHA256SUMS); and a
source that differs from its latest published version must be published as a new version.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.contract.compat import check, check_history, load_compatibility
from streams.contract.schemas import SchemaRegistry, SchemaVersion

__all__ = ["Finding", "check_registry", "publish_checked"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with one type's schemas, in words an operator can act on."""

    type: str
    message: str


def check_registry(reg: SchemaRegistry) -> list[Finding]:
    """Every problem with the published schemas and their sources; empty when all is well."""
    findings = [
        Finding(name.split("/")[0], f"published file {name} changed or is not in SHA256SUMS")
        for name in reg.changed_published_files()
    ]
    config = load_compatibility(reg.root / "compatibility.json")
    for event_type in reg.types():
        mode = config.mode_for(event_type)
        versions = [dict(v.raw) for v in reg.versions(event_type)]
        findings += [
            Finding(event_type, f"{mode.value}: {problem}")
            for problem in check_history(versions, mode)
        ]
        if event_type in reg.source_types() and reg.expanded_source(event_type) != versions[-1]:
            findings.append(
                Finding(
                    event_type,
                    "source differs from the latest published version: "
                    "run `gemeentebus schemas publish`",
                )
            )
    return findings


def publish_checked(
    reg: SchemaRegistry, event_type: str
) -> tuple[SchemaVersion | None, list[Finding]]:
    """Publish the next version of `event_type` if its source changed and is compatible.

    Returns the new version (None when nothing changed or it was refused) and the reasons
    a breaking change was refused.
    """
    mode = load_compatibility(reg.root / "compatibility.json").mode_for(event_type)
    previous = [dict(v.raw) for v in reg.versions(event_type)]
    candidate = reg.expanded_source(event_type)
    if previous and candidate == previous[-1]:
        return None, []
    problems = check(candidate, previous, mode)
    if problems:
        return None, [Finding(event_type, f"{mode.value}: {p}") for p in problems]
    return reg.publish(event_type), []
