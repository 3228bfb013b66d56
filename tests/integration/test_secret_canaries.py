"""Secrets never leak (README "Security"): canary tokens for every secret prefect-gitops handles, every
command run once on its success and failure paths, then every place a secret could end up is scanned.

The canaries: a Git password inside the source URL, a GitOps Source block's token, a GitLab
credentials block's token (it also posts commit statuses), a kubeconfig's bearer token (the fake
Kubernetes API of the smoke test) and PREFECT_API_KEY (set for the CLI processes; the local server
ignores it, but the client sends it). The places: the flow runs (parameters, state messages), their
logs, artifacts and task runs read back from the server, the server's events, every block document as
the API shows it and the state and history blocks with their secrets, the results and exception
text, the CLI's stdout/stderr, every file of the Git cache (PREFECT_GITOPS_CACHE_DIR, .git/config
included), the arguments of every git command (a `git` shim first on PATH records them) and the
command line of every process on the machine, sampled every 20 ms while the commands run (git's own
helpers such as git-remote-http included). A canary counts in raw, URL-encoded and base64 form.
Push mode's `set-image` runs once with each token (a commit, and a merge request through GitLab's API).
Wall time: about 60 s (one test, sharing the session's Prefect server).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import yaml
from pydantic import SecretStr

from fake_k8s import FakeKubernetes
from git_http_server import GitHttpServer
from helpers import GIT_ID, _with_client, create_deployment, create_pool, read_events, run, run_reconcile_flow, uid


def canary(kind: str) -> str:
    return f"canary-{kind}-{secrets.token_hex(12)}"


def encoded_forms(secret: str) -> list[bytes]:
    """The secret as raw bytes, URL-encoded, and base64-encoded at each of the three alignments it can
    have inside a longer base64 text (HTTP Basic auth encodes "user:secret")."""
    raw = secret.encode()
    forms = {raw, quote(secret, safe="").encode()}
    for shift in range(3):
        encoded = base64.b64encode(b"x" * shift + raw)
        forms.add(encoded[4:-4])  # the middle: its characters depend on the secret only
    return sorted(forms)


class ProcessSampler:
    """The command lines of the processes this test makes run: every git command exactly (a `git` first
    on PATH records its arguments, then runs the real git), and every process on the machine sampled
    every 20 ms (the CLI processes, git's own helpers such as git-remote-http, the smoke test's pods).
    A canary is unique to this test, so a hit in any process is ours."""

    def __init__(self, directory: Path) -> None:
        self.seen: set[bytes] = set()
        self.exempt: set[bytes] = set()  # command lines that carry a canary because the test put it there
        self.bin, self.records = directory / "bin", directory / "argv"
        self.bin.mkdir(parents=True)
        self.records.mkdir()
        real_git = shutil.which("git")
        shim = self.bin / "git"
        shim.write_text(f"#!/bin/sh\nprintf '%s\\0' git \"$@\" > \"$(mktemp {self.records}/git.XXXXXX)\"\n"
                        f"exec {real_git} \"$@\"\n")
        shim.chmod(0o755)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cmdline-sampler", daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen |= {p.read_bytes() for p in self.records.iterdir()}

    def _loop(self) -> None:
        own = str(os.getpid())
        while not self._stop.is_set():
            for name in os.listdir("/proc"):
                if not name.isdigit() or name == own:
                    continue
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        self.seen.add(f.read())
                except OSError:
                    continue
            time.sleep(0.02)

    def git_commands(self) -> set[str]:
        """The network commands among the git command lines recorded."""
        return {arg.decode() for line in self.seen if line.startswith(b"git\0")
                for arg in line.split(b"\0") if arg in (b"ls-remote", b"fetch", b"push", b"clone")}


class Repo:
    """A bare repository (what the Git HTTP servers serve) and a work tree that pushes to it."""

    def __init__(self, root: Path):
        self.bare = root / "srv" / "platform" / "gitops.git"
        self.work = root / "work"
        self._git("init", "-q", "--bare", "-b", "main", str(self.bare))
        self._git("clone", "-q", str(self.bare), str(self.work))

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", *GIT_ID, *args], check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, **files: dict) -> str:
        for env, doc in files.items():
            path = self.work / "environments" / f"{env}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self._git("-C", str(self.work), "add", "-A")
        self._git("-C", str(self.work), "commit", "-q", "-m", "change")
        self._git("-C", str(self.work), "push", "-q", "origin", "main")
        return self._git("-C", str(self.work), "rev-parse", "HEAD")


def test_no_secret_leaks_from_any_command(tmp_path, monkeypatch):
    from prefect_gitlab import GitLabCredentials

    from prefect_gitops.blocks import GitOpsSource

    prefect_logger = logging.getLogger("prefect")
    monkeypatch.setattr(prefect_logger, "level", logging.DEBUG)  # the in-process runs' log lines too

    started = datetime.now(timezone.utc)
    c = {kind: canary(kind) for kind in ("giturl", "gitblock", "gitlab", "k8s", "apikey")}
    u = uid()
    qa, prod, gl = f"cq{u}", f"cp{u}", f"cg{u}"
    pool, flow = f"canary-{u}", f"canary-{u}"
    create_pool(pool)
    for name in ("qa", "prod", "gl"):
        create_deployment(flow, name, pool)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PREFECT_GITOPS_CACHE_DIR", str(cache))
    texts: list[str] = []  # results, state messages, CLI output: scanned at the end

    k8s = FakeKubernetes(tmp_path / "k8s", token=c["k8s"], kubelet_delay=0.05)
    sampler = ProcessSampler(tmp_path / "sampler")
    monkeypatch.setenv("PATH", f"{sampler.bin}{os.pathsep}{os.environ['PATH']}")  # the CLI's env copies it

    def qa_doc(image: str, exit_code: int = 0) -> dict:
        smoke = {"kind": "kubernetes", "kubernetes": {
            "command": [sys.executable, "-c", f"print('smoke'); raise SystemExit({exit_code})"], "namespace": "smoke",
            "cluster": {"kubeconfig": str(k8s.kubeconfig_path), "context": "fake"}}}
        return {"smoke_test": smoke, "deployments": {f"{flow}/qa": {"job_variables": {"image": image}}}}

    repo = Repo(tmp_path)
    with k8s, GitHttpServer(tmp_path / "srv", c["giturl"], username="alice") as url_server, \
            GitHttpServer(tmp_path / "srv", c["gitblock"], username="deploy-bot") as block_server, \
            GitHttpServer(tmp_path / "srv", c["gitlab"]) as gitlab_server, sampler:
        sha0 = repo.commit(**{qa: qa_doc("flows:c-0"), prod: {"deployments": {f"{flow}/prod": {"job_variables": {
            "image": "flows:c-p"}}}}, gl: {"deployments": {f"{flow}/gl": {"job_variables": {"image": "flows:c-g"}}}}})
        host = f"127.0.0.1:{url_server.port}"
        url_with_password = f"http://alice:{c['giturl']}@{host}/platform/gitops.git"
        wrong_password = f"http://alice:wrong-{c['giturl']}@{host}/platform/gitops.git"
        token_block, gitlab_block = f"canary-token-{u}", f"canary-gitlab-{u}"
        GitOpsSource(url=block_server.url_for("platform/gitops"), token=SecretStr(c["gitblock"]),
                     username="deploy-bot").save(token_block)

        def save_gitlab_block(token: str) -> None:
            GitOpsSource(url=gitlab_server.url_for("platform/gitops"), gitlab_project="platform/gitops",
                         gitlab_credentials=GitLabCredentials(token=token, url=gitlab_server.api_url)).save(
                gitlab_block, overwrite=True)

        def flow_in_process(**parameters) -> dict:
            state, report = run_reconcile_flow(**parameters)
            texts.extend([json.dumps(report, default=str), str(state.message)])
            return report

        # the tests keep Prefect's logs at WARNING: here every run log line goes to the server, to be scanned
        cli_env = {**os.environ, "PREFECT_API_KEY": c["apikey"], "PREFECT_GITOPS_CACHE_DIR": str(cache),
                   "PREFECT_LOGGING_LEVEL": "DEBUG"}

        def cli(*args: str, codes: tuple[int, ...], source: str | None = None,
                own_argv: bool = False) -> subprocess.Popen:
            env = {**cli_env, **({"PREFECT_GITOPS_SOURCE": source} if source else {})}
            argv = [sys.executable, "-m", "prefect_gitops", *args]
            if own_argv:
                sampler.exempt.add("\0".join(argv).encode() + b"\0")
            process = subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            process.codes = codes  # type: ignore[attr-defined]
            return process

        def finish(*processes: subprocess.Popen) -> list[str]:
            outputs = []
            for process in processes:
                out, err = process.communicate(timeout=300)
                texts.extend([out, err])
                assert process.returncode in process.codes, f"{process.args}: exit {process.returncode}\n{out}\n{err}"
                outputs.append(out)
            return outputs

        # the GitOps Source block's token: qa applies sha0 in-process
        assert flow_in_process(environment=qa, source_block=token_block)["status"] == "applied"
        # a GitLab credentials block: applied with a commit status, a refused file, a wrong token
        save_gitlab_block(c["gitlab"])
        assert flow_in_process(environment=gl, source_block=gitlab_block)["status"] == "applied"
        repo.commit(**{gl: {"deployments": {f"{flow}/no-such": {"job_variables": {"image": "flows:c-x"}}}}})
        assert flow_in_process(environment=gl, source_block=gitlab_block)["status"] == "failed"
        save_gitlab_block("wrong-" + c["gitlab"])
        assert flow_in_process(environment=gl, source_block=gitlab_block)["status"] == "failed"
        assert [s["body"]["state"] for s in gitlab_server.statuses] == ["success", "failed"]
        assert [r["authorized"] for r in block_server.requests][-1] is True  # the block's token was used

        # the password in the source URL (through the environment, so the CLI's own argv has none of it)
        sha1 = repo.commit(**{qa: qa_doc("flows:c-1")})
        finish(cli("plan", "--env", qa, codes=(2,), source=url_with_password))
        finish(cli("apply", "--env", qa, "--output", "json", codes=(0,), source=url_with_password))  # smoke passes
        finish(cli("status", "--env", qa, codes=(0,)),
               cli("plan", "--env", qa, codes=(1,), source=wrong_password),
               cli("rollback", "--env", f"none{u}", "--steps", "1", codes=(1,)),
               cli("suspend", "--env", prod, "--reason", "canaries", codes=(0,)),
               # a password given on the command line is the caller's choice: only that process shows it
               cli("promote", "--source", wrong_password, "--from", qa, "--to", prod, codes=(1,), own_argv=True))
        finish(cli("resume", "--env", prod, codes=(0,)), cli("rollback", "--env", qa, "--steps", "1", codes=(0,)))
        repo.commit(**{qa: qa_doc("flows:c-2", exit_code=3)})
        finish(cli("apply", "--env", qa, codes=(1,), source=url_with_password))  # the smoke test fails
        create_deployment("gitops-reconcile", f"reconcile-{qa}", pool)  # no worker polls this pool
        finish(cli("promote", "--source-block", token_block, "--from", qa, "--to", prod, codes=(0,)),
               cli("trigger", "--env", qa, codes=(0,)))
        # image automation's push mode: a commit with the block's token, a merge request with GitLab's
        finish(cli("set-image", "--source-block", token_block, "--env", prod, "--deployment", f"{flow}/prod",
                   "--image", "flows:c-s", codes=(0,)))
        save_gitlab_block(c["gitlab"])
        finish(cli("set-image", "--source-block", gitlab_block, "--env", gl, "--deployment", f"{flow}/no-such",
                   "--image", "flows:c-m", "--merge-request", codes=(0,)))
        assert len(gitlab_server.merge_requests) == 1
    assert len(k8s.created_jobs) == len(k8s.deleted_jobs) == 3  # the smoke Jobs: passed, passed, failed
    assert any(r["authorized"] for r in url_server.requests) and sha1 != sha0

    # the places the server keeps (events last: they are persisted a moment after they are emitted)
    read_events("prefect-gitops.smoke-test.failed", qa)
    places = {"server": server_records(started, [qa, prod, gl, f"none{u}"]), "texts": "\n".join(texts)}
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        places[f"cache:{path.relative_to(cache)}"] = path.read_bytes().decode("latin-1")
    places["process command lines"] = "\n".join(c.decode("latin-1") for c in sampler.seen - sampler.exempt)

    # the scan saw what it had to see: git talking to the servers, the CLI, the cache's config
    assert {"ls-remote", "fetch", "push", "clone"} <= sampler.git_commands(), sampler.git_commands()
    assert any(b"prefect_gitops\0trigger" in c for c in sampler.seen) and sampler.exempt <= sampler.seen
    assert any(p.endswith(".git/config") for p in places) and "smoke test: starting Job" in places["server"]
    hits = [f"{kind} in {place}: ...{text[max(0, at - 150):at + 60]}..." for kind, secret in c.items()
            for form in encoded_forms(secret) for place, text in places.items()
            if (at := text.find(form.decode())) >= 0]
    assert hits == [], "\n\n".join(hits)


def server_records(since: datetime, environments: list[str]) -> str:
    """Everything the server holds that a run of this test may have written, as one text."""
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterStartTime, LogFilter, LogFilterTimestamp,
                                                TaskRunFilter, TaskRunFilterFlowRunId)

    from prefect_gitops.adapters.state_store import record_documents, unpacked

    async def read(client) -> list[str]:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            start_time=FlowRunFilterStartTime(after_=since)), limit=200)
        run_ids = [r.id for r in runs]
        out = [r.model_dump_json() for r in runs]
        out += [t.model_dump_json() for t in await client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=run_ids)), limit=200)]
        out += [a.model_dump_json() for a in await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)), limit=200)]
        offset = 0
        while page := await client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=since)),
                                             limit=200, offset=offset):
            out += [log.model_dump_json() for log in page]
            offset += len(page)
        out += [d.model_dump_json() for d in await client.read_block_documents(include_secrets=False)]
        for env in environments:  # the record, secrets included: it holds none
            # unpacked: a canary inside the packed JSON would not show in the raw document
            out += [json.dumps(unpacked(d), default=str) for d in await record_documents(client, env)]
        return out

    import httpx

    records = run(_with_client(read))
    url = os.environ["PREFECT_API_URL"]
    body = {"filter": {"occurred": {"since": since.isoformat()}, "order": "ASC"}, "limit": 50}
    page = httpx.post(f"{url}/events/filter", json=body, timeout=30).json()
    records += [json.dumps(e) for e in page["events"]]
    while page.get("next_page"):
        page = httpx.get(page["next_page"], timeout=30).json()
        records += [json.dumps(e) for e in page["events"]]
    assert len(records) > 50, "the server holds less than this test wrote"
    return "\n".join(records)
