"""The session's one real Prefect server (SQLite), started as the demo starts its own; the conftest of
each folder that needs it imports the fixture from here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefect_gitops.local_server import running_server


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    with running_server(Path(os.environ["PREFECT_HOME"]), int(os.environ["PREFECT_GITOPS_TEST_PORT"])):
        yield os.environ["PREFECT_API_URL"]
