"""Image write-back, the deciding part (pure: no Git, no GitLab, no Prefect).

A write is "environment E's deployment (or work pool) T runs image I". `edit_file` applies writes to an
environment file's text with the layout-preserving editor promotion uses (only the image lines change),
refuses a target the file does not name, and loads the result as a reconcile would; the rest decides
the commit message, the merge request's branch, title and description (the plan the reconcile will
apply: targets, old -> new image, the smoke tests that will run). adapters/image_write_back.py does
the I/O around it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from prefect_gitops.errors import ConfigError, ConfigProblem, PermanentError
from prefect_gitops.image_ref import describe, reference_problem
from prefect_gitops.loader import LoadedEnvironment, environment_file_path, parse_environment
from prefect_gitops.model import ENVIRONMENT_NAME_PATTERN, EnvironmentFile
from prefect_gitops.policy import Policy, check_policy
from prefect_gitops.smoke import resolve
from prefect_gitops.targets import ActualState, ImageTargetType
from prefect_gitops.yaml_edit import set_images

Outcome = Literal["committed", "merge-request", "unchanged"]
SECTIONS: dict[ImageTargetType, str] = {"work_pool": "work_pools", "deployment": "deployments"}
LABELS: dict[ImageTargetType, str] = {"work_pool": "work pool", "deployment": "deployment"}
BRANCH_PREFIX = "prefect-gitops/image"
MAX_MESSAGE = 2000  # characters of the caller's message kept in a commit or a merge request
# "Name <email>": one line, no angle brackets in the name, an address with an @ and no spaces
AUTHOR = re.compile(r"^(?P<name>[^<>\x00-\x1f\x7f]*[^<>\s\x00-\x1f\x7f])\s*<(?P<email>[^<>\s@]+@[^<>\s@]+)>$")


class Author(NamedTuple):
    """Who a write-back's commit is made for (git's author); prefect-gitops stays its committer."""

    name: str
    email: str


def parse_author(text: str) -> Author:
    """`Name <email>` as git shows an author, e.g. from GitLab CI's $GITLAB_USER_NAME and $GITLAB_USER_EMAIL."""
    match = AUTHOR.match(text.strip()) if len(text) <= 256 else None
    if match is None:
        raise PermanentError(f"author {text[:80]!r}: expected 'Name <email>', e.g. 'Jane Doe <jane@example.com>'; "
                             "nothing was written")
    return Author(match["name"].strip(), match["email"])


def commit_note(message: str, flow_run: str | None) -> str:
    """The caller's message (which pipeline asks), then a trailer naming the flow run that wrote, so a commit
    or a merge request always says what made it, even when no message was given."""
    if not flow_run:
        return message.strip()[:MAX_MESSAGE]
    trailer = f"Prefect-Flow-Run: {flow_run}"
    note = message.strip()[:MAX_MESSAGE - len(trailer) - 2]  # the trailer and its blank line stay whole
    return "\n\n".join(part for part in (note, trailer) if part)


@dataclass(frozen=True)
class ImageWrite:
    """Environment `environment`'s `target_type` `target` runs `image`."""

    environment: str
    target_type: ImageTargetType
    target: str
    image: str

    @property
    def key(self) -> tuple[str, str]:  # (section, target), as yaml_edit.set_images takes it
        return SECTIONS[self.target_type], self.target

    def describe(self) -> str:
        return f"{LABELS[self.target_type]} {self.target} in {self.environment}"


@dataclass(frozen=True)
class WrittenImage:
    """What became of one write: `old` is the image the file had (None: the target set none)."""

    environment: str
    target_type: ImageTargetType
    target: str
    old: str | None
    new: str
    outcome: Outcome
    file: str
    revision: str | None = None  # the commit that carries it (on the merge request's branch for an MR)
    branch: str | None = None  # the branch it was pushed to
    merge_request_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WriteBackResult:
    writes: list[WrittenImage] = field(default_factory=list)
    revision: str | None = None  # the last commit pushed (None: nothing was)
    merge_request_url: str | None = None  # the last merge request opened or updated

    @property
    def changed(self) -> list[WrittenImage]:
        return [w for w in self.writes if w.outcome != "unchanged"]

    @property
    def status(self) -> Outcome:
        """committed / merge-request when anything was written (an MR wins), else unchanged."""
        outcomes = {w.outcome for w in self.writes}
        return "merge-request" if "merge-request" in outcomes else "committed" if "committed" in outcomes \
            else "unchanged"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "revision": self.revision, "merge_request_url": self.merge_request_url,
                "writes": [w.to_json() for w in self.writes]}


def check_writes(writes: list[ImageWrite]) -> None:
    """Refuse what no file can take, before anything is fetched: PermanentError naming every problem."""
    problems: list[str] = []
    if not writes:
        problems.append("no image to write")
    wanted: dict[tuple[str, str, str], str] = {}
    for w in writes:
        if not re.match(ENVIRONMENT_NAME_PATTERN, w.environment or ""):
            problems.append(f"environment name {w.environment!r} must be lowercase letters, digits and dashes")
        if w.target_type not in SECTIONS:
            problems.append(f"target type {w.target_type!r} must be one of {', '.join(SECTIONS)}")
            continue
        if not w.target or not w.target.strip():
            problems.append(f"the {LABELS[w.target_type]} name is empty")
        problem = reference_problem(w.image)
        if problem:
            problems.append(f"{w.describe()}: {describe(w.image, problem)}")
        earlier = wanted.setdefault((w.environment, w.target_type, w.target), w.image)
        if earlier != w.image:
            problems.append(f"{w.describe()}: two different images asked for ({earlier} and {w.image})")
    if problems:
        raise PermanentError("; ".join(problems) + "; nothing was written")


