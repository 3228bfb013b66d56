"""Push mode (`set-image`, the gitops-set-image flow): an application pipeline writes its new image into the
GitOps repo, served over real authenticated Git HTTP (`git_http_server.py`), and the next reconcile
applies it; racing pipelines lose no edit; write-back as a merge request against the stand-in's GitLab
merge request endpoints; bad input refused with nothing pushed."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from git_http_server import GitHttpServer
from helpers import (
    GIT_ID,
    _with_client,
    cli,
    cli_json,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_events,
    run,
    run_reconcile_flow,
    uid,
)

ENV_FILE = """\
# {env}: the application pipelines write the images (set-image)
work_pools:
  {pool}:
    job_variables:
      image: reg.example.com/base:1   # the pool's default
deployments:
  {flow}/app:
    job_variables:
      image: reg.example.com/app:1.0   # set by app's pipeline
  {flow}/worker:
    job_variables:
      image: reg.example.com/worker:1
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], check=True, capture_output=True, text=True).stdout.strip()


class Repo:
    """A GitOps repo with one environment file, served by a token-checking Git HTTP server."""

    def __init__(self, tmp_path: Path, server: GitHttpServer, env: str, pool: str, flow: str):
        self.bare = tmp_path / "srv" / "platform" / "gitops.git"
        self.file = f"environments/{env}.yaml"
        self.text = ENV_FILE.format(env=env, pool=pool, flow=flow)
        self.url = server.url_for("platform/gitops")
        self.server = server
        git("init", "-q", "--bare", "-b", "main", str(self.bare))
        work = tmp_path / "seed"
        git("clone", "-q", str(self.bare), str(work))
        (work / "environments").mkdir()
        (work / self.file).write_text(self.text)
        git("-C", str(work), "add", "-A")
        git("-C", str(work), "commit", "-q", "-m", "seed")
        git("-C", str(work), "push", "-q", "origin", "main")

    def show(self, rev: str = "main") -> str:
        return git("-C", str(self.bare), "show", f"{rev}:{self.file}") + "\n"

    def rev(self, rev: str = "main") -> str:
        return git("-C", str(self.bare), "rev-parse", rev)

    def pushes(self) -> int:
        """Push attempts so far (git asks for the receive-pack refs once per push)."""
        return sum(1 for r in self.server.requests if r.get("query") == "service=git-receive-pack")


@pytest.fixture
def world(tmp_path):
    from prefect_gitops.blocks import GitOpsSource

    u = uid()
    env, pool, flow = f"si{u}", f"k8s-si-{u}", f"si-{u}"
    token = "glpat-" + secrets.token_hex(12)
    with GitHttpServer(tmp_path / "srv", token, username="deploy-bot") as server:
        repo = Repo(tmp_path, server, env, pool, flow)
        block = f"set-image-{u}"
        GitOpsSource(url=repo.url, token=SecretStr(token), username="deploy-bot").save(block)
        yield {"env": env, "pool": pool, "flow": flow, "token": token, "repo": repo, "block": block, "server": server}


async def _set_image(**parameters):
    from prefect_gitops.flows import set_image

    state = await set_image(**parameters, return_state=True)
    return state, await state.result(raise_on_failure=False)


def set_image(**parameters):
    return run(_set_image(**parameters))


