"""The write side of Git: `set_images` (yaml_edit, a pure text edit) and `GitWriter` (clone, commit, push).

The GitWriter tests use real repositories made with the git CLI (a bare repo
reached through file://); no Prefect server is needed.
"""

from __future__ import annotations

import difflib
import re
import subprocess
from pathlib import Path

import pytest

from prefect_gitops.adapters.git_write import GitWriter
from prefect_gitops.errors import GitOpsError, PermanentError, TransientError
from prefect_gitops.yaml_edit import set_images

# ---------------------------------------------------------------------------
# set_images
# ---------------------------------------------------------------------------

COMMENTED = """\
---
# prod: promoted from qa, do not edit images by hand
work_pools:
  k8s-pool:   # the main pool
    job_variables:
      image: registry.example.com/etl:1.0   # promoted
      env: { LOG_LEVEL: "info" }
      cpu:    "500m"
      node_selector: ~

deployments:
  # nightly
  etl/daily:
    job_variables:
      image: registry.example.com/etl:1.0
      env:
        X: "1"
drift:
  mode: warn
"""

FLOW = """\
deployments:
  etl/daily:
    job_variables: {image: a, env: {X: "1"}}
  etl/hourly: {job_variables: {env: {X: "1"}}}
"""

QUOTED = """\
work_pools:
  'k8s':
    job_variables:
      image: 'reg/a:1'
deployments:
  "etl/daily":
    job_variables:
      image: "reg/a:1"  # double
"""

NO_JOB_VARIABLES = """\
deployments:
  etl/daily:
    smoke_test:
      kind: none
  # the next one
  etl/hourly:
    job_variables:
      image: x
"""

FOUR_SPACES = """\
work_pools:
    k8s:
        job_variables:
            image: reg/a:1
            env:
                X: "1"
deployments:
    etl/daily:
        job_variables:
            env: {}
"""

