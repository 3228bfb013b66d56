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


# The modules that take longest, longest first (wall time in CI-shaped runs on two cores, 2026-12-02),
# so that none of them starts last and runs on alone while the other workers sit idle: pytest-xdist's
# own order (pyproject: --no-loadscope-reorder turns it off) sends the modules with the most tests first,
# which put the one-test trials (secret canaries, kill trials, the storm) at the very end. Modules not
# listed keep their collection order, after these.
LONGEST_FIRST = [
    "integration/test_canary.py",
    "integration/test_production_server.py",
    "integration/test_rollout_gates.py",
    "integration/test_control_deployments.py",
    "integration/test_secret_canaries.py",
    "integration/test_prefect_yaml.py",
    "integration/test_scheduled_reconcile.py",
    "reliability/test_server_restart.py",
    "integration/test_walkthrough.py",
    "integration/test_bad_input.py",
    "integration/test_smoke_kubernetes.py",
    "reliability/test_kill_trials.py",
    "integration/test_hostile_input.py",
    "integration/test_smoke_process.py",
    "integration/test_crash_and_cli.py",
    "integration/test_concurrent_creates.py",
    "integration/test_separate_servers.py",
    "integration/test_drift_events.py",
    "integration/test_waves_and_promotion.py",
    "reliability/test_git_faults.py",
    "integration/test_reconcile.py",
    "reliability/test_api_faults.py",
    "integration/test_set_image.py",
    "integration/test_signed_commits.py",
    "integration/test_windows_and_suspend.py",
    "integration/test_revision_gates.py",
    "unit/test_architecture.py",
    "integration/test_ui.py",
    "integration/test_smoke_limit.py",
    "reliability/test_storm.py",  # in CI only its short deterministic case (the storm is a full trial)
]


def pytest_collection_modifyitems(config, items):
    rank = {module: n for n, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(rank)))
