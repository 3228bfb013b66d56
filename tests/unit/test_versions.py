"""What a user's environment may hold: the dependency ranges admit both tested sets, the local server
refuses the one Prefect/SQLAlchemy pair known to break schedules, `--version` tells what is installed."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import prefect_gitops
from prefect_gitops.local_server import server_pair_problem

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            package, _, version = line.partition("==")
            pins[package.strip().lower().replace("_", "-")] = Version(version.strip())
    return pins


@pytest.mark.parametrize("constraints", ["constraints.txt", "constraints-latest.txt"])
def test_the_ranges_admit_every_tested_set(constraints):
    pins = _pins(constraints)
    for text in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{constraints} pins no version of {name}"
        assert pins[name] in requirement.specifier, f"{constraints}: {name}=={pins[name]} is outside {text!r}"


def test_the_oldest_and_the_newest_prefect_are_both_tested():
    oldest, newest = _pins("constraints.txt")["prefect"], _pins("constraints-latest.txt")["prefect"]
    assert oldest < newest
    assert oldest.major == newest.major == 3


@pytest.mark.parametrize("prefect, sqlalchemy, refused", [
    ("3.8.8", "2.0.58", False),
    ("3.8.8", "2.1.9", True),   # the scheduler fails: no scheduled run is ever created
    ("3.8.0", "2.1.0", True),
    ("3.9.1", "2.1.9", False),
    ("3.9.1", "2.0.58", False),
    ("3.10.0", "2.1.9", False),
])
def test_the_local_server_refuses_prefect_38_with_sqlalchemy_21(prefect, sqlalchemy, refused):
    problem = server_pair_problem(prefect, sqlalchemy)
    assert (problem is not None) == refused
    if refused:
        assert "SQLAlchemy<2.1" in problem and prefect in problem


def test_version_names_the_installed_versions():
    out = subprocess.run([sys.executable, "-m", "prefect_gitops", "--version"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == (f"prefect-gitops {prefect_gitops.__version__} (Prefect {importlib.metadata.version('prefect')}, "
                   f"Python {platform.python_version()})")
    assert importlib.metadata.version("prefect-gitops") == prefect_gitops.__version__
