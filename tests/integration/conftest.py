"""One real Prefect server (SQLite) for the whole test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    home = Path(os.environ["PREFECT_HOME"])
    log = open(home / "server.log", "w")
    port = os.environ["PREFECT_GITOPS_TEST_PORT"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )
    url = os.environ["PREFECT_API_URL"]
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
