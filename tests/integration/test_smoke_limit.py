"""The cluster load cap (README, "Rollout gates"): every smoke test takes a slot of one Prefect global
concurrency limit, `prefect-gitops-smoke-tests`, shared by all environments and runs; it is created
with 4 slots, and PREFECT_GITOPS_SMOKE_TEST_LIMIT on the workers makes every reconcile enforce its size.

Real server, real Git, the CLI as subprocesses, `process` smoke tests (no cluster). Each smoke test
appends "start IMAGE" to a marker file, holds until the test creates a release file, then appends
"end IMAGE": while they hold, the running tests and the limit's slots read back from the server are
stable, so what is asserted does not depend on timing. The line order (appends are atomic) shows how
many ran at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import GitRepo, _with_client, create_deployment, create_pool, global_limit, run, uid

LIMIT = "prefect-gitops-smoke-tests"  # the documented name
SIZE_VARIABLE = "PREFECT_GITOPS_SMOKE_TEST_LIMIT"


def held_smoke_test(marker: Path, release: Path) -> dict:
    code = (
        "import os, sys, time\n"
        "img = os.environ['SMOKE_IMAGE']\n"
        "def log(what):\n"
        f"    with open({str(marker)!r}, 'a') as f:\n"
        "        f.write(what + ' ' + img + '\\n')\n"
        "log('start')\n"
        "deadline = time.time() + 600\n"
        f"while not os.path.exists({str(release)!r}) and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "log('end')\n"
        f"sys.exit(0 if os.path.exists({str(release)!r}) else 4)\n")
    return {"kind": "process", "timeout_seconds": 900, "process": {"command": [sys.executable, "-c", code]}}


def read_limit():
    """The shared cap as the server has it (None: it does not exist)."""
    return global_limit(LIMIT)


def delete_limit() -> None:
    from prefect.exceptions import ObjectNotFound

    async def go(client):
        with contextlib.suppress(ObjectNotFound):
            await client.delete_global_concurrency_limit_by_name(LIMIT)

    run(_with_client(go))
    assert read_limit() is None


def resize_limit(size: int) -> None:
    """As a user would in the UI (created at that size when missing)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

    from prefect.exceptions import ObjectNotFound

    async def go(client):
        try:
            await client.read_global_concurrency_limit_by_name(LIMIT)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT, limit=size))
        else:
            await client.update_global_concurrency_limit(LIMIT, GlobalConcurrencyLimitUpdate(limit=size))

    run(_with_client(go))
    assert read_limit().limit == size


