"""Image automation, pull mode: which tag of a registry repository a target should run. Pure.

Modelled on Flux's ImagePolicy: a repository, one ordering (a semver range, numerical or alphabetical
order), an optional tag filter with an extract pattern, and optional digest pinning. The environment
file holds it per work pool or deployment as `image_policy:`; the loader validates it with the rest
of the file, so a bad range or pattern is reported with its file, line and key.

`TagSelector` takes the tags page by page and keeps only the best one so far: a repository with
10,000 tags is never held whole. Tags the filter leaves out are counted apart from tags that match
but do not parse (a semver policy's `latest`, a numerical policy's `abc`).

What parses, as Flux's image-reflector-controller has it:

- semver: `MAJOR.MINOR.PATCH`, an optional leading `v`, an optional `-pre.release` and `+build`
  (`1.2.3`, `v1.2.3`, `1.2.3-rc.1`); leading zeros are read as numbers (`v2025.07.03` is 2025.7.3).
  All three parts must be there: `1.2` and `1` do not parse (Flux's version.ParseVersion refuses them,
  so a build number such as `42` never becomes version 42.0.0). The tag written is the tag as listed.
- numerical: a plain decimal number, `12`, `-3`, `1.5` (compared exactly, not as a float); `inf`,
  `nan`, `1e400`, `+5`, `1_000`, ` 7` and `.5` do not parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Self

import semver
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefect_gitops.image_ref import reference_problem
from prefect_gitops.targets import ImageTargetType

MAX_PATTERN_LENGTH = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SemverChoice(_Strict):
    range: str = Field(description='A semver range: ">=1.2.0 <2", "^1.4", "~2.3", "1.x", "*", joined by "||".')

    @field_validator("range")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_range(value)  # raises ValueError with what is wrong
        return value


class OrderChoice(_Strict):
    order: Literal["asc", "desc"] = Field(
        default="asc", description="asc: the highest value is the newest; desc: the lowest is.")


class PolicyChoice(_Strict):
    """Exactly one way to order the tags (Flux's policy.semver / numerical / alphabetical)."""

    semver: SemverChoice | None = None
    numerical: OrderChoice | None = None
    alphabetical: OrderChoice | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("semver", "numerical", "alphabetical") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of semver, numerical or alphabetical (got {given or 'none'})")
        return self


class TagFilter(_Strict):
    pattern: str = Field(description="Regular expression (Python syntax) a tag must match to be considered.")
    extract: str = Field(
        default="", description='What to order by, from the pattern\'s groups: "$ts" or "${ts}" (named) or "$1"; '
                                "empty: the whole tag.")

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        if len(self.pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"pattern is {len(self.pattern)} characters long; at most {MAX_PATTERN_LENGTH}")
        try:
            compiled = re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        for name in _EXTRACT_REF.findall(self.extract):
            ref = name[0] or name[1]
            if ref.isdigit() and int(ref) > compiled.groups:
                raise ValueError(f"extract refers to group {ref}; the pattern has {compiled.groups}")
            if not ref.isdigit() and ref not in compiled.groupindex:
                raise ValueError(f"extract refers to the group {ref!r}, which the pattern does not name")
        return self


class ImagePolicy(_Strict):
    """How the scan picks a work pool's or deployment's image from a registry."""

    repository: str = Field(description="The image repository, without tag: registry.example.com/team/app.")
    policy: PolicyChoice
    filter_tags: TagFilter | None = Field(default=None, description="Only tags matching pattern are considered.")
    pin_digest: bool = Field(
        default=False, description="Write repo:tag@sha256:... (the digest the registry has for the tag).")
    credentials_block: str | None = Field(
        default=None, description="Name of a prefect-docker DockerRegistryCredentials block (none: anonymous).")
    insecure: bool = Field(default=False, description="Talk plain HTTP to the registry (a local test registry only).")
    write_back: Literal["commit", "merge-request"] = Field(
        default="commit", description="Commit the new image to the branch, or open (update) a GitLab merge request.")

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        problem = reference_problem(value)
        if problem:
            raise ValueError(f"repository {value!r}: {problem}")
        if "@" in value or ":" in value.rsplit("/", 1)[-1]:
            raise ValueError(f"repository {value!r} must not carry a tag or digest: the policy picks the tag")
        return value

    def describe(self) -> str:
        p = self.policy
        how = (f"semver {p.semver.range}" if p.semver else
               f"numerical {p.numerical.order}" if p.numerical else f"alphabetical {p.alphabetical.order}"
               if p.alphabetical else "?")
        if self.filter_tags:
            how += f", tags matching {self.filter_tags.pattern}"
        return (how + (", digest pinned" if self.pin_digest else "")
                + (", as a merge request" if self.write_back == "merge-request" else ""))


# -- semver ranges ----------------------------------------------------------------------------------

_EXTRACT_REF = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_COMPARATOR = re.compile(r"^(>=|<=|>|<|=|!=|\^|~)?\s*v?([0-9xX*]+)(?:\.([0-9xX*]+))?(?:\.([0-9xX*]+))?"
                         r"(?:-([0-9A-Za-z.-]+))?$")
# Flux: three dot-separated numbers (leading zeros allowed), optional v, pre-release and build
_SEMVER_TAG = re.compile(r"v?([0-9]+)\.([0-9]+)\.([0-9]+)((?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?)")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
Bound = tuple[str, semver.Version]  # (">=", 1.2.0)


@dataclass(frozen=True)
class SemverRange:
    alternatives: tuple[tuple[Bound, ...], ...]  # any alternative whose every bound holds
    prereleases: bool  # a comparator names a pre-release: pre-releases may match

    def matches(self, version: semver.Version) -> bool:
        if version.prerelease and not self.prereleases:
            return False
        return any(all(_holds(op, version, bound) for op, bound in alt) for alt in self.alternatives)


def _holds(op: str, version: semver.Version, bound: semver.Version) -> bool:
    c = version.compare(bound)
    return {">=": c >= 0, ">": c > 0, "<=": c <= 0, "<": c < 0, "=": c == 0, "!=": c != 0}[op]


def parse_range(text: str) -> SemverRange:
    """npm/Masterminds-style semver range, as Flux takes them; ValueError says what is wrong."""
    if not text.strip():
        raise ValueError("the semver range is empty")
    alternatives = []
    prereleases = False
    for alternative in text.split("||"):
        tokens = [t for t in re.split(r"[\s,]+", re.sub(r"(>=|<=|!=|>|<|=|\^|~)\s+", r"\1", alternative.strip())) if t]
        if not tokens:
            raise ValueError(f"empty alternative in the semver range {text!r}")
        bounds: list[Bound] = []
        for token in tokens:
            found = _COMPARATOR.match(token)
            if not found:
                raise ValueError(f"{token!r} in the semver range {text!r} is not a version comparator "
                                 "(e.g. >=1.2.0, <2, ^1.4, ~2.3, 1.x)")
            op, parts, pre = found.group(1) or "=", found.group(2, 3, 4), found.group(5)
            prereleases = prereleases or pre is not None
            bounds.extend(_expand(op, parts, pre, token))
        alternatives.append(tuple(bounds))
    return SemverRange(tuple(alternatives), prereleases)


def _expand(op: str, parts: tuple[str | None, ...], pre: str | None, token: str) -> list[Bound]:
    wild = [p is None or p in ("x", "X", "*") for p in parts]
    if any(not w and p is not None and not p.isdigit() for w, p in zip(wild, parts)):
        raise ValueError(f"{token!r}: a version part is a number or x")
    fixed = [int(p) for p, w in zip(parts, wild) if not w and p is not None]
    if any(wild[i] and not all(wild[i:]) for i in range(3)):
        raise ValueError(f"{token!r}: only trailing version parts may be x")
    n = len(fixed)  # how many parts are given
    major, minor, patch = (fixed + [0, 0, 0])[:3]
    low = semver.Version(major, minor, patch, prerelease=pre if n == 3 else None)
    if n == 0:
        return [] if op in ("=", ">=", "<=", "^", "~") else [(">=", semver.Version(0, 0, 0)), ("<", low)]
    if op == "^":
        high = (semver.Version(major + 1, 0, 0) if major or n == 1 else
                semver.Version(0, minor + 1, 0) if minor or n == 2 else semver.Version(0, 0, patch + 1))
        return [(">=", low), ("<", high)]
    # the version after the last given part: ~1.2.3 and 1.2 -> 1.3.0; ~1 and 1 -> 2.0.0
    after = (semver.Version(major + 1, 0, 0) if n == 1 else semver.Version(major, minor + 1, 0) if n == 2
             else semver.Version(major, minor, patch + 1))
    if op == "~":
        return [(">=", low), ("<", semver.Version(major, minor + 1, 0) if n == 3 else after)]
    if n == 3 or op == "!=":
        return [(op, low)]
    return {"=": [(">=", low), ("<", after)], ">=": [(">=", low)], "<": [("<", low)],
            ">": [(">=", after)], "<=": [("<", after)]}[op]


def parse_semver_tag(value: str) -> semver.Version | None:
    """A tag (or extracted value) as a semantic version: 1.2.3, v1.2.3, 1.2.3-rc.1, v2025.07.03; None
    otherwise (1.2, 1, latest). Pre-release and build are checked by `semver` as before."""
    found = _SEMVER_TAG.fullmatch(value)
    if not found:
        return None
    try:
        major, minor, patch = (int(part) for part in found.group(1, 2, 3))
        return semver.Version.parse(f"{major}.{minor}.{patch}{found.group(4)}")
    except ValueError:  # a bad pre-release or build; a number too long for int()
        return None


def parse_decimal_tag(value: str) -> Decimal | None:
    """A tag (or extracted value) as a plain decimal number: 12, -3, 1.5; None otherwise (inf, nan, 1e3)."""
    if not _DECIMAL.fullmatch(value):
        return None
    return Decimal(value)


# -- choosing the newest tag -------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    tag: str | None  # the newest allowed tag; None when nothing qualified
    seen: int  # tags the registry listed
    filtered_out: int  # left out by filter_tags
    unparseable: int  # matched the filter but do not parse as the policy's kind (latest for semver)
    out_of_range: int  # semver tags outside the range (pre-releases too, unless the range names one)


class TagSelector:
    """Feed tags page by page; `result()` is the newest allowed one. Keeps one candidate, not the list."""

    def __init__(self, policy: ImagePolicy):
        self._policy = policy
        self._filter = re.compile(policy.filter_tags.pattern) if policy.filter_tags else None
        self._extract = policy.filter_tags.extract if policy.filter_tags else ""
        self._range = parse_range(policy.policy.semver.range) if policy.policy.semver else None
        self._best: tuple[object, str] | None = None
        self.seen = self.filtered_out = self.unparseable = self.out_of_range = 0

    def feed(self, tags: Iterable[str]) -> None:
        for tag in tags:
            self.seen += 1
            value = self._value(tag)
            if value is None:
                self.filtered_out += 1
                continue
            key = self._key(value)
            if key is None:
                self.unparseable += 1
                continue
            if key is _OUT_OF_RANGE:
                self.out_of_range += 1
                continue
            if self._best is None or _newer(key, self._best[0], tag, self._best[1]):
                self._best = (key, tag)

    def result(self) -> Selection:
        return Selection(self._best[1] if self._best else None, self.seen, self.filtered_out, self.unparseable,
                         self.out_of_range)

    def _value(self, tag: str) -> str | None:
        if self._filter is None:
            return tag
        found = self._filter.match(tag)
        if not found:
            return None
        if not self._extract:
            return tag
        return _EXTRACT_REF.sub(lambda m: found.group(_group(m.group(1) or m.group(2))) or "", self._extract)

    def _key(self, value: str) -> object | None:
        choice = self._policy.policy
        if self._range is not None:
            version = parse_semver_tag(value)
            if version is None:
                return None
            return version if self._range.matches(version) else _OUT_OF_RANGE
        order = choice.numerical or choice.alphabetical
        assert order is not None
        if choice.numerical:
            number = parse_decimal_tag(value)
            if number is None:
                return None
            return _Ordered(number, order.order == "desc")
        return _Ordered(value, order.order == "desc")


_OUT_OF_RANGE = object()


@dataclass(frozen=True)
class _Ordered:
    value: Decimal | str
    descending: bool

    def newer_than(self, other: _Ordered) -> bool:
        if self.descending:
            return self.value < other.value  # type: ignore[operator]
        return self.value > other.value  # type: ignore[operator]


def _newer(key: object, best: object, tag: str, best_tag: str) -> bool:
    """Newer, or equal and the tag sorts later (so the pick never depends on the registry's order)."""
    if isinstance(key, semver.Version) and isinstance(best, semver.Version):
        c = key.compare(best)
        return c > 0 or (c == 0 and tag > best_tag)
    assert isinstance(key, _Ordered) and isinstance(best, _Ordered)
    if key.value == best.value:
        return tag > best_tag
    return key.newer_than(best)


def _group(ref: str) -> int | str:
    return int(ref) if ref.isdigit() else ref


def image_for(policy: ImagePolicy, tag: str, digest: str | None) -> str:
    """What the target's `image` becomes: repo:tag, or repo:tag@digest when the policy pins digests."""
    image = f"{policy.repository}:{tag}"
    if policy.pin_digest:
        if not digest:
            raise ValueError(f"{image}: the registry gave no digest to pin")
        image += f"@{digest}"
    return image


@dataclass(frozen=True)
class ImageDecision:
    """One image to write back (the shape of push mode's image_write.ImageWrite, plus why)."""

    environment: str
    target_type: ImageTargetType
    target: str
    image: str
    previous: str | None
    tag: str
    merge_request: bool = False  # the policy's write_back: merge-request
