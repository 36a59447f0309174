"""Positioned trees: YAML and JSON are both read into Nodes, so one reader handles both and
every error can name the line and column of the value it is about.

Also the two helpers every format reads its mappings with (known keys only, single values)."""

from __future__ import annotations

import bisect
import difflib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import yaml

from .errors import ScheduleError, show

MAX_DEPTH = 32  # the formats need 3 levels; deeper input is an error, not a RecursionError


@dataclass(eq=False)
class Node:
    """A parsed value and where it starts (1-based; None for Python data).

    value is a dict (key -> (key node, value node)), a list of nodes, or a plain scalar.
    """

    value: Any
    line: int | None
    column: int | None


def error_at(message: str, node: Node | None = None) -> ScheduleError:
    return ScheduleError(message, line=node and node.line, column=node and node.column)


def moved_to(error: ScheduleError, node: Node) -> ScheduleError:
    """A validation error from Schedule, pointed at the spot in the file it is about."""
    return ScheduleError(error.message, line=node.line, column=node.column,
                         segment=error.segment, field=error.field)


# --- YAML

_YAML_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e3 as a number (YAML 1.1 wants 1.0e+3; YAML 1.2 and JSON don't)."""


class Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings _Loader would read as numbers, so dumps round-trip."""


for _cls in (_Loader, Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT_WITH_EXPONENT,
                               list("-+0123456789."))


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # PyYAML writes the line breaks NEL, LS and PS raw inside single quotes, where a reader folds
    # them into spaces; double quotes escape them.
    style = '"' if any(char in text for char in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


Dumper.add_representer(str, _represent_str)

_YAML_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str")}


def tree_from_yaml(text: str) -> Node:
    try:
        _check_yaml_depth(text)  # yaml.compose recurses; yaml.parse doesn't
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = ", ".join(part for part in (e.context, e.problem) if part)
        raise ScheduleError(f"invalid YAML: {message}",
                            line=mark and mark.line + 1, column=mark and mark.column + 1) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line, column = _line_column(text, e.position)
        char = chr(e.character) if isinstance(e.character, int) else e.character
        raise ScheduleError(f"invalid YAML: unacceptable character {char!r}",
                            line=line, column=column) from None
    except yaml.YAMLError as e:
        raise ScheduleError(f"invalid YAML: {e}") from None
    if root is None:
        raise ScheduleError("the file is empty", line=1, column=1)
    return _YamlToTree().convert(root)


def _check_yaml_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise ScheduleError("nesting is too deep", line=mark.line + 1, column=mark.column + 1)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


class _YamlToTree:
    """yaml nodes -> _Nodes. Aliases are converted once (no 'billion laughs' blow-up) and may
    not point into themselves."""

    def __init__(self):
        self.constructor = _Loader("")  # only used to turn scalar nodes into values
        self.done: dict[int, Node] = {}
        self.busy: set[int] = set()

    def convert(self, node: yaml.Node) -> Node:
        key = id(node)
        if key in self.done:
            return self.done[key]
        out = Node(None, node.start_mark.line + 1, node.start_mark.column + 1)
        if key in self.busy:
            raise error_at("an alias refers to a node that contains it", out)
        self.busy.add(key)
        if isinstance(node, yaml.ScalarNode):
            out.value = self.scalar(node, out)
        elif isinstance(node, yaml.SequenceNode):
            out.value = [self.convert(child) for child in node.value]
        else:
            out.value = {}
            for key_node, value_node in node.value:
                name = self.convert(key_node)
                if not isinstance(name.value, str):
                    raise error_at(f"keys must be strings, got {show(name.value)}", name)
                if name.value in out.value:
                    raise error_at(f"duplicate key {name.value!r}", name)
                out.value[name.value] = (name, self.convert(value_node))
        self.busy.discard(key)
        self.done[key] = out
        return out

    def scalar(self, node: yaml.ScalarNode, where: Node) -> Any:
        if node.tag not in _YAML_SCALAR_TAGS:  # dates, !!binary, custom tags, merge keys ...
            raise error_at(f"unsupported YAML value {show(node.value)} ({node.tag}); "
                         f"put it in quotes to make it a string", where)
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError):  # e.g. an int with 5000 digits
            raise error_at(f"invalid value {show(node.value)}", where) from None


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


# --- JSON

_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class JsonReader:
    """Strict JSON (RFC 8259) -> _Nodes. json.decoder decodes the strings; this class only
    tracks where every value starts, which the json module cannot tell us."""

    def __init__(self, text: str, first_line: int = 1):
        self.text = text
        self.pos = 0
        self.first_line = first_line
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def where(self, pos: int) -> tuple[int, int]:
        row = bisect.bisect_right(self.line_starts, pos) - 1
        return self.first_line + row, pos - self.line_starts[row] + 1

    def fail(self, message: str, pos: int | None = None) -> ScheduleError:
        line, column = self.where(self.pos if pos is None else pos)
        return ScheduleError(f"invalid JSON: {message}", line=line, column=column)

    def document(self) -> Node:
        self.skip_space()
        if self.pos == len(self.text):
            raise self.fail("the file is empty")
        node = self.value(depth=0)
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("unexpected text after the JSON value")
        return node

    def skip_space(self):
        self.pos = _JSON_SPACE.match(self.text, self.pos).end()

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def expect(self, char: str):
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def value(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.fail("nesting is too deep")
        node = Node(None, *self.where(self.pos))
        char = self.peek()
        if char == "{":
            node.value = self.object(depth)
        elif char == "[":
            node.value = self.array(depth)
        elif char == '"':
            try:
                node.value, self.pos = json.decoder.scanstring(self.text, self.pos + 1, True)
            except json.JSONDecodeError as e:
                raise self.fail(e.msg, e.pos) from None
        else:
            node.value = self.literal()
        return node

    def literal(self) -> Any:
        start = self.pos
        number = _JSON_NUMBER.match(self.text, start)
        if number:
            self.pos = number.end()
            if number.group(2) or number.group(3):
                return float(number.group())  # may be inf; Schedule rejects that with a position
            try:
                return int(number.group())
            except ValueError:  # more digits than Python converts
                raise self.fail("number has too many digits", start) from None
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, start):
                self.pos += len(word)
                return value
        raise self.fail("expected a value")

    def object(self, depth: int) -> dict[str, tuple[Node, Node]]:
        members: dict[str, tuple[Node, Node]] = {}
        self.pos += 1
        self.skip_space()
        if self.peek() == "}":
            self.pos += 1
            return members
        while True:
            if self.peek() != '"':
                raise self.fail("expected a key in double quotes")
            key = self.value(depth + 1)
            if key.value in members:  # legal JSON, but almost always a mistake
                raise error_at(f"duplicate key {key.value!r}", key)
            self.skip_space()
            self.expect(":")
            self.skip_space()
            members[key.value] = (key, self.value(depth + 1))
            self.skip_space()
            if self.peek() != ",":
                self.expect("}")
                return members
            self.pos += 1
            self.skip_space()

    def array(self, depth: int) -> list[Node]:
        items: list[Node] = []
        self.pos += 1
        self.skip_space()
        if self.peek() == "]":
            self.pos += 1
            return items
        while True:
            items.append(self.value(depth + 1))
            self.skip_space()
            if self.peek() != ",":
                self.expect("]")
                return items
            self.pos += 1
            self.skip_space()


# --- Python data (Schedule.from_dict)


def tree_from_python(data: Any, depth: int = 0) -> Node:
    if depth > MAX_DEPTH:
        raise ScheduleError("nesting is too deep")
    if isinstance(data, Mapping):
        members = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise ScheduleError(f"keys must be strings, got {show(key)}")
            members[key] = (Node(key, None, None), tree_from_python(value, depth + 1))
        return Node(members, None, None)
    if isinstance(data, (list, tuple)):
        return Node([tree_from_python(item, depth + 1) for item in data], None, None)
    return Node(data, None, None)


# --- Reading mappings


def mapping_fields(node: Node, what: str, allowed: Sequence[str]) -> dict[str, Node]:
    """The key -> value-node mapping of `node`, which must be a mapping with known keys only."""
    if not isinstance(node.value, dict):
        raise error_at(f"{what} must be a mapping (key: value), got {show(node.value)}", node)
    for name, (key_node, _) in node.value.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
            raise error_at(f"{what}: unknown key {name!r} ({hint})", key_node)
    return {name: value for name, (_, value) in node.value.items()}


def scalar_field(fields: dict[str, Node], name: str, what: str | None = None) -> Any:
    """The plain value of `fields[name]` (None if absent); lists and mappings are errors."""
    node = fields.get(name)
    if node is None:
        return None
    if isinstance(node.value, (dict, list)):
        prefix = f"{what}: " if what else ""
        raise error_at(f"{prefix}'{name}' must be a single value, got {show(node.value)}", node)
    return node.value


def _only_one(fields: dict[str, Node], keys: Sequence[str], what: str) -> str | None:
    present = [name for name in fields if name in keys]
    if len(present) > 1:
        raise error_at(f"{what}: give only one of {', '.join(map(repr, keys))}, "
                     f"got both {present[0]!r} and {present[1]!r}", fields[present[1]])
    return present[0] if present else None
