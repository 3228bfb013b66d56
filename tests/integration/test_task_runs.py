"""README "Layout": in the Prefect UI a reconcile's smoke tests, each wave's writes, the post-apply check
and the record are task runs of its flow run, each with its own logs and state; the no-op paths create
none. Read back from the real server (task runs reach it through the events pipeline, so wait on them)."""

from __future__ import annotations

import time

from helpers import _with_client, cli_json, run
from test_smoke_process import doc, estate  # noqa: F401 (the fixture)


def task_runs_of(flow_run_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go(client):
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return run(_with_client(go))


def wait_for_final_task_runs(flow_run_id: str, count: int, wait: float = 90.0) -> dict[str, str]:
    """{task run name: final state name} once `count` task runs of the flow run are final."""
    deadline = time.monotonic() + wait
    while True:
        runs = task_runs_of(flow_run_id)
        final = {r.name: r.state.name for r in runs if r.state is not None and r.state.is_final()}
        if len(final) >= count or time.monotonic() > deadline:
            return final
        time.sleep(0.5)


def logs_of_task_run(task_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    async def go(client):
        return await client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))

    return [log.message for log in run(_with_client(go))]


def apply(e, *more, codes=(0,)):
    return cli_json("apply", "--source", e["repo"].url, "--env", e["env"], *more, check_codes=codes)[1]


def test_smoke_tests_writes_and_record_are_task_runs_and_no_ops_create_none(estate):  # noqa: F811
    e = estate
    sha = e["repo"].commit_env(e["env"], doc(e, a="flows:2.0.0", b="flows:2.0.0-bad", gate="per-target"))
    result = apply(e, codes=(1,))
    assert result["status"] == "failed" and result["applied"] == 1  # a passed and is applied, b is held
    flow_run_id = result["flow_run_id"]

    final = wait_for_final_task_runs(flow_run_id, 4)
    assert final == {
        f"smoke test: process test of flows:2.0.0 for {e['a']}": "Completed",
        f"smoke test: process test of flows:2.0.0-bad for {e['b']}": "Failed",
        "wave 0: write 1 change(s)": "Completed",
        f"record {sha[:12]}": "Completed",
    }
    failed = next(r for r in task_runs_of(flow_run_id) if r.name.endswith(e["b"]))
    assert failed.state.message == "failed: exit code 3"
    # each smoke test logs under its own task run, not under the flow run
    lines = logs_of_task_run(failed.id)
    assert any("SMOKE_IMAGE=flows:2.0.0-bad" in line for line in lines), lines

    # the no-op paths: in sync after a full read, and up to date (no drift check due) create no task run
    e["repo"].commit_env(e["env"], doc(e, a="flows:2.0.0", b="flows:2.0.0", gate="per-target"))
    applied = apply(e)
    assert applied["status"] == "applied"
    in_sync = apply(e, "--full-check")
    assert in_sync["status"] == "in-sync"
    up_to_date = apply(e, "--quick")
    assert up_to_date["status"] == "up-to-date"
    # the next run's task runs arrive after any the no-op could have sent: wait for them, then look
    e["repo"].commit_env(e["env"], doc(e, a="flows:2.0.1", b="flows:2.0.1", gate="per-target"))
    later = apply(e)
    # one smoke test (both take the same image), the wave, the record
    assert len(wait_for_final_task_runs(later["flow_run_id"], 3)) == 3
    assert task_runs_of(in_sync["flow_run_id"]) == []
    assert task_runs_of(up_to_date["flow_run_id"]) == []
