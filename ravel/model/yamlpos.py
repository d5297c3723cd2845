"""YAML -> plain Python values that remember where every key and value came from, within budgets.

PyYAML's SafeLoader loses positions and silently keeps the last of two duplicate keys; a
blueprint error has to point at a line and column, and a duplicate key is a mistake to report.

Parsing and composing run in libyaml (PyYAML's C `CParser`) when it is there: its nodes keep
their marks, so positions survive, and it is ~6x faster than PyYAML's pure-Python composer, which
is used only when libyaml is missing. Both compose into the same nodes; construction is ours.

Untrusted text is bounded (docs/blueprint.md, "Limits"): a YAML alias is a copy of its anchor, so
2 KB of chained aliases can stand for billions of nodes that every later step (validation,
positions, JSON) would walk. Construction shares one Python object per node, so it is linear in
the text; while constructing it counts the nodes the document stands for when every alias is
expanded, and stops at the first alias that takes the count past the budget, naming its anchor
and line. Nesting depth, scalar length and the digits of a number are bounded too (an integer is
range-checked before Python converts it).
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from typing import Any

import yaml
import yaml.reader
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: the pure-Python composer below
    CParser = None  # type: ignore[assignment,misc]

Pos = tuple[int, int]  # 1-based (line, column)

# -- budgets (documented in docs/blueprint.md, "Limits") --------------------------------------
MAX_TEXT = 16 << 20  # characters of a document (run/blueprints.py reads at most as many bytes)
MAX_NODES = 4_000_000  # nodes of the document with every alias expanded: what later steps walk
ALIAS_FLOOR = 100_000  # aliases may add this many nodes, or as many as the text has characters
MAX_DEPTH = 64  # nested mappings/lists; a blueprint needs about 8
MAX_SCALAR = 1 << 20  # characters of one scalar (an inline user_data is the largest real one)
MAX_NUMBER = 40  # characters of an integer or a number: 10^39 is beyond every field's range
# Without libyaml: PyYAML's pure-Python scanner takes ~2 s a MiB, and deep flow nesting makes it
# look ahead at every level, so the fallback reads less, and checks nesting before it scans.
MAX_PURE_TEXT = 256 << 10  # about 3,000 VMs

LIBYAML = CParser is not None

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class PosDict(dict):
    """A mapping that knows the position of each key and of each value."""

    __slots__ = ("key_pos", "value_pos", "start", "duplicates")  # a large blueprint has 100,000s
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

    __slots__ = ("item_pos", "start")
    item_pos: list[Pos]
    start: Pos

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_pos = []
        self.start = (0, 0)


@dataclass
class LoadIssue:
    """A problem with one part of the document; the rest is still read."""

    pos: Pos
    message: str


class YamlSyntaxError(Exception):
    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _pos(node: Node) -> Pos:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


# -- composing ---------------------------------------------------------------------------------

class _CachedResolver(Resolver):
    """YAML 1.1's implicit tags, as SafeLoader resolves them, with each distinct plain scalar
    resolved once: they repeat (`cpus`, `memory`, `1GiB`...) and the composer asks per node."""

    def __init__(self) -> None:
        super().__init__()
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if not implicit[0]:  # quoted, or a block scalar: a string (an explicit tag wins elsewhere)
                return _STR
            tag = self._tags.get(value)
            if tag is None:
                tag = Resolver.resolve(self, kind, value, implicit)
                if len(value) <= 64:
                    self._tags[value] = tag
            return tag
        return _SEQ if kind is SequenceNode else _MAP

    # No path resolvers are registered, yet the composer calls these for every node: make each
    # call a builtin's instead of a Python function's (descend takes 2 arguments, ascend none).
    descend_resolver = {}.get  # type: ignore[assignment]
    ascend_resolver = tuple  # type: ignore[assignment]


if CParser is not None:
    class _CComposer(CParser, _CachedResolver):  # type: ignore[misc,valid-type]
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _CachedResolver.__init__(self)


class _PyComposer(Reader, Scanner, Parser, Composer, _CachedResolver):
    """PyYAML's own pure-Python composer, with nesting bounded while composing (it recurses)."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _CachedResolver.__init__(self)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlSyntaxError((mark.line + 1, mark.column + 1), _too_deep())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep; a blueprint needs a handful"