def test_set_image_commits_the_image_line_and_the_reconcile_applies_it(world, monkeypatch):
    env, flow, repo = world["env"], world["flow"], world["repo"]
    create_pool(world["pool"])
    for name in ("app", "worker"):
        create_deployment(flow, name, world["pool"])
    before = repo.rev()

    state, report = set_image(environment=env, deployment=f"{flow}/app", image="reg.example.com/app:1.1",
                              source_block=world["block"], message="app pipeline https://ci.example.com/p/42",
                              author="Jane Doe <jane@example.com>")
    assert state.is_completed(), report
    this_run = state.state_details.flow_run_id
    assert report["status"] == "committed" and report["revision"] == repo.rev() != before
    assert report["changes"] == [{"target_type": "deployment", "target": f"{flow}/app", "key": "image",
                                  "old": "reg.example.com/app:1.0", "new": "reg.example.com/app:1.1",
                                  "outcome": "committed"}]
    # exactly the image line changed, in one commit on top of the seed, made for the pipeline's user and
    # committed by prefect-gitops, naming the pipeline and the flow run that wrote it
    assert repo.show() == repo.text.replace("app:1.0   #", "app:1.1   #")
    assert repo.rev("main~1") == before
    name = run(_with_client(lambda client: client.read_flow_run(this_run))).name
    assert git("-C", str(repo.bare), "log", "-1", "--format=%an <%ae>%n%cn <%ce>%n%B", "main") == (
        f"Jane Doe <jane@example.com>\nprefect-gitops <prefect-gitops@localhost>\n"
        f"prefect-gitops: set image of deployment {flow}/app in {env}\n\n"
        f"deployment {flow}/app: reg.example.com/app:1.0 -> reg.example.com/app:1.1\n\n"
        f"app pipeline https://ci.example.com/p/42\n\nPrefect-Flow-Run: {this_run} ({name})")

    # the same image again: nothing committed, nothing pushed
    pushes = repo.pushes()
    state, again = set_image(environment=env, deployment=f"{flow}/app", image="reg.example.com/app:1.1",
                             source_block=world["block"])
    assert state.is_completed() and again["status"] == "unchanged" and again["changes"] == []
    assert repo.rev() == report["revision"] and repo.pushes() == pushes

    # the CLI in a GitLab CI job: --source with the token in its URL, a work pool, and GitLab's variables
    # giving the message and the author
    for name, value in {"CI_PROJECT_PATH": "team/base", "CI_PIPELINE_URL": "https://ci.example.com/p/43",
                        "GITLAB_USER_NAME": "Ci User", "GITLAB_USER_EMAIL": "ci@example.com"}.items():
        monkeypatch.setenv(name, value)
    url = repo.url.replace("://", f"://deploy-bot:{world['token']}@", 1)
    _, by_cli = cli_json("set-image", "--source", url, "--env", env, "--work-pool", world["pool"],
                         "--image", "reg.example.com/base:2")
    assert by_cli["status"] == "committed" and repo.rev("main~1") == report["revision"]
    assert repo.show() == repo.text.replace("app:1.0   #", "app:1.1   #").replace("base:1", "base:2")
    body = git("-C", str(repo.bare), "log", "-1", "--format=%an <%ae>%n%B", "main")
    assert body.startswith(f"Ci User <ci@example.com>\nprefect-gitops: set image of work pool {world['pool']} in {env}\n\n"
                           f"work pool {world['pool']}: reg.example.com/base:1 -> reg.example.com/base:2\n\n"
                           "team/base pipeline https://ci.example.com/p/43\n\nPrefect-Flow-Run: "), body
    assert world["token"] not in json.dumps(by_cli)

    # the normal reconcile applies the commits: the images read back from the server
    state, applied = run_reconcile_flow(environment=env, source_block=world["block"])
    assert state.is_completed() and applied["revision"] == by_cli["revision"], applied
    assert deployment_job_variables(f"{flow}/app") == {"image": "reg.example.com/app:1.1"}
    assert pool_default(world["pool"], "image") == "reg.example.com/base:2"

    pool_event, event = read_events("prefect-gitops.image.updated", env, count=2)  # newest first
    assert (pool_event["payload"]["target"], pool_event["payload"]["revision"]) == (world["pool"], by_cli["revision"])
    assert pool_event["payload"]["repository"] == repo.url  # the URL without its token
    assert event["payload"] == {
        "environment": env, "target_type": "deployment", "target": f"{flow}/app", "old_image": "reg.example.com/app:1.0",
        "new_image": "reg.example.com/app:1.1", "outcome": "committed", "revision": report["revision"],
        "branch": "main", "file": repo.file, "merge_request_url": None, "repository": repo.url}
    assert world["token"] not in json.dumps([report, again, event, pool_event])


