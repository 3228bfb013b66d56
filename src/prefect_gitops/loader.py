"""Read one environment file from a checked-out GitOps repo into typed models.

Every problem becomes a ConfigProblem naming the file, the line (where YAML
gives one) and the key, so users can fix it without guessing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
import ruamel.yaml
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from prefect_gitops import yaml_guard
from prefect_gitops.errors import ConfigError, ConfigProblem
from prefect_gitops.model import ENVIRONMENT_NAME_PATTERN, EnvironmentFile, deep_merge
from prefect_gitops.value_checks import value_problems

MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoadedEnvironment:
    name: str
    file: str  # path relative to the repo root, as users see it in Git
    spec: EnvironmentFile
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)  # key path -> 1-based line

    def line_of(self, path: tuple[str, ...]) -> int | None:
        """Line of the deepest key of `path` that the file names."""
        for depth in range(len(path), 0, -1):
            if path[:depth] in self.lines:
                return self.lines[path[:depth]]
        return None

    def problem(self, path: tuple[str, ...], message: str) -> ConfigProblem:
        return ConfigProblem(message=message, file=self.file, line=self.line_of(path), key=dotted(path))


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def environment_file_path(folder: str, environment: str) -> str:
    return f"{folder.strip('/') or '.'}/{environment}.yaml".removeprefix("./")


def load_environment(repo_root: Path, folder: str, environment: str, defaults: dict[str, Any] | None = None,
                     cache_dir: Path | None = None) -> LoadedEnvironment:
    """Load environments/<environment>.yaml from a checked-out repo.

    With `cache_dir`, the parse of a file's exact text (with the same defaults) is reused across
    processes: parsing YAML with line numbers is the slow part (about 0.5 s for 1,000 deployments),
    and a reconcile of an unchanged revision reads the same text again.
    """
    if not re.match(ENVIRONMENT_NAME_PATTERN, environment):
        raise ConfigError(
            [ConfigProblem(f"environment name {environment!r} must be lowercase letters, digits and dashes")]
        )
    relative = environment_file_path(folder, environment)
    root = repo_root.resolve()
    candidate = root / relative
    resolved = Path(os.path.realpath(candidate))
    if resolved != root and root not in resolved.parents:
        raise ConfigError([ConfigProblem("is a symlink that leads outside the repository", file=relative)])
    if not resolved.is_file():
        raise ConfigError([ConfigProblem("environment file not found in the repository", file=relative)])
    size = resolved.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(
            [ConfigProblem(f"file is {size} bytes; the limit is {MAX_FILE_BYTES} (1 MiB)", file=relative)]
        )
    text = yaml_guard.decode(resolved.read_bytes(), relative)
    if cache_dir is not None:
        return _parse_cached(text, relative, environment, defaults, Path(cache_dir))
    return parse_environment(text, file=relative, name=environment, defaults=defaults)


def parse_environment(text: str, file: str, name: str, defaults: dict[str, Any] | None = None) -> LoadedEnvironment:
    """Parse and validate an environment file's text. Pure.

    `defaults` (from the policy default blocks) fill the sections the file leaves out; the file wins.
    """
    plain, lines = _parse_plain(text, file, name, defaults)
    return _validated(plain, lines, file, name)


def _validated(plain: dict[str, Any], lines: dict[tuple[str, ...], int], file: str, name: str) -> LoadedEnvironment:
    loaded = LoadedEnvironment(name=name, file=file, spec=EnvironmentFile(), lines=lines)
    try:
        spec = EnvironmentFile.model_validate(plain)
    except ValidationError as exc:
        raise ConfigError([_validation_problem(loaded, err) for err in exc.errors()]) from None
    problems = value_problems(spec)
    if problems:
        raise ConfigError([loaded.problem(path, message) for path, message in problems])
    return LoadedEnvironment(name=name, file=file, spec=spec, lines=lines)


def _parse_plain(text: str, file: str, name: str, defaults: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The file as plain JSON values (defaults merged in) and the line of every key path."""
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark, decoded
    yaml_guard.check(text, file)  # before anything composes or walks the data
    yaml = yaml_guard.guarded_yaml(file)
    yaml.allow_duplicate_keys = False
    try:
        document = yaml.load(text)
    except DuplicateKeyError as exc:
        raise ConfigError([_yaml_problem(exc, file, prefix="duplicate key")]) from None
    except MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(exc, file, prefix="invalid YAML")]) from None
    except YAMLError as exc:
        raise ConfigError([ConfigProblem(f"invalid YAML: {exc}", file=file)]) from None
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        # a value the guard let through that ruamel's constructor cannot build: the file's problem all the same
        problem = ConfigProblem(f"invalid YAML value ({type(exc).__name__}: {exc})", file=file)
        raise ConfigError([problem]) from None

    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise ConfigError([ConfigProblem("the file must be a mapping (work_pools:, deployments:, ...)", file=file, line=1)])

    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(document, (), lines)
    loaded = LoadedEnvironment(name=name, file=file, spec=EnvironmentFile(), lines=lines)
    try:
        plain = _to_plain(document, ())
    except _NotJson as exc:
        raise ConfigError([loaded.problem(exc.path, exc.message)]) from None
    if defaults:
        plain = deep_merge(defaults, plain)
    return plain, lines