def file_of(folder: str, environment: str) -> str:
    return environment_file_path(folder, environment)


def edit_file(text: str, file: str, writes: list[ImageWrite], policy: Policy | None = None
              ) -> tuple[str, dict[tuple[str, str], str | None]]:
    """(the new text, each target's image before the edit) for writes of one environment.

    The file must load before the edit (a broken file is not made worse silently) and still load after
    it; every target must be one the file names; with `policy` (the GitOps Policy block), each new image
    must pass its rules for all targets and, for a work pool, the pool's own (a deployment's pool is known
    on the server only: the reconcile checks those). Raises ConfigError naming the file, line and key."""
    environments = {w.environment for w in writes}
    if len(environments) != 1:
        raise PermanentError(f"edit_file takes the writes of one environment, got {sorted(environments)}")
    environment = environments.pop()
    loaded = parse_environment(text, file=file, name=environment)
    olds: dict[tuple[str, str], str | None] = {}
    problems: list[ConfigProblem] = []
    for w in writes:
        spec = _spec(loaded.spec, w)
        if spec is None:
            section, _ = w.key
            names = sorted(getattr(loaded.spec, section))
            known = f"it names {', '.join(names)}" if names else f"it has no {section}"
            problems.append(loaded.problem(
                (section, w.target), f"no {LABELS[w.target_type]} {w.target!r} in this file ({known}); "
                                     f"add it to the file first, set-image only changes an image"))
            continue
        image = spec.get("image")
        olds[w.key] = image if isinstance(image, str) else None
    if problems:
        raise ConfigError(problems)
    updates = {w.key: w.image for w in writes if olds[w.key] != w.image}
    new = set_images(text, updates) if updates else text
    if new != text:
        edited = parse_environment(new, file=file, name=environment)  # as the next reconcile will load it
        written = {(*w.key, "job_variables", "image") for w in writes}
        refused = [edited.problem(p.path, p.message) for p in check_policy(policy, environment, edited.spec, ActualState())
                   if p.path in written]
        if refused:
            raise ConfigError(refused)
    return new, olds


def _spec(spec: EnvironmentFile, w: ImageWrite) -> dict[str, Any] | None:
    targets = spec.work_pools if w.target_type == "work_pool" else spec.deployments
    target = targets.get(w.target)
    return dict(target.job_variables) if target is not None else None


def commit_message(writes: list[ImageWrite], olds: dict[tuple[str, str], str | None], message: str) -> str:
    changed = [w for w in writes if olds.get(w.key) != w.image]
    environment = writes[0].environment
    if len(changed) == 1:
        subject = f"prefect-gitops: set image of {changed[0].describe()}"
    else:
        subject = f"prefect-gitops: set {len(changed)} images in {environment}"
    lines = [f"{LABELS[w.target_type]} {w.target}: {olds.get(w.key) or '(none)'} -> {w.image}" for w in changed]
    body = "\n".join(lines)
    note = message.strip()[:MAX_MESSAGE]
    return f"{subject}\n\n{body}" + (f"\n\n{note}" if note else "")


def branch_for(w: ImageWrite) -> str:
    """The merge request branch of one environment and target: readable, a valid ref name, and distinct
    for distinct targets (a short hash of the exact name follows its readable form)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", w.target).strip("-")[:60] or "target"
    digest = hashlib.sha256(f"{w.target_type}\0{w.target}".encode()).hexdigest()[:8]
    return f"{BRANCH_PREFIX}/{w.environment}/{w.target_type.replace('_', '-')}/{readable}-{digest}"


def merge_request_title(w: ImageWrite) -> str:
    return f"prefect-gitops: {w.describe()} -> {w.image}"[:255]


def merge_request_description(w: ImageWrite, old: str | None, file: str, base: str, text: str,
                              message: str) -> str:
    """The plan the reconcile of w.environment will apply once this is merged into `base`."""
    loaded = parse_environment(text, file=file, name=w.environment)
    lines = [
        f"Merging this sets the image of **{w.describe()}** in `{file}`; the next reconcile of "
        f"`{w.environment}` from `{base}` applies it.",
        "",
        "| Target | Key | Old | New |",
        "|---|---|---|---|",
        f"| {LABELS[w.target_type]} `{w.target}` | job_variables.image | `{old or '(none)'}` | `{w.image}` |",
        "",
        "Smoke tests that will run before it is applied:",
        f"- {smoke_plan(loaded, w)}",
    ]
    if w.target_type == "work_pool":
        lines.append(f"- deployments of work pool `{w.target}` that set no image of their own run the new "
                     "image too, tested as their own smoke_test says")
    promotion = loaded.spec.rollout.promotion
    if promotion is not None:
        lines += ["", f"Promotion gate: the image must have run in `{promotion.from_}` for at least "
                      f"{promotion.soak_seconds} s first."]
    note = message.strip()[:MAX_MESSAGE]
    if note:
        lines += ["", note]
    lines += ["", "Opened by prefect-gitops set-image; a later image for the same target updates this "
                  "merge request."]
    return "\n".join(lines)


def smoke_plan(loaded: LoadedEnvironment, w: ImageWrite) -> str:
    """The smoke test the reconcile runs for the new image of w.target, in words."""
    try:
        policy = resolve(loaded.spec, (w.target_type, w.target))
    except ValueError as exc:
        return f"none can run: the smoke_test policy is incomplete ({exc}); the reconcile will refuse it"
    if policy.kind == "none":
        return "none (smoke_test kind none)"
    if policy.kind == "canary":
        deployment = policy.canary.deployment or w.target
        return f"a canary run of deployment `{deployment}` with `{w.image}` (timeout {policy.timeout_seconds} s)"
    return f"a {policy.kind} smoke test of `{w.image}` (timeout {policy.timeout_seconds} s)"
