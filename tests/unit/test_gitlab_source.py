"""GitLabSource and report_commit_status against a real smart-HTTP git server.

No Prefect server is needed (the prefect-gitlab blocks are built in memory),
so this lives under tests/unit. The token is a distinctive random string and
is searched for everywhere it could leak: exception texts, logs, stderr, the
cache directory's files, and the command lines of running processes.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import subprocess
import threading
import time
import traceback
from pathlib import Path

import pytest
from pydantic import SecretStr

from git_http_server import GitHttpServer
from prefect_gitops.adapters.gitlab import GitLabSource, askpass_script, report_commit_status
from prefect_gitops.errors import PermanentError, TransientError

REPO = "group/gitops"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def bare_repo(tmp_path_factory) -> tuple[Path, str]:
    """(server root holding group/gitops.git, the SHA of main)."""
    base = tmp_path_factory.mktemp("gitlab-repo")
    work = base / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "environments").mkdir()
    (work / "environments" / "qa.yaml").write_text("work_pools: {}\ndeployments: {}\n")
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "qa environment", cwd=work)
    sha = _git("rev-parse", "HEAD", cwd=work)
    root = base / "srv"
    (root / "group").mkdir(parents=True)
    _git("clone", "-q", "--bare", str(work), str(root / f"{REPO}.git"), cwd=base)
    return root, sha


@pytest.fixture
def token() -> str:
    return "glpat-" + secrets.token_urlsafe(24)


@pytest.fixture
def server(bare_repo, token):
    root, _ = bare_repo
    with GitHttpServer(root, token) as srv:
        yield srv


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def _files_containing(directory: Path, needle: str) -> list[Path]:
    hits = []
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits


def test_resolve_and_checkout(server, bare_repo, token, tmp_path):
    _, sha = bare_repo
    source = GitLabSource(server.url_for(REPO), SecretStr(token), cache_dir=tmp_path / "cache")
    assert source.display == server.url_for(REPO)
    assert source.resolve("main") == sha
    with source.checkout(sha) as tree:
        assert (tree / "environments" / "qa.yaml").read_text().startswith("work_pools")
    operations = source.git_operations
    with source.checkout(sha) as tree:  # cached: no network
        assert (tree / "environments" / "qa.yaml").is_file()
    assert source.git_operations == operations == 2
    authorized = [r for r in server.requests if r["authorized"]]
    assert authorized and all(r["user"] == "oauth2" for r in authorized)


def test_wrong_token_is_a_clear_permanent_error(server, token, tmp_path):
    wrong = "glpat-" + secrets.token_urlsafe(24)
    source = GitLabSource(server.url_for(REPO), SecretStr(wrong), cache_dir=tmp_path / "cache",
                          backoff=0)
    with pytest.raises(PermanentError) as info:
        source.resolve("main")
    message = str(info.value)
    assert message == (f"GitLab rejected the token for {server.url_for(REPO)} (HTTP 401): "
                       "check the GitLabCredentials token and its read_repository scope")
    text = _error_text(info.value)
    assert wrong not in text and token not in text
    assert source.git_operations == 1  # not retried


def test_token_never_leaks_to_errors_logs_or_cache(server, bare_repo, token, tmp_path, caplog, capfd):
    caplog.set_level("DEBUG")
    _, sha = bare_repo
    cache = tmp_path / "cache"
    source = GitLabSource(server.url_for(REPO), SecretStr(token), cache_dir=cache, backoff=0)
    texts = []
    assert source.resolve("main") == sha
    with source.checkout(sha):
        pass
    with pytest.raises(PermanentError) as missing_ref:
        source.resolve("no-such-branch")
    texts.append(_error_text(missing_ref.value))
    with pytest.raises(PermanentError) as missing_sha:
        with source.checkout("f" * 40):
            pass
    texts.append(_error_text(missing_sha.value))
    assert "does not exist" in texts[-1]
    bad = GitLabSource(server.url_for(REPO), SecretStr(token + "x"), cache_dir=cache, backoff=0)
    with pytest.raises(PermanentError) as rejected:
        bad.resolve("main")
    texts.append(_error_text(rejected.value))
    texts.append(repr(source) + repr(vars(source).get("url")))

    out, err = capfd.readouterr()
    assert "git failed" in caplog.text  # git's scrubbed stderr is logged at DEBUG
    for text in [*texts, caplog.text, out, err]:
        assert token not in text
    assert (cache).is_dir() and any(cache.rglob("config"))
    assert _files_containing(cache, token) == []
    assert _files_containing(cache, "oauth2") == []  # no credentialed URL either

    script = askpass_script()
    assert token.encode() not in script.read_bytes()
    assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    assert token not in os.environ.values()  # set only for the git child


def _scan_processes(seen: dict[int, bytes]) -> None:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if cmdline:
            seen[int(entry.name)] = cmdline


def test_token_not_in_process_arguments(server, bare_repo, token, tmp_path):
    _, sha = bare_repo
    server.delay = 2
    source = GitLabSource(server.url_for(REPO), SecretStr(token), cache_dir=tmp_path / "cache")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(sha=source.resolve("main")))
    seen: dict[int, bytes] = {}
    thread.start()
    while thread.is_alive():
        _scan_processes(seen)
        time.sleep(0.05)
    thread.join()
    assert result["sha"] == sha
    git_processes = [c for c in seen.values()
                     if os.path.basename(c.split(b"\0")[0]).startswith(b"git")
                     and server.url_for(REPO).encode() in c]
    assert git_processes, "no git process was seen while the server was slow"
    assert [c for c in seen.values() if token.encode() in c] == []


def test_deploy_token_username(bare_repo, token, tmp_path):
    root, sha = bare_repo
    with GitHttpServer(root, token, username="deploy-bot") as srv:
        good = GitLabSource(srv.url_for(REPO), SecretStr(token), username="deploy-bot",
                            cache_dir=tmp_path / "cache")
        assert good.resolve("main") == sha
        wrong_user = GitLabSource(srv.url_for(REPO), SecretStr(token), cache_dir=tmp_path / "cache",
                                  backoff=0)
        with pytest.raises(PermanentError, match="rejected the token"):
            wrong_user.resolve("main")
        assert {r["user"] for r in srv.requests if r["authorized"]} == {"deploy-bot"}


def test_from_block(server, bare_repo, token, tmp_path, caplog):
    from prefect_gitlab import GitLabCredentials, GitLabRepository

    caplog.set_level("DEBUG")
    _, sha = bare_repo
    creds = GitLabCredentials(token=token, url=server.api_url)
    block = GitLabRepository(repository=server.url_for(REPO), reference="main", credentials=creds)
    cache = tmp_path / "cache"
    source = GitLabSource.from_block(block, cache_dir=cache)
    assert source.reference == "main" and source.username == "oauth2"
    assert source.api_url == server.api_url and source.project == REPO
    assert source.resolve() == sha
    with source.checkout(sha) as tree:
        assert (tree / "environments" / "qa.yaml").is_file()
    assert _files_containing(cache, token) == []
    assert token not in caplog.text

    # the convenience wrapper reports with the block's token and project path
    source.report_status(sha, "success", description="applied")
    assert server.statuses[-1]["project"] == REPO

    # a deploy token: its username given explicitly, or stored as "user:token"
    root, _ = bare_repo
    with GitHttpServer(root, token, username="deploy-bot") as deploy_srv:
        url = deploy_srv.url_for(REPO)
        explicit = GitLabSource.from_block(
            GitLabRepository(repository=url, reference="main", credentials=GitLabCredentials(token=token)),
            deploy_token_username="deploy-bot", cache_dir=cache)
        assert explicit.resolve() == sha
        combined = GitLabSource.from_block(
            GitLabRepository(repository=url, credentials=GitLabCredentials(token=f"deploy-bot:{token}")),
            cache_dir=cache)
        assert combined.username == "deploy-bot" and combined.resolve() == sha  # HEAD

    wrong = GitLabSource.from_block(
        GitLabRepository(repository=server.url_for(REPO), reference="main",
                         credentials=GitLabCredentials(token="nope-" + token[::-1])),
        cache_dir=cache, backoff=0)
    with pytest.raises(PermanentError, match=r"GitLab rejected the token for .*\(HTTP 401\)") as info:
        wrong.resolve()
    assert token[::-1] not in _error_text(info.value) and token not in _error_text(info.value)


def test_report_commit_status(server, bare_repo, token, caplog):
    caplog.set_level("DEBUG")
    _, sha = bare_repo
    report_commit_status(server.api_url, SecretStr(token), REPO, sha, "running",
                         description="reconciling qa", target_url="http://prefect.example/runs/1")
    assert server.statuses == [{"project": REPO, "sha": sha, "body": {
        "state": "running", "name": "prefect-gitops", "description": "reconciling qa",
        "target_url": "http://prefect.example/runs/1"}}]
    assert server.unhandled == []

    report_commit_status(server.api_url + "/api/v4/", SecretStr(token), 42, sha, "success", name="gitops/qa")
    assert server.statuses[-1]["project"] == "42"
    assert server.statuses[-1]["body"] == {"state": "success", "name": "gitops/qa", "description": ""}

    wrong = "glpat-" + secrets.token_urlsafe(24)
    with pytest.raises(PermanentError, match=r"HTTP 401") as info:
        report_commit_status(server.api_url, SecretStr(wrong), REPO, sha, "failed")
    assert wrong not in _error_text(info.value) and token not in _error_text(info.value)
    assert len(server.statuses) == 2

    with pytest.raises(PermanentError, match="must be one of"):
        report_commit_status(server.api_url, SecretStr(token), REPO, sha, "done")
    assert token not in caplog.text and wrong not in caplog.text


def test_report_commit_status_unreachable_is_transient(token):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(TransientError) as info:
        report_commit_status(f"http://127.0.0.1:{port}", SecretStr(token), REPO, "a" * 40, "pending",
                             timeout=2)
    assert token not in _error_text(info.value)
