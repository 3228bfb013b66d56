"""Layout-preserving edits of an environment file's image values (pure: no Git, no Prefect).

`set_images` edits the YAML text. It parses with ruamel.yaml's round-trip
loader but does NOT re-dump the document: ruamel's emitter normalises things
a human wrote on purpose (`{ a: 1 }` becomes `{a: 1}`, `key:   value` loses its
alignment, `~` becomes empty, `---` disappears), which would put unrelated lines
in a promotion's diff. Instead the composed node tree tells where every value
starts and ends, and the text is spliced there: an existing image scalar is
replaced in place (keeping its quoting), a missing key is added as the fewest
new lines, indented like the file. Every other byte is left alone, and the
result is re-parsed to check that exactly the requested values changed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from prefect_gitops.errors import PermanentError

SECTIONS = ("work_pools", "deployments")
DEFAULT_INDENT = 2

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
# Conservative: what image references, pool and deployment names look like.
# Anything else is quoted (after a re-parse check, plain is used only if it reads back the same).
_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./:@+=~-]*$")
_PLAIN_SAFE_KEY = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./@+=~ -]*$")
_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)+")  # a node's anchor and tag, before its value
_COLON = re.compile(r"[ \t]*:")
_ALIAS_VALUE = re.compile(r"[ \t]*:[ \t]*(\*[^\s,\]}]+)")


def set_images(text: str, updates: dict[tuple[str, str], str]) -> str:
    """`text` with `<section>.<target>.job_variables.image` set for each update.

    `updates` maps (section, target) -> image, section being "work_pools" or
    "deployments". Missing targets, job_variables mappings and image keys are
    added. Lines other than the image lines (and the lines added for missing
    keys) are left byte-identical, comments included. Returns `text` itself
    when nothing changes. Raises PermanentError when the file is not YAML, or
    its shape (an alias, a list where a mapping belongs, ...) does not allow an
    edit that changes only the requested values.
    """
    for (section, target), image in updates.items():
        if section not in SECTIONS:
            raise PermanentError(f"unknown section {section!r}; expected one of {', '.join(SECTIONS)}")
        if not isinstance(target, str) or not target:
            raise PermanentError(f"invalid {section} name {target!r}")
        if not isinstance(image, str) or not image:
            raise PermanentError(f"invalid image {image!r} for {section}.{target}")
    if not updates:
        return text

    before = _plain(text)
    new = text
    for (section, target), image in updates.items():
        new = _set_one(new, [section, target, "job_variables", "image"], image)
    if new == text:
        return text

    expected = _unshared(before) if before is not None else {}
    for (section, target), image in updates.items():
        _set_path(expected, [section, target, "job_variables", "image"], image)
    if _plain(new) != expected:
        keys = ", ".join(f"{s}.{t}" for s, t in updates)
        raise PermanentError(
            f"cannot set the image of {keys} without changing other values "
            "(anchors, aliases or merge keys on the way?); edit the file by hand")
    return new


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 30
    return yaml


def _compose(text: str) -> Node | None:
    try:
        root: Node | None = _yaml().compose(text)  # ruamel.yaml's compose is untyped
        return root
    except YAMLError as exc:
        raise PermanentError(f"cannot edit invalid YAML: {exc}") from None


def _plain(text: str) -> Any:
    """The document as plain Python values (merge keys applied), for the final check."""
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise PermanentError(f"cannot edit invalid YAML: {exc}") from None


def _unshared(data: Any) -> Any:
    """A copy where aliased nodes are no longer one object (deepcopy would keep them shared)."""
    if isinstance(data, dict):
        return {key: _unshared(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_unshared(item) for item in data]
    return data


def _set_path(data: Any, path: list[str], value: str) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def _set_one(text: str, path: list[str], value: str) -> str:
    root = _compose(text)
    nl = "\r\n" if "\r\n" in text else "\n"
    step = _detect_indent(root)
    if root is None:  # empty, or only comments
        lines = _block_lines(path, value, column=0, step=step, nl=nl)
        prefix = text if not text or text.endswith("\n") else text + nl
        return prefix + lines
    if not isinstance(root, MappingNode):
        raise PermanentError("cannot edit the file: its top level is not a mapping")

    node = root
    where = []
    for depth, key in enumerate(path):
        where.append(key)
        dotted = ".".join(where)
        found = _lookup(node, key)
        rest = path[depth:]
        if found is None:
            return _insert(text, node, rest, value, step=step, nl=nl)
        key_node, child = found
        if child.start_mark.index < key_node.end_mark.index:  # an alias (*name) of an earlier node
            alias = _ALIAS_VALUE.match(text, key_node.end_mark.index)
            if depth == len(path) - 1 and alias:  # replace the alias by the value, for this key only
                start, end = alias.span(1)
                return text[:start] + _scalar(value, flow=bool(node.flow_style)) + text[end:]
            raise PermanentError(f"cannot edit {dotted}: it is a YAML alias; edit the file by hand")
        if depth == len(path) - 1:
            if _is_empty(child):  # "image:" with nothing after it
                at = _after_colon(text, key_node)
                return text[:at] + " " + _scalar(value, flow=bool(node.flow_style)) + text[at:]
            return _replace_scalar(text, child, value, dotted, flow=bool(node.flow_style))
        if isinstance(child, ScalarNode) and child.tag == _NULL_TAG:
            return _fill_null(text, node, key_node, child, path[depth + 1:], value, step=step, nl=nl)
        if not isinstance(child, MappingNode):
            raise PermanentError(f"cannot edit {dotted}: expected a mapping, found {_kind(child)}")
        node = child
    raise AssertionError("unreachable")


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return f"the value {node.value!r}"


def _lookup(mapping: MappingNode, key: str) -> tuple[Node, Node] | None:
    for key_node, value_node in mapping.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key and key_node.tag != "tag:yaml.org,2002:merge":
            return key_node, value_node
    return None


def _detect_indent(root: Node | None) -> int:
    """The most common step between a block mapping's keys and its block mapping values' keys."""
    steps: Counter[int] = Counter()

    def walk(node: Node, seen: set[int]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if (not node.flow_style and isinstance(value_node, MappingNode) and not value_node.flow_style
                        and value_node.value and value_node.start_mark.line > key_node.start_mark.line):
                    step = value_node.value[0][0].start_mark.column - key_node.start_mark.column
                    if step > 0:
                        steps[step] += 1
                walk(value_node, seen)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                walk(item, seen)

    if root is not None:
        walk(root, set())
    return steps.most_common(1)[0][0] if steps else DEFAULT_INDENT


# -- scalars ----------------------------------------------------------------


def _reads_back(snippet: str, expected: object) -> bool:
    try:
        loaded: object = YAML(typ="safe", pure=True).load(snippet)
        return loaded == expected
    except YAMLError:
        return False


def _double_quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _single_quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _scalar(value: str, *, style: str | None = None, flow: bool = False, key: bool = False) -> str:
    """`value` as YAML text: in `style` (None plain, '"', "'") when that reads back as the same string."""
    if style == "'" and "\n" not in value:
        return _single_quoted(value)
    if style == '"':
        return _double_quoted(value)
    pattern = _PLAIN_SAFE_KEY if key else _PLAIN_SAFE
    if pattern.match(value) and not (flow and any(c in value for c in ",[]{}")):
        probe = f"{{{value}: x}}" if key else f"{{k: {value}}}"
        if _reads_back(probe, {value: "x"} if key else {"k": value}):
            if _reads_back(f"{value}: x\n" if key else f"k: {value}\n", {value: "x"} if key else {"k": value}):
                return value
    return _double_quoted(value)


def _key_style(mapping: MappingNode) -> str | None:
    """Quote new keys the way the mapping's existing keys are quoted."""
    for key_node, _ in mapping.value:
        if isinstance(key_node, ScalarNode) and key_node.style in ('"', "'"):
            style: str = key_node.style
            return style
        return None
    return None


