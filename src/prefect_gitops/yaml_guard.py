"""Checks of an environment file's bytes and YAML events before anything builds or walks its data. Pure.

ruamel's composer recurses once per nesting level, and the loader's walks of the built data follow
aliases: a deeply nested value ends in a RecursionError, and a "billion laughs" file (aliases of
aliases) in minutes at 100 % CPU. So the bytes are decoded strictly here, and every parse event
(from ruamel's iterative scanner and parser) is checked as the composer takes it, before the
composer recurses into it: depth, node count *after* alias expansion, alias cycles, explicit tags,
duplicate keys, and plain values ruamel would build into what Python cannot convert (integers over
4,300 digits, impossible dates). One parse, bounded work: the first limit crossed stops it. Every
refusal names the file, the line and the key path (a whole-file problem: the file and the line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.parser import RoundTripParser
from ruamel.yaml.events import (AliasEvent, CollectionEndEvent, CollectionStartEvent, Event, MappingStartEvent,
                                NodeEvent, ScalarEvent)

from prefect_gitops.errors import ConfigError, ConfigProblem

MAX_DEPTH = 64  # nested mappings/lists; a real environment file needs about 10
MAX_NODES = 200_000  # values, keys and collections, aliases expanded (1,000 deployments need about 10,000)
MAX_INT_DIGITS = 100  # Python refuses to convert more than 4,300; no job variable needs 100
UTF8_BOM = b"\xef\xbb\xbf"
# UTF-32 before UTF-16: FF FE 00 00 starts with FF FE
OTHER_BOMS = [(b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"), (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
              (b"\xfe\xff", "UTF-16 (big-endian)"), (b"\xff\xfe", "UTF-16 (little-endian)")]
# YAML 1.2 c-printable, complemented: the characters a YAML stream may not contain at all
NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# brackets outside quoted strings and comments (good enough to bound nesting; YAML decides the rest)
FLOW_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|(?:^|(?<=\s))#.*|[\[\]{}]')
CLOSERS = {"[": "]", "{": "}"}
DECIMAL_INT = re.compile(r"[-+]?[0-9][0-9_]*")
# YAML 1.2 timestamps as ruamel resolves plain scalars: it builds a datetime of them (ValueError on
# 2024-13-45), and an environment file has no use for dates (the loader said "quote it" already)
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}"
                       r"(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?")


def decode(raw: bytes, file: str) -> str:
    """The file's text: UTF-8, with or without a byte order mark; anything else is refused."""
    for bom, encoding in OTHER_BOMS:
        if raw.startswith(bom):
            raise _refused(file, f"the file is encoded as {encoding}; save it as UTF-8", line=1)
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]  # editors on Windows write one; it says "UTF-8", which it is
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise _refused(file, "binary content: the file contains NUL bytes (is it UTF-16 without a byte order "
                             "mark, or not text at all?); save it as UTF-8 text", line=raw.count(b"\n", 0, nul) + 1,
                       text=raw.decode("utf-8", "replace"), offset=len(raw[:nul].decode("utf-8", "replace")))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.start + 1].hex()
        raise _refused(file, f"not valid UTF-8: byte 0x{bad} at offset {exc.start} ({exc.reason}); save the file "
                             f"as UTF-8", line=raw.count(b"\n", 0, exc.start) + 1,
                       text=raw.decode("utf-8", "replace"),
                       offset=len(raw[:exc.start].decode("utf-8", "replace"))) from None


def check(text: str, file: str) -> None:
    """Refuse characters YAML forbids, and flow nesting too deep for ruamel's scanner to take cheaply."""
    bad = NOT_PRINTABLE.search(text)
    if bad:
        char = bad.group()
        raise _refused(file, f"control character U+{ord(char):04X} is not allowed in YAML (write it escaped, "
                             f"e.g. \"\\u{ord(char):04x}\", if you really mean it)",
                       line=text.count("\n", 0, bad.start()) + 1,
                       text=text, offset=bad.start())
    _check_flow_nesting(text, file)


def guarded_yaml(file: str) -> YAML:
    """A round-trip YAML whose load() refuses (ConfigError) what the event scan refuses, as it parses."""
    return _GuardedYAML(file)


class _GuardedYAML(YAML):
    def __init__(self, file: str):
        super().__init__(typ="rt")
        self.Parser = _GuardedParser
        self.event_scan = _Scan(file)


class _GuardedParser(RoundTripParser):
    def get_event(self) -> Any:
        event = super().get_event()
        self.loader.event_scan.feed(event)  # before the composer recurses into it
        return event


