"""The block types pass Prefect's own block standards suite; secrets are SecretStr."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr

from prefect_gitops.blocks import GitOpsRolloutDefaults, GitOpsSmokeTestDefaults, GitOpsSource


@pytest.mark.parametrize("block", [GitOpsSource, GitOpsRolloutDefaults, GitOpsSmokeTestDefaults])
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
