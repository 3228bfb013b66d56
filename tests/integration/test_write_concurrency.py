"""README: 'Only the difference is written ... concurrently with a bound (--concurrency, default 4)':
`apply --concurrency 1` writes one target at a time, observed at the server's door."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import GitRepo, create_deployment, create_pool, uid
from write_recorder import WriteRecorder


def test_apply_concurrency_1_bounds_the_writes(tmp_path):
    u = uid()
    flow, pool = f"cc-{u}", f"k8s-cc-{u}"
    create_pool(pool, image_default="flows:0")
    names = [f"{flow}/d{i}" for i in range(3)]
    ids = {create_deployment(flow, n.split("/")[1], pool): n for n in names}
    repo, env = GitRepo(tmp_path / "gitops"), f"cc{u}"
    repo.commit_env(env, {"deployments": {n: {"job_variables": {"image": f"flows:{n[-2:]}"}} for n in names}})
    with WriteRecorder(ids, hold_until=3, hold_seconds=1.0) as proxy:
        done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                               "--concurrency", "1", "--output", "json"], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PREFECT_API_URL": proxy.url})
    assert done.returncode == 0, done.stderr[-3000:]
    assert proxy.most_at_once(set(names)) == 1, proxy.writes