def _check_flow_nesting(text: str, file: str) -> None:
    """Refuse more than MAX_DEPTH '[' / '{' open on one line, before ruamel's scanner sees them: it holds
    each opener as a possible key until the line ends, and checks them all on every token (about a
    second for a line of a thousand '[', whatever the parse does next)."""
    for line_start, line in _lines(text):
        if "[" not in line and "{" not in line:
            continue
        open_: list[str] = []
        for token in FLOW_TOKENS.finditer(line):
            char = token.group()
            if char in "[{":
                open_.append(char)
                if len(open_) > MAX_DEPTH:
                    offset = line_start + token.start()
                    # the key: that of the line cut before the bracket (its brackets closed)
                    closed = text[:offset] + "~" + "".join(CLOSERS[c] for c in reversed(open_))
                    raise _refused(file, f"nested more than {MAX_DEPTH} levels deep",
                                   line=text.count("\n", 0, offset) + 1, text=closed, offset=offset)
            elif char in "]}" and open_:
                open_.pop()


def _lines(text: str) -> Iterator[tuple[int, str]]:
    start = 0
    for line in text.split("\n"):
        yield start, line
        start += len(line) + 1


def _events(text: str) -> Iterator[Event]:
    return YAML(typ="rt").parse(text)  # type: ignore[no-any-return]


@dataclass
class _Frame:
    """An open mapping or list, as the scan sees it."""

    path: tuple[str, ...]
    is_mapping: bool
    anchor: str | None
    nodes_before: int  # the expanded node count when it opened
    depth: int
    deepest: int = 0  # the deepest level below it, aliases expanded
    keys: set[str] = field(default_factory=set)
    expecting_key: bool = True
    next_index: int = 0
    last_key: str = "?"


@dataclass
class _Anchor:
    nodes: int
    depth: int  # levels the anchored node spans (1 for a scalar)


