"""YAML -> plain Python values that remember where every key and value came from.

PyYAML's SafeLoader loses positions and silently keeps the last of two duplicate keys; a
blueprint error has to point at a line and column, and a duplicate key is a mistake to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
import yaml.reader
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

Pos = tuple[int, int]  # 1-based (line, column)


class PosDict(dict):
    """A mapping that knows the position of each key and of each value."""

    key_pos: dict[Any, Pos]
    value_pos: dict[Any, Pos]
    start: Pos
    duplicates: list[tuple[Any, Pos, int]]  # (key, position of the repeat, line of the first)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_pos = {}
        self.value_pos = {}
        self.start = (0, 0)
        self.duplicates = []


class PosList(list):
    """A sequence that knows the position of each item."""

    item_pos: list[Pos]
    start: Pos

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_pos = []
        self.start = (0, 0)


@dataclass
class LoadIssue:
    pos: Pos
    path: tuple[str | int, ...]
    message: str


@dataclass
class _Collector:
    issues: list[LoadIssue] = field(default_factory=list)


def _pos(node: Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _PosLoader(yaml.SafeLoader):
    collector: _Collector

    def construct_yaml_map(self, node: MappingNode):  # type: ignore[override]
        data = PosDict()
        data.start = _pos(node)
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                self.collector.issues.append(
                    LoadIssue(_pos(key_node), (), "a mapping key must be a plain value")
                )
                continue
            if key in data and key_node.start_mark is not None:
                if data.key_pos.get(key) != _pos(key_node):
                    data.duplicates.append((key, _pos(key_node), data.key_pos[key][0]))
                    continue
            data[key] = self.construct_object(value_node, deep=True)
            data.key_pos[key] = _pos(key_node)
            data.value_pos[key] = _pos(value_node)

    def construct_yaml_seq(self, node):  # type: ignore[override]
        data = PosList()
        data.start = _pos(node)
        yield data
        for child in node.value:
            data.append(self.construct_object(child, deep=True))
            data.item_pos.append(_pos(child))

    def flatten_mapping(self, node: MappingNode) -> None:
        # Merge keys (`<<: *defaults`) are a YAML feature users lean on for blueprints; keys
        # written in the mapping itself win over merged ones, so drop merged duplicates here
        # instead of reporting them as duplicate keys.
        super().flatten_mapping(node)
        seen: dict[Any, int] = {}
        kept = []
        for key_node, value_node in reversed(node.value):
            k = key_node.value if key_node.tag.endswith(":str") else id(key_node)
            if k in seen and getattr(key_node, "_ravel_merged", False):
                continue
            seen[k] = 1
            kept.append((key_node, value_node))
        node.value = list(reversed(kept))


_PosLoader.add_constructor("tag:yaml.org,2002:map", _PosLoader.construct_yaml_map)
_PosLoader.add_constructor("tag:yaml.org,2002:seq", _PosLoader.construct_yaml_seq)


def _mark_merged(node: Node, depth: int = 0) -> None:
    """Tag key nodes that arrive through `<<` so duplicates among them are not errors."""
    if depth > 100:
        return
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if value_node.id == "sequence" else [value_node]
                for src in sources:
                    if isinstance(src, MappingNode):
                        for k, _ in src.value:
                            k._ravel_merged = True  # type: ignore[attr-defined]
            _mark_merged(value_node, depth + 1)


class YamlSyntaxError(Exception):
    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def load(text: str) -> tuple[Any, list[LoadIssue]]:
    """Parse one YAML document. Raises YamlSyntaxError for text that is not YAML at all."""
    try:
        loader = _PosLoader(text)
    except yaml.YAMLError as exc:
        raise YamlSyntaxError((0, 0), f"not YAML text: {getattr(exc, 'reason', exc)}") from None
    loader.collector = _Collector()
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        _mark_merged(node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, ConstructorError):
            problem = f"cannot read this value: {problem}"
        raise YamlSyntaxError(pos, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise YamlSyntaxError((0, 0), f"not YAML text: {exc.reason} (character {exc.character!r} at offset {exc.position})") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError((0, 0), f"YAML error: {exc}") from None
    except RecursionError:
        raise YamlSyntaxError((0, 0), "YAML document is nested too deeply") from None
    finally:
        loader.dispose()
    return data, loader.collector.issues
