"""The package as users install it. `.ci/compat` builds the sdist and the wheel (`python -m build`, the
wheel built from the sdist) and installs the wheel, not the source tree, into a clean venv with
constraints-latest.txt; these tests check what that install gives. Against the source tree (the
editable install of the README's test command) they are skipped: there is no package to check."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

import prefect_gitops
from helpers import _with_client, run

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALLED = not Path(prefect_gitops.__file__).resolve().is_relative_to(REPO_ROOT / "src")
pytestmark = pytest.mark.skipif(not INSTALLED, reason="prefect_gitops is the source tree (editable install): "
                                ".ci/compat runs these against the built wheel")
BIN = Path(sys.executable).parent


def test_the_console_script_prints_the_versions():
    out = subprocess.run([BIN / "prefect-gitops", "--version"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert out.strip() == (f"prefect-gitops {prefect_gitops.__version__} "
                           f"(Prefect {importlib.metadata.version('prefect')}, Python {sys.version.split()[0]})")


def test_the_wheel_carries_its_metadata_and_only_the_package():
    dist = importlib.metadata.distribution("prefect-gitops")
    meta = dist.metadata
    assert dist.version == prefect_gitops.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert SpecifierSet(meta["Requires-Python"]) == SpecifierSet(">=3.11,<3.14")
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in (11, 12, 13)} <= set(meta.get_all("Classifier"))
    assert {"Homepage", "Source", "Changelog", "Issues"} <= {url.split(",")[0] for url in meta.get_all("Project-URL")}
    assert "prefect" in meta["Keywords"]
    files = {str(f) for f in dist.files or []}
    assert "prefect_gitops/py.typed" in files
    assert any(f.endswith("licenses/LICENSE") for f in files)
    assert not [f for f in files if f.startswith(("tests/", "bench/", "src/"))], "the wheel holds only the package"


@pytest.mark.skipif("PREFECT_GITOPS_DIST" not in os.environ, reason="PREFECT_GITOPS_DIST (set by .ci/compat) "
                    "names the folder python -m build wrote")
def test_the_sdist_holds_what_a_rebuild_needs():
    (sdist,) = Path(os.environ["PREFECT_GITOPS_DIST"]).glob("prefect_gitops-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.partition("/")[2] for name in tar.getnames()}
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "constraints.txt", "constraints-latest.txt",
            "src/prefect_gitops/cli.py", "src/prefect_gitops/py.typed"} <= names


def test_the_block_types_register_from_the_installed_package():
    done = subprocess.run([BIN / "prefect", "block", "register", "-m", "prefect_gitops.blocks"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("GitOps Source", "GitOps Rollout Defaults", "GitOps Smoke Test Defaults", "GitOps Policy"):
        assert name in done.stdout, done.stdout  # registered by this command, from the installed module

    async def go(client):
        return {slug: (await client.read_block_type_by_slug(slug)).slug for slug in
                ("gitops-source", "gitops-rollout-defaults", "gitops-smoke-test-defaults", "gitops-policy")}

    assert set(run(_with_client(go)).values()) == {"gitops-source", "gitops-rollout-defaults",
                                                   "gitops-smoke-test-defaults", "gitops-policy"}