IMAGE_LINES = "image-lines"  # an in-place update: only image lines change
# otherwise: the exact lines removed (keys are added as new lines, or inside a flow mapping's line)
CASES = [
    pytest.param(
        COMMENTED,
        {("work_pools", "k8s-pool"): "registry.example.com/etl:2.0",
         ("deployments", "etl/daily"): "registry.example.com/etl@sha256:abc123"},
        COMMENTED.replace("image: registry.example.com/etl:1.0   # promoted",
                          "image: registry.example.com/etl:2.0   # promoted")
                 .replace("      image: registry.example.com/etl:1.0\n",
                          "      image: registry.example.com/etl@sha256:abc123\n"),
        IMAGE_LINES, id="existing-image-with-comments"),
    pytest.param(
        FLOW, {("deployments", "etl/daily"): "reg/etl:2"},
        FLOW.replace("{image: a, env", "{image: reg/etl:2, env"),
        IMAGE_LINES, id="flow-style-mapping"),
    pytest.param(
        FLOW, {("deployments", "etl/hourly"): "reg/etl:2"},
        FLOW.replace('{job_variables: {env: {X: "1"}}}', '{job_variables: {env: {X: "1"}, image: reg/etl:2}}'),
        ['  etl/hourly: {job_variables: {env: {X: "1"}}}'], id="flow-style-mapping-missing-image"),
    pytest.param(
        QUOTED,
        {("work_pools", "k8s"): "reg/a:2", ("deployments", "etl/daily"): 'reg/a:2 "x"'},
        QUOTED.replace("image: 'reg/a:1'", "image: 'reg/a:2'")
              .replace('image: "reg/a:1"  # double', 'image: "reg/a:2 \\"x\\""  # double'),
        IMAGE_LINES, id="quoted-strings-keep-their-quotes"),
    pytest.param(
        NO_JOB_VARIABLES, {("deployments", "etl/daily"): "reg/etl:2"},
        """\
deployments:
  etl/daily:
    smoke_test:
      kind: none
    job_variables:
      image: reg/etl:2
  # the next one
  etl/hourly:
    job_variables:
      image: x
""", [], id="target-without-job-variables"),
    pytest.param(
        NO_JOB_VARIABLES, {("deployments", "etl/weekly"): "reg/etl:2", ("work_pools", "k8s"): "reg/base:1"},
        NO_JOB_VARIABLES + """\
  etl/weekly:
    job_variables:
      image: reg/etl:2
work_pools:
  k8s:
    job_variables:
      image: reg/base:1
""", [], id="target-and-section-missing"),
    pytest.param(
        "deployments:\n  etl/daily:\n  etl/hourly: ~  # later\n",
        {("deployments", "etl/daily"): "a:1", ("deployments", "etl/hourly"): "b:1"},
        "deployments:\n  etl/daily:\n    job_variables:\n      image: a:1\n"
        "  etl/hourly:  # later\n    job_variables:\n      image: b:1\n",
        ["  etl/hourly: ~  # later"], id="empty-targets"),
    pytest.param(
        FOUR_SPACES, {("work_pools", "k8s"): "reg/a:2"},
        FOUR_SPACES.replace("image: reg/a:1", "image: reg/a:2"),
        IMAGE_LINES, id="four-spaces-update"),
    pytest.param(
        FOUR_SPACES, {("deployments", "etl/daily"): "reg/b:1", ("deployments", "etl/new"): "reg/c:1"},
        FOUR_SPACES + """\
            image: reg/b:1
    etl/new:
        job_variables:
            image: reg/c:1
""", [], id="four-spaces-insert"),
    pytest.param(
        "# nothing yet\n", {("work_pools", "k8s"): "reg/a:1"},
        "# nothing yet\nwork_pools:\n  k8s:\n    job_variables:\n      image: reg/a:1\n",
        [], id="file-with-only-a-comment"),
    pytest.param(
        "work_pools:\r\n  k8s:\r\n    job_variables:\r\n      image: a  # c\r\n",
        {("work_pools", "k8s"): "b", ("work_pools", "other"): "c"},
        "work_pools:\r\n  k8s:\r\n    job_variables:\r\n      image: b  # c\r\n"
        "  other:\r\n    job_variables:\r\n      image: c\r\n",
        ["      image: a  # c"], id="crlf-line-endings"),
    pytest.param(
        "work_pools:\n  k8s:\n    job_variables:\n      image: &img a\n"
        "deployments:\n  etl/daily:\n    job_variables:\n      image: *img\n",
        {("deployments", "etl/daily"): "b"},
        "work_pools:\n  k8s:\n    job_variables:\n      image: &img a\n"
        "deployments:\n  etl/daily:\n    job_variables:\n      image: b\n",
        IMAGE_LINES, id="alias-replaced-locally"),
    pytest.param(
        COMMENTED, {("work_pools", "k8s-pool"): "v1", ("deployments", "etl/daily"): "true"},
        COMMENTED.replace("image: registry.example.com/etl:1.0   # promoted", "image: v1   # promoted")
                 .replace("      image: registry.example.com/etl:1.0\n", '      image: "true"\n'),
        IMAGE_LINES, id="values-that-would-not-read-back-as-strings-are-quoted"),
]


def _changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("text, updates, expected, removed", CASES)
def test_set_images(text, updates, expected, removed):
    result = set_images(text, updates)
    assert result == expected
    changed = _changed_lines(text, result)
    assert changed, "the update changed nothing"
    if removed == IMAGE_LINES:
        assert all("image:" in line for line in changed), changed
        # as many lines removed as added: an in-place edit
        assert sum(line.startswith("-") for line in changed) == sum(line.startswith("+") for line in changed)
    else:
        assert [line[1:] for line in changed if line.startswith("-")] == removed
    assert set_images(result, updates) == result  # idempotent


def test_set_images_returns_the_same_text_when_nothing_changes():
    assert set_images(COMMENTED, {("work_pools", "k8s-pool"): "registry.example.com/etl:1.0"}) is COMMENTED
    assert set_images(QUOTED, {("deployments", "etl/daily"): "reg/a:1"}) is QUOTED
    assert set_images(FLOW, {}) is FLOW


