"""Test-session settings, set before anything imports prefect."""

import os
import tempfile

from prefect_gitops.local_server import free_port, server_env

if "PREFECT_GITOPS_TEST_PORT" not in os.environ:
    _home = tempfile.mkdtemp(prefix="prefect-gitops-tests-")
    _port = free_port()
    os.environ.update(
        server_env(_home, _port),
        PREFECT_GITOPS_TEST_PORT=str(_port),
        PREFECT_GITOPS_CACHE_DIR=os.path.join(_home, "git-cache"),
        PREFECT_LOGGING_LEVEL="WARNING",
        # free the slots of runs the crash tests kill soon after their 60 s lease ends
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2",
    )
    os.environ.pop("PREFECT_API_KEY", None)
