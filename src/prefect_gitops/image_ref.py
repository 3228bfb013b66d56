"""Container image references, checked against the OCI distribution reference grammar. Pure.

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*     (at most 255 characters)
    domain     := host [ ":" port ]      host: domain-name | IPv4 | "[" IPv6 "]"
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex      algorithm: [A-Za-z][A-Za-z0-9]* ( [+._-] [A-Za-z][A-Za-z0-9]* )*

(github.com/distribution/reference, grammar and regexp.go). The first component is a registry host
when it contains "." or ":" or is "localhost", as the Docker/containerd parsers decide. An image
reaches shells, Kubernetes manifests and CI logs, so anything outside the grammar is refused with
what is wrong, before it is planned or written.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 255
MAX_SHOWN = 80  # characters of a refused reference repeated in the message
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
DOMAIN_COMPONENT = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?")
IPV6 = re.compile(r"\[[a-fA-F0-9:]+\]")
PORT = re.compile(r"[0-9]+")
TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[+._-][A-Za-z][A-Za-z0-9]*)*")
HEX = re.compile(r"[0-9a-fA-F]{32,}")
# registered algorithms (OCI image-spec descriptor.md): lowercase hex of a fixed length
KNOWN_DIGESTS = {"sha256": 64, "sha384": 96, "sha512": 128}


def reference_problem(reference: str) -> str | None:
    """What is wrong with `reference`, or None when it follows the grammar."""
    if not reference:
        return "is empty"
    for char in reference:  # said first and by code point: they may not show in a terminal or a log
        if not char.isprintable() or (char.isspace() and char != " "):
            return f"contains the control character U+{ord(char):04X}; an image reference has none"
    rest, at, digest = reference.partition("@")
    if at:
        problem = _digest_problem(digest)
        if problem:
            return problem
    name, tag = _split_tag(rest)
    if tag is not None:
        problem = _tag_problem(tag)
        if problem:
            return problem
    return _name_problem(name)


def describe(reference: str, problem: str) -> str:
    shown = reference if len(reference) <= MAX_SHOWN else reference[:MAX_SHOWN] + "..."
    return f"image {shown!r}: {problem}"


def _split_tag(rest: str) -> tuple[str, str | None]:
    """name and tag: the tag follows the last ':' after the last '/' (a ':' before it is a port)."""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1:]
    return rest, None


def _tag_problem(tag: str) -> str | None:
    if not tag:
        return "the tag after ':' is empty"
    if len(tag) > 128:
        return f"the tag is {len(tag)} characters long; at most 128"
    if not TAG.fullmatch(tag):
        return ("tag may contain only letters, digits, '_', '.', '-' (and must not start with '.' or '-'), "
                f"got {tag[:MAX_SHOWN]!r}")
    return None


def _digest_problem(digest: str) -> str | None:
    algorithm, colon, hex_ = digest.partition(":")
    if not colon or not ALGORITHM.fullmatch(algorithm):
        return "the digest after '@' must be <algorithm>:<hex>, e.g. sha256:<64 hex digits>"
    expected = KNOWN_DIGESTS.get(algorithm)
    if expected is not None:
        if len(hex_) != expected or not re.fullmatch(r"[0-9a-f]+", hex_):
            return f"a {algorithm} digest is {expected} lowercase hex digits, got {len(hex_)} characters"
    elif not HEX.fullmatch(hex_):
        return f"the {algorithm} digest must be at least 32 hex digits"
    return None


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
    components = name.split("/")
    first = components[0]
    if len(components) > 1 and _is_host(first):
        problem = _domain_problem(first)
        if problem:
            return problem
        components = components[1:]
    for component in components:
        if not component:
            return "the repository path has an empty component (a '/' too many)"
        if not PATH_COMPONENT.fullmatch(component):
            if PATH_COMPONENT.fullmatch(component.lower()):
                return f"the repository name must be lowercase, got {component!r}"
            return (f"repository path component {component[:MAX_SHOWN]!r} may contain only lowercase letters, "
                    "digits and the separators '.', '_', '__', '-' between them")
    return None


def _domain_problem(domain: str) -> str | None:
    host, port = domain, None
    if not IPV6.fullmatch(domain):
        bracket = domain.rfind("]")
        colon = domain.rfind(":")
        if colon > bracket:
            host, port = domain[:colon], domain[colon + 1:]
    if port is not None and not PORT.fullmatch(port):
        return f"the registry port must be digits, got {port[:MAX_SHOWN]!r}"
    if IPV6.fullmatch(host):
        return None
    if not all(DOMAIN_COMPONENT.fullmatch(part) for part in host.split(".")):
        return (f"registry host {host[:MAX_SHOWN]!r} may contain only letters, digits, '-' and '.' "
                "between its parts")
    return None


# -- normalized references, for the GitOps policy's registry prefixes -----------------------------------

DOCKER_HUB = "docker.io"
HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


def normalize(reference: str) -> str | None:
    """`host/path[:tag][@digest]` with Docker's defaults (docker.io, library/ for one-word names), or
    None when `reference` does not follow the grammar: anything unexpected is refused, not guessed at."""
    if reference_problem(reference) is not None:
        return None
    rest, at, digest = reference.partition("@")
    name, tag = _split_tag(rest)
    host, path = _split_host(name)
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return f"{host}/{path}" + (f":{tag}" if tag is not None else "") + (f"@{digest}" if at else "")


def normalize_prefix(prefix: str) -> str:
    """An allowed prefix as references are normalized: its registry host lowercased, Docker Hub's aliases
    as docker.io; a prefix without a host is Docker Hub's (write library/ for its official images)."""
    prefix = prefix.strip()
    first, slash, rest = prefix.partition("/")
    if _is_host(first):
        host = first.lower()
        return (DOCKER_HUB if host in HUB_ALIASES else host) + slash + rest
    return f"{DOCKER_HUB}/{prefix}"


def _is_host(component: str) -> bool:
    # as Docker decides: the first component is a registry host if it has a dot or a port, or is localhost
    return "." in component or ":" in component or component == "localhost"


def _split_host(name: str) -> tuple[str, str]:
    first, _, rest = name.partition("/")
    if rest and _is_host(first):
        host = first.lower()
        return (DOCKER_HUB if host in HUB_ALIASES else host), rest
    return DOCKER_HUB, name