@pytest.mark.parametrize("text, updates, match", [
    pytest.param("work_pools: {}\n", {("flows", "x"): "a"}, "unknown section", id="bad-section"),
    pytest.param("work_pools:\n  k8s:\n    job_variables:\n      image: [a]\n",
                 {("work_pools", "k8s"): "b"}, "not a string", id="image-is-a-list"),
    pytest.param("work_pools:\n  - k8s\n", {("work_pools", "k8s"): "b"}, "expected a mapping", id="section-is-a-list"),
    pytest.param("- a\n", {("work_pools", "k8s"): "b"}, "top level", id="top-level-list"),
    pytest.param("work_pools: {k8s: [\n", {("work_pools", "k8s"): "b"}, "invalid YAML", id="invalid-yaml"),
    pytest.param("base: &jv {image: a}\nwork_pools:\n  k8s:\n    job_variables: *jv\n",
                 {("work_pools", "k8s"): "b"}, "alias", id="job-variables-alias"),
    pytest.param("work_pools:\n  k8s:\n    job_variables: &jv {image: a}\n  gpu:\n    job_variables: *jv\n",
                 {("work_pools", "k8s"): "b"}, "without changing other values", id="anchor-shared-elsewhere"),
])
def test_set_images_refuses_edits_it_cannot_make_cleanly(text, updates, match):
    with pytest.raises(PermanentError, match=match):
        set_images(text, updates)


# ---------------------------------------------------------------------------
# GitWriter, against real repositories
# ---------------------------------------------------------------------------

PROD = """\
# prod environment
work_pools:
  k8s:
    job_variables:
      image: reg/etl:1.0   # promoted from qa
      env: { LOG_LEVEL: "info" }
deployments:
  etl/daily:
    job_variables:
      image: reg/etl:1.0
drift:
  mode: correct
"""
PROMOTE = {("work_pools", "k8s"): "reg/etl:2.0", ("deployments", "etl/daily"): "reg/etl:2.0"}
SHA = re.compile(r"^[0-9a-f]{40}$")


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path, monkeypatch):
    """No global or system git config (so no user.name), no identity or proxy variables."""
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                 "GIT_DIR", "GIT_WORK_TREE", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def push_change(bare: Path, where: Path, change, message: str) -> str:
    """Clone `bare` into `where`, apply `change(worktree)`, commit as someone else and push; the new SHA."""
    if not where.exists():
        git("clone", "-q", bare.as_uri(), str(where))
    else:
        git("-C", str(where), "pull", "-q", "--ff-only")
    change(where)
    git("-C", str(where), "add", "-A")
    git("-C", str(where), "-c", "user.name=someone", "-c", "user.email=someone@example.com",
        "-c", "commit.gpgsign=false", "commit", "-q", "-m", message)
    git("-C", str(where), "push", "-q", "origin", "HEAD:refs/heads/main")
    return git("-C", str(where), "rev-parse", "HEAD").strip()


@pytest.fixture
def bare(tmp_path) -> Path:
    bare = tmp_path / "gitops.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))

    def seed(worktree: Path) -> None:
        (worktree / "environments").mkdir()
        (worktree / "environments" / "prod.yaml").write_text(PROD)
        (worktree / "README.md").write_text("gitops\n")

    push_change(bare, tmp_path / "seed", seed, "seed")
    return bare


def tip(bare: Path) -> str:
    return git("-C", str(bare), "rev-parse", "refs/heads/main").strip()


def promote(text: str) -> str:
    return set_images(text, PROMOTE)


def test_commit_file_update_pushes_exactly_the_image_lines(bare, tmp_path):
    workdir = tmp_path / "work"
    before = tip(bare)
    writer = GitWriter(bare.as_uri(), workdir_root=workdir)
    sha = writer.commit_file_update("main", "environments/prod.yaml", promote, "promote qa -> prod")

    assert sha and SHA.match(sha)
    assert tip(bare) == sha
    assert git("-C", str(bare), "rev-parse", "HEAD~1").strip() == before
    stat = git("-C", str(bare), "show", "--stat", "--format=%s", "HEAD")
    assert "promote qa -> prod" in stat
    assert "environments/prod.yaml | 4 ++--" in stat and "1 file changed, 2 insertions(+), 2 deletions(-)" in stat
    diff = git("-C", str(bare), "diff", "HEAD~1", "HEAD")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == [
        "-      image: reg/etl:1.0   # promoted from qa",
        "+      image: reg/etl:2.0   # promoted from qa",
        "-      image: reg/etl:1.0",
        "+      image: reg/etl:2.0",
    ]
    people = git("-C", str(bare), "log", "-1", "--format=%an <%ae>|%cn <%ce>", "HEAD").strip()
    assert people == "prefect-gitops <prefect-gitops@localhost>|prefect-gitops <prefect-gitops@localhost>"
    assert git("-C", str(bare), "show", "HEAD:environments/prod.yaml") == promote(PROD)
    assert list(workdir.iterdir()) == []  # the clone is removed


