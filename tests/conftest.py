"""Test-session settings, set before anything imports prefect."""

import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if "PREFECT_GITOPS_TEST_PORT" not in os.environ:
    _home = tempfile.mkdtemp(prefix="prefect-gitops-tests-")
    _port = _free_port()
    os.environ.update(
        PREFECT_GITOPS_TEST_PORT=str(_port),
        PREFECT_HOME=_home,
        PREFECT_API_URL=f"http://127.0.0.1:{_port}/api",
        PREFECT_UI_URL=f"http://127.0.0.1:{_port}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{_home}/prefect.db",
        PREFECT_GITOPS_CACHE_DIR=os.path.join(_home, "git-cache"),
        PREFECT_LOGGING_LEVEL="WARNING",
        # free the slots of runs the crash tests kill soon after their 60 s lease ends
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2",
    )
    os.environ.pop("PREFECT_API_KEY", None)
