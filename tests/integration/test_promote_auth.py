"""Promotion pushes with the credentials of the `gitops-source` block, the same ones the reconcile reads
with (README "Blocks": a token or a GitLab credentials block; "Environments and promotion"), to a
repository that refuses anonymous access: the commit lands, and the token is nowhere to be seen."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from git_http_server import GitHttpServer
from helpers import GIT_ID, _with_client, cli_json, create_deployment, create_pool, run, uid

PROD = """\
# prod: images come from qa through `promote`
deployments:
  {flow}/prod:
    job_variables:
      image: flows:pa-1    # promoted from qa
  ml/train:
    job_variables:
      image: reg.example.com/ml:9
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], check=True, capture_output=True, text=True).stdout.strip()


def _scan_git_processes(seen: list[bytes], stop: threading.Event) -> None:
    """Collect the command lines of git processes until `stop` (the token must not be in any)."""
    while not stop.is_set():
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if os.path.basename(cmdline.split(b"\0")[0]).startswith(b"git"):
                seen.append(cmdline)
        time.sleep(0.02)


def _flow_run_logs(flow_run_id, until: str) -> list[str]:
    """This flow run's logs on the server, once a message containing `until` arrived (they come in batches)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def logs(client):
        return [log.message for log in await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]

    deadline = time.monotonic() + 30
    while True:
        messages = run(_with_client(logs))
        if any(until in m for m in messages):
            return messages
        assert time.monotonic() < deadline, f"the run's logs never showed {until!r}: {messages}"
        time.sleep(0.5)


@pytest.mark.parametrize("kind", ["gitlab-credentials", "token"])
def test_promote_pushes_with_the_source_blocks_credentials(kind, tmp_path, monkeypatch):
    from prefect_gitlab import GitLabCredentials

    from prefect_gitops.adapters import git_write
    from prefect_gitops.blocks import GitOpsSource
    from prefect_gitops.flows import promote, reconcile

    u = uid()
    pool, flow = f"k8s-pa-{u}", f"pa-{u}"
    qa, prod = f"qa{u}", f"prod{u}"
    create_pool(pool)
    for name in ("qa", "prod"):
        create_deployment(flow, name, pool)
    token = "glpat-" + secrets.token_hex(12)
    username = "oauth2" if kind == "gitlab-credentials" else "deploy-bot"

    bare = tmp_path / "srv" / "platform" / "gitops.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    git("clone", "-q", str(bare), str(work))
    (work / "environments").mkdir()
    (work / "environments" / f"{qa}.yaml").write_text(
        json.dumps({"deployments": {f"{flow}/qa": {"job_variables": {"image": "flows:pa-2"}}}}))
    (work / "environments" / f"{prod}.yaml").write_text(PROD.format(flow=flow))
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "commit", "-q", "-m", "qa and prod")
    git("-C", str(work), "push", "-q", "origin", "main")
    before = git("-C", str(bare), "rev-parse", "main")

    # what the writer's clone holds on disk, seen just before it commits (the clone is removed afterwards)
    clones: list[dict] = []
    original_commit = git_write.GitWriter._commit

    def spy_commit(self, repo: Path, *args, **kwargs):
        files = [p for p in (repo / ".git").rglob("*") if p.is_file()]
        clones.append({"config": (repo / ".git" / "config").read_text(),
                       "with_token": [str(p) for p in files if token.encode() in p.read_bytes()]})
        return original_commit(self, repo, *args, **kwargs)

    monkeypatch.setattr(git_write.GitWriter, "_commit", spy_commit)

    with GitHttpServer(tmp_path / "srv", token, username=None if kind == "gitlab-credentials" else username) as server:
        url = server.url_for("platform/gitops")
        block = f"promote-{u}"
        if kind == "gitlab-credentials":
            GitOpsSource(url=url, gitlab_credentials=GitLabCredentials(token=token)).save(block)
        else:
            GitOpsSource(url=url, token=SecretStr(token), username=username).save(block)

        async def reconcile_qa():
            state = await reconcile(environment=qa, source_block=block, return_state=True)
            return state, await state.result(raise_on_failure=False)

        async def promote_to_prod():
            state = await promote(from_environment=qa, to_environment=prod, source_block=block, return_state=True)
            return state, await state.result(raise_on_failure=False)

        state, report = run(reconcile_qa())  # qa reads through the block: its images are recorded as applied
        assert state.is_completed() and report["applied"] == 1, report

        server.delay = 0.2  # slow enough that the scanner sees every git child of the promotion
        seen: list[bytes] = []
        stop = threading.Event()
        scanner = threading.Thread(target=_scan_git_processes, args=(seen, stop))
        scanner.start()
        try:
            state, report = run(promote_to_prod())
        finally:
            stop.set()
            scanner.join()
        server.delay = 0
        promote_run = state.state_details.flow_run_id

        assert state.is_completed(), report
        assert report["status"] == "promoted" and report["changes"] == [
            {"target_type": "deployment", "target": f"{flow}/prod", "key": "image",
             "old": "flows:pa-1", "new": "flows:pa-2"}], report
        # the commit is on the served repository: exactly the image line changed, pushed as the block's user
        assert git("-C", str(bare), "rev-parse", "main") == report["revision"] != before
        assert git("-C", str(bare), "show", f"{report['revision']}:environments/{prod}.yaml") == PROD.format(
            flow=flow).replace("flows:pa-1    #", "flows:pa-2    #").rstrip("\n")
        assert git("-C", str(bare), "rev-parse", f"{report['revision']}~1") == before
        pushes = [r for r in server.requests if "git-receive-pack" in r["path"] + r["query"]]
        assert any(r["authorized"] and r["method"] == "POST" for r in pushes), pushes
        assert {r["user"] for r in server.requests if r["authorized"]} == {username}

        # a token that the server refuses: a clear, permanent error that names the scope a push needs
        wrong = "glpat-" + secrets.token_hex(12)
        if kind == "gitlab-credentials":
            GitOpsSource(url=url, gitlab_credentials=GitLabCredentials(token=wrong)).save(block, overwrite=True)
            hint = "check the GitLabCredentials token and its write_repository scope"
        else:
            GitOpsSource(url=url, token=SecretStr(wrong), username=username).save(block, overwrite=True)
            hint = f"check the deploy token, its username ('{username}') and its write_repository scope"
        # through the CLI this time: `promote --source-block` takes the same credentials
        _, refused_report = cli_json("promote", "--source-block", block, "--from", qa, "--to", prod,
                                     check_codes=(1,))
        assert refused_report["status"] == "failed"
        assert refused_report["message"] == f"GitLab rejected the token for {url} (HTTP 401): {hint}"
        assert git("-C", str(bare), "rev-parse", "main") == report["revision"]  # nothing pushed

    # the token is nowhere: the clone's files (its .git/config has the bare URL), git's command lines,
    # the results and state message, and the logs of these two runs
    assert len(clones) == 1 and clones[0]["with_token"] == []
    assert f"url = {url}\n" in clones[0]["config"] and "@" not in clones[0]["config"]
    git_with_url = [c for c in seen if url.encode() in c]
    assert git_with_url, "no git process with the repository URL was seen during the promotion"
    assert [c for c in seen if token.encode() in c] == []
    logs = _flow_run_logs(promote_run, until="ml/train")  # the skipped target's warning
    logs += _flow_run_logs(refused_report["flow_run_id"], until="rejected the token")
    everything = "\n".join([json.dumps(report), json.dumps(refused_report), str(state.message), *logs])
    assert token not in everything and wrong not in everything
