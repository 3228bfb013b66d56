"""The parse cache of load_environment gives exactly what a fresh parse gives, errors included."""

from __future__ import annotations

import pytest

from prefect_gitops.errors import ConfigError
from prefect_gitops.loader import load_environment

TEXT = """\
work_pools:
  k8s-prod:
    job_variables: {image: registry.example.com/flows:1.4.2, namespace: flows-prod}
deployments:
  etl/daily:
    job_variables:
      image: registry.example.com/flows:1.4.3
      env: {LOG_LEVEL: debug, RATIO: "0.5"}
      finished_job_ttl: 60
rollout:
  promotion: {from: qa, soak_seconds: 3600}
drift: {mode: warn, check_interval_seconds: 0}
"""


def _write(root, text):
    (root / "environments").mkdir(exist_ok=True)
    (root / "environments" / "prod.yaml").write_text(text)


def test_cached_parse_equals_fresh_parse(tmp_path):
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    repo.mkdir()
    _write(repo, TEXT)
    defaults = {"smoke_test": {"kind": "none"}}
    fresh = load_environment(repo, "environments", "prod", defaults=defaults)
    first = load_environment(repo, "environments", "prod", defaults=defaults, cache_dir=cache)
    assert len(list(cache.glob("*.json"))) == 1
    second = load_environment(repo, "environments", "prod", defaults=defaults, cache_dir=cache)
    for loaded in (first, second):
        assert loaded.spec == fresh.spec
        assert loaded.lines == fresh.lines
        assert loaded.file == fresh.file == "environments/prod.yaml"
    assert second.line_of(("deployments", "etl/daily", "job_variables", "env")) == 8
    # other defaults: another entry, not the cached one
    other = load_environment(repo, "environments", "prod", defaults=None, cache_dir=cache)
    assert other.spec == load_environment(repo, "environments", "prod").spec
    assert len(list(cache.glob("*.json"))) == 2


@pytest.mark.parametrize("extra, stored", [
    ("unknown_section: 1\n", 1),          # the YAML parse is kept; validation runs (and refuses) every time
    ("deployments: {a: 1\n", 0),          # YAML that does not parse: nothing kept
    ("work_pools: {}\nwork_pools: {}\n", 0),  # duplicate key
])
def test_errors_read_the_same_with_the_cache(tmp_path, extra, stored):
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    repo.mkdir()
    _write(repo, extra if extra.startswith("work_pools") else TEXT + extra)
    with pytest.raises(ConfigError) as fresh:
        load_environment(repo, "environments", "prod")
    for _ in range(2):
        with pytest.raises(ConfigError) as cached:
            load_environment(repo, "environments", "prod", cache_dir=cache)
        assert [p.to_dict() for p in cached.value.problems] == [p.to_dict() for p in fresh.value.problems]
    assert len(list(cache.glob("*.json"))) == stored


def test_a_broken_cache_entry_is_parsed_again(tmp_path):
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    repo.mkdir()
    _write(repo, TEXT)
    load_environment(repo, "environments", "prod", cache_dir=cache)
    (entry,) = cache.glob("*.json")
    entry.write_text("{not json")
    loaded = load_environment(repo, "environments", "prod", cache_dir=cache)
    assert loaded.spec == load_environment(repo, "environments", "prod").spec
