"""The OCI distribution reference grammar (image_ref), table-driven: what it accepts, and for what it
refuses, the part named in the message."""

from __future__ import annotations

import pytest

from prefect_gitops.image_ref import describe, reference_problem

SHA256 = "a" * 64
VALID = [
    "flows",
    "flows:1.0",
    "registry.example.com:5000/team/flows:1.0",
    f"flows@sha256:{SHA256}",
    "localhost/a/b:c",
    f"harbor.corp/x/y:1.2.3@sha256:{SHA256}",
    "localhost:5000/flows",
    "docker.io/library/python:3.11-slim",
    "ghcr.io/org/repo__name/sub-part.x:v1_2-3.4",
    "a--b/c__d/e.f:_tag",
    "[::1]:5000/flows:1",
    "192.168.0.1:5000/flows:latest",
    "flows:" + "t" * 128,
    f"flows@sha512:{'b' * 128}",
    f"flows@multihash+base58:{'c' * 32}",
    "Registry.Example.com/flows:1",  # hosts are case-insensitive; only the path must be lowercase
]
INVALID = [
    ("", "is empty"),
    ("flows:1.0\n", "control character U+000A"),
    ("flows:1.0\nrm -rf /", "control character U+000A"),
    ("flows:1\t", "control character U+0009"),
    ("flows:1.0\x1b[31m", "control character U+001B"),
    ("flows 1.0", "may contain only lowercase letters"),
    ("flows:1.0 -v", "tag may contain only letters, digits, '_', '.', '-'"),
    ("flows:1.0;rm -rf", "tag may contain only letters, digits, '_', '.', '-'"),
    ("flows|cat", "may contain only lowercase letters"),
    ("flows:$(id)", "tag may contain only"),
    ("flows&&id", "may contain only lowercase letters"),
    ("Flows:1.0", "must be lowercase, got 'Flows'"),
    ("team/Flows", "must be lowercase, got 'Flows'"),
    ("flows:", "the tag after ':' is empty"),
    ("flows:" + "t" * 129, "the tag is 129 characters long; at most 128"),
    ("flows:.hidden", "must not start with '.' or '-'"),
    ("flows:-x", "must not start with '.' or '-'"),
    ("flows@sha256:abc", "a sha256 digest is 64 lowercase hex digits, got 3 characters"),
    (f"flows@sha256:{'a' * 65}", "got 65 characters"),
    (f"flows@sha256:{'A' * 64}", "64 lowercase hex digits"),
    (f"flows@sha256:{'g' * 64}", "64 lowercase hex digits"),
    ("flows@sha256", "the digest after '@' must be <algorithm>:<hex>"),
    ("flows@", "the digest after '@' must be <algorithm>:<hex>"),
    ("flows@md5:abc", "the md5 digest must be at least 32 hex digits"),
    ("a" * 256, "the name is 256 characters long; at most 255"),
    ("team//flows", "an empty component"),
    ("/flows", "an empty component"),
    ("flows/", "an empty component"),
    ("-flows", "may contain only lowercase letters"),
    ("flows_", "may contain only lowercase letters"),
    ("a___b", "may contain only lowercase letters"),
    ("registry.example.com:port/flows", "the registry port must be digits, got 'port'"),
    ("bad_host.example.com/flows", "registry host 'bad_host.example.com' may contain only"),
    ("-bad.example.com/flows", "registry host"),
    ("fl\u043ews:1.0", "may contain only lowercase letters"),  # a Cyrillic 'о'
]


@pytest.mark.parametrize("reference", VALID)
def test_valid_references(reference):
    assert reference_problem(reference) is None


@pytest.mark.parametrize("reference,fragment", INVALID)
def test_invalid_references_say_what_is_wrong(reference, fragment):
    problem = reference_problem(reference)
    assert problem is not None and fragment in problem, problem


def test_the_message_quotes_the_reference_escaped_and_short():
    long = "flows:1.0\n" + "x" * 500
    message = describe(long, reference_problem(long) or "")
    assert "\n" not in message and "\\n" in message and len(message) < 250
