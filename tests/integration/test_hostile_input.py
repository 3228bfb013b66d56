"""Hostile or mistaken files of tests/cases/hostile/ through the real reconcile, talking to the real
Prefect server through a write-counting proxy: status failed with the case's problem (file, key,
message), the refusal recorded (ValidationFailed), and not one write to a pool, deployment or work
queue, although most files carry a valid change too. Then the real CLI (`apply`, exit 1, no
"Traceback" in its output).

By default the reconcile runs every case the server decides and one or two of each family the loader
refuses (tests/unit/test_hostile_cases.py runs all of those through the loader), and the CLI three;
PREFECT_GITOPS_FULL_TRIALS=1 runs every case through both (about a minute and five more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import GitRepo, create_deployment, create_pool, read_state, run, server_snapshot, uid
from hostile_cases import Names, expected, load_cases, place
from target_writes import TargetWriteCounter

CASES = load_cases()
# one of each kind of refusal: while parsing (an alias bomb), after validation (a shell metacharacter in an
# image), against the server (a look-alike name)
CLI_CASES = ["billion_laughs", "image_semicolon", "lookalike_cyrillic_deployment"]
FULL_TRIALS = os.environ.get("PREFECT_GITOPS_FULL_TRIALS") == "1"
LOADER_FAMILIES = [  # aliases, depth, numbers, bytes, encodings, size, structure, tags, names, images, symlink
    "billion_laughs", "alias_cycle", "deep_flow_nesting", "deep_block_mapping", "huge_integer",
    "invalid_utf8_in_value", "utf16_le_with_bom", "binary_nul_bytes", "control_character_raw", "file_over_1_mib",
    "job_variables_too_large", "duplicate_nested_key", "top_level_list", "python_object_tag",
    "path_traversal_deployment_name", "work_queue_name_too_long", "image_semicolon", "image_in_pool_default",
    "image_escaped_newline", "symlink_out_of_the_repo", "empty_file"]
RECONCILED = sorted(CASES) if FULL_TRIALS else sorted(
    set(LOADER_FAMILIES) | {n for n, c in CASES.items() if c["found_by"] == "server"})


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    u = uid()
    names = Names(pool=f"hostile-{u}", flow=f"hostile-{u}")
    create_pool(names.pool, image_default="flows:1.0.0")
    create_deployment(names.flow, "daily", names.pool, {"namespace": "jobs"})
    root = tmp_path_factory.mktemp("hostile")
    repo = GitRepo(root / "repo")
    envs = {name: f"h{u}-{i}" for i, name in enumerate(sorted(CASES))}
    for name, env in envs.items():
        place(CASES[name], names, repo.root, env, root / "outside")
    revision = repo.commit("the hostile corpus, one environment per case")
    before = server_snapshot([names.pool], [names.deployment])
    with TargetWriteCounter() as proxy:
        results = dict(zip(RECONCILED, reconcile_through(proxy.url, [envs[n] for n in RECONCILED], repo.url,
                                                         revision)))
        yield dict(names=names, repo=repo, envs=envs, proxy=proxy, results=results)
    assert proxy.target_writes == []
    assert server_snapshot([names.pool], [names.deployment]) == before


def reconcile_through(api_url: str, environments: list[str], source_url: str, revision: str) -> list:
    """The reconcile of each environment in turn, as a flow run does it (under the environment's lock), of
    the corpus's commit (resolved once, as a pinned revision is); their client (every read and write of
    pools, deployments, queues and the state) talks through the proxy."""
    from prefect.client.orchestration import PrefectClient

    from prefect_gitops.adapters.git import GitSource
    from prefect_gitops.adapters.locks import environment_lock
    from prefect_gitops.adapters.prefect_api import PrefectAPI
    from prefect_gitops.reconcile import ReconcileRequest, reconcile

    async def go():
        async with PrefectClient(api_url) as client:
            return [await reconcile(ReconcileRequest(environment=environment, source=GitSource(source_url),
                                                     revision=revision),
                                    PrefectAPI(client), lock=lambda e, t: environment_lock(client, e, t))
                    for environment in environments]

    return run(go())


def assert_refusal(error: dict, case: dict, names: Names, env: str) -> None:
    key, message, line = expected(case, names)
    assert error["file"] == f"environments/{env}.yaml", error
    assert message in error["message"], error
    assert error["key"] is None if key is None else (error["key"] or "").startswith(key), error
    if line is not None:
        assert error["line"] == line, error


@pytest.mark.parametrize("name", RECONCILED)
def test_reconcile_refuses_and_writes_nothing(estate, name):
    case, env, proxy = CASES[name], estate["envs"][name], estate["proxy"]
    result = estate["results"][name]  # the reconcile returned: no traceback
    assert proxy.target_writes == []
    if case["expect_message"] is None:
        return  # the empty file: no traceback (it returned), no write; what it means is another gate's
    assert result.status == "failed", result.message
    assert_refusal(result.problems[0].to_dict(), case, estate["names"], env)
    state, _ = read_state(env)
    assert state.condition is not None and state.condition.reason == "ValidationFailed"
    assert state.last_applied_revision is None


@pytest.mark.parametrize("name", sorted(CASES) if FULL_TRIALS else CLI_CASES)
def test_cli_apply_exits_1_without_a_traceback(estate, name):
    case, env, proxy = CASES[name], estate["envs"][name], estate["proxy"]
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", "--source", estate["repo"].url,
                           "--env", env, "--output", "json"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": proxy.url})
    assert "Traceback" not in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    assert proxy.target_writes == []
    if case["expect_message"] is None:
        return
    assert done.returncode == 1, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["status"] == "failed" and report["applied"] == 0
    assert_refusal(report["errors"][0], case, estate["names"], env)
