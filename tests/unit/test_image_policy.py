"""image_policy: parsing with the loader's file/line/key errors, and picking the newest allowed tag."""

from __future__ import annotations

import pytest

from prefect_gitops.errors import ConfigError
from prefect_gitops.image_policy import ImagePolicy, TagSelector, image_for, parse_range, parse_semver_tag
from prefect_gitops.loader import parse_environment


def policy(**kwargs) -> ImagePolicy:
    return ImagePolicy.model_validate({"repository": "registry.example.com/team/app", **kwargs})


def pick(p: ImagePolicy, *pages: list[str]):
    selector = TagSelector(p)
    for page in pages:
        selector.feed(page)
    return selector.result()


FILE = """\
work_pools:
  k8s:
    job_variables: {image: registry.example.com/team/app:1.0.0}
    image_policy:
      repository: registry.example.com/team/app
      policy:
        semver:
          range: "%s"
"""


def test_policy_in_the_environment_file_is_validated_with_file_line_and_key():
    loaded = parse_environment(FILE % ">=1.0.0 <2", file="environments/qa.yaml", name="qa")
    assert loaded.spec.work_pools["k8s"].image_policy.policy.semver.range == ">=1.0.0 <2"
    with pytest.raises(ConfigError) as caught:
        parse_environment(FILE % ">=1.0.0 <two", file="environments/qa.yaml", name="qa")
    problem = caught.value.problems[0]
    assert (problem.file, problem.line, problem.key) == ("environments/qa.yaml", 8, "work_pools.k8s.image_policy.policy.semver.range")
    assert "'<two'" in problem.message


@pytest.mark.parametrize("bad, says", [
    ({"policy": {}}, "exactly one of semver, numerical or alphabetical"),
    ({"policy": {"numerical": {}, "alphabetical": {}}}, "exactly one"),
    ({"policy": {"numerical": {"order": "up"}}}, "'asc' or 'desc'"),
    ({"policy": {"numerical": {}}, "filter_tags": {"pattern": "(["}}, "not a valid regular expression"),
    ({"policy": {"numerical": {}}, "filter_tags": {"pattern": "^main-(?P<ts>\\d+)$", "extract": "$when"}},
     "does not name"),
    ({"policy": {"numerical": {}}, "repository": "registry.example.com/team/app:1.0"}, "must not carry a tag"),
    ({"policy": {"numerical": {}}, "repository": "Registry.example.com/Team/app"}, "lowercase"),
    ({"policy": {"numerical": {}}, "registry": "x"}, "Extra inputs"),
])
def test_bad_policies_are_refused_with_what_is_wrong(bad, says):
    with pytest.raises(ValueError, match=says):
        policy(**{"policy": {"semver": {"range": "*"}}, **bad})


def test_semver_range_picks_the_newest_in_range_and_counts_what_it_left_out():
    p = policy(policy={"semver": {"range": ">=1.0.0 <2.0.0"}})
    s = pick(p, ["1.0.0", "latest", "v1.4.2", "1.10.0"], ["2.0.0", "1.10.0-rc.1", "main-abc", "0.9.0"])
    assert s.tag == "1.10.0"
    assert (s.seen, s.unparseable, s.out_of_range, s.filtered_out) == (8, 2, 3, 0)


@pytest.mark.parametrize("text, inside, outside", [
    ("^1.4", ["1.4.0", "1.9.9"], ["1.3.9", "2.0.0"]),
    ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0"]),
    ("~2.3", ["2.3.0", "2.3.7"], ["2.4.0", "2.2.9"]),
    ("~2.3.1", ["2.3.1"], ["2.4.0", "2.3.0"]),
    ("1.x", ["1.0.0", "1.99.1"], ["2.0.0", "0.9.0"]),
    ("*", ["0.0.1", "9.9.9"], ["1.0.0-rc.1"]),
    (">1.2", ["1.3.0"], ["1.2.9"]),
    ("<=1.2", ["1.2.9"], ["1.3.0"]),
    ("1.2.3 || >=3", ["1.2.3", "3.1.0"], ["1.2.4", "2.0.0"]),
    (">= 1.0.0, < 1.1", ["1.0.5"], ["1.1.0"]),
    (">=2.0.0-rc.0 <3", ["2.0.0-rc.1", "2.0.0"], ["1.9.0"]),
])
def test_semver_ranges(text, inside, outside):
    r = parse_range(text)
    for v in inside:
        assert r.matches(parse_semver_tag(v)), (text, v)
    for v in outside:
        assert not r.matches(parse_semver_tag(v)), (text, v)


@pytest.mark.parametrize("text", ["", ">=", "1.2.3.4", "abc", "1.x.3", "||"])
def test_bad_ranges(text):
    with pytest.raises(ValueError):
        parse_range(text)


def test_numerical_with_filter_and_extract():
    p = policy(policy={"numerical": {"order": "asc"}},
               filter_tags={"pattern": r"^main-[0-9a-f]+-(?P<ts>\d+)$", "extract": "$ts"})
    s = pick(p, ["main-abc1-100", "main-abc2-99", "feature-x-500", "main-zz-7", "main-abc3-1000"])
    assert s.tag == "main-abc3-1000"
    assert (s.filtered_out, s.unparseable) == (2, 0)  # main-zz-7: zz is not hex, the filter leaves it out
    desc = policy(policy={"numerical": {"order": "desc"}})
    assert pick(desc, ["10", "2", "x", "33"]).tag == "2"
    assert pick(desc, ["10", "2", "x", "33"]).unparseable == 1


def test_alphabetical_orders_and_ties_do_not_depend_on_the_registrys_order():
    asc = policy(policy={"alphabetical": {}})
    assert pick(asc, ["RELEASE.2024-01-02", "RELEASE.2024-03-01"], ["RELEASE.2023-12-31"]).tag == "RELEASE.2024-03-01"
    desc = policy(policy={"alphabetical": {"order": "desc"}})
    assert pick(desc, ["b", "a", "c"]).tag == "a"
    tie = policy(policy={"numerical": {}}, filter_tags={"pattern": r"^(\d+)-", "extract": "${1}"})
    assert pick(tie, ["5-a", "5-b"]).tag == pick(tie, ["5-b", "5-a"]).tag == "5-b"


def test_nothing_allowed_gives_no_tag():
    s = pick(policy(policy={"semver": {"range": "^3"}}), ["1.0.0", "latest"])
    assert s.tag is None and s.seen == 2


def test_digest_pinning():
    digest = "sha256:" + "a" * 64
    assert image_for(policy(policy={"semver": {"range": "*"}}), "1.2.3", digest) == "registry.example.com/team/app:1.2.3"
    pinned = policy(policy={"semver": {"range": "*"}}, pin_digest=True)
    assert image_for(pinned, "1.2.3", digest) == f"registry.example.com/team/app:1.2.3@{digest}"
    with pytest.raises(ValueError, match="no digest"):
        image_for(pinned, "1.2.3", None)