class _Scan:
    def __init__(self, file: str):
        self.file = file
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Anchor] = {}
        self.nodes = 0
        self.top_level_seen = False

    def feed(self, event: Event) -> None:
        if isinstance(event, CollectionEndEvent):
            self._close(event)
        elif isinstance(event, NodeEvent):
            self._node(event)

    def _node(self, event: NodeEvent) -> None:
        path, is_key = self._place(event)
        if not self.top_level_seen:
            self.top_level_seen = True
            self._check_top_level(event)
        if isinstance(event, AliasEvent):
            self._alias(event, path)
            return
        self._check_tag(event, path)
        self._count(1, path, event)
        depth = len(self.stack) + 1
        if isinstance(event, CollectionStartEvent):
            if depth > MAX_DEPTH:
                self._fail(event, path, f"nested more than {MAX_DEPTH} levels deep")
            self.stack.append(_Frame(path=path, is_mapping=isinstance(event, MappingStartEvent),
                                     anchor=event.anchor, nodes_before=self.nodes - 1, depth=depth))
            return
        assert isinstance(event, ScalarEvent)
        self._note_depth(depth)
        if is_key:
            self._key(event, path)
        elif event.style is None and event.tag is None:
            self._check_plain(event, path)
        if event.anchor is not None:
            self.anchors[event.anchor] = _Anchor(nodes=1, depth=1)

    def _check_plain(self, event: ScalarEvent, path: tuple[str, ...]) -> None:
        """Plain values ruamel would build into what Python cannot convert or JSON cannot hold."""
        if DECIMAL_INT.fullmatch(event.value):
            digits = sum(c.isdigit() for c in event.value)
            if digits > MAX_INT_DIGITS:
                self._fail(event, path, f"a number with {digits} digits is too long (at most {MAX_INT_DIGITS}); "
                                        f"quote it to keep it a string")
        elif TIMESTAMP.fullmatch(event.value):
            self._fail(event, path, f"YAML reads {event.value!r} as a date; quote it to keep it a string")

    def _place(self, event: NodeEvent) -> tuple[tuple[str, ...], bool]:
        """The key path of the node, and whether it is a mapping key."""
        if not self.stack:
            return (), False
        parent = self.stack[-1]
        if not parent.is_mapping:
            parent.next_index += 1
            return parent.path + (str(parent.next_index - 1),), False
        parent.expecting_key = not parent.expecting_key
        if not parent.expecting_key:  # this node is a key
            parent.last_key = event.value if isinstance(event, ScalarEvent) else "?"
            return parent.path + (parent.last_key,), True
        return parent.path + (parent.last_key,), False

    def _key(self, event: ScalarEvent, path: tuple[str, ...]) -> None:
        parent = self.stack[-1]
        if event.value in parent.keys and event.value != "<<":
            self._fail(event, path, f'key "{event.value}" appears more than once')
        parent.keys.add(event.value)

    def _close(self, event: Event) -> None:
        frame = self.stack.pop()
        span = frame.deepest - frame.depth + 1 if frame.deepest else 1
        if frame.anchor is not None:
            self.anchors[frame.anchor] = _Anchor(nodes=self.nodes - frame.nodes_before, depth=span)
        self._note_depth(frame.depth + span - 1)

    def _alias(self, event: AliasEvent, path: tuple[str, ...]) -> None:
        name = event.anchor
        if any(frame.anchor == name for frame in self.stack):
            self._fail(event, path, f"alias *{name} refers to a node that contains it (a cycle)")
        anchor = self.anchors.get(name)
        if anchor is None:
            return  # yaml.load reports the undefined alias with its line
        depth = len(self.stack) + anchor.depth
        if depth > MAX_DEPTH:
            self._fail(event, path, f"alias *{name} nests the value more than {MAX_DEPTH} levels deep")
        self._note_depth(depth)
        self._count(anchor.nodes, path, event, alias=name)

    def _count(self, nodes: int, path: tuple[str, ...], event: Event, alias: str | None = None) -> None:
        self.nodes += nodes
        if self.nodes > MAX_NODES:
            why = f" (alias *{alias} expands to {nodes} nodes)" if alias else ""
            self._fail(event, path, f"the file expands to more than {MAX_NODES} values{why}: "
                                    "aliases of aliases (a 'billion laughs') or simply too much data")

    def _note_depth(self, depth: int) -> None:
        """The open collection reaches `depth`; it passes its deepest on to its parent when it closes."""
        if self.stack:
            self.stack[-1].deepest = max(self.stack[-1].deepest, depth)

    def _check_tag(self, event: NodeEvent, path: tuple[str, ...]) -> None:
        """Any explicit tag: !!python/... and !custom ask for types a file has no use for, and even
        !!int or !!bool make ruamel convert text that need not convert (a ValueError, not a YAML error)."""
        tag = getattr(event, "tag", None)
        if tag is None:
            return
        shown = str(getattr(tag, "value", tag)).replace("tag:yaml.org,2002:", "!!")
        self._fail(event, path, f"YAML tag {shown!r} is not allowed: write plain values, mappings and lists "
                                "(quote a value to keep it a string)")

    def _check_top_level(self, event: NodeEvent) -> None:
        if isinstance(event, MappingStartEvent):
            return
        if isinstance(event, ScalarEvent) and event.tag is None and event.value in ("", "~", "null", "Null", "NULL"):
            return  # an empty document: the loader decides what that means
        what = "a list" if isinstance(event, CollectionStartEvent) else "an alias" if isinstance(
            event, AliasEvent) else "a single value"
        self._fail(event, (), f"the file must be a mapping (work_pools:, deployments:, ...), not {what}")

    def _fail(self, event: Event, path: tuple[str, ...], message: str) -> None:
        raise ConfigError([ConfigProblem(message, file=self.file, line=event.start_mark.line + 1,
                                         key=_dotted(path))])


def _dotted(path: tuple[str, ...]) -> str | None:
    """The key path, its middle left out when it is very deep."""
    shown = path if len(path) <= 12 else path[:6] + ("...",) + path[-4:]
    return ".".join(shown) or None


def _refused(file: str, message: str, line: int, text: str | None = None, offset: int | None = None) -> ConfigError:
    key = _key_at(text, offset) if text is not None and offset is not None else None
    return ConfigError([ConfigProblem(message, file=file, line=line, key=key)])


def _key_at(text: str, offset: int) -> str | None:
    """Best effort: the key path of the value at `offset` of a text whose bad characters were replaced."""
    found: tuple[str, ...] | None = None
    scan = _Scan("")
    try:
        for event in _events(NOT_PRINTABLE.sub("\ufffd", text)):
            if isinstance(event, CollectionEndEvent):
                scan.stack.pop()
                continue
            if not isinstance(event, NodeEvent):
                continue
            path, _ = scan._place(event)
            if event.start_mark.index <= offset:
                found = path
            if isinstance(event, CollectionStartEvent):
                scan.stack.append(_Frame(path=path, is_mapping=isinstance(event, MappingStartEvent), anchor=None,
                                         nodes_before=0, depth=len(scan.stack) + 1))
            elif event.start_mark.index > offset:
                break
            if len(scan.stack) > 2 * MAX_DEPTH:  # the text was cut at a depth over MAX_DEPTH
                return None
    except YAMLError:
        pass
    return _dotted(found) if found else None
