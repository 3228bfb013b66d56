"""Block types users configure in the Prefect UI: where the GitOps repo is, policy defaults, and which
Prefect server an environment lives on.

Register them with `prefect block register -m prefect_gitops.blocks` (or `--file blocks/gitops.py`).
Secrets are SecretStr: the UI masks them and they never reach logs, artifacts or events.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect_gitlab import GitLabCredentials
from pydantic import Field, HttpUrl, SecretStr, model_validator

from prefect_gitops.model import SmokeTestPolicy
from prefect_gitops.signatures import SignatureMode, SignaturePolicy
from prefect_gitops.policy import Policy, PolicyRules

if TYPE_CHECKING:  # for the annotation only: to_source() imports the Git adapter when called
    from prefect_gitops.adapters.git import GitSource

DOCS = "https://github.com/prefect-gitops/prefect-gitops#readme"


class GitOpsSource(Block):
    """The GitOps repository a reconcile reads: URL, ref, folder and credentials."""

    _block_type_name = "GitOps Source"
    _block_type_slug = "gitops-source"
    _documentation_url = HttpUrl(DOCS)
    _description = "Where prefect-gitops reads the desired state of your Prefect work pools and deployments."
    _code_example = '''```python
from prefect_gitops.blocks import GitOpsSource

source = GitOpsSource.load("BLOCK_NAME")
print(source.url, source.ref)
```'''

    url: str = Field(description="Git URL of the GitOps repository (https, ssh, file or a local path).")
    ref: str = Field(default="main", description="Branch, tag or full commit SHA to follow.")
    path: str = Field(default="environments", description="Folder of the environment files inside the repository.")
    token: Optional[SecretStr] = Field(
        default=None, description="Password or token for an HTTPS repository that is not on GitLab.")
    username: str = Field(default="oauth2", description="User name sent with the token (a deploy token's own name).")
    gitlab_credentials: Optional[GitLabCredentials] = Field(
        default=None, description="prefect-gitlab credentials: the token reads the repository over HTTPS.")
    gitlab_project: Optional[str] = Field(
        default=None,
        description="GitLab project (id or group/name); with gitlab_credentials.url set, each reconcile "
                    "reports its result as a commit status on the revision.")
    # signed commits: set here, never in the repository they govern (a commit cannot vouch for itself)
    verify_signatures: Literal["off", "gpg", "ssh"] = Field(
        default="off", description="Apply only revisions signed by a trusted signer: gpg (trusted_gpg_keys) "
                                   "or ssh (allowed_signers); off: no check.")
    trusted_gpg_keys: Optional[str] = Field(
        default=None,
        description="ASCII-armored OpenPGP public keys trusted to sign revisions (verify_signatures gpg).")
    allowed_signers: Optional[str] = Field(
        default=None, description="ssh allowed-signers lines (principal, key type, public key) trusted to sign "
                                  "revisions (verify_signatures ssh).")

    @model_validator(mode="after")
    def _signature_settings_usable(self) -> GitOpsSource:
        problems = self.signature_policy().problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def signature_policy(self) -> SignaturePolicy:
        return SignaturePolicy(mode=SignatureMode(self.verify_signatures), trusted_gpg_keys=self.trusted_gpg_keys or "",
                               allowed_signers=self.allowed_signers or "")

    def to_source(self, cache_dir: Path | None = None) -> GitSource:
        """The Git source for this block (GitLab-aware when credentials are set)."""
        from prefect_gitops.adapters.git import GitSource

        token = self.gitlab_credentials.token if self.gitlab_credentials and self.gitlab_credentials.token else self.token
        if token is None:
            return GitSource(self.url, cache_dir=cache_dir)
        from prefect_gitops.adapters.gitlab import GitLabSource

        return GitLabSource(self.url, token, username=self.username, cache_dir=cache_dir)


class GitOpsRolloutDefaults(Block):
    """Defaults for the drift and rollout sections of every environment file that leaves them out."""

    _block_type_name = "GitOps Rollout Defaults"
    _block_type_slug = "gitops-rollout-defaults"
    _documentation_url = HttpUrl(DOCS)
    _description = "Defaults for drift handling, locking and write parallelism; an environment file's own values win."
    _code_example = '''```python
from prefect_gitops.blocks import GitOpsRolloutDefaults

defaults = GitOpsRolloutDefaults.load("BLOCK_NAME")
print(defaults.as_file_defaults())
```'''

    drift_mode: Literal["correct", "warn"] = Field(
        default="correct", description="Revert values changed outside Git, or only report them.")
    drift_check_interval_seconds: int = Field(
        default=300, ge=0, description="How often a reconcile looks for drift when Git has not moved.")
    drift_full_read_interval_seconds: int = Field(
        default=3600, ge=0, description="How often a drift check reads every managed target even when the "
        "server's event log shows no change to them (0: every check).")
    lock_timeout_seconds: int = Field(
        default=300, ge=0, description="How long a reconcile waits for another rollout of the same environment.")
    max_parallel: int = Field(default=4, ge=1, le=64, description="Targets written at once, per wave.")

    def as_file_defaults(self) -> dict[str, Any]:
        return {"drift": {"mode": self.drift_mode, "check_interval_seconds": self.drift_check_interval_seconds,
                          "full_read_interval_seconds": self.drift_full_read_interval_seconds},
                "rollout": {"lock_timeout_seconds": self.lock_timeout_seconds, "max_parallel": self.max_parallel}}


class GitOpsSmokeTestDefaults(Block):
    """The smoke_test section used by environment files that leave it out (fields they set win)."""

    _block_type_name = "GitOps Smoke Test Defaults"
    _block_type_slug = "gitops-smoke-test-defaults"
    _documentation_url = HttpUrl(DOCS)
    _description = "How new images are proven before rollout, for every environment file that does not say."
    _code_example = '''```python
from prefect_gitops.blocks import GitOpsSmokeTestDefaults

defaults = GitOpsSmokeTestDefaults.load("BLOCK_NAME")
print(defaults.policy.kind)
```'''

    policy: SmokeTestPolicy = Field(
        default_factory=SmokeTestPolicy, description="The smoke_test policy, as in an environment file.")

    def as_file_defaults(self) -> dict[str, Any]:
        # a block loaded back from the server has every field stored, the unset ones as null: a null is
        # "not set" here, or it would override the file's values and fail validation
        return {"smoke_test": self.policy.model_dump(mode="json", exclude_unset=True, exclude_none=True, by_alias=True)}


class GitOpsPolicy(Block):
    """What the GitOps repository may set, decided by people who can edit blocks (not by its committers)."""

    _block_type_name = "GitOps Policy"
    _block_type_slug = "gitops-policy"
    _documentation_url = HttpUrl(DOCS)
    _description = ("Job variable keys, image registries and digest pinning the GitOps repository must keep to; "
                    "a reconcile refuses a file that breaks them before writing anything.")
    _code_example = '''```python
from prefect_gitops.blocks import GitOpsPolicy

GitOpsPolicy(all_targets={"denied_keys": ["service_account_name"], "allowed_images": ["harbor.corp/team/"],
                          "require_digest_in": ["prod"]}).save("gitops-policy")
policy = GitOpsPolicy.load("BLOCK_NAME")
print(policy.all_targets.denied_keys)
```'''

    all_targets: PolicyRules = Field(
        default_factory=PolicyRules, description="Rules for every work pool and deployment of every environment.")
    work_pools: dict[str, PolicyRules] = Field(
        default_factory=dict, description="More rules per work pool (name or fnmatch pattern), for the pool and "
                                          "the deployments that run on it; they add to all_targets' rules.")

    def to_policy(self, name: str) -> Policy:
        return Policy(name=name, all_targets=self.all_targets, work_pools=self.work_pools)


class GitOpsTarget(Block):
    """The Prefect server (or Cloud workspace) an environment lives on, when it is not the control server.

    Found by name, never from Git: environment E is on the server of the block `gitops-target-E` on the
    control server (adapters/environment_server.py), so a repository writer cannot send the control
    plane's writes, or this block's key, to a server of their choosing.
    """

    _block_type_name = "GitOps Target"
    _block_type_slug = "gitops-target"
    _documentation_url = HttpUrl(DOCS)
    _description = ("The Prefect API an environment's work pools, deployments and record live on; save it as "
                    "gitops-target-<environment> on the control server.")
    _code_example = '''```python
from prefect.blocks.system import Secret
from prefect_gitops.blocks import GitOpsTarget

Secret(value="pnu_...").save("prefect-prod-key")
GitOpsTarget(api_url="https://api.prefect.cloud/api/accounts/.../workspaces/...",
             api_key=Secret.load("prefect-prod-key")).save("gitops-target-prod")
target = GitOpsTarget.load("BLOCK_NAME")
print(target.api_url)
```'''

    api_url: str = Field(description="The environment's Prefect API, e.g. https://prefect-prod.example.com/api "
                                     "or a Prefect Cloud workspace URL.")
    # nested Secret blocks: the UI and the API show them masked, and one key can serve several targets
    api_key: Optional[Secret[str]] = Field(
        default=None, description="Prefect Cloud: an API key (sent as a bearer token). Empty for a server "
                                  "without authentication.")
    auth_string: Optional[Secret[str]] = Field(
        default=None, description="Self-hosted Prefect server with PREFECT_SERVER_API_AUTH_STRING: the same "
                                  "'user:password' string (sent as basic auth).")

    @model_validator(mode="after")
    def _one_credential(self) -> GitOpsTarget:
        if self.api_key is not None and self.auth_string is not None:
            raise ValueError("give api_key (Prefect Cloud) or auth_string (a self-hosted server), not both")
        if not self.api_url.startswith(("https://", "http://")):
            raise ValueError("api_url must be an http(s) URL of a Prefect API")
        if "@" in self.api_url.split("/")[2]:  # it would be stored and shown as typed
            raise ValueError("put the credentials in api_key or auth_string, not in api_url")
        return self
