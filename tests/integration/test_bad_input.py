"""Every bad input is refused with file, line and key, and nothing is written (read back from the server)."""

from __future__ import annotations

import os

import pytest

from helpers import GitRepo, cli_json, cli_json_here, create_deployment, create_pool, read_state, server_snapshot, uid


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    u = uid()
    pool, flow = f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    return dict(pool=pool, daily=f"{flow}/daily", tmp=tmp_path_factory)


def _good(e) -> str:
    # a valid change rides along in every bad file: it must not be applied either
    return f"""\
work_pools:
  {e['pool']}:
    job_variables:
      image: flows:2.0.0
"""


CASES = {
    # name: (file text builder, expected line, expected key fragment, message fragment)
    "invalid_yaml": (lambda e: _good(e) + "deployments:\n  etl/x: image: y\n", 6, None, "mapping values are not allowed"),
    "duplicate_key": (lambda e: _good(e) + f"""deployments:
  {e['daily']}:
    job_variables: {{image: a}}
  {e['daily']}:
    job_variables: {{image: b}}
""", 8, None, "appears more than once"),
    "wrong_type": (lambda e: _good(e) + f"""deployments:
  {e['daily']}:
    job_variables: not-a-mapping
""", 7, "job_variables", "valid dictionary"),
    "unknown_top_level_key": (lambda e: _good(e) + "work_pool: {}\n", 5, "work_pool", "unknown key 'work_pool'"),
    "unknown_nested_key": (lambda e: _good(e) + f"""deployments:
  {e['daily']}:
    job_vars: {{image: a}}
""", 7, "job_vars", "unknown key"),
    "unknown_work_pool": (lambda e: _good(e) + """  no-such-pool:
    job_variables: {image: a}
""", 5, "work_pools.no-such-pool", "work pool 'no-such-pool' does not exist"),
    "unknown_deployment": (lambda e: _good(e) + """deployments:
  etl/no-such-deployment:
    job_variables: {image: a}
""", 6, "deployments.etl/no-such-deployment", "does not exist"),
    "undeclared_job_variable": (lambda e: _good(e) + f"""deployments:
  {e['daily']}:
    job_variables:
      imagee: flows:2
""", 8, "job_variables.imagee", "not declared by the base job template of work pool"),
    "value_against_template_schema": (lambda e: _good(e) + f"""deployments:
  {e['daily']}:
    job_variables:
      image: 42
""", 8, "job_variables.image", "42 is not valid"),
    "bad_deployment_name": (lambda e: _good(e) + """deployments:
  just-a-name:
    job_variables: {image: a}
""", 6, "deployments.just-a-name", "<flow name>/<deployment name>"),
    "file_over_1_mib": (lambda e: _good(e) + "#" + "x" * (1024 * 1024) + "\n", None, None, "the limit is 1048576"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_refused_and_nothing_is_written(estate, case):
    e = estate
    build, line, key, fragment = CASES[case]
    env = f"bad{uid()}"
    repo = GitRepo(e["tmp"].mktemp(case))
    repo.commit_env(env, build(e))
    before = server_snapshot([e["pool"]], [e["daily"]])

    code, planned = cli_json_here("plan", "--source", repo.url, "--env", env, check_codes=(1,))
    code, applied = cli_json_here("apply", "--source", repo.url, "--env", env, check_codes=(1,))
    for report in (planned, applied):
        error = report["errors"][0]
        assert error["file"] == f"environments/{env}.yaml"
        assert fragment in error["message"], error
        if line is not None:
            assert error["line"] == line, error
        if key is not None:
            assert key in (error["key"] or ""), error
    assert applied["applied"] == 0
    assert server_snapshot([e["pool"]], [e["daily"]]) == before
    state, _ = read_state(env)
    assert state.last_applied_revision is None and state.inventory.count() == 0
    assert state.condition is not None and state.condition.reason == "ValidationFailed"


def test_symlink_leaving_the_repo_is_refused(estate, tmp_path):
    e = estate
    env = f"bad{uid()}"
    outside = tmp_path / "outside.yaml"
    outside.write_text(_good(e))
    repo = GitRepo(tmp_path / "repo")
    (repo.root / "environments").mkdir()
    os.symlink(outside, repo.root / "environments" / f"{env}.yaml")
    repo.commit("symlink out")
    before = server_snapshot([e["pool"]], [e["daily"]])
    code, report = cli_json("apply", "--source", repo.url, "--env", env, check_codes=(1,))
    assert report["errors"][0]["file"] == f"environments/{env}.yaml"
    assert "symlink that leads outside the repository" in report["errors"][0]["message"]
    assert server_snapshot([e["pool"]], [e["daily"]]) == before


def test_missing_ref_and_unreachable_repo(estate, tmp_path):
    e = estate
    env = f"bad{uid()}"
    repo = GitRepo(tmp_path / "repo")
    repo.commit_env(env, _good(e))
    before = server_snapshot([e["pool"]], [e["daily"]])

    code, report = cli_json("plan", "--source", repo.url, "--ref", "no-such-branch", "--env", env, check_codes=(1,))
    assert "ref 'no-such-branch' does not exist" in report["errors"][0]["message"]
    code, report = cli_json("apply", "--source", repo.url, "--revision", "0" * 40, "--env", env, check_codes=(1,))
    assert f"revision {'0' * 40} does not exist" in report["errors"][0]["message"]

    gone = (tmp_path / "nowhere").as_uri()
    code, report = cli_json("apply", "--source", gone, "--env", env, check_codes=(1,))
    assert "does not appear to be a git repository" in report["errors"][0]["message"]
    assert server_snapshot([e["pool"]], [e["daily"]]) == before
    code, report = cli_json("plan", "--source", repo.url, "--env", env, "--path", "nope", check_codes=(1,))
    assert report["errors"][0]["file"] == f"nope/{env}.yaml" and "not found" in report["errors"][0]["message"]
