"""The integration subset on a production-shaped server (prefect_gitops.production_server): PostgreSQL,
Redis, two API replicas and the services in a process of their own. The module's tests talk to replica
1; the racing reconciles talk to one replica each. Every test runs the body of the SQLite test that
covers the same README section, so both servers are held to the same outcomes.

What differs from the session's SQLite server, and what these tests would catch: events reach the
database only through Redis streams and the services process (the drift check's event log, our own
events), the one-writer lock's slot and lease are shared through PostgreSQL and Redis by replicas that
each see only part of the traffic, and every write goes to PostgreSQL."""

from __future__ import annotations

import os
import time

import pytest

import test_concurrent_creates as sqlite_races
import test_drift_events as sqlite_drift_events
import test_reconcile as sqlite_reconcile
import test_smoke_process as sqlite_smoke
from helpers import pointed_at, read_deployment, set_deployment_job_variables, wait_for_change_event
from prefect_gitops.drift_events import PERSIST_LAG
from prefect_gitops.production_server import missing_parts, running_production_server
from prefect_gitops.state import utcnow

pytestmark = pytest.mark.skipif(missing_parts() is not None, reason=f"no production-shaped server: {missing_parts()}")

# what differs on this server is covered in CI (writes, the event log through Redis, the lock across
# replicas, rollback's hold, a failed smoke test); the same planner's drift and removal cases, which
# only write again what the apply test writes, run here with PREFECT_GITOPS_FULL_TRIALS=1 (CI's 25 minutes)
full_only = pytest.mark.skipif(os.environ.get("PREFECT_GITOPS_FULL_TRIALS") != "1",
                               reason="the SQLite test covers it in CI; PREFECT_GITOPS_FULL_TRIALS=1 runs it here too")


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    started = time.monotonic()
    with running_production_server(tmp_path_factory.mktemp("production-server")) as server:
        print(f"production-shaped server up in {time.monotonic() - started:.1f} s: {server.api_urls}")
        with pointed_at(server.api_urls[0]):
            yield server


def test_apply_noop_and_git_change(production, tmp_path):
    sqlite_reconcile.test_plan_apply_noop_and_git_change(sqlite_reconcile.make_estate(tmp_path))


@full_only
def test_drift_is_corrected_and_reported(production, tmp_path):
    sqlite_reconcile.test_drift_is_corrected_and_reported(sqlite_reconcile.make_estate(tmp_path))


@full_only
def test_removed_keys_are_unset_and_pool_defaults_restored(production, tmp_path):
    sqlite_reconcile.test_removed_keys_are_unset_and_pool_defaults_restored(sqlite_reconcile.make_estate(tmp_path))


def test_event_log_drift_check_finds_managed_changes_through_redis(production, tmp_path):
    sqlite_drift_events.test_a_managed_change_in_the_event_log_is_read_and_corrected(tmp_path)


def test_change_events_reach_the_log_within_the_drift_check_s_lag(production, tmp_path):
    """The drift check assumes an event is in the log PERSIST_LAG (60 s) after it occurred. Here a
    change made through replica 2 travels through Redis to the services' event persister before
    replica 1 can show it (measured: about 5 s, the persister's flush interval); a server whose events
    do not get through, or not in time, fails here instead of as drift the check never sees."""
    e = sqlite_reconcile.make_estate(tmp_path)
    resource = f"prefect.deployment.{read_deployment(e['daily']).id}"
    with pointed_at(production.api_urls[1]):
        edited = utcnow()
        set_deployment_job_variables(e["daily"], {"image": "registry.example.com/flows:through-replica-2"})
    wait_for_change_event("prefect.deployment.updated", resource, since=edited, wait=PERSIST_LAG.total_seconds())
    print(f"change event readable through replica 1 after {(utcnow() - edited).total_seconds():.1f} s")


def test_failed_smoke_test_holds_everything_back(production, tmp_path):
    sqlite_smoke.test_failed_smoke_test_holds_everything_back_by_default(sqlite_smoke.make_estate(tmp_path))


def test_rollback_by_revision_holds_reconciles(production, tmp_path):
    sqlite_smoke.rollback_by_revision_holds_reconciles(sqlite_smoke.make_estate(tmp_path))


def test_racing_reconciles_on_different_replicas_leave_one_writer(production, tmp_path):
    """Each run talks to its own replica, except that the lock's lease is released (and renewed)
    through the other one, as a load balancer may send it: the lock is created once, one run applies,
    the other waits and finds the revision in sync, and the slot ends free. With leases in each
    server's memory instead of Redis, the other replica knows no such lease and the slot stays taken."""
    first, second = production.api_urls[:2]
    own = dict(zip(sqlite_races.RACERS, [(first, second), (second, first)]))

    def route(racer: str, method: str, path: str) -> str:
        mine, other = own[racer]
        return other if path.endswith(("/decrement-with-lease", "/renew")) else mine

    sqlite_races.race_for_the_lock_limit(tmp_path, route)
