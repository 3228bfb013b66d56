"""Test-session settings, set before anything imports prefect."""

import os
import tempfile

from prefect_gitops.local_server import free_port, server_env

# Each pytest-xdist worker (`-n 2`, see pyproject) is its own test session with its own server: the
# settings the controller process set are replaced in a worker (its name is the owner).
_owner = os.environ.get("PYTEST_XDIST_WORKER", "main")
if "PREFECT_GITOPS_TEST_PORT" not in os.environ or os.environ.get("PREFECT_GITOPS_TEST_OWNER", _owner) != _owner:
    _home = tempfile.mkdtemp(prefix="prefect-gitops-tests-")
    _port = free_port()
    os.environ.update(
        server_env(_home, _port),
        PREFECT_GITOPS_TEST_PORT=str(_port),
        PREFECT_GITOPS_TEST_OWNER=_owner,
        PREFECT_GITOPS_CACHE_DIR=os.path.join(_home, "git-cache"),
        PREFECT_LOGGING_LEVEL="WARNING",
        # free the slots of runs the crash tests kill soon after their 60 s lease ends
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2",
    )
    os.environ.pop("PREFECT_API_KEY", None)
