"""Pull mode against a real registry: Debian's docker-registry (CNCF distribution) with htpasswd auth, images
pushed through the OCI API, a Bearer-token front that also answers 429, and the gitops-image-scan flow on the
session's Prefect server writing back into a real Git repository.

The registry is started once for the module (tests/registry_server.py)."""

from __future__ import annotations

import time

import pytest
import yaml
from pydantic import SecretStr

from helpers import (
    GitRepo,
    cli,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_artifacts,
    read_events,
    run,
    run_reconcile_flow,
    uid,
)
from registry_server import PASSWORD, SYNTHETIC, SYNTHETIC_TAGS, USER, RegistryServer, TokenFront, available

from prefect_gitops.adapters.registry import Registry, RegistryCredentials, RegistryError, RegistryRefused
from prefect_gitops.errors import PermanentError, TransientError
from prefect_gitops.image_policy import ImagePolicy, TagSelector

pytestmark = pytest.mark.skipif(not available(), reason="docker-registry (Debian package) is not installed")

CREDS = RegistryCredentials(USER, SecretStr(PASSWORD))
APP_TAGS = ["1.0.0", "1.2.0", "1.10.0", "2.0.0", "2.1.0-rc.1", "latest", "main-abc"]
JOB_TAGS = ["main-100", "main-99", "main-1000", "feature-7", "main-x"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    server.digests = server.push("team/app", *APP_TAGS)
    server.push("team/job", *JOB_TAGS)
    server.push("team/many", *[f"0.{i}.0" for i in range(25)], distinct=False)
    front = TokenFront(server).start()
    server.front = front
    yield server
    front.stop()
    server.stop()


async def all_pages(registry: Registry, path: str) -> list[list[str]]:
    return [page async for page in registry.tag_pages(path)]


def test_basic_auth_lists_tags_and_reads_digests(registry):
    async def go():
        async with Registry(registry.host, CREDS, insecure=True, page_size=10) as r:
            pages = await all_pages(r, "team/many")
            digest = await r.digest("team/app", "1.10.0")
        return pages, digest

    pages, digest = run(go())
    # Debian's registry (distribution 2.8) answers the whole list at once: one page, no Link
    assert sorted(t for p in pages for t in p) == sorted(f"0.{i}.0" for i in range(25))
    assert digest == registry.digests["1.10.0"]


def test_refusals_are_permanent_and_keep_the_password_out(registry):
    async def attempt(host, creds, path="team/app"):
        async with Registry(host, creds, insecure=True) as r:
            return await all_pages(r, path)

    for host, creds, says in [
        (registry.host, None, "needs credentials"),
        (registry.host, RegistryCredentials(USER, SecretStr("wrong-" + PASSWORD)), r"refused the credentials \(401\)"),
        (registry.front.host, RegistryCredentials(USER, SecretStr("wrong-" + PASSWORD)), "token service refused"),
    ]:
        with pytest.raises(RegistryRefused, match=says) as caught:
            run(attempt(host, creds))
        assert isinstance(caught.value, PermanentError) and PASSWORD not in str(caught.value)
    with pytest.raises(RegistryRefused, match="404"):
        run(attempt(registry.host, CREDS, "team/nothing-here"))


def test_bearer_challenge_link_paging_and_429_retry_after(registry):
    front = registry.front
    front.throttle = 1

    async def go():
        async with Registry(front.host, CREDS, insecure=True, page_size=10) as r:
            return await all_pages(r, "team/many"), await r.digest("team/app", "1.2.0")

    started = time.monotonic()
    pages, digest = run(go())
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert [len(p) for p in pages] == [10, 10, 5]  # three requests, each at most n tags (Link: rel="next")
    assert sorted(t for p in pages for t in p) == sorted(f"0.{i}.0" for i in range(25))
    assert digest == registry.digests["1.2.0"]
    assert front.token_requests[-2:] == [{"service": "test-front", "scope": "repository:team/many:pull"},
                                         {"service": "test-front", "scope": "repository:team/app:pull"}]
    front.throttle = 10

    async def gives_up():
        async with Registry(front.host, CREDS, insecure=True, attempts=2, backoff=0.01) as r:
            return await all_pages(r, "team/many")

    with pytest.raises(RegistryError, match="429; gave up after 2 attempts") as caught:
        run(gives_up())
    assert isinstance(caught.value, TransientError)
    front.throttle = 0


def test_ten_thousand_tags_are_paged_not_loaded_whole(registry):
    policy = ImagePolicy.model_validate({"repository": f"{registry.front.host}/{SYNTHETIC}",
                                         "policy": {"semver": {"range": "^9"}}})
    selector = TagSelector(policy)

    async def go():
        async with Registry(registry.front.host, CREDS, insecure=True) as r:
            async for page in r.tag_pages(SYNTHETIC):
                selector.feed(page)

    registry.front.page_sizes.clear()
    run(go())
    chosen = selector.result()
    assert registry.front.page_sizes == [500] * (SYNTHETIC_TAGS // 500)
    assert (chosen.tag, chosen.seen, chosen.unparseable) == ("9.999.0", SYNTHETIC_TAGS, SYNTHETIC_TAGS // 100)


# -- the flow, end to end -------------------------------------------------------------------------------

def test_the_scan_writes_the_newest_allowed_images_back_and_reports_per_target(registry, tmp_path):
    from prefect_docker.credentials import DockerRegistryCredentials

    from prefect_gitops.image_scan_flow import image_scan

    u = uid()
    env, pool, block = f"scan-{u}", f"scan-pool-{u}", f"registry-{u}"
    nightly, missing = f"etl-{u}/nightly", f"etl-{u}/missing"
    DockerRegistryCredentials(username=USER, password=PASSWORD, registry_url=registry.host).save(block)
    front = registry.front.host
    common = {"credentials_block": block, "insecure": True}
    repo = GitRepo(tmp_path / "gitops")
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    repo.commit_env(env, yaml.safe_dump({
        "work_pools": {pool: {
            "job_variables": {"image": f"{registry.host}/team/app:1.0.0"},
            "image_policy": {"repository": f"{registry.host}/team/app", "policy": {"semver": {"range": ">=1.0.0 <2"}},
                             "pin_digest": True, **common}}},
        "deployments": {
            nightly: {  # behind the Bearer front
                "job_variables": {"image": f"{front}/team/job:main-100"},
                "image_policy": {"repository": f"{front}/team/job", "policy": {"numerical": {"order": "asc"}},
                                 "filter_tags": {"pattern": r"^main-(?P<n>\d+)$", "extract": "$n"}, **common}},
            missing: {
                "image_policy": {"repository": f"{registry.host}/team/nothing-here",
                                 "policy": {"alphabetical": {}}, **common}}},
    }, sort_keys=False) + "# a comment the write-back keeps\n")

    state = run(image_scan(environment=env, source_url=repo.url, return_state=True))
    assert state.is_failed() and missing in state.message  # one registry failed; the others were written
    text = (repo.root / "environments" / f"{env}.yaml").read_text()
    app = f"{registry.host}/team/app:1.10.0@{registry.digests['1.10.0']}"
    assert f"image: {app}" in text and f"image: {front}/team/job:main-1000" in text
    assert text.endswith("# a comment the write-back keeps\n")
    failed = read_events("prefect-gitops.image.scan-failed", env)[0]
    assert failed["payload"]["target"] == missing and failed["payload"]["error_kind"] == "permanent"
    updated = read_events("prefect-gitops.image.updated", env, count=2)
    assert {(e["payload"]["target"], e["payload"]["new_image"]) for e in updated} == {
        (pool, app), (nightly, f"{front}/team/job:main-1000")}
    # the scan's artifact: per target the policy, the newest tag, and what was written back
    [artifact] = read_artifacts(f"gitops-image-scan-{env}")[:1]
    assert f"`{app}`" in artifact.data and "main-1000" in artifact.data and missing in artifact.data, artifact.data

    # the normal reconcile applies what the scan committed: read back from the server
    create_pool(pool)
    for name in (nightly, missing):
        create_deployment(*name.split("/"), pool)
    state, applied = run_reconcile_flow(environment=env, source_url=repo.url)
    assert state.is_completed() and applied["revision"] == repo.git("rev-parse", "HEAD"), applied
    assert pool_default(pool, "image") == app
    assert deployment_job_variables(nightly) == {"image": f"{front}/team/job:main-1000"}

    # again: now current, the write-back kept from the first scan
    state = run(image_scan(environment=env, source_url=repo.url, return_state=True))
    assert state.is_failed() and "1 of 3 target(s) failed" in state.message
    shown = cli("status", "--env", env, check_codes=(0,)).stdout
    assert f"work_pool {pool}: semver >=1.0.0 <2, digest pinned" in shown
    assert "newest tag 1.10.0 of 7 (2 unparseable), scanned" in shown and ": current" in shown
    assert f"written back: {app} at " in shown
    assert "newest tag main-1000 of 5 (0 unparseable)" in shown
    assert f"{missing}: alphabetical asc" in shown and "404" in shown


def test_a_policy_asking_for_a_merge_request_gets_one_and_the_branch_is_left_alone(registry, tmp_path):
    """`write_back: merge-request` in the policy: the scan proposes the image through GitLab's API (here the
    stand-in's merge request endpoints) over real authenticated Git HTTP; the branch itself does not move."""
    import secrets
    import subprocess

    from prefect_docker.credentials import DockerRegistryCredentials
    from prefect_gitlab import GitLabCredentials

    from git_http_server import GitHttpServer
    from helpers import GIT_ID
    from prefect_gitops.blocks import GitOpsSource
    from prefect_gitops.image_scan_flow import image_scan

    def git(*args: str) -> str:
        return subprocess.run(["git", *GIT_ID, *args], check=True, capture_output=True, text=True).stdout.strip()

    env, pool, credentials, source = f"scanmr-{uid()}", f"scan-mr-{uid()}", f"registry-{uid()}", f"source-{uid()}"
    DockerRegistryCredentials(username=USER, password=PASSWORD, registry_url=registry.host).save(credentials)
    token = "glpat-" + secrets.token_hex(12)
    with GitHttpServer(tmp_path / "srv", token) as server:
        bare, seed = tmp_path / "srv" / "platform" / "gitops.git", tmp_path / "seed"
        git("init", "-q", "--bare", "-b", "main", str(bare))
        git("clone", "-q", str(bare), str(seed))
        (seed / "environments").mkdir()
        (seed / "environments" / f"{env}.yaml").write_text(yaml.safe_dump({"work_pools": {pool: {
            "job_variables": {"image": f"{registry.host}/team/app:1.0.0"},
            "image_policy": {"repository": f"{registry.host}/team/app", "policy": {"semver": {"range": "^1.0.0"}},
                             "write_back": "merge-request", "credentials_block": credentials, "insecure": True}}}}))
        git("-C", str(seed), "add", "-A")
        git("-C", str(seed), "commit", "-q", "-m", "seed")
        git("-C", str(seed), "push", "-q", "origin", "main")
        main = git("-C", str(bare), "rev-parse", "main")
        GitOpsSource(url=server.url_for("platform/gitops"), gitlab_project="platform/gitops",
                     gitlab_credentials=GitLabCredentials(token=token, url=server.api_url)).save(source)

        state = run(image_scan(environment=env, source_block=source, return_state=True))
        assert state.is_completed(), state.message
        [mr] = server.merge_requests
        assert f"`{registry.host}/team/app:1.10.0`" in mr["description"] and mr["target_branch"] == "main"
        assert git("-C", str(bare), "rev-parse", "main") == main  # proposed, not committed
        proposed = git("-C", str(bare), "show", f"{mr['source_branch']}:environments/{env}.yaml")
        assert f"image: {registry.host}/team/app:1.10.0" in proposed
        shown = cli("status", "--env", env, check_codes=(0,)).stdout
        assert "as a merge request" in shown and mr["web_url"] in shown
