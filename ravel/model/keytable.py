"""The key table of docs/blueprint.md, made from the JSON Schema (`spec.json_schema()`), which is
made from the models the loader validates with: one source for the format. Pure.

`tools/blueprint_keys.py` writes it into the docs; tests/unit/test_blueprint_format.py fails
when the docs and this disagree.
"""

from __future__ import annotations

from typing import Any

from . import spec
from .units import SIZE_PATTERN, format_mib

BEGIN = "<!-- keys: generated from the JSON Schema by tools/blueprint_keys.py; do not edit by hand -->"
END = "<!-- end of keys -->"

_PATTERNS = {
    spec.IPV4_RE: "IPv4 address",
    spec.CIDR_RE: "IPv4 CIDR",
    spec.UNICAST_MAC_RE: "MAC",
    spec.VM_NAME_RE: "name",
    spec.NAME_RE: "name",
    spec.USER_RE: "user name",
    spec.PORT_RANGE_RE: "`\"LOW-HIGH\"`",
}
# name -> settings mappings: the row names the key a user picks as <name>
_NAMED = {"networks": "<name>", "vms": "<name>"}
# not expanded (their keys are the VMs' own)
_SAME_AS = {"defaults": "VM keys (all but `count`), as under `vms.<name>`"}


def key_table() -> str:
    schema = spec.json_schema()
    rows: list[tuple[str, str, str, str]] = []
    _walk(schema, schema, "", rows)
    out = [BEGIN, "", "| key | type | default | notes |", "|---|---|---|---|"]
    out += [f"| `{k}` | {t} | {d} | {n} |" for k, t, d, n in rows]
    out += ["", END]
    return "\n".join(out)


def _deref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _walk(root: dict[str, Any], obj: dict[str, Any], prefix: str, rows: list[tuple[str, str, str, str]]) -> None:
    obj = _deref(root, obj)
    required = set(obj.get("required", ()))
    for key, prop in obj.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key in _SAME_AS and not prefix:
            rows.append((path, "mapping", "none", _cell(prop.get("description", "")) or _SAME_AS[key]))
            continue
        default = "required" if key in required else _default(root, prop)
        rows.append((path, _type(root, prop), default, _cell(prop.get("description", ""))))
        for sub, suffix in _children(root, prop, key):
            _walk(root, sub, f"{path}{suffix}", rows)


def _children(root: dict[str, Any], prop: dict[str, Any], key: str) -> list[tuple[dict[str, Any], str]]:
    """The mappings below a key: itself, its items (`[]`) or its named entries (`.<name>`)."""
    out = []
    for branch in prop.get("anyOf", [prop]):
        node = _deref(root, branch)
        if "properties" in node:
            out.append((node, "."))
        elif node.get("type") == "array" and "$ref" in node.get("items", {}):
            out.append((node["items"], "[]."))
        elif node.get("type") == "object" and "$ref" in node.get("additionalProperties", {}) \
                if isinstance(node.get("additionalProperties"), dict) else False:
            out.append((node["additionalProperties"], f".{_NAMED.get(key, '<key>')}."))
    return out


def _type(root: dict[str, Any], prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
        if any(b.get("pattern") == SIZE_PATTERN for b in branches):
            return "size"
        if prop.get("examples"):  # a duration, or another value best shown by its examples
            return " or ".join(f"`{e}`" for e in prop["examples"][:3])
        return " or ".join(_type(root, b) for b in branches)
    node = _deref(root, prop)
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type")
    if "properties" in node:
        keys = list(node["properties"])
        return f"`{{{keys[0]}: ...}}`" if len(keys) == 1 else "mapping"
    if kind == "string":
        return _PATTERNS.get(node.get("pattern", ""), "string")
    if kind in ("integer", "number"):
        lo, hi = node.get("minimum"), node.get("maximum")
        word = "integer" if kind == "integer" else "number"
        if lo is not None and hi is not None:
            return f"{word} {_num(lo)}..{_num(hi)}"
        return f"{word} >= {_num(lo)}" if lo is not None else word
    if kind == "boolean":
        return "bool"
    if kind == "array":
        items = node.get("items", {})
        inner = _type(root, items)
        inner = {"string": "strings", "name": "names", "IPv4 CIDR": "IPv4 CIDRs"}.get(inner, inner)
        if node.get("minItems") == node.get("maxItems") == 2:
            return f"pairs of {inner}"
        return f"list of {inner}" if "$ref" not in items else "list of mappings"
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "$ref" in extra:
            return "mapping of name -> mapping"
        return "mapping"
    return "any"


def _default(root: dict[str, Any], prop: dict[str, Any]) -> str:
    if "default" not in prop:
        node = _deref(root, prop)
        return "empty" if node.get("type") in ("array", "object") else "none"
    value = prop["default"]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '`""`'
    if isinstance(value, int) and _type(root, prop) == "size":
        return format_mib(value)
    if isinstance(value, (list, dict)) and not value:
        return "empty"
    return f"`{value}`" if isinstance(value, str) else _num(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