def test_author_comes_from_the_constructor(bare, tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_AUTHOR_NAME", "not me")  # would beat -c user.name if passed through
    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work", author_name="Release Bot",
                       author_email="bot@example.com")
    sha = writer.commit_file_update("main", "environments/prod.yaml", promote, "promote")
    assert git("-C", str(bare), "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha).strip() == (
        "Release Bot <bot@example.com>|Release Bot <bot@example.com>")


def test_no_change_makes_no_commit(bare, tmp_path):
    before = tip(bare)
    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work")
    assert writer.commit_file_update("main", "environments/prod.yaml", lambda text: text, "nothing") is None
    same_images = {key: "reg/etl:1.0" for key in PROMOTE}
    assert writer.commit_file_update(
        "main", "environments/prod.yaml", lambda text: set_images(text, same_images), "nothing") is None
    assert tip(bare) == before
    assert list((tmp_path / "work").iterdir()) == []


def test_concurrent_push_is_retried_on_the_new_tip(bare, tmp_path):
    calls: list[str] = []
    theirs: list[str] = []

    def meanwhile(worktree: Path) -> None:
        prod = worktree / "environments" / "prod.yaml"
        prod.write_text(prod.read_text().replace("mode: correct", "mode: warn"))

    def edit(text: str) -> str:
        calls.append(text)
        if len(calls) == 1:  # someone pushes between our clone and our push
            theirs.append(push_change(bare, tmp_path / "other", meanwhile, "drift: warn"))
        return promote(text)

    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work")
    sha = writer.commit_file_update("main", "environments/prod.yaml", edit, "promote")

    assert len(calls) == 2 and "mode: warn" in calls[1]  # re-applied on their commit
    assert tip(bare) == sha
    history = git("-C", str(bare), "log", "--format=%H %s", "main").splitlines()
    assert [line.split(" ", 1)[1] for line in history] == ["promote", "drift: warn", "seed"]
    assert history[1].split()[0] == theirs[0]
    final = git("-C", str(bare), "show", "main:environments/prod.yaml")
    assert final == promote(PROD.replace("mode: correct", "mode: warn"))


def test_gives_up_when_the_branch_keeps_moving(bare, tmp_path):
    calls = []

    def edit(text: str) -> str:
        calls.append(text)
        n = len(calls)
        push_change(bare, tmp_path / "other", lambda wt: (wt / "README.md").write_text(f"change {n}\n"), f"c{n}")
        return promote(text)

    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work")
    with pytest.raises(TransientError, match="gave up after 3 attempts"):
        writer.commit_file_update("main", "environments/prod.yaml", edit, "promote")
    assert len(calls) == 3
    assert "promote" not in git("-C", str(bare), "log", "--format=%s", "main").splitlines()


def test_missing_file_is_a_permanent_error_naming_it(bare, tmp_path):
    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work")
    with pytest.raises(PermanentError, match=r"environments/staging\.yaml"):
        writer.commit_file_update("main", "environments/staging.yaml", promote, "promote")
    with pytest.raises(PermanentError, match="invalid file path"):
        writer.commit_file_update("main", "../outside.yaml", promote, "promote")


def test_missing_branch_is_a_permanent_error(bare, tmp_path):
    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work")
    with pytest.raises(PermanentError, match="'release'"):
        writer.commit_file_update("release", "environments/prod.yaml", promote, "promote")


def test_unreachable_url_error_has_no_credentials(tmp_path):
    writer = GitWriter("https://user:secret@127.0.0.1:1/repo.git", workdir_root=tmp_path / "work", timeout=20)
    with pytest.raises(GitOpsError) as caught:
        writer.commit_file_update("main", "environments/prod.yaml", promote, "promote")
    message = str(caught.value)
    assert "secret" not in message
    assert "https://127.0.0.1:1/repo.git" in message and "clone" in message
    assert isinstance(caught.value, TransientError), message  # connection refused: worth retrying
    assert list((tmp_path / "work").iterdir()) == []