def _replace_scalar(text: str, node: Node, value: str, dotted: str, *, flow: bool) -> str:
    if not isinstance(node, ScalarNode):
        raise PermanentError(f"cannot set {dotted}: it is {_kind(node)}, not a string")
    if node.tag == _STR_TAG and node.value == value:
        return text
    start, end = node.start_mark.index, node.end_mark.index
    properties = _PROPERTIES.match(text, start, end)
    if properties:  # keep an anchor (&name) and drop a tag (!!str): the new value is a string
        kept = " ".join(p for p in properties.group(0).split() if p.startswith("&"))
        text = text[:start] + (kept + " " if kept else "") + text[properties.end():]
        shift = properties.end() - start - (len(kept) + 1 if kept else 0)
        start, end = start + (len(kept) + 1 if kept else 0), end - shift
    span = text[start:end]
    style = node.style
    if style in ("|", ">"):  # a block scalar: replace it, keep the line break(s) that ended it
        end = start + len(span.rstrip("\r\n"))
        style = None
    if node.tag == _NULL_TAG:
        style = None
    return text[:start] + _scalar(value, style=style, flow=flow) + text[end:]


# -- insertions ---------------------------------------------------------------


def _block_lines(path: list[str], value: str, *, column: int, step: int, nl: str,
                 key_style: str | None = None) -> str:
    lines = []
    for depth, key in enumerate(path):
        pad = " " * (column + depth * step)
        key_text = _scalar(key, style=key_style if depth == 0 else None, key=True)
        if depth == len(path) - 1:
            lines.append(f"{pad}{key_text}: {_scalar(value)}")
        else:
            lines.append(f"{pad}{key_text}:")
    return nl.join(lines) + nl