# Bump when _parse_plain's output for the same text and defaults changes.
_PARSE_CACHE_VERSION = 2  # 2: parses the YAML guard refuses are no longer reused
_PARSE_CACHE_KEEP = 16  # parsed files kept per cache directory (least recently used go first)


def _parse_cached(text: str, file: str, name: str, defaults: dict[str, Any] | None,
                  cache_dir: Path) -> LoadedEnvironment:
    """parse_environment(), reusing the YAML parse of the same text and defaults from `cache_dir`.

    Only successful parses are stored (plain values and lines, before validation), so every error
    is produced exactly as without the cache; an unreadable entry is parsed again.
    """
    key = hashlib.sha256(json.dumps([_PARSE_CACHE_VERSION, ruamel.yaml.__version__, defaults, text],
                                    sort_keys=True, default=str).encode()).hexdigest()
    entry = cache_dir / f"{key}.json"
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        plain, lines = cached["plain"], {tuple(path): line for path, line in cached["lines"]}
        os.utime(entry)
    except (OSError, ValueError, KeyError, TypeError):
        plain, lines = _parse_plain(text, file, name, defaults)
        _store(cache_dir, entry, {"plain": plain, "lines": [[list(p), n] for p, n in lines.items()]})
    return _validated(plain, lines, file, name)


def _store(cache_dir: Path, entry: Path, value: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written only costs the next run a parse."""
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(value, out)
        os.replace(tmp, entry)
        tmp = None
        entries = sorted(cache_dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[_PARSE_CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _yaml_problem(exc: MarkedYAMLError, file: str, prefix: str) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    detail = " ".join(str(x) for x in (exc.context, exc.problem) if x)
    key = None
    found = re.search(r'found duplicate key "([^"]*)"', str(exc))
    if found:
        key = found.group(1)
        detail = f'key "{key}" appears more than once'
    return ConfigProblem(f"{prefix}: {detail}".strip(), file=file, line=line, key=key)


def _validation_problem(loaded: LoadedEnvironment, err: ErrorDetails) -> ConfigProblem:
    path = tuple(str(p) for p in err["loc"] if p != "[key]")
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = dotted(path[:-1]) or "the top level"
        message = f"unknown key {path[-1]!r} in {parent}"
    elif "[key]" in err["loc"]:
        message = f"invalid name {path[-1]!r}: {err['msg']}"
        if len(path) >= 2 and path[0] == "deployments":
            message = f'invalid deployment name {path[-1]!r}: write it as "<flow name>/<deployment name>"'
    else:
        message = f"{err['msg']} (got {err.get('input')!r})" if "input" in err else err["msg"]
    return loaded.problem(path, message)


def _collect_lines(node: Any, path: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, CommentedMap):
        for key in node:
            child = path + (str(key),)
            try:
                lines[child] = node.lc.key(key)[0] + 1
            except (KeyError, TypeError):
                pass
            _collect_lines(node[key], child, lines)
    elif isinstance(node, CommentedSeq):
        for index, item in enumerate(node):
            child = path + (str(index),)
            try:
                lines[child] = node.lc.item(index)[0] + 1
            except (KeyError, TypeError):
                pass
            _collect_lines(item, child, lines)


class _NotJson(Exception):
    def __init__(self, path: tuple[str, ...], message: str):
        self.path, self.message = path, message


def _to_plain(node: Any, path: tuple[str, ...]) -> Any:
    """ruamel's round-trip types -> plain JSON values; anything else is refused."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise _NotJson(path + (str(key),), f"keys must be strings, got {type(key).__name__} {key!r}")
            out[str(key)] = _to_plain(value, path + (key,))
        return out
    if isinstance(node, list):
        return [_to_plain(v, path + (str(i),)) for i, v in enumerate(node)]
    if node is None or isinstance(node, bool):
        return node if node is None else bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, (dt.date, dt.datetime)):
        raise _NotJson(path, f"YAML read {node!r} as a date; quote it to keep it a string")
    raise _NotJson(path, f"unsupported YAML value {node!r} ({type(node).__name__})")