class Apply:
    """`prefect-gitops apply` of one environment as a subprocess (output to files: nothing blocks)."""

    def __init__(self, repo: GitRepo, env: str, workdir: Path, size: int | None):
        environ = {k: v for k, v in os.environ.items() if k != SIZE_VARIABLE}
        if size is not None:
            environ[SIZE_VARIABLE] = str(size)
        self.out, self.err = workdir / f"{env}.out", workdir / f"{env}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                 "--output", "json"], stdout=out, stderr=err, env=environ)

    def ended_early(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"exit {self.proc.returncode}: {self.out.read_text()[-2000:]}\n{self.err.read_text()[-2000:]}"

    def finish(self) -> tuple[int, dict]:
        code = self.proc.wait(timeout=600)
        out = self.out.read_text()
        report = json.loads(out) if out.strip().startswith("{") else {"stdout": out}
        report["stderr"] = self.err.read_text()[-4000:]  # shown by a failing assertion
        return code, report


def marker_lines(marker: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in marker.read_text().splitlines()] if marker.exists() else []


def wait_until(condition, applies: list[Apply], what: str, timeout: float = 600.0):
    """Poll `condition` until it returns something truthy; fail at once if a reconcile ended meanwhile
    (its smoke tests cannot have held), and after a generous `timeout` (a hang, not a speed target)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for apply in applies:
            ended = apply.ended_early()
            assert ended is None, f"a reconcile ended while {what}: {ended}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)


def most_at_once(lines: list[tuple[str, str]]) -> int:
    running = most = 0
    for what, _image in lines:
        running += 1 if what == "start" else -1
        most = max(most, running)
    return most


def estate(tmp_path: Path, per_env: int):
    u = uid()
    pool, flow = f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1")
    marker, release = tmp_path / "marker.txt", tmp_path / "release"
    repo = GitRepo(tmp_path / "gitops")
    images = {}
    for env in (f"lima{u}", f"limb{u}"):
        deployments = {}
        for i in range(per_env):
            create_deployment(flow, f"{env}-{i}", pool)
            deployments[f"{flow}/{env}-{i}"] = {"job_variables": {"image": f"flows:{env}-{i}"}}
        images[env] = sorted(d["job_variables"]["image"] for d in deployments.values())
        repo.commit_env(env, {"smoke_test": held_smoke_test(marker, release), "deployments": deployments})
    return repo, images, marker, release


def test_the_shared_limit_is_created_with_4_slots_and_caps_two_environments_at_4(tmp_path):
    # two environments, 4 new images each: 8 smoke tests want a slot (each reconcile asks for up to 4)
    repo, images, marker, release = estate(tmp_path, per_env=4)
    delete_limit()  # a server no reconcile has run a smoke test on
    applies = [Apply(repo, env, tmp_path, size=None) for env in images]  # PREFECT_GITOPS_SMOKE_TEST_LIMIT unset
    try:
        # until 4 tests run and hold the limit's slots (stable: they hold until released), or more run
        def settled():
            starts = [image for what, image in marker_lines(marker) if what == "start"]
            limit = read_limit()
            if len(starts) > 4 or (len(starts) == 4 and limit is not None and limit.active_slots == 4):
                return starts, limit
            return None

        starts, limit = wait_until(settled, applies, "4 smoke tests held the limit's slots")
        held = None if limit is None else (limit.name, limit.limit, limit.active_slots, limit.active)
        assert (len(starts), held) == (4, (LIMIT, 4, 4, True)), starts
    finally:
        release.touch()
    for apply, (env, env_images) in zip(applies, images.items()):
        code, report = apply.finish()
        assert code == 0 and report["status"] == "applied" and report["applied"] == 4, report
        assert sorted((t["image"], t["result"]) for t in report["smoke_tests"]) == [(i, "passed") for i in env_images]
    lines = marker_lines(marker)
    everything = sorted(i for env_images in images.values() for i in env_images)
    assert sorted(i for what, i in lines if what == "start") == everything
    assert sorted(i for what, i in lines if what == "end") == everything
    assert most_at_once(lines) == 4, lines
    limit = read_limit()
    assert (limit.limit, limit.active_slots) == (4, 0)


def test_every_environment_s_smoke_tests_take_slots_of_the_one_limit_sized_by_the_variable(tmp_path):
    repo, images, marker, release = estate(tmp_path, per_env=1)
    resize_limit(7)  # resized in the UI; the variable on the workers wins
    applies = [Apply(repo, env, tmp_path, size=2) for env in images]
    try:
        # both environments' tests run (2 slots) and hold until released
        def both_started():
            starts = [image for what, image in marker_lines(marker) if what == "start"]
            return starts if len(starts) == 2 else None

        starts = wait_until(both_started, applies, "one smoke test of each environment ran")
        assert sorted(starts) == sorted(i for env_images in images.values() for i in env_images)
        # one limit for both: its 2 slots are the two environments' tests, and its size is the variable's
        limit = read_limit()
        assert limit is not None and (limit.name, limit.limit, limit.active_slots) == (LIMIT, 2, 2), limit
    finally:
        release.touch()
    for apply in applies:
        code, report = apply.finish()
        assert code == 0 and report["applied"] == 1 and [t["result"] for t in report["smoke_tests"]] == ["passed"], report
    limit = read_limit()
    assert (limit.limit, limit.active_slots) == (2, 0)
