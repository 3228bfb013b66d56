"""The corpus of hostile or mistaken environment files in tests/cases/hostile/ (format: its _README.md),
shared by the loader's table test and the reconcile/CLI test."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CASES = Path(__file__).parent / "cases" / "hostile"


@dataclass(frozen=True)
class Names:
    """What the placeholders {pool}, {flow} and {deployment} stand for."""

    pool: str
    flow: str

    @property
    def deployment(self) -> str:
        return f"{self.flow}/daily"

    def fill(self, text: str) -> str:
        return text.replace("{pool}", self.pool).replace("{flow}", self.flow).replace("{deployment}", self.deployment)


def load_cases() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(CASES.glob("[!_]*.yaml"))}


def file_bytes(case: dict[str, Any], names: Names) -> bytes:
    """The environment file the case describes, placeholders filled."""
    if "file_base64" in case:
        return names.fill(base64.b64decode(case["file_base64"]).decode("latin-1")).encode("latin-1")
    if "file_parts" in case:
        return "".join(names.fill(p["text"]) * p.get("times", 1) for p in case["file_parts"]).encode()
    return names.fill(case["file"]).encode()


def place(case: dict[str, Any], names: Names, repo_root: Path, env: str, outside: Path) -> None:
    """Write the case's file as environments/<env>.yaml of the work tree (a symlink out of it if asked)."""
    target = repo_root / "environments" / f"{env}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    content = file_bytes(case, names)
    if case.get("symlink_outside"):
        outside.mkdir(parents=True, exist_ok=True)
        real = outside / f"{env}.yaml"
        real.write_bytes(content)
        os.symlink(real, target)
    else:
        target.write_bytes(content)


def expected(case: dict[str, Any], names: Names) -> tuple[str | None, str | None, int | None]:
    """(key, message fragment, line) the refusal must carry; key None: a whole-file problem."""
    key = case.get("expect_key")
    return (names.fill(key) if key is not None else None, case.get("expect_message"), case.get("expect_line"))
