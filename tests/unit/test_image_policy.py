"""image_policy: parsing with the loader's file/line/key errors, and picking the newest allowed tag."""

from __future__ import annotations

from decimal import Decimal

import pytest

from prefect_gitops.errors import ConfigError
from prefect_gitops.image_policy import (ImagePolicy, TagSelector, image_for, parse_decimal_tag, parse_range,
                                         parse_semver_tag)
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


@pytest.mark.parametrize("tag, number", [
    ("12", Decimal(12)), ("-3", Decimal(-3)), ("1.5", Decimal("1.5")), ("007", Decimal(7)), ("-0.25", Decimal("-0.25")),
    ("inf", None), ("infinity", None), ("Infinity", None), ("-inf", None), ("nan", None), ("NaN", None),
    ("1e400", None), ("1e3", None), ("+5", None), ("1_000", None), (" 7", None), ("7\n", None), (".5", None),
    ("5.", None), ("0x10", None), ("\u0661\u0662", None), ("", None), ("-", None),
])
def test_only_plain_decimal_numbers_parse_as_numerical(tag, number):
    assert parse_decimal_tag(tag) == number


@pytest.mark.parametrize("order, tags, chosen, unparseable", [
    ("asc", ["10", "inf", "infinity", "nan", "1e400", "Infinity", "9"], "10", 5),
    ("desc", ["10", "-inf", "-1e400", "nan", "-2"], "-2", 3),
    ("asc", ["1.5", "1.25", "1_000", "+7", " 8"], "1.5", 3),
    # 23 digits: a float reads both as the same number; compared exactly the lower one wins in desc
    ("desc", ["20240101120000123456789", "20240101120000123456788"], "20240101120000123456788", 0),
    ("asc", ["9" * 400, "1"], "9" * 400, 0),  # a float would make it inf; it is still just a big number
])
def test_numerical_ignores_and_counts_what_is_not_a_plain_number(order, tags, chosen, unparseable):
    s = pick(policy(policy={"numerical": {"order": order}}), tags)
    assert (s.tag, s.unparseable) == (chosen, unparseable)


@pytest.mark.parametrize("tag, version", [
    ("1.2.3", "1.2.3"), ("v1.2.3", "1.2.3"), ("1.2.3-rc.1", "1.2.3-rc.1"), ("v1.2.3-rc.1+build.7", "1.2.3-rc.1+build.7"),
    ("v2025.07.03", "2025.7.3"), ("01.02.03", "1.2.3"),  # leading zeros: read as numbers, as Flux does
    ("0.0.0", "0.0.0"),
    # Flux's version.ParseVersion wants all three parts: 1.2 and 1 are not versions (nor is 42, a build number)
    ("1.2", None), ("1", None), ("v1", None), ("v1.2", None), ("42", None),
    ("V1.2.3", None), ("1.2.3.4", None), ("1.2.3-", None), ("1.2.3-rc..1", None), ("1.2.3-rc.01", None),
    ("1.2.3\n", None), (" 1.2.3", None), ("1.2.\u0663", None), ("latest", None), ("", None), ("vv1.2.3", None),
])
def test_which_tags_parse_as_semver(tag, version):
    parsed = parse_semver_tag(tag)
    assert (str(parsed) if parsed is not None else None) == version


@pytest.mark.parametrize("range_, tags, chosen, unparseable", [
    ("*", ["1.9.0", "v2025.07.03", "1.10.0"], "v2025.07.03", 0),  # the tag as listed is written, not 2025.7.3
    ("^1", ["v1.2.3", "1.2.0", "v1.10.0", "2.0.0"], "v1.10.0", 0),
    (">=1.0.0", ["1.2.0", "1.3", "2", "20240101", "latest"], "1.2.0", 4),  # not coerced to 1.3.0, 2.0.0, ...
    ("~2025.7", ["v2025.07.03", "v2025.07.10", "v2025.08.01"], "v2025.07.10", 0),
    ("*", ["1.2.3", "1.2.4-rc.1"], "1.2.3", 0),  # pre-releases as before: only when the range names one
])
def test_semver_policy_picks_by_version_and_writes_the_original_tag(range_, tags, chosen, unparseable):
    s = pick(policy(policy={"semver": {"range": range_}}), tags)
    assert (s.tag, s.unparseable) == (chosen, unparseable)


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