def test_racing_pipelines_lose_no_edit(world):
    env, flow, repo = world["env"], world["flow"], world["repo"]
    world["server"].delay = 0.1  # both clones see the same tip: the second push is refused, then re-applied

    async def race(*images_and_targets):
        return await asyncio.gather(*(_set_image(environment=env, deployment=target, image=image,
                                                 source_block=world["block"]) for target, image in images_and_targets))

    # different targets of one file: both edits land, one after the other
    before, pushes = repo.rev(), repo.pushes()
    runs = run(race((f"{flow}/app", "reg.example.com/app:2"), (f"{flow}/worker", "reg.example.com/worker:2")))
    assert [report["status"] for _, report in runs] == ["committed", "committed"], runs
    assert repo.show() == repo.text.replace("app:1.0", "app:2").replace("worker:1", "worker:2")
    assert repo.rev("main~2") == before and repo.pushes() - pushes >= 3  # one push was refused and retried

    # one target, two images: both runs succeed, each commit lands, the later one's report says what it replaced
    before = repo.rev()
    runs = run(race((f"{flow}/app", "reg.example.com/app:3"), (f"{flow}/app", "reg.example.com/app:4")))
    assert [report["status"] for _, report in runs] == ["committed", "committed"], runs
    first, second = sorted((report for _, report in runs), key=lambda r: r["revision"] == repo.rev())
    assert repo.rev("main~1") == first["revision"] and repo.rev() == second["revision"]
    assert repo.rev("main~2") == before
    assert second["changes"][0]["old"] == first["changes"][0]["new"]
    assert f"image: {second['changes'][0]['new']}   # set by" in repo.show()


def test_merge_request_is_opened_then_updated_never_duplicated(world, tmp_path):
    from prefect_gitlab import GitLabCredentials

    from prefect_gitops.blocks import GitOpsSource
    from prefect_gitops.image_write import ImageWrite, branch_for

    env, pool, repo, server = world["env"], world["pool"], world["repo"], world["server"]
    server.username = None  # GitLab access tokens: any user name, here oauth2
    block = f"{world['block']}-gl"
    GitOpsSource(url=repo.url, gitlab_project="platform/gitops",
                 gitlab_credentials=GitLabCredentials(token=world["token"], url=server.api_url)).save(block)
    branch = branch_for(ImageWrite(environment=env, target_type="work_pool", target=pool, image="x"))
    main = repo.rev()

    state, report = set_image(environment=env, work_pool=pool, image="reg.example.com/base:2", merge_request=True,
                              source_block=block, message="base image pipeline 7")
    assert state.is_completed(), report
    assert report["status"] == "merge-request" and report["branch"] == branch
    [mr] = server.merge_requests
    assert report["merge_request_url"] == mr["web_url"] and mr["source_branch"] == branch
    assert mr["target_branch"] == "main" and mr["state"] == "opened"
    assert mr["title"] == f"prefect-gitops: work pool {pool} in {env} -> reg.example.com/base:2"
    assert (f"| work pool `{pool}` | job_variables.image | `reg.example.com/base:1` | `reg.example.com/base:2` |"
            in mr["description"])
    assert "- none (smoke_test kind none)" in mr["description"] and "base image pipeline 7" in mr["description"]
    assert repo.rev() == main  # nothing committed to the branch the reconcile follows
    assert repo.show(branch) == repo.text.replace("base:1   #", "base:2   #") and repo.rev(f"{branch}~1") == main

    # a later image for the same target: the same merge request, updated; its branch replaced
    state, later = set_image(environment=env, work_pool=pool, image="reg.example.com/base:3", merge_request=True,
                             source_block=block)
    assert later["status"] == "merge-request" and later["merge_request_url"] == mr["web_url"]
    assert len(server.merge_requests) == 1 and mr["updates"] == 1 and "`reg.example.com/base:3`" in mr["description"]
    assert repo.show(branch) == repo.text.replace("base:1   #", "base:3   #") and repo.rev(f"{branch}~1") == main

    # the image already proposed: nothing pushed, still one merge request
    pushes = repo.pushes()
    state, same = set_image(environment=env, work_pool=pool, image="reg.example.com/base:3", merge_request=True,
                            source_block=block)
    assert same["status"] == "unchanged" and repo.pushes() == pushes and len(server.merge_requests) == 1
    assert server.unhandled == []

    events = read_events("prefect-gitops.image.updated", env, count=2)
    assert [(e["payload"]["new_image"], e["payload"]["outcome"], e["payload"]["merge_request_url"])
            for e in events] == [("reg.example.com/base:3", "merge-request", mr["web_url"]),
                                 ("reg.example.com/base:2", "merge-request", mr["web_url"])]
    assert world["token"] not in json.dumps([report, later, same, events, server.merge_requests])


