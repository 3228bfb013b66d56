"""Image write-back's decisions (prefect_gitops.image_write, pure) and the writer's merge request branch mode
(GitWriter.commit_file_update(push_branch=...), on real repositories through file://)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from prefect_gitops.adapters.git_write import GitWriter
from prefect_gitops.errors import ConfigError, PermanentError
from prefect_gitops.image_write import (
    MAX_MESSAGE,
    Author,
    ImageWrite,
    branch_for,
    check_writes,
    commit_message,
    commit_note,
    edit_file,
    merge_request_description,
    parse_author,
)

FILE = "environments/qa.yaml"
QA = """\
# qa: images come from the application pipelines
work_pools:
  k8s-qa:
    job_variables:
      image: reg.example.com/base:1   # the pool's default
deployments:
  etl/daily:
    job_variables:
      image: "reg.example.com/etl:1.0"
      env: {X: "1"}
  etl/hourly:
    job_variables:
      cpu: "500m"
smoke_test:
  kind: kubernetes
  timeout_seconds: 120
"""


def w(target: str, image: str, target_type: str = "deployment", environment: str = "qa") -> ImageWrite:
    return ImageWrite(environment=environment, target_type=target_type, target=target, image=image)  # type: ignore[arg-type]


def test_edit_changes_exactly_the_image_line_and_reports_the_old_image():
    new, olds = edit_file(QA, FILE, [w("etl/daily", "reg.example.com/etl:1.1")])
    assert new == QA.replace('image: "reg.example.com/etl:1.0"', 'image: "reg.example.com/etl:1.1"')
    assert olds == {("deployments", "etl/daily"): "reg.example.com/etl:1.0"}


def test_a_target_without_an_image_gets_the_key_and_a_pool_its_default():
    new, olds = edit_file(QA, FILE, [w("etl/hourly", "reg.example.com/etl:2"),
                                     w("k8s-qa", "reg.example.com/base:2", "work_pool")])
    assert olds == {("deployments", "etl/hourly"): None, ("work_pools", "k8s-qa"): "reg.example.com/base:1"}
    assert "image: reg.example.com/base:2   # the pool's default" in new
    assert 'cpu: "500m"\n      image: reg.example.com/etl:2\n' in new


def test_the_image_already_there_leaves_the_text_as_it_is():
    new, olds = edit_file(QA, FILE, [w("etl/daily", "reg.example.com/etl:1.0")])
    assert new is QA and olds == {("deployments", "etl/daily"): "reg.example.com/etl:1.0"}


def test_an_unknown_target_is_refused_naming_the_file_line_and_key():
    with pytest.raises(ConfigError) as caught:
        edit_file(QA, FILE, [w("etl/weekly", "reg.example.com/etl:2")])
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (FILE, 6, "deployments.etl/weekly")
    assert problem.message == ("no deployment 'etl/weekly' in this file (it names etl/daily, etl/hourly); "
                               "add it to the file first, set-image only changes an image")
    with pytest.raises(ConfigError, match="no work pool 'k8s-prod' in this file"):
        edit_file(QA, FILE, [w("k8s-prod", "reg.example.com/base:2", "work_pool")])


def test_a_file_that_does_not_load_is_refused_with_its_line():
    broken = QA.replace("smoke_test:\n  kind: kubernetes", "smoke_test:\n  kind: kubernetess")
    with pytest.raises(ConfigError) as caught:
        edit_file(broken, FILE, [w("etl/daily", "reg.example.com/etl:1.1")])
    assert caught.value.problems[0].file == FILE and caught.value.problems[0].key == "smoke_test.kind"
    assert caught.value.problems[0].line == 15


def test_an_image_the_gitops_policy_refuses_is_refused_where_the_reconcile_would():
    from prefect_gitops.policy import Policy

    policy = Policy.model_validate({"all_targets": {"allowed_images": ["reg.example.com/"]},
                                    "work_pools": {"k8s-*": {"require_digest_in": ["qa"]}}})
    with pytest.raises(ConfigError) as caught:
        edit_file(QA, FILE, [w("etl/daily", "evil.example.com/etl:1.1")], policy)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (FILE, 9, "deployments.etl/daily.job_variables.image")
    assert problem.message.startswith("image 'evil.example.com/etl:1.1' (evil.example.com/etl:1.1) is not from a "
                                      "registry the GitOps policy allows (reg.example.com/)")
    with pytest.raises(ConfigError, match="is not pinned by digest"):  # the pool's own rules
        edit_file(QA, FILE, [w("k8s-qa", "reg.example.com/base:2", "work_pool")], policy)
    digest = "reg.example.com/base@sha256:" + "a" * 64
    assert digest in edit_file(QA, FILE, [w("k8s-qa", digest, "work_pool")], policy)[0]
    # what the file already had is the reconcile's business, not a reason to refuse this write
    assert edit_file(QA, FILE, [w("etl/daily", "reg.example.com/etl:1.1")], policy)[1]


@pytest.mark.parametrize("image, fragment", [
    ("Reg.example.com/ETL:1", "the repository name must be lowercase, got 'ETL'"),
    ("reg.example.com/etl:", "the tag after ':' is empty"),
    ("reg.example.com/etl@sha256:abc", "a sha256 digest is 64 lowercase hex digits"),
    ("", "is empty"),
])
def test_an_image_that_does_not_parse_is_refused_before_anything_is_read(image, fragment):
    with pytest.raises(PermanentError) as caught:
        check_writes([w("etl/daily", image)])
    assert fragment in str(caught.value) and str(caught.value).startswith("deployment etl/daily in qa: image ")
    assert str(caught.value).endswith("; nothing was written")


def test_other_bad_writes_are_refused_together():
    with pytest.raises(PermanentError) as caught:
        check_writes([w("etl/daily", "a:1", environment="QA"), w("etl/daily", "a:1"), w("etl/daily", "a:2")])
    assert "environment name 'QA' must be lowercase" in str(caught.value)
    assert "deployment etl/daily in qa: two different images asked for (a:1 and a:2)" in str(caught.value)
    with pytest.raises(PermanentError, match="no image to write"):
        check_writes([])


def test_the_commit_message_names_the_change_and_the_pipeline():
    message = commit_message([w("etl/daily", "reg.example.com/etl:1.1")],
                             {("deployments", "etl/daily"): "reg.example.com/etl:1.0"},
                             "app/etl pipeline https://gitlab.example.com/app/etl/-/pipelines/42\n")
    assert message == ("prefect-gitops: set image of deployment etl/daily in qa\n\n"
                       "deployment etl/daily: reg.example.com/etl:1.0 -> reg.example.com/etl:1.1\n\n"
                       "app/etl pipeline https://gitlab.example.com/app/etl/-/pipelines/42")


@pytest.mark.parametrize("text, author", [
    ("Jane Doe <jane@example.com>", Author("Jane Doe", "jane@example.com")),
    ("  ci-bot   <ci-bot@gitlab.example.com> ", Author("ci-bot", "ci-bot@gitlab.example.com")),
    ("Zoë Ünal <z@x>", Author("Zoë Ünal", "z@x")),
    ("Jane", None),                          # no address
    ("<jane@example.com>", None),            # no name
    ("Jane <jane>", None),                   # not an address
    ("Jane <ja ne@example.com>", None),
    ("Jane <jane@example.com> extra", None),
    ("Jane\nEvil: x <jane@example.com>", None),  # a second line (a forged trailer or header)
    ("Jane <<jane@example.com>>", None),
    ("J" * 300 + " <j@x>", None),
])
def test_the_author_is_name_and_email_on_one_line(text, author):
    if author is not None:
        assert parse_author(text) == author
    else:
        with pytest.raises(PermanentError, match=r"expected 'Name <email>'.*nothing was written"):
            parse_author(text)


@pytest.mark.parametrize("message, flow_run, note", [
    ("app pipeline 42\n", "f00 (brave-fox)", "app pipeline 42\n\nPrefect-Flow-Run: f00 (brave-fox)"),
    ("", "f00 (brave-fox)", "Prefect-Flow-Run: f00 (brave-fox)"),  # no message: the run still says who wrote
    ("app pipeline 42", None, "app pipeline 42"),                  # not in a flow run (a library call)
    ("", None, ""),
])
def test_the_note_ends_with_the_flow_run_that_wrote(message, flow_run, note):
    assert commit_note(message, flow_run) == note


def test_a_long_message_is_cut_before_the_flow_run_trailer():
    note = commit_note("x" * 5000, "f00 (brave-fox)")
    assert len(note) == MAX_MESSAGE and note.endswith("\n\nPrefect-Flow-Run: f00 (brave-fox)")
    assert commit_note("x" * 5000, None) == "x" * MAX_MESSAGE  # outside a flow run: the whole allowance
    # commit_message keeps it whole
    message = commit_message([w("etl/daily", "a:2")], {("deployments", "etl/daily"): "a:1"}, note)
    assert message.endswith("Prefect-Flow-Run: f00 (brave-fox)")


def test_one_branch_per_environment_and_target_each_a_valid_ref():
    names = {branch_for(w(t, "a:1", kind, env)) for t, kind, env in [
        ("etl/daily", "deployment", "qa"), ("etl/daily", "deployment", "prod"), ("etl/daily", "work_pool", "qa"),
        ("etl-daily", "deployment", "qa"), ("etl daily..x~^:?*[", "deployment", "qa")]}
    assert len(names) == 5
    assert branch_for(w("etl/daily", "a:2")) == branch_for(w("etl/daily", "a:1"))  # a later image: same branch
    assert branch_for(w("etl/daily", "a:1")).startswith("prefect-gitops/image/qa/deployment/etl-daily-")
    for name in names:
        done = subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"], capture_output=True)
        assert done.returncode == 0, name


def test_the_merge_request_description_is_the_plan():
    write = w("etl/daily", "reg.example.com/etl:1.1")
    new, _ = edit_file(QA, FILE, [write])
    text = merge_request_description(write, "reg.example.com/etl:1.0", FILE, "main", new, "pipeline 42")
    assert "| deployment `etl/daily` | job_variables.image | `reg.example.com/etl:1.0` | `reg.example.com/etl:1.1` |" in text
    assert "- a kubernetes smoke test of `reg.example.com/etl:1.1` (timeout 120 s)" in text
    assert "the next reconcile of `qa` from `main` applies it" in text and "pipeline 42" in text
    pool = w("k8s-qa", "reg.example.com/base:2", "work_pool")
    canary = QA.replace("smoke_test:\n  kind: kubernetes\n", "smoke_test:\n  kind: canary\n  canary: {deployment: etl/daily}\n"
                        ).replace("  timeout_seconds: 120\n", "rollout:\n  promotion: {from: dev, soak_seconds: 600}\n")
    text = merge_request_description(pool, None, FILE, "main", canary, "")
    assert "- a canary run of deployment `etl/daily` with `reg.example.com/base:2` (timeout 300 s)" in text
    assert "deployments of work pool `k8s-qa` that set no image of their own run the new image too" in text
    assert "Promotion gate: the image must have run in `dev` for at least 600 s first." in text


# -- GitWriter's merge request branch ------------------------------------------------------------------

GIT_ID = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


def git(*args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    bare = tmp_path / "gitops.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "seed"
    git("clone", "-q", str(bare), str(work))
    (work / "environments").mkdir()
    (work / "environments" / "qa.yaml").write_text(QA)
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "commit", "-q", "-m", "seed")
    git("-C", str(work), "push", "-q", "origin", "main")
    return bare


def test_push_branch_replaces_the_branch_and_leaves_the_base_alone(bare, tmp_path):
    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work")
    base = git("-C", str(bare), "rev-parse", "main")

    def edit(image):
        return lambda text: edit_file(text, FILE, [w("etl/daily", image)])[0]

    first = writer.commit_file_update("main", FILE, edit("reg.example.com/etl:1.1"), "one", push_branch="mr/etl")
    assert writer.pushed and git("-C", str(bare), "rev-parse", "mr/etl") == first
    assert git("-C", str(bare), "rev-parse", "main") == base  # the base branch did not move
    # the same edit again: the branch already holds it, nothing pushed, its tip returned
    again = writer.commit_file_update("main", FILE, edit("reg.example.com/etl:1.1"), "two", push_branch="mr/etl")
    assert again == first and not writer.pushed
    # a later image replaces the branch: one commit on top of the base, not a pile
    later = writer.commit_file_update("main", FILE, edit("reg.example.com/etl:1.2"), "three", push_branch="mr/etl")
    assert writer.pushed and later != first and git("-C", str(bare), "rev-parse", "mr/etl") == later
    assert git("-C", str(bare), "rev-parse", "mr/etl~1") == base
    assert 'image: "reg.example.com/etl:1.2"' in git("-C", str(bare), "show", f"mr/etl:{FILE}")
    # the message may be decided after the edit
    writer.commit_file_update("main", FILE, edit("reg.example.com/etl:1.3"), lambda: "decided late",
                              push_branch="mr/etl")
    assert git("-C", str(bare), "log", "-1", "--format=%s", "mr/etl") == "decided late"


def test_commits_are_made_for_the_author_and_committed_by_prefect_gitops(bare, tmp_path, monkeypatch):
    # a caller's GIT_AUTHOR_* / GIT_COMMITTER_* (a CI job's environment) do not decide either
    monkeypatch.setenv("GIT_AUTHOR_NAME", "someone else")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "else@example.com")
    writer = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work", author=Author("Jane Doe", "jane@example.com"))
    writer.commit_file_update("main", FILE, lambda text: edit_file(text, FILE, [w("etl/daily", "a:9")])[0], "m")
    assert git("-C", str(bare), "log", "-1", "--format=%an <%ae>|%cn <%ce>", "main") == (
        "Jane Doe <jane@example.com>|prefect-gitops <prefect-gitops@localhost>")
    plain = GitWriter(bare.as_uri(), workdir_root=tmp_path / "work2")
    plain.commit_file_update("main", FILE, lambda text: edit_file(text, FILE, [w("etl/daily", "a:10")])[0], "m")
    assert git("-C", str(bare), "log", "-1", "--format=%an <%ae>|%cn <%ce>", "main") == (
        "prefect-gitops <prefect-gitops@localhost>|prefect-gitops <prefect-gitops@localhost>")


def test_write_back_commits_each_environment_file_once(bare, tmp_path, monkeypatch):
    import asyncio

    from prefect_gitops.adapters.git import GitSource
    from prefect_gitops.adapters.image_write_back import write_back

    monkeypatch.setenv("PREFECT_GITOPS_CACHE_DIR", str(tmp_path / "cache"))
    seed = tmp_path / "prod-seed"
    git("clone", "-q", str(bare), str(seed))
    (seed / "environments" / "prod.yaml").write_text(QA.replace("# qa", "# prod"))
    git("-C", str(seed), "add", "-A")
    git("-C", str(seed), "commit", "-q", "-m", "prod")
    git("-C", str(seed), "push", "-q", "origin", "main")
    base = git("-C", str(bare), "rev-parse", "main")

    result = asyncio.run(write_back(GitSource(bare.as_uri()), [
        w("etl/daily", "reg.example.com/etl:1.1", environment="prod"), w("etl/daily", "reg.example.com/etl:1.1"),
        w("etl/hourly", "reg.example.com/etl:1.1"), w("k8s-qa", "reg.example.com/base:1", "work_pool")],
        branch="main", folder="environments", message="pipeline 9", emit_events=False))

    assert git("-C", str(bare), "rev-list", "--count", f"{base}..main") == "2"  # prod's commit, then qa's
    assert git("-C", str(bare), "log", "--format=%s", f"{base}..main").splitlines() == [
        "prefect-gitops: set 2 images in qa", "prefect-gitops: set image of deployment etl/daily in prod"]
    assert result.revision == git("-C", str(bare), "rev-parse", "main") and result.status == "committed"
    assert [(x.environment, x.target, x.old, x.outcome) for x in result.writes] == [
        ("prod", "etl/daily", "reg.example.com/etl:1.0", "committed"),
        ("qa", "etl/daily", "reg.example.com/etl:1.0", "committed"),
        ("qa", "etl/hourly", None, "committed"),
        ("qa", "k8s-qa", "reg.example.com/base:1", "unchanged")]
    assert result.writes[1].revision == result.revision and result.writes[3].revision is None
