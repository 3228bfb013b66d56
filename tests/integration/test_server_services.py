"""The server the tests (and the demo) start runs Prefect's background services: a deployment with an
interval schedule gets scheduled runs. A dependency that breaks the scheduler (SQLAlchemy 2.1 under
Prefect 3.8 did) fails here at once, instead of as schedules that silently never fire."""

from __future__ import annotations

from helpers import run
from prefect_gitops.local_server import check_scheduler


def test_the_scheduler_schedules_runs_of_an_interval_deployment():
    assert run(check_scheduler(timeout=60)) >= 1
