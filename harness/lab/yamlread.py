"""YAML text to plain data (dicts, lists, str, int, float, bool, None),
bounded and strict, for files a user or a test hands the harness.

PyYAML's own loader expands aliases without limit (a few lines of
"billion laughs" take minutes and then all memory), recurses as deep as
the nesting goes, turns ``2024-01-01`` into a date and a 5000-digit number
into an exception, and lets a duplicate key win silently.  Here the text
is first parsed as a stream of events (PyYAML's parser is iterative) with
its depth and size bounded, then composed into nodes, then converted with
a budget on the expanded size, with cycles refused and every scalar kept
as the plain type a topology uses.  Errors are ``ReadError(where,
message)``: ``where`` is a line (``line 7``) for what the YAML itself gets
wrong.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20       # a topology is a few kB
MAX_DEPTH = 64            # a nested lab's deepest field is ~12 levels down
MAX_EVENTS = 100_000
MAX_NODES = 100_000       # after aliases are expanded
MAX_INT_DIGITS = 20

TAG = "tag:yaml.org,2002:"


class ReadError(Exception):
    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}" if where else message)


def _line(mark) -> str:
    return f"line {mark.line + 1}" if mark is not None else ""


def decode(data: bytes) -> str:
    """UTF-8 text, or a ReadError naming the first bad byte."""
    if len(data) > MAX_BYTES:
        raise ReadError("", f"{len(data)} bytes: expected a topology under {MAX_BYTES >> 10} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ReadError(f"line {line}", f"not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def read(text: str) -> Any:
    """The one document in ``text`` as plain data."""
    try:
        _check_shape(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ReadError(_line(mark), f"not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if node is None:
        return None
    return _Converter().value(node)


def _check_shape(text: str):
    """Depth and size from the event stream, before anything recurses."""
    depth = events = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        events += 1
        if events > MAX_EVENTS:
            raise ReadError(_line(event.start_mark), f"more than {MAX_EVENTS} YAML nodes: not a topology")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ReadError(_line(event.start_mark), f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _Converter:
    """Nodes to values, counting every node it builds (aliases included)."""

    def __init__(self):
        self.built = 0
        self.open: set[int] = set()   # nodes being converted: an alias to one is a cycle

    def _count(self, n: int, node):
        self.built += n
        if self.built > MAX_NODES:
            raise ReadError(_line(node.start_mark), f"more than {MAX_NODES} values once aliases are "
                                                    "expanded (an alias bomb?)")

    def value(self, node: yaml.Node) -> Any:
        self._count(1, node)
        if id(node) in self.open:
            raise ReadError(_line(node.start_mark), "an alias refers to a node that contains it (a cycle)")
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != TAG + "seq":
                    raise ReadError(_line(node.start_mark), f"unsupported tag {node.tag}")
                return [self.value(child) for child in node.value]
            return self._mapping(node)
        finally:
            self.open.discard(id(node))

    def _mapping(self, node):
        if node.tag != TAG + "map":
            raise ReadError(_line(node.start_mark), f"unsupported tag {node.tag}")
        out: dict = {}
        seen: dict = {}
        for key_node, value_node in self._pairs(node):
            if not isinstance(key_node, yaml.ScalarNode):
                raise ReadError(_line(key_node.start_mark), "a key must be a plain word, not a list or mapping")
            key = _scalar(key_node)
            if key in seen:
                raise ReadError(_line(key_node.start_mark), f"duplicate key {key!r} (first at {seen[key]})")
            seen[key] = _line(key_node.start_mark)
            out[key] = self.value(value_node)
        return out

    def _pairs(self, node):
        """The mapping's pairs, merge keys (``<<: *defaults``) expanded,
        the mapping's own keys winning."""
        own = [(k, v) for k, v in node.value if k.tag != TAG + "merge"]
        merged: list = []
        for key_node, value_node in node.value:
            if key_node.tag != TAG + "merge":
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise ReadError(_line(source.start_mark), "a merge key (<<) takes a mapping")
                if id(source) in self.open:
                    raise ReadError(_line(source.start_mark), "an alias refers to a node that contains it (a cycle)")
                self.open.add(id(source))
                try:
                    pairs = self._pairs(source)
                finally:
                    self.open.discard(id(source))
                self._count(len(pairs), source)  # merges expand like aliases: the same budget
                merged += pairs
        keys = {_scalar(k) for k, _ in own if isinstance(k, yaml.ScalarNode)}
        inherited, taken = [], set()
        for k, v in merged:
            name = _scalar(k) if isinstance(k, yaml.ScalarNode) else None
            if name in keys or name in taken:
                continue
            taken.add(name)
            inherited.append((k, v))
        return inherited + own


_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _scalar(node: yaml.ScalarNode):
    """A scalar as str, int, float, bool or None; dates and other types
    stay the text they were written as."""
    text, tag = node.value, node.tag
    if tag == TAG + "null":
        return None
    if tag == TAG + "bool":
        return _BOOLS[text.lower()]
    if tag == TAG + "int":
        digits = text.lstrip("+-").replace("_", "")
        if len(digits) > MAX_INT_DIGITS:
            raise ReadError(_line(node.start_mark), f"a {len(digits)}-digit number: expected at most "
                                                    f"{MAX_INT_DIGITS} digits")
        try:
            return yaml.SafeLoader.construct_yaml_int(_CONSTRUCTOR, node)
        except ValueError:
            raise ReadError(_line(node.start_mark), f"{text!r} is not a number") from None
    if tag == TAG + "float":
        if len(text) > 40:
            raise ReadError(_line(node.start_mark), f"a {len(text)}-character number")
        return yaml.SafeLoader.construct_yaml_float(_CONSTRUCTOR, node)
    if tag in (TAG + "str", TAG + "timestamp"):
        return text
    raise ReadError(_line(node.start_mark), f"unsupported tag {tag} on {text[:40]!r}")


_CONSTRUCTOR = yaml.SafeLoader("")
