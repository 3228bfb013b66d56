"""Error types shared by every layer.

Errors are split the way kopf splits them: a TransientError may succeed if
retried (network, a busy server); a PermanentError will not (bad input, a
missing ref) and stops the reconcile with a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class GitOpsError(Exception):
    """Base class of every error prefect-gitops raises on purpose."""


class TransientError(GitOpsError):
    """Retrying later may succeed."""


class PermanentError(GitOpsError):
    """Retrying will not help until the input changes."""


class TargetRejected(PermanentError):
    """An environment's Prefect server (its GitOps Target block) refused the block's credentials (401/403):
    retrying will not help until someone fixes the key; nothing was written there."""


class RolloutBusy(GitOpsError):
    """Another rollout of the environment holds its lock; nothing was written."""


class RefNotFound(PermanentError):
    """Git answered that the remote has no such ref or commit (the git runner tells it apart)."""


class SignatureRefused(PermanentError):
    """The revision is not signed by a signer the source block trusts; nothing was applied."""

    def __init__(self, revision: str, message: str):
        self.revision = revision
        super().__init__(message)


class RolloutHeld(GitOpsError):
    """A gate (suspension, a closed sync window, the promotion gate) holds the revision: planned and
    reported, nothing applied. Carries the run's status and the condition's reason (status.py)."""

    def __init__(self, status: str, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(message)


class RevisionRefused(GitOpsError):
    """A safety gate refused the revision as a whole (emptied file, mass release, rewritten history)
    until someone consents explicitly; nothing was written. `reason` is the condition's (status.py)."""

    def __init__(self, reason: str, message: str, problems: list[ConfigProblem] | None = None):
        self.reason, self.message, self.problems = reason, message, list(problems or [])
        super().__init__(message)


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in the GitOps repo, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None  # 1-based, as editors show it
    key: str | None = None  # dotted path, e.g. deployments.etl/daily.job_variables.image

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


class ConfigError(PermanentError):
    """The GitOps repo (or the server it refers to) is not acceptable; nothing was written."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))