def _flow_text(path: list[str], value: str, key_style: str | None = None) -> str:
    inner = _scalar(value, flow=True)
    for depth in range(len(path) - 1, -1, -1):
        key_text = _scalar(path[depth], style=key_style if depth == 0 else None, flow=True, key=True)
        inner = f"{key_text}: {inner}" if depth == len(path) - 1 else f"{key_text}: {{{inner}}}"
    return inner


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.value == "" and not node.style


def _after_colon(text: str, key_node: Node) -> int:
    """Index just past the ':' that follows `key_node` (an empty value's marks lie at the next token)."""
    colon = _COLON.match(text, key_node.end_mark.index)
    if not colon:
        raise PermanentError(f"cannot edit the entry of {key_node.value!r} at line {key_node.start_mark.line + 1}: "
                             "unusual YAML syntax; edit the file by hand")
    return colon.end()


def _content_end(text: str, node: Node) -> int:
    """Index just past the last character of `node`'s own text (a block collection's
    end mark lies at the next token, after any trailing comments and blank lines)."""
    while True:
        if isinstance(node, MappingNode) and not node.flow_style and node.value:
            key_node, node = node.value[-1]
            if _is_empty(node):
                return _after_colon(text, key_node)
        elif isinstance(node, SequenceNode) and not node.flow_style and node.value:
            node = node.value[-1]
        else:
            end: int = node.end_mark.index
            return end


def _after_line(text: str, index: int, nl: str) -> tuple[str, int]:
    """Where a new line goes after the line holding `index`: (text, insertion index)."""
    if index > 0 and text[index - 1] == "\n":
        return text, index
    newline = text.find("\n", index)
    if newline == -1:
        return text + nl, len(text) + len(nl)
    return text, newline + 1


def _insert(text: str, mapping: MappingNode, path: list[str], value: str, *, step: int, nl: str) -> str:
    """Add `path[0]: ...` to `mapping`, which lacks it."""
    key_style = _key_style(mapping)
    if mapping.flow_style:
        addition = _flow_text(path, value, key_style)
        if not mapping.value:  # {} -> {key: ...}
            at = mapping.start_mark.index + 1
            return text[:at] + addition + text[at:]
        key_node, last = mapping.value[-1]
        at = _after_colon(text, key_node) if _is_empty(last) else _content_end(text, last)
        return text[:at] + ", " + addition + text[at:]
    column = mapping.value[0][0].start_mark.column
    text, at = _after_line(text, _content_end(text, mapping), nl)
    return text[:at] + _block_lines(path, value, column=column, step=step, nl=nl, key_style=key_style) + text[at:]


def _fill_null(text: str, parent: MappingNode, key_node: Node, null: ScalarNode, path: list[str], value: str,
               *, step: int, nl: str) -> str:
    """`key:` (or `key: ~`) becomes `key:` followed by the nested keys."""
    start, end = null.start_mark.index, null.end_mark.index
    if _is_empty(null):
        start = end = _after_colon(text, key_node)
    if parent.flow_style:
        addition = "{" + _flow_text(path, value) + "}"
        if start == end:
            return text[:start] + " " + addition + text[end:]
        return text[:start] + addition + text[end:]
    if start != end:  # drop the explicit null (and the spaces before it)
        cut = start
        while cut > 0 and text[cut - 1] in " \t":
            cut -= 1
        text = text[:cut] + text[end:]
        end = cut
    column = key_node.start_mark.column + step
    text, at = _after_line(text, end, nl)
    return text[:at] + _block_lines(path, value, column=column, step=step, nl=nl) + text[at:]
