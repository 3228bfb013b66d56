"""The environment file parser: every refusal names file, line and key."""

from __future__ import annotations

import os

import pytest

from prefect_gitops.errors import ConfigError
from prefect_gitops.loader import MAX_FILE_BYTES, load_environment, parse_environment
from prefect_gitops.model import json_schema


def refused(text: str):
    with pytest.raises(ConfigError) as info:
        parse_environment(text, file="environments/prod.yaml", name="prod")
    return info.value.problems


def test_full_example_parses():
    loaded = parse_environment("""\
work_pools:
  k8s-prod:
    job_variables:
      image: registry.example.com/flows:1.4.2
deployments:
  etl/daily:
    job_variables:
      image: registry.example.com/flows:1.4.3
      env: {LOG_LEVEL: debug}
drift: {mode: warn, check_interval_seconds: 60}
""", file="environments/prod.yaml", name="prod")
    assert loaded.spec.work_pools["k8s-prod"].job_variables == {"image": "registry.example.com/flows:1.4.2"}
    assert loaded.spec.deployments["etl/daily"].job_variables["env"] == {"LOG_LEVEL": "debug"}
    assert loaded.spec.drift.mode == "warn"
    assert loaded.line_of(("deployments", "etl/daily", "job_variables", "env")) == 9


def test_empty_file_manages_nothing():
    loaded = parse_environment("# nothing yet\n", file="f.yaml", name="prod")
    assert loaded.spec.work_pools == {} and loaded.spec.deployments == {}


@pytest.mark.parametrize("text,line,key,fragment", [
    ("work_pools:\n  a: {}\n  a: {}\n", 3, "a", "appears more than once"),
    ("work_pools: {}\nworkpools: {}\n", 2, "workpools", "unknown key 'workpools' in the top level"),
    ("deployments:\n  etl/x:\n    job_variables: [1]\n", 3, "deployments.etl/x.job_variables", "valid dictionary"),
    ("deployments:\n  etl/x:\n    job_variables:\n      image: 2024-01-01\n", 4, "job_variables.image", "quote it"),
    ("drift:\n  mode: sometimes\n", 2, "drift.mode", "'correct' or 'warn'"),
    ("deployments:\n  nope:\n    job_variables: {}\n", 2, "deployments.nope", "<flow name>/<deployment name>"),
    ("- a\n- b\n", 1, None, "must be a mapping"),
    ("work_pools:\n  a: [\n", 3, None, "invalid YAML"),
])
def test_refusals_name_line_and_key(text, line, key, fragment):
    problem = refused(text)[0]
    assert problem.file == "environments/prod.yaml"
    assert problem.line == line, problem
    if key:
        assert key in problem.key, problem
    assert fragment in problem.message, problem
    assert str(problem).startswith(f"environments/prod.yaml:{line}")


def test_all_problems_are_reported_at_once():
    problems = refused("work_pools:\n  a: {jobvars: {}}\ndeployments:\n  bad: {}\n")
    assert len(problems) == 2


def test_files_on_disk(tmp_path):
    env_dir = tmp_path / "environments"
    env_dir.mkdir()
    (tmp_path / "shared.yaml").write_text("work_pools: {}\n")
    os.symlink("../shared.yaml", env_dir / "qa.yaml")  # a symlink inside the repo is fine
    assert load_environment(tmp_path, "environments", "qa").file == "environments/qa.yaml"

    outside = tmp_path.parent / "outside.yaml"
    outside.write_text("{}\n")
    os.symlink(outside, env_dir / "prod.yaml")
    with pytest.raises(ConfigError, match="symlink that leads outside"):
        load_environment(tmp_path, "environments", "prod")

    (env_dir / "big.yaml").write_text("#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="limit is 1048576"):
        load_environment(tmp_path, "environments", "big")
    with pytest.raises(ConfigError, match="not found"):
        load_environment(tmp_path, "environments", "missing")
    with pytest.raises(ConfigError, match="lowercase"):
        load_environment(tmp_path, "environments", "../etc")


def test_json_schema_is_strict():
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"work_pools", "deployments", "drift", "smoke_test", "rollout", "sync_windows",
                                           "allow_empty"}
