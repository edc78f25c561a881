"""The wheel ships: built from a clean copy of the checkout, installed into a fresh venv.

The wheel must hold every package of `streams` and `connectors`, the Avro schemas (the
checkout's `schemas/avro/`, reached through the `streams/contract/avro` link), the
municipality data and the local broker's Maven and log4j files; installed outside the
checkout, `gemeentebus` must run and find all of them in its own site-packages. Building
and installing print no warning. Needs PyPI (or pip's cache) for setuptools and the pinned
dependencies; no Kafka.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[1]
# What a developer's checkout has beside the sources, and a build must not see.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".gemeentebus"
)

# Run in the installed venv: where the package finds its files.
_WHERE = """
import json
from connectors.kafka_local import LOG4J, POM
from streams.contract import gemeenten
from streams.contract.modelgen import SCHEMA_DIR
from streams.contract.schemas import DEFAULT_ROOT
print(json.dumps({
    "streams": gemeenten.__file__, "schemas": str(DEFAULT_ROOT), "modelgen": str(SCHEMA_DIR),
    "pom": str(POM), "log4j": str(LOG4J),
}))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a working folder outside the checkout
    stderr: dict[str, str]  # step -> what it printed on stderr

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=self.outside, env=_clean_env(), capture_output=True, text=True, timeout=120
        )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _step(name: str, args: list[str], cwd: Path, stderr: dict[str, str]) -> None:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    stderr[name] = result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    assert not base.resolve().is_relative_to(CHECKOUT), "the venv must live outside the checkout"
    source, wheels, venv, outside = (base / name for name in ("src", "wheels", "venv", "cwd"))
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=_NOT_SOURCES)
    outside.mkdir()
    stderr: dict[str, str] = {}
    pip_wheel = ["-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)]
    _step("build", [sys.executable, *pip_wheel], base, stderr)
    (wheel,) = wheels.glob("gemeentebus-*.whl")
    _step("venv", [sys.executable, "-m", "venv", str(venv)], base, stderr)
    constraints = str(CHECKOUT / "constraints.txt")
    install = ["-m", "pip", "install", "-q", "-c", constraints, str(wheel)]
    _step("install", [str(venv / "bin" / "python"), *install], outside, stderr)
    return Installed(wheel=wheel, venv=venv, outside=outside, stderr=stderr)


def _packages(top: str) -> set[str]:
    return {
        path.parent.relative_to(CHECKOUT).as_posix()
        for path in (CHECKOUT / top).rglob("__init__.py")
        if "__pycache__" not in path.parts
    }


def test_the_wheel_holds_every_package_schema_and_data_file(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    packages = _packages("streams") | _packages("connectors")
    assert {"streams/contract", "streams/http", "connectors"} <= packages
    assert {f"{package}/__init__.py" for package in packages} <= names
    schemas = CHECKOUT / "schemas" / "avro"
    shipped = {
        f"streams/contract/avro/{path.relative_to(schemas).as_posix()}"
        for path in schemas.rglob("*")
        if path.is_file()
    }
    assert any(name.endswith(".avsc") for name in shipped)
    assert shipped <= names, sorted(shipped - names)
    data = {
        "streams/contract/data/gemeenten.csv",
        "streams/contract/data/gemeenten-opgeheven.csv",
        "streams/contract/data/SOURCE.md",
        "connectors/kafka/pom.xml",
        "connectors/kafka/log4j2.properties",
        "streams/py.typed",
        "connectors/py.typed",
    }
    assert data <= names, sorted(data - names)


def test_the_wheel_says_license_and_python_versions(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        metadata = wheel.read("gemeentebus-0.1.0.dist-info/METADATA").decode()
    lines = set(metadata.splitlines())
    assert "License-Expression: EUPL-1.2" in lines
    assert "Requires-Python: >=3.11" in lines
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {minor}" in lines


def test_building_and_installing_print_no_warning(installed: Installed) -> None:
    for step, text in installed.stderr.items():
        assert "warning" not in text.lower(), f"{step} warned:\n{text}"


def test_the_installed_package_finds_its_files_in_its_own_site_packages(
    installed: Installed,
) -> None:
    result = installed.run(str(installed.venv / "bin" / "python"), "-c", _WHERE)
    assert result.returncode == 0, result.stderr
    where = {name: Path(path) for name, path in json.loads(result.stdout).items()}
    venv = installed.venv.resolve()
    for name, path in where.items():
        assert path.is_relative_to(venv), f"{name} comes from {path}, not the installed wheel"
        assert path.exists(), f"{name}: {path} is missing"
    assert (where["schemas"] / "compatibility.json").is_file()
    assert where["modelgen"] == where["schemas"]


def test_the_installed_cli_runs_outside_the_checkout(installed: Installed) -> None:
    gemeentebus = str(installed.venv / "bin" / "gemeentebus")
    help_ = installed.run(gemeentebus, "--help")
    assert help_.returncode == 0, help_.stderr
    assert "schemas" in help_.stdout
    check = installed.run(gemeentebus, "schemas", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "compatible" in check.stdout