def test_bad_input_is_refused_with_nothing_pushed(world):
    env, flow, repo = world["env"], world["flow"], world["repo"]
    before = repo.rev()

    # a deployment the file does not name: the file, its line and the key; the clone read, nothing pushed
    done = cli("set-image", "--source-block", world["block"], "--env", env, "--deployment", f"{flow}/nope",
               "--image", "reg.example.com/app:9", check_codes=(1,))
    assert f"error: {repo.file}:6: deployments.{flow}/nope: no deployment '{flow}/nope' in this file " \
           f"(it names {flow}/app, {flow}/worker); add it to the file first" in done.stdout, done.stdout
    assert repo.rev() == before and repo.pushes() == 0

    # an image that does not parse: refused before the repository is even read (the flow, as a deployment runs it)
    requests = len(world["server"].requests)
    state, report = set_image(environment=env, work_pool=world["pool"], image="Reg.example.com/Base:2",
                              source_block=world["block"])
    assert state.is_failed() and state.message == report["message"]
    assert report["status"] == "failed" and report["message"] == (
        f"work pool {world['pool']} in {env}: image 'Reg.example.com/Base:2': the repository name must be "
        "lowercase, got 'Base'; nothing was written")
    assert len(world["server"].requests) == requests and repo.rev() == before

    # an author that is not "Name <email>": refused before the repository is read
    state, report = set_image(environment=env, work_pool=world["pool"], image="reg.example.com/base:2",
                              source_block=world["block"], author="ci-bot")
    assert state.is_failed() and report["message"] == (
        "author 'ci-bot': expected 'Name <email>', e.g. 'Jane Doe <jane@example.com>'; nothing was written")
    assert len(world["server"].requests) == requests and repo.rev() == before

    # neither or both of --deployment and --work-pool
    done = cli("set-image", "--source-block", world["block"], "--env", env, "--image", "a:1", check_codes=(1,))
    assert done.stderr == "give exactly one of --deployment NAME or --work-pool NAME\n"


def test_a_named_gitops_policy_block_refuses_the_image_with_nothing_pushed(world):
    """As the reconcile's `policy_block`: a block named by --policy-block (a named one, so it binds no other
    test's reconcile as the default gitops-policy block would) refuses an image from a registry it does not
    allow, naming file, line and key, before anything is pushed; a name with no block is refused too."""
    from prefect_gitops.blocks import GitOpsPolicy

    env, flow, repo = world["env"], world["flow"], world["repo"]
    policy = f"policy-{world['block']}"
    GitOpsPolicy(all_targets={"allowed_images": ["reg.example.com/"]}).save(policy)
    before = repo.rev()

    done = cli("set-image", "--source-block", world["block"], "--env", env, "--deployment", f"{flow}/app",
               "--image", "evil.example.com/app:2", "--policy-block", policy, "--output", "json", check_codes=(1,))
    report = json.loads(done.stdout)
    [error] = report["errors"]
    assert (error["file"], error["line"], error["key"]) == (repo.file, 9, f"deployments.{flow}/app.job_variables.image")
    assert "is not from a registry the GitOps policy allows (reg.example.com/)" in error["message"], error
    assert repo.rev() == before and repo.pushes() == 0

    done = cli("set-image", "--source-block", world["block"], "--env", env, "--deployment", f"{flow}/app",
               "--image", "reg.example.com/app:2", "--policy-block", f"{policy}-gone", "--output", "json",
               check_codes=(1,))
    assert json.loads(done.stdout)["message"] == (f"the GitOps Policy block '{policy}-gone' does not exist on the "
                                                  "Prefect server (block type gitops-policy); nothing was written")
    assert repo.rev() == before and repo.pushes() == 0

    # an image the policy allows is written
    cli("set-image", "--source-block", world["block"], "--env", env, "--deployment", f"{flow}/app",
        "--image", "reg.example.com/app:2", "--policy-block", policy)
    assert "image: reg.example.com/app:2   # set by app's pipeline" in repo.show()
