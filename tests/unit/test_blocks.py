"""The block types pass Prefect's own block standards suite; secrets are SecretStr."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from prefect_gitops.blocks import GitOpsPolicy, GitOpsRolloutDefaults, GitOpsSmokeTestDefaults, GitOpsSource, GitOpsTarget


@pytest.mark.parametrize("block", [GitOpsSource, GitOpsRolloutDefaults, GitOpsSmokeTestDefaults, GitOpsPolicy,
                                   GitOpsTarget])
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block


def test_secrets_are_secret_strings():
    source = GitOpsSource(url="https://gitlab.example.com/g/r.git", token="t0ken")
    assert isinstance(source.token, SecretStr) and "t0ken" not in repr(source) and "t0ken" not in str(source)


def test_defaults_blocks_fill_what_files_leave_out():
    from prefect_gitops.loader import parse_environment

    defaults = GitOpsRolloutDefaults(drift_mode="warn", max_parallel=2, drift_full_read_interval_seconds=600).as_file_defaults()
    defaults.update(GitOpsSmokeTestDefaults(policy={"kind": "process", "process": {"command": ["true"]}}).as_file_defaults())
    loaded = parse_environment("drift: {check_interval_seconds: 5}\n", file="f.yaml", name="qa", defaults=defaults)
    assert loaded.spec.drift.mode == "warn" and loaded.spec.drift.check_interval_seconds == 5  # the file wins
    assert loaded.spec.drift.full_read_interval_seconds == 600
    assert loaded.spec.rollout.max_parallel == 2 and loaded.spec.smoke_test.kind == "process"


def test_policy_block_holds_exactly_the_policy():
    """The policy store validates a GitOps Policy block document straight into policy.Policy (extra
    fields refused): the block's fields and the model's must stay the same."""
    from prefect_gitops.policy import Policy

    assert set(GitOpsPolicy.model_fields) == set(Policy.model_fields) - {"name"}
    block = GitOpsPolicy(all_targets={"denied_keys": ["service_account_name"], "require_digest_in": ["prod"]},
                         work_pools={"k8s-*": {"allowed_images": ["Harbor.corp/team/"]}})
    stored = block.model_dump(mode="json", include=set(GitOpsPolicy.model_json_schema()["properties"]))  # as saved
    policy = Policy.model_validate({**stored, "name": "p"})
    assert policy == block.to_policy("p")
    assert policy.work_pools["k8s-*"].allowed_images == ["harbor.corp/team/"]


def test_target_block_takes_one_credential_and_errors_name_its_url_without_userinfo():
    from prefect.blocks.system import Secret

    from prefect_gitops.adapters.environment_server import Target

    with pytest.raises(ValueError, match="not both"):
        GitOpsTarget(api_url="https://prefect.example.com/api", api_key=Secret(value="k"), auth_string=Secret(value="a:b"))
    with pytest.raises(ValueError, match="http"):
        GitOpsTarget(api_url="ftp://prefect.example.com/api")
    with pytest.raises(ValueError, match="not in api_url"):
        GitOpsTarget(api_url="https://admin:pw@prefect.example.com/api")
    target = Target("prod", "https://user:pw-canary@prefect.example.com:8443/api?token=q-canary",
                    auth_string=SecretStr("admin:s3cret-canary"))
    text = f"{target.describe()} {target!r}"
    assert "prefect.example.com:8443/api" in text and "canary" not in text