# flow openers where a value may start, closers, and what hides brackets: comments, quoted text
_FLOW = re.compile(r"""(?:^|(?<=[\s:,\[{-]))[\[{]|[\]}]|(?:^|(?<=\s))#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'""",
                   re.M)


def _check_flow_nesting(text: str) -> None:
    """Refuse flow nesting past MAX_DEPTH before the pure-Python scanner sees it (an
    approximation of YAML's flow context: it can only over-count brackets left unclosed)."""
    depth = 0
    for m in _FLOW.finditer(text):
        c = m.group()[0]
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, m.start())
                col = m.start() - (text.rfind("\n", 0, m.start()) + 1)
                raise YamlSyntaxError((line + 1, col + 1), _too_deep())
        elif c in "]}":
            depth = max(0, depth - 1)


# -- constructing ------------------------------------------------------------------------------

class _OverBudget(Exception):
    def __init__(self, node: Node) -> None:
        self.node = node


class _Builder:
    """Nodes -> PosDict/PosList/scalars, one object per node (an alias shares its anchor's).

    For each node it keeps (value, expanded size, height); an alias (a node met again) adds its
    anchor's expanded size to the alias count, checked against the budget at once.
    """

    def __init__(self, alias_budget: int) -> None:
        self.done: dict[int, tuple[Any, int, int]] = {}
        self.open: set[int] = set()  # collections being built: an alias to one is a cycle
        self.alias_budget = alias_budget
        self.aliased = 0  # nodes added by aliases (and merged keys) so far
        self.issues: list[LoadIssue] = []
        self.duplicates = False  # some mapping has a key twice (rare: then they are looked for)
        self._fallback = SafeConstructor()

    def build(self, node: Node, depth: int) -> tuple[Any, int, int]:
        """-> (value, expanded size, height) of `node` met at nesting `depth`."""
        seen = self.done.get(id(node))
        if seen is not None:
            if depth + seen[2] > MAX_DEPTH:
                raise YamlSyntaxError(_pos(node), _too_deep())
            self.aliased += seen[1]
            if self.aliased > self.alias_budget:
                raise _OverBudget(node)
            return seen
        if depth > MAX_DEPTH:
            raise YamlSyntaxError(_pos(node), _too_deep())
        if id(node) in self.open:
            raise YamlSyntaxError(_pos(node), "an alias inside its own anchor (a structure that "
                                              "contains itself)")
        if isinstance(node, ScalarNode):
            try:
                result = (self.scalar(node), 1, 0)
            except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
                # an explicit tag on a value that is not of its kind (`!!int abc`, `!!bool maybe`)
                raise YamlSyntaxError(_pos(node), f"cannot read this value: {node.value[:40]!r} is not "
                                                  f"a {node.tag.rsplit(':', 1)[-1]}") from None
        elif isinstance(node, SequenceNode) and node.tag == _SEQ:
            self.open.add(id(node))
            result = self.sequence(node, depth)
        elif isinstance(node, MappingNode) and node.tag == _MAP:
            self.open.add(id(node))
            result = self.mapping(node, depth)
        else:  # !!omap, !!pairs, !!set, or a tag nobody reads: PyYAML's safe rules, no positions
            self.open.add(id(node))
            size, height = self.measure(node, depth)
            result = (self._fallback.construct_document(node), size, height)
        self.open.discard(id(node))
        self.done[id(node)] = result
        return result

    def measure(self, node: Node, depth: int) -> tuple[int, int]:
        """Expanded size and height of a collection PyYAML constructs (children counted as ours)."""
        size, height = 1, 0
        children = node.value if isinstance(node, SequenceNode) else [n for kv in node.value for n in kv]
        for child in children:
            _, s, h = self.build(child, depth + 1)
            size, height = size + s, max(height, h + 1)
        return size, height

    def scalar(self, node: ScalarNode) -> Any:
        value, tag = node.value, node.tag
        if len(value) > MAX_SCALAR:
            raise YamlSyntaxError(_pos(node), f"a value of {len(value):,} characters is longer than "
                                              f"the {MAX_SCALAR:,} allowed")
        if tag == _STR:
            return value
        if tag == _NULL:
            return None
        if tag == _INT and value.isdigit() and len(value) <= MAX_NUMBER and (value[0] != "0" or value == "0"):
            return int(value)  # plain decimal (a leading 0 is YAML 1.1 octal: PyYAML's rules below)
        if tag in (_INT, _FLOAT):
            digits = len(value.replace("_", ""))
            if digits > MAX_NUMBER:
                raise YamlSyntaxError(_pos(node), f"a number of {digits:,} characters is out of range "
                                                  f"(at most {MAX_NUMBER}); quote it if it is text")
            if tag == _INT:
                return self._fallback.construct_yaml_int(node)
            return self._fallback.construct_yaml_float(node)
        if tag == _BOOL:
            return self._fallback.bool_values[value.lower()]
        return self._fallback.construct_document(node)  # timestamps, binary; unknown tags raise

    def sequence(self, node: SequenceNode, depth: int) -> tuple[Any, int, int]:
        data = PosList()
        data.start = _pos(node)
        positions = data.item_pos
        size, height = 1, 0
        for child in node.value:
            if child.__class__ is ScalarNode and child.tag == _STR and len(child.value) <= MAX_SCALAR:
                value, s, h = child.value, 1, 0  # most nodes: no memo for plain strings
            else:
                value, s, h = self.build(child, depth + 1)
            data.append(value)
            mark = child.start_mark
            positions.append((mark.line + 1, mark.column + 1))
            size += s
            if h >= height:
                height = h + 1
        return data, size, height

    def mapping(self, node: MappingNode, depth: int) -> tuple[Any, int, int]:
        data = PosDict()
        data.start = _pos(node)
        key_pos, value_pos = data.key_pos, data.value_pos
        size, height = 1, 0
        merges: list[tuple[PosDict, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.extend(self.merge_sources(value_node, depth))
                continue
            if key_node.__class__ is ScalarNode and key_node.tag == _STR and len(key_node.value) <= MAX_SCALAR:
                key, ks, kh = key_node.value, 1, 0
            else:
                key, ks, kh = self.build(key_node, depth + 1)
            if value_node.__class__ is ScalarNode and value_node.tag == _STR and len(value_node.value) <= MAX_SCALAR:
                value, vs, vh = value_node.value, 1, 0
            else:
                value, vs, vh = self.build(value_node, depth + 1)
            size += ks + vs
            if kh >= height or vh >= height:
                height = max(kh, vh) + 1
            kmark, vmark = key_node.start_mark, value_node.start_mark
            try:
                if key in data:
                    data.duplicates.append((key, (kmark.line + 1, kmark.column + 1), key_pos[key][0]))
                    self.duplicates = True
                    continue
            except TypeError:  # unhashable
                self.issues.append(LoadIssue(_pos(key_node), "a mapping key must be a plain value, "
                                                             "not a list or a mapping"))
                continue
            data[key] = value
            key_pos[key] = (kmark.line + 1, kmark.column + 1)
            value_pos[key] = (vmark.line + 1, vmark.column + 1)
        # `<<: *defaults` (or a list of them, earlier ones winning): keys written in the mapping
        # itself win over merged ones. A merged key is a copy, counted against the alias budget.
        for src, src_node in merges:
            self.aliased += len(src)  # each merged mapping is a copy, whichever of its keys win
            if self.aliased > self.alias_budget:
                raise _OverBudget(src_node)
            for key, value in src.items():
                if key in data:
                    continue
                data[key] = value
                key_pos[key] = src.key_pos[key]
                value_pos[key] = src.value_pos[key]
        return data, size, height

    def merge_sources(self, node: Node, depth: int) -> list[tuple[PosDict, Node]]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        out = []
        for src in nodes:
            value, _, h = self.build(src, depth + 1)
            if not isinstance(value, PosDict):
                raise YamlSyntaxError(_pos(src), "`<<` merges a mapping or a list of mappings "
                                                 "(e.g. `<<: *defaults`)")
            out.append((value, src))
        return out


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects: its
    collections, triggered by allocation counts, cost ~30% of loading a 10,000-VM blueprint and
    find nothing to free (reference counting frees all of it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- the entry point ---------------------------------------------------------------------------

def _anchor_name(text: str, node: Node) -> str:
    """The anchor written where `node` starts (`&name`), or '' (marks point at the anchor)."""
    lines = text.splitlines()
    line = node.start_mark.line
    if line < len(lines):
        m = re.match(r"(?:!\S*\s+)?&([^\s,\[\]{}]+)", lines[line][node.start_mark.column:])
        if m:
            return m.group(1)
    return ""


@dataclass
class Loaded:
    data: Any
    issues: list[LoadIssue]
    duplicates: bool  # some mapping has a key twice: PosDict.duplicates say where


def load(text: str) -> tuple[Any, list[LoadIssue]]:
    """Parse one YAML document. Raises YamlSyntaxError for text that is not YAML at all, or that
    exceeds a budget."""
    loaded = load_document(text)
    return loaded.data, loaded.issues


def load_document(text: str) -> Loaded:
    """`load`, and whether any mapping has a duplicate key."""
    if len(text) > MAX_TEXT:
        raise YamlSyntaxError((0, 0), f"larger than {MAX_TEXT >> 20} MiB; this is not a blueprint")
    if CParser is None:
        if len(text) > MAX_PURE_TEXT:
            raise YamlSyntaxError((0, 0), f"{len(text):,} characters: without libyaml (PyYAML's C extension) "
                                          f"ravel reads blueprints of at most {MAX_PURE_TEXT:,}; install PyYAML "
                                          "with libyaml (`make setup` does)")
        _check_flow_nesting(text)
    try:
        composer = _CComposer(text) if CParser is not None else _PyComposer(text)
    except yaml.YAMLError as exc:
        raise YamlSyntaxError((0, 0), f"not YAML text: {getattr(exc, 'reason', exc)}") from None
    builder = _Builder(max(ALIAS_FLOOR, len(text)))
    try:
        node = composer.get_single_node()
        if node is None:
            return Loaded(None, [], False)
        data, size, _ = builder.build(node, 1)
        if size > MAX_NODES:
            raise YamlSyntaxError(_pos(node), f"the document has {size:,} values, more than the "
                                              f"{MAX_NODES:,} allowed")
    except _OverBudget as exc:
        anchor = _anchor_name(text, exc.node)
        what = f"anchor &{anchor}" if anchor else "this anchor"
        raise YamlSyntaxError(_pos(exc.node), (
            f"YAML aliases of {what} (line {_pos(exc.node)[0]}) expand this document past "
            f"{builder.alias_budget:,} copied values; each alias is a full copy of its anchor. "
            "Use `defaults:` or `count` instead of deep chains of aliases")) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem = f"cannot read this value: {problem}"
        raise YamlSyntaxError(pos, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise YamlSyntaxError((0, 0), f"not YAML text: {exc.reason} (character {exc.character!r} "
                                      f"at offset {exc.position})") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError((0, 0), f"YAML error: {exc}") from None
    except RecursionError:
        raise YamlSyntaxError((0, 0), _too_deep()) from None
    finally:
        composer.dispose()
    return Loaded(data, builder.issues, builder.duplicates)
