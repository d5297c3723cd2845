"""Blueprint text -> validated, expanded `Blueprint`, or one BlueprintError listing every problem.

Order: bytes -> text -> YAML with positions -> per-part shape/type checks (pydantic) -> semantic
checks across parts (references, address plan, `count` collisions, anti-affinity). Each part
is checked even when another part failed, so a user sees every problem in one run.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any, Iterable, Iterator, Mapping

from pydantic import BaseModel, ValidationError

from ..errors import BlueprintError, Problem
from . import spec as spec_models
from . import yamlpos
import json

from .blueprint import (VM, Blueprint, Boot, CloudInit, Disk, FirewallRule, Lifetime, Network, Nic, Placement,
                        Ready, Service)
from .spec import (
    NAME_MAX,
    NAME_RE,
    PORT_RANGE_RE,
    VM_NAME_MAX,
    VM_NAME_RE,
    BlueprintSpec,
    BootSpec,
    CloudInitSpec,
    DiskSpec,
    FirewallRuleSpec,
    FirewallSpec,
    LifetimeSpec,
    NetworkSpec,
    NicSpec,
    ReadyTcp,
    PlacementSpec,
    RoutingSpec,
    ServiceSpec,
    VmDefaults,
    VmSpec,
)
from .impair import Impair, impair_from
from .yamlpos import PosDict, PosList

import re

TOP_KEYS = tuple(BlueprintSpec.model_fields)
_MODEL_AT = {
    "nics": NicSpec,
    "disks": DiskSpec,
    "boot": BootSpec,
    "cloud_init": CloudInitSpec,
    "services": ServiceSpec,
    "placement": PlacementSpec,
    "defaults": VmSpec,
    "routing": RoutingSpec,
    "firewall": FirewallSpec,
    "allow": FirewallRuleSpec,
    "lifetime": LifetimeSpec,
}
_MAX_ANTI_AFFINITY_SEARCH = 200_000


def path_str(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class _Ctx:
    file: str
    raw: Any
    problems: list[Problem] = field(default_factory=list)
    unsure: set[tuple[str | int, ...]] = field(default_factory=set)  # VMs whose NICs are not all known

    def locate(self, loc: tuple[str | int, ...], key: bool = False) -> tuple[tuple[int, int], str]:
        """Position of the value at `loc` (or of its key), or of the nearest existing parent, and
        the key path as the user wrote it (`vms.web.nics[0]`, `vms.web.~` for a null key)."""
        node = self.raw
        pos = getattr(node, "start", (1, 1))
        text = ""
        parts = list(loc)
        if parts and parts[-1] == "[key]":  # pydantic: the key itself is wrong, not its value
            parts.pop()
            key = True
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, PosDict):
                found = _key_in(node, part)
                if found is _MISSING:
                    text += "." + "".join(_key_text(p) for p in parts[i:])
                    break
                pos = node.key_pos[found] if (key and last) else node.value_pos[found]
                text += "." + _key_text(found)
                node = node[found]
            elif isinstance(node, PosList) and isinstance(part, int) and 0 <= part < len(node):
                pos = node.item_pos[part]
                text += f"[{part}]"
                node = node[part]
            else:
                text += path_str(parts[i:]) if isinstance(parts[i], int) else "." + path_str(parts[i:])
                break
        return pos, text.lstrip(".")

    def add(self, loc: tuple[str | int, ...], message: str, key: bool = False) -> None:
        (line, col), path = self.locate(loc, key=key)
        self.problems.append(Problem(self.file, line, col, path, message))


_MISSING = object()


def _key_in(node: dict, part: Any) -> Any:
    """The key of `node` that `part` names: itself, or a non-string key pydantic wrote as text."""
    if isinstance(part, str) and part in node:
        return part
    for k in node:  # `true` and `1` are equal keys to Python: match the kind too
        if not isinstance(k, str) and (type(k) is type(part) and k == part or str(k) == str(part)):
            return k
    return _MISSING


def _key_text(k: Any) -> str:
    if isinstance(k, str):
        return k
    return "~" if k is None else str(k).lower() if isinstance(k, bool) else str(k)


def _fields_of(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    for part in reversed(loc[:-1]):
        if isinstance(part, str) and part in _MODEL_AT:
            model = _MODEL_AT[part]
            break
        if isinstance(part, str):
            break
    return [f.alias or name for name, f in model.model_fields.items()]


def _message(err: dict[str, Any], model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "invalid_key" or (loc and loc[-1] == "[key]"):
        return "a key here is a name (text), not a number, a boolean or null"
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}{did_you_mean(str(loc[-1]), _fields_of(model, loc))}"
    if kind == "missing":
        return f"required key {loc[-1]!r} is missing"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"expected a whole number, got {_kind(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_kind(value)}"
    if kind == "bool_type":
        return f"expected true or false, got {_kind(value)}"
    if kind == "string_type":
        return f"expected a string, got {_kind(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {_kind(value)}"
    if kind == "list_type":
        return f"expected a list, got {_kind(value)}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        return f"must be one of {', '.join(choices)}; got {_kind(value)}{did_you_mean(str(value), choices)}"
    if kind in ("greater_than_equal", "greater_than"):
        bound = ctx.get("ge", ctx.get("gt"))
        if bound in (1, 0) and isinstance(value, (int, float)) and value <= 0:
            return f"must be positive, got {value}"
        return f"must be at least {bound}, got {value}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be at most {ctx.get('le', ctx.get('lt'))}, got {value}"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not a valid name: use lowercase letters, digits and dashes"
    if kind == "value_error":
        return str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    return err["msg"]


class Checked:
    """A part checked key by key: its spec with every wrong key left out (their defaults in their
    place), and which keys those were, so checks that read them are skipped rather than fooled
    by a default. `spec` is None when the part cannot be read at all."""

    def __init__(self, spec: Any, dropped: frozenset[tuple[Any, ...]] = frozenset()) -> None:
        self.spec = spec
        self.dropped = dropped

    def ok(self, *paths: tuple[Any, ...]) -> bool:
        """None of `paths` (or anything under them) was left out."""
        return not any(d[:len(p)] == p for d in self.dropped for p in paths)


def _validate(ctx: _Ctx, model: type[BaseModel], data: Any, loc: tuple[str | int, ...]) -> Checked:
    """Check `data` against `model`, report every problem, and keep what is right: a misspelt key
    must not hide a wrong network on the same VM, nor a bad MAC a bad IP on the same NIC."""
    try:
        return Checked(model.model_validate(data))
    except ValidationError as exc:
        errors = _clean(exc)
    for err in errors:
        full = loc + tuple(err["loc"])
        message = err.get("ravel_message") or _message(err, model, tuple(err["loc"]) or loc)
        ctx.add(full, message, key=err["type"] in ("extra_forbidden", "invalid_key"))
    if not isinstance(data, dict):
        return Checked(None)
    pruned, dropped = data, set()
    for _ in range(4):  # a left-out key rarely makes another error; bounded all the same
        for err in errors:
            cut = _cut_path(pruned, tuple(err["loc"]), err["type"])
            if not cut:
                return Checked(None)
            pruned = _without(pruned, cut)
            dropped.add(cut)
        try:
            return Checked(model.model_validate(pruned), frozenset(dropped))
        except ValidationError as exc:
            errors = _clean(exc)
    return Checked(None)


def _clean(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in _one_branch(exc.errors(include_url=False)):
        # pydantic adds a trailing union/literal tag for Optional fields; drop non-input parts
        where = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if err["type"] == "invalid_key" and where:  # pydantic writes a `true` key as 1: the key itself
            where = where[:-1] + (err.get("input"),)
        out.append({**err, "loc": where})
    return out


def _cut_path(data: Any, where: tuple[Any, ...], kind: str) -> tuple[Any, ...]:
    """What to leave out for an error at `where`: the key at fault, or (a required key missing,
    a list item wrong as a whole) the part holding it; never a single list item, so that the
    indices of the others, which later messages name, stay as written. () = the whole part."""
    if where and where[-1] == "[key]":
        where = where[:-1]
    elif kind == "missing":
        where = where[:-1]
    node, path, items = data, [], []
    for part in where:
        if isinstance(node, dict):
            found = _key_in(node, part)
            if found is _MISSING:
                break
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            found = part
        else:
            break
        path.append(found)
        items.append(isinstance(node, list))
        node = node[found]
    while items and items[-1]:  # the item itself: leave out the whole list
        path.pop()
        items.pop()
    return tuple(path)


def _without(data: Any, path: tuple[Any, ...]) -> Any:
    """A copy of `data` without the key at `path` (copies only what lies on the way)."""
    head, rest = path[0], path[1:]
    if isinstance(data, list):
        out_list = list(data)
        out_list[head] = _without(out_list[head], rest)
        return out_list
    out = dict(data)
    if not rest or not isinstance(out.get(head), (dict, list)):
        out.pop(head, None)
    else:
        out[head] = _without(out[head], rest)
    return out


# pydantic names the branch of a union in an error's location (`bool`, `CloudInitSpec`,
# `literal['ssh',...]`); a user wrote none of these, so only the branch their value meant is kept
_UNION_TAG = re.compile(r"^(bool|int|str|float|literal\[.*\]|[A-Z][A-Za-z]+)$")
_SHAPE = {"bool_type", "int_type", "string_type", "float_type", "literal_error", "model_type", "dict_type",
          "model_attributes_type", "list_type"}


def _one_branch(errors: list[Any]) -> list[dict[str, Any]]:
    """A value that fits no branch of a union: the errors of the branch it was meant for (a
    mapping for a model, a scalar for the rest), or one message listing what would fit."""
    plain: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for err in errors:
        where = tuple(err["loc"])
        i = next((i for i, p in enumerate(where) if i and isinstance(p, str) and _UNION_TAG.match(p)), None)
        if i is None:
            plain.append(err)
            continue
        groups.setdefault(where[:i], {}).setdefault(where[i], []).append({**err, "loc": where[:i] + where[i + 1:]})
    for prefix, branches in groups.items():
        def misfit(errs: list[dict[str, Any]]) -> bool:  # the value is not of this branch's shape
            return all(tuple(e["loc"]) == prefix and e["type"] in _SHAPE for e in errs)

        meant = {tag: errs for tag, errs in branches.items() if not misfit(errs)}
        if meant:
            plain.extend(min(meant.values(), key=len))
            continue
        first = next(iter(branches.values()))[0]
        wanted = [_describe_branch(tag, errs[0]) for tag, errs in branches.items()]
        plain.append({**first, "loc": prefix,
                      "ravel_message": f"must be {' or '.join(wanted)}; got {_kind(first.get('input'))}"})
    return plain


def _describe_branch(tag: str, err: dict[str, Any]) -> str:
    if tag == "bool":
        return "true or false"
    if tag.startswith("literal["):
        return "one of " + ", ".join(re.findall(r"'([^']*)'", tag))
    if tag in ("int", "float"):
        return "a number"
    if tag == "str":
        return "a string"
    spec = getattr(spec_models, tag, None)
    keys = [f.alias or n for n, f in spec.model_fields.items()] if spec else []
    return f"a mapping ({', '.join(keys)})" if keys else "a mapping"


def _walk_duplicates(ctx: _Ctx, node: Any, loc: tuple[str | int, ...], depth: int = 0) -> None:
    if depth > 64:
        return
    if isinstance(node, PosDict):
        for key, pos, first in node.duplicates:
            ctx.problems.append(
                Problem(ctx.file, pos[0], pos[1], path_str(loc + (str(key),)),
                        f"duplicate key {key!r} (first defined on line {first})")
            )
        for k, v in node.items():
            _walk_duplicates(ctx, v, loc + (str(k),), depth + 1)
    elif isinstance(node, PosList):
        for i, v in enumerate(node):
            _walk_duplicates(ctx, v, loc + (i,), depth + 1)


def _positions(node: Any, loc: tuple[str | int, ...], out: dict[str, tuple[int, int]], depth: int = 0) -> None:
    if depth > 64:
        return
    if isinstance(node, PosDict):
        for k, v in node.items():
            sub = loc + (str(k),)
            out[path_str(sub)] = node.key_pos[k] if isinstance(v, (dict, list)) else node.value_pos[k]
            _positions(v, sub, out, depth + 1)
    elif isinstance(node, PosList):
        for i, v in enumerate(node):
            out[path_str(loc + (i,))] = node.item_pos[i]
            _positions(v, loc + (i,), out, depth + 1)


class _Positions(Mapping[str, tuple[int, int]]):
    """Key path -> position, worked out on first use: only errors found after loading (missing
    files, host-type fit) read it, and building it costs a third of loading a large blueprint."""

    def __init__(self, raw: PosDict) -> None:
        self._raw: PosDict | None = raw
        self._paths: dict[str, tuple[int, int]] = {}

    def _table(self) -> dict[str, tuple[int, int]]:
        if self._raw is not None:
            top = PosDict({k: v for k, v in self._raw.items() if not (isinstance(k, str) and k.startswith("x-"))})
            top.key_pos, top.value_pos = self._raw.key_pos, self._raw.value_pos
            with yamlpos.no_gc():
                _positions(top, (), self._paths)
            self._raw = None
        return self._paths

    def __getitem__(self, path: str) -> tuple[int, int]:
        return self._table()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        text = data
    else:
        if b"\x00" in data:
            raise ValueError("this is a binary file, not a YAML blueprint")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text (bad byte at offset {exc.start}); a blueprint is YAML text") from None
    if "\x00" in text:
        raise ValueError("this is a binary file, not a YAML blueprint")
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        raise ValueError("the file is empty; a blueprint needs at least `name` and `vms`")
    return text


def load_blueprint(data: bytes | str, file: str = "<blueprint>", base_dir: str | None = None) -> Blueprint:
    """Parse and validate a blueprint. Relative paths resolve against `base_dir` (pure: no I/O)."""
    try:
        text = _decode(data)
    except ValueError as exc:
        raise BlueprintError([Problem(file, 0, 0, "", str(exc))]) from None
    with yamlpos.no_gc():
        return _load(text, file, base_dir)


def _load(text: str, file: str, base_dir: str | None) -> Blueprint:
    try:
        loaded = yamlpos.load_document(text)
        raw, issues = loaded.data, loaded.issues
    except yamlpos.YamlSyntaxError as exc:
        raise BlueprintError([Problem(file, exc.pos[0], exc.pos[1], "", exc.message)]) from None
    ctx = _Ctx(file, raw)
    ctx.problems.extend(Problem(file, i.pos[0], i.pos[1], "", i.message) for i in issues)
    if not isinstance(raw, PosDict):
        what = "nothing" if raw is None else _kind(raw)
        ctx.problems.append(
            Problem(file, *(getattr(raw, "start", (1, 1))), "",
                    f"a blueprint must be a mapping with keys such as name, networks and vms; this document is {what}")
        )
        raise BlueprintError(ctx.problems)
    if loaded.duplicates:
        _walk_duplicates(ctx, raw, ())
    bp = _resolve(ctx, raw, base_dir)
    if ctx.problems or bp is None:
        raise BlueprintError(ctx.problems)
    return bp


def _resolve(ctx: _Ctx, raw: PosDict, base_dir: str | None) -> Blueprint | None:
    top = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    for key in top:
        if key not in TOP_KEYS:
            ctx.add((key,), f"unknown key {_key_text(key)!r}{did_you_mean(_key_text(key), TOP_KEYS)}", key=True)
    for key in ("networks", "placement", "routing", "firewall"):  # the schema's `type: object`
        if key in top and not isinstance(top[key], dict):
            ctx.add((key,), f"expected a mapping, got {_kind(top[key])}")
            del top[key]
    name = top.get("name")
    if "name" not in top:
        ctx.problems.append(Problem(ctx.file, *raw.start, "name", "required key 'name' is missing"))
    elif not isinstance(name, str):
        ctx.add(("name",), f"expected a string, got {_kind(name)}")
    elif not re.match(NAME_RE, name):
        ctx.add(("name",), f"{name!r} is not a valid name: use lowercase letters, digits and dashes, starting "
                           f"and ending with a letter or digit (at most {NAME_MAX})")
    description = top.get("description", "")
    if not isinstance(description, str):
        ctx.add(("description",), f"expected a string, got {_kind(description)}")

    networks, broken_networks = _networks(ctx, top.get("networks", PosDict()))
    defaults = _defaults(ctx, top.get("defaults"))
    vms = _vms(ctx, top, defaults, networks, broken_networks, base_dir)
    declared = set(top["vms"]) if isinstance(top.get("vms"), dict) else set()
    placement = _placement(ctx, top.get("placement", PosDict()), vms, declared)
    _address_plan(ctx, vms, networks)
    _services(ctx, vms, networks)
    deny = _routing(ctx, top.get("routing"), networks, broken_networks)
    _routed_subnets(ctx, networks, deny)
    firewall = _firewall(ctx, top.get("firewall"), networks, deny, broken_networks)
    lifetime = _lifetime(ctx, top.get("lifetime"))

    if ctx.problems or not isinstance(name, str):
        return None
    return Blueprint(
        name=name,
        description=description,
        networks=tuple(networks.values()),
        vms=tuple(vm for vm, _ in vms),
        placement=placement,
        source=ctx.file,
        positions=_Positions(raw),
        routing_deny=deny,
        firewall=firewall,
        lifetime=lifetime,
    )


def _lifetime(ctx: _Ctx, raw: Any) -> Lifetime | None:
    if raw is None:
        return None
    checked = _validate(ctx, LifetimeSpec, raw, ("lifetime",))
    spec = checked.spec
    return Lifetime(spec.ttl, spec.action) if spec is not None and checked.ok(("ttl",)) else None


def _networks(ctx: _Ctx, raw: Any) -> tuple[dict[str, Network], set[str]]:
    """The usable networks, and the names of those declared but wrong (their own problems are
    reported; a NIC on one is not also told the network is undefined)."""
    out: dict[str, Network] = {}
    broken: set[str] = set()
    if raw is None:
        return out, broken
    if not isinstance(raw, dict):
        ctx.add(("networks",), f"expected a mapping of network name -> settings, got {_kind(raw)}")
        return out, broken
    for name, body in raw.items():
        loc = ("networks", name)
        if not isinstance(name, str) or not re.match(VM_NAME_RE, name):
            ctx.add(loc, f"{_key_text(name)!r} is not a valid network name: lowercase letters, digits and dashes, "
                         f"at most {VM_NAME_MAX}", key=True)
            broken.add(str(name))
            continue
        checked = _validate(ctx, NetworkSpec, body, loc)
        spec = checked.spec
        if spec is None or not checked.ok(("subnet",)):
            broken.add(name)
            continue
        try:
            subnet = IPv4Network(spec.subnet, strict=True)
        except ValueError as exc:
            hint = ""
            try:
                hint = f" (did you mean {IPv4Network(spec.subnet, strict=False)}?)"
            except ValueError:
                pass
            reason = "has host bits set" if "host bits" in str(exc) else "is not an IPv4 CIDR such as 10.0.0.0/24"
            ctx.add(loc + ("subnet",), f"{spec.subnet!r} {reason}{hint}")
            broken.add(name)
            continue
        if subnet.prefixlen > 29:
            ctx.add(loc + ("subnet",), f"{subnet} is too small for a lab network; use a /29 or larger")
            broken.add(name)
            continue
        gateway = None
        if spec.gateway is not None:
            gateway = _host_address(ctx, loc + ("gateway",), spec.gateway, subnet)
        if spec.nat and spec.gateway is None and checked.ok(("gateway",)):
            ctx.add(loc + ("nat",), "nat needs a `gateway`: guests send outside traffic to it")
        out[name] = Network(name, subnet, gateway, spec.dhcp, spec.dns, spec.mtu, spec.nat)
    return out, broken


def _host_address(ctx: _Ctx, loc: tuple[str | int, ...], text: str, subnet: IPv4Network | None) -> IPv4Address | None:
    try:
        addr = IPv4Address(text)
    except (AddressValueError, NetmaskValueError, ValueError):
        ctx.add(loc, f"{text!r} is not an IPv4 address")
        return None
    if subnet is not None:
        if addr not in subnet:
            ctx.add(loc, f"{addr} is outside the network's subnet {subnet}")
            return None
        if addr in (subnet.network_address, subnet.broadcast_address):
            which = "network" if addr == subnet.network_address else "broadcast"
            ctx.add(loc, f"{addr} is the {which} address of {subnet}, not usable by a host")
            return None
    return addr


def _defaults(ctx: _Ctx, raw: Any) -> PosDict | None:
    """The keys of `defaults:` that are right (each wrong one is reported once, here)."""
    if raw is None:
        return None
    if isinstance(raw, PosDict) and "count" in raw:
        ctx.add(("defaults", "count"), "`count` cannot be a default; set it on each VM", key=True)
        raw = _pos_without(raw, "count")
    checked = _validate(ctx, VmDefaults, raw, ("defaults",))
    if checked.spec is None or not isinstance(raw, PosDict):
        return None
    for path in checked.dropped:
        raw = _pos_without(raw, path[0])
    return raw


def _pos_without(raw: PosDict, key: Any) -> PosDict:
    out = PosDict({k: v for k, v in raw.items() if k != key})
    out.key_pos, out.value_pos, out.start = raw.key_pos, raw.value_pos, raw.start
    return out


def _merged(vm_raw: Any, defaults: PosDict | None) -> Any:
    if defaults is None or not isinstance(vm_raw, PosDict):
        return vm_raw
    merged = PosDict(vm_raw)
    merged.key_pos, merged.value_pos, merged.start = dict(vm_raw.key_pos), dict(vm_raw.value_pos), vm_raw.start
    for k, v in defaults.items():
        if k not in merged:
            merged[k] = v
            merged.key_pos[k] = defaults.key_pos[k]
            merged.value_pos[k] = defaults.value_pos[k]
    return merged


def _image_format(path: str) -> str | None:
    lower = path.lower()
    for suffix, fmt in ((".qcow2", "qcow2"), (".qcow", "qcow2"), (".vmdk", "vmdk"), (".raw", "raw"),
                        (".vhdx", "vhdx"), (".vhd", "vhd")):
        if lower.endswith(suffix):
            return fmt
    return None


def _path(base_dir: str | None, p: str) -> str:
    p = os.path.expanduser(p)
    if base_dir and not os.path.isabs(p):
        p = os.path.join(base_dir, p)
    return os.path.normpath(p)


def _vms(ctx: _Ctx, top: dict, defaults: PosDict | None, networks: dict[str, Network],
         broken_networks: set[str], base_dir: str | None) -> list[tuple[VM, tuple[str | int, ...]]]:
    """Expanded VMs with the raw location each came from."""
    raw = top.get("vms")
    if "vms" not in top:
        ctx.problems.append(Problem(ctx.file, 1, 1, "vms", "required key 'vms' is missing: a blueprint needs at least one VM"))
        return []
    if not isinstance(raw, dict):
        ctx.add(("vms",), f"expected a mapping of VM name -> settings, got {_kind(raw)}")
        return []
    if not raw:
        ctx.add(("vms",), "a blueprint needs at least one VM")
        return []
    out: list[tuple[VM, tuple[str | int, ...]]] = []
    taken: dict[str, tuple[str, int]] = {}  # expanded name -> (group, line)
    for group, body in raw.items():
        loc: tuple[str | int, ...] = ("vms", group)
        if not isinstance(group, str) or not re.match(VM_NAME_RE, group):
            ctx.add(loc, f"{_key_text(group)!r} is not a valid VM name: lowercase letters, digits and dashes, "
                         f"at most {VM_NAME_MAX}", key=True)
            continue
        checked = _validate(ctx, VmSpec, _merged(body, defaults), loc)
        spec = checked.spec
        if spec is None:
            continue
        # most VMs set few keys: the helpers below run only for keys a VM has
        disks = _disks(ctx, loc, spec, base_dir, checked) if spec.disks else ()
        nics_ok = checked.ok(("nics",))
        for i, nic in enumerate(spec.nics):
            if nic.network in broken_networks:
                nics_ok = False
            elif nic.network not in networks:
                nics_ok = False  # reported here; its addresses are checked no further
                known = ", ".join(sorted(networks)) or "none"
                ctx.add(loc + ("nics", i, "network"),
                        f"network {nic.network!r} is not defined{did_you_mean(nic.network, networks)}; defined networks: {known}")
        if not nics_ok:
            ctx.unsure.add(loc)  # checks of its addresses would be about NICs it does not have
        boot = _boot(ctx, loc, spec, base_dir, checked) if spec.boot is not None else None
        cloud_init = _cloud_init(ctx, loc, spec, base_dir) if spec.cloud_init is not False else None
        cdroms = tuple([_path(base_dir, c) for c in spec.cdroms]) if spec.cdroms else ()
        if (spec.boot is not None and "cdrom" in (spec.boot.order or ()) and not cdroms
                and checked.ok(("cdroms",))):
            ctx.add(loc + ("boot", "order"), "boots from `cdrom` but the VM has no `cdroms`")
        if spec.uefi_vars is not None and spec.firmware != "uefi" and checked.ok(("firmware",)):
            ctx.add(loc + ("uefi_vars",), "a UEFI variable store needs `firmware: uefi`")
        line = raw.key_pos[group][0] if isinstance(raw, PosDict) else 0
        names = [group] if spec.count == 1 else [f"{group}-{i}" for i in range(1, spec.count + 1)]
        for index, vm_name in enumerate(names):
            if len(vm_name) > VM_NAME_MAX:
                ctx.add(loc + ("count",), f"expanded name {vm_name!r} is longer than {VM_NAME_MAX} characters")
                break
            if vm_name in taken:
                other, other_line = taken[vm_name]
                origin = f" (from {group!r} with count {spec.count})" if spec.count > 1 else ""
                first = f" (from {other!r})" if other != vm_name else ""
                ctx.add(loc, f"VM name {vm_name!r}{origin} collides with VM {vm_name!r}{first} defined on line {other_line}", key=True)
                continue
            taken[vm_name] = (group, line)
            nics = [_nic(ctx, loc + ("nics", i), nic, networks, index) if nic.network in networks else None
                    for i, nic in enumerate(spec.nics)]
            placed = tuple([n for n in nics if n is not None])
            out.append((VM(
                name=vm_name, group=group, cpus=spec.cpus, memory_mib=spec.memory, nested=spec.nested,
                firmware=spec.firmware, disks=disks, nics=placed, boot=boot,
                services=_service_values(ctx, loc, spec, index) if spec.services else (),
                description=spec.description,
                cdroms=cdroms, cloud_init=cloud_init, user=spec.user,
                ready=_ready(ctx, loc, spec, placed, networks, cloud_init is not None,
                             nics_ok and checked.ok(("cloud_init",), ("ready",))),
                uefi_vars=_path(base_dir, spec.uefi_vars) if spec.uefi_vars else None,
                agent=spec.agent,
                cpu_model=spec.cpu_model,
            ), loc))
    return out


def _boot(ctx: _Ctx, loc: tuple[str | int, ...], spec: VmSpec, base_dir: str | None,
          checked: Checked) -> Boot | None:
    b = spec.boot
    if b is None:
        return None
    if b.kernel is None:
        for key in ("initrd", "cmdline") if checked.ok(("boot", "kernel")) else ():
            if getattr(b, key):
                ctx.add(loc + ("boot", key), f"`{key}` needs `kernel` (direct kernel boot)")
        return Boot(order=tuple(b.order or ("disk",)))
    if b.order is not None:
        ctx.add(loc + ("boot", "order"), "a VM boots either a `kernel` directly or from the firmware's "
                                         "boot `order`, not both")
    return Boot(_path(base_dir, b.kernel), _path(base_dir, b.initrd) if b.initrd else None, b.cmdline)


def _cloud_init(ctx: _Ctx, loc: tuple[str | int, ...], spec: VmSpec, base_dir: str | None) -> CloudInit | None:
    c = spec.cloud_init
    if c is False:
        return None
    if c is True:
        return CloudInit()
    text, source = c.user_data, None
    if text is not None and "\n" not in text.strip():  # one line: a file next to the blueprint
        source = _path(base_dir, text)
        text = None  # read (and checked) before publishing: run/preflight.py
    return CloudInit(text, source, json.dumps(c.meta_data, sort_keys=True),
                     json.dumps(c.network_config, sort_keys=True) if c.network_config is not None else None)


def _ready(ctx: _Ctx, loc: tuple[str | int, ...], spec: VmSpec, nics: tuple[Nic, ...],
           networks: dict[str, Network], seeded: bool, sure: bool = True) -> Ready:
    """The VM's readiness check: as written, else the best one its set-up allows (docs/guests.md)."""
    first = nics[0] if nics else None
    net = networks.get(first.network) if first else None
    addressed = first is not None and net is not None and (first.ip is not None or net.dhcp)
    r = spec.ready
    if r is None:
        if seeded and addressed:
            return Ready("ssh", port=22)
        if net is not None and net.dhcp:
            return Ready("lease")
        return Ready("link") if first is not None else Ready("console")
    if not isinstance(r, str):
        if isinstance(r, ReadyTcp):
            kind, port, pattern = "tcp", r.tcp, None
        else:
            kind, port, pattern = "console", None, r.console
            try:
                re.compile(pattern)
            except re.error as exc:
                ctx.add(loc + ("ready", "console"), f"not a regular expression: {exc}")
    else:
        kind, port, pattern = r, (22 if r == "ssh" else None), None
    if not sure:  # the NICs it was checked against are not all there
        pass
    elif kind in ("ssh", "tcp", "ping") and not addressed:
        ctx.add(loc + ("ready",), f"`{kind}` is checked at the VM's first address, and its first NIC has none: "
                                  "give it an `ip`, or put it on a `dhcp: true` network")
    elif kind == "lease" and not (net is not None and net.dhcp):
        ctx.add(loc + ("ready",), "`lease` needs the VM's first NIC on a `dhcp: true` network")
    elif kind == "link" and first is None:
        ctx.add(loc + ("ready",), "`link` needs a NIC")
    return Ready(kind, port, pattern)  # type: ignore[arg-type]


def _disks(ctx: _Ctx, loc: tuple[str | int, ...], spec: VmSpec, base_dir: str | None,
           checked: Checked) -> tuple[Disk, ...]:
    disks = []
    for i, d in enumerate(spec.disks):
        dloc = loc + ("disks", i)
        if not checked.ok(("disks", i, "image"), ("disks", i, "size")):
            continue  # its wrong key is reported; the rest of the disk is fine or unknowable
        if (d.image is None) == (d.size is None):
            ctx.add(dloc, "a disk needs exactly one of `image` (a base image) or `size` (a blank disk)")
            continue
        if d.image is not None:
            # without `format`, the file's own first bytes say (run/preflight.py, before publishing)
            disks.append(Disk(d.bus, _path(base_dir, d.image), d.format or _image_format(d.image), None))
        else:
            disks.append(Disk(d.bus, None, "qcow2", d.size))
    return tuple(disks)


def _nic(ctx: _Ctx, loc: tuple[str | int, ...], nic: NicSpec, networks: dict[str, Network], index: int) -> Nic | None:
    net = networks[nic.network]
    ip = None
    if nic.ip is not None:
        base = _host_address(ctx, loc + ("ip",), nic.ip, None) if index == 0 else None
        if index == 0 and base is None:
            return None
        try:
            ip = IPv4Address(nic.ip) + index
        except (ValueError, AddressValueError):
            return None
        if ip not in net.subnet or ip in (net.subnet.network_address, net.subnet.broadcast_address):
            what = f"{ip} (address {index + 1} of `count`, counting up from {nic.ip})" if index else f"{ip}"
            ctx.add(loc + ("ip",), f"{what} is outside the usable addresses of network {net.name!r} ({net.subnet})")
            return None
        if net.gateway is not None and ip == net.gateway:
            ctx.add(loc + ("ip",), f"{ip} is the gateway of network {net.name!r}")
            return None
    mac = None
    if nic.mac is not None:
        value = int(nic.mac.replace(":", ""), 16) + index
        if value >> 48:
            ctx.add(loc + ("mac",), f"{nic.mac} + {index} overflows the MAC address space")
            return None
        h = f"{value:012x}"
        mac = ":".join(h[i:i + 2] for i in range(0, 12, 2))
    # a counted VM's instances share the NIC's impairment: its problems are reported once
    impair = _impair(ctx, loc + ("impair",), nic.impair, quiet=index > 0) if nic.impair is not None else None
    return Nic(nic.network, nic.model, ip, mac, impair)


def _impair(ctx: _Ctx, loc: tuple[str | int, ...], spec: Any, quiet: bool = False) -> Impair | None:
    try:
        return impair_from(spec.delay, spec.jitter, spec.loss, spec.corrupt, spec.duplicate, spec.rate) or None
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        if not quiet:
            ctx.add(loc + (key,), message)
        return None


def _address_plan(ctx: _Ctx, vms: list[tuple[VM, tuple[str | int, ...]]], networks: dict[str, Network]) -> None:
    ips: dict[tuple[str, IPv4Address], str] = {}
    macs: dict[str, str] = {}
    for vm, loc in vms:
        for i, nic in enumerate(vm.nics):
            where = f"{vm.name}.nics[{i}]"
            if nic.ip is not None:
                key = (nic.network, nic.ip)
                if key in ips:
                    ctx.add(loc + ("nics", i, "ip"), f"{nic.ip} is already used by {ips[key]} on network {nic.network!r}")
                else:
                    ips[key] = where
            if nic.mac is not None:
                if nic.mac in macs:
                    ctx.add(loc + ("nics", i, "mac"), f"MAC {nic.mac} is already used by {macs[nic.mac]}")
                else:
                    macs[nic.mac] = where
    # ravel gives every NIC without `ip` on a `dhcp: true` network a fixed lease: is there room?
    for net in networks.values():
        if not net.dhcp:
            continue
        wanted = sum(1 for vm, _ in vms for nic in vm.nics if nic.network == net.name and nic.ip is None)
        fixed = sum(1 for (name, _ip) in ips if name == net.name)
        room = net.subnet.num_addresses - 2 - fixed - 1  # one address is the host's (gateway or server)
        if wanted > room:
            ctx.add(("networks", net.name, "subnet"),
                    f"{net.subnet} has room for {max(room, 0)} more addresses but {wanted} NICs need a lease; "
                    "use a larger subnet")


def _placement(ctx: _Ctx, raw: Any, vms: list[tuple[VM, tuple[str | int, ...]]], declared: set[Any]) -> Placement:
    checked = _validate(ctx, PlacementSpec, raw, ("placement",)) if raw is not None else Checked(PlacementSpec())
    spec = checked.spec
    if spec is None:
        return Placement()
    if spec.optimize == "performance" and isinstance(raw, dict) and "cpu_overcommit" in raw and spec.cpu_overcommit != 1.0:
        ctx.add(("placement", "cpu_overcommit"), "performance mode never overcommits CPU; remove cpu_overcommit or use optimize: cost")
    groups: dict[str, list[str]] = {}
    names = set()
    for vm, _ in vms:
        groups.setdefault(vm.group, []).append(vm.name)
        names.add(vm.name)
    sets: list[tuple[str, ...]] = []
    for s, members in enumerate(spec.anti_affinity):
        loc = ("placement", "anti_affinity", s)
        expanded: list[str] = []
        via: dict[str, str] = {}
        ok = True
        for j, ref in enumerate(members):
            if ref in names and ref not in groups:
                targets = [ref]
            elif ref in groups:
                targets = groups[ref]
            else:
                # a VM that is declared but invalid has its own error already: say nothing more
                if ref not in declared:
                    ctx.add(loc + (j,), f"{ref!r} is neither a VM nor a VM group{did_you_mean(ref, sorted(names | set(groups)))}")
                ok = False
                continue
            for t in targets:
                if t in via:
                    ctx.add(loc + (j,), f"VM {t!r} appears twice in this set (as {via[t]!r} and {ref!r}); a VM cannot be on a different host from itself")
                    ok = False
                else:
                    via[t] = ref
                    expanded.append(t)
        if ok and len(expanded) < 2:
            ctx.add(loc, "an anti-affinity set needs at least two VMs")
            ok = False
        if ok:
            sets.append(tuple(expanded))
    if spec.max_hosts is not None and sets:
        _check_colourable(ctx, sets, spec.max_hosts)
    return Placement(spec.optimize, spec.cpu_overcommit if spec.optimize == "cost" else 1.0,
                     tuple(spec.host_types), tuple(sets), spec.max_hosts)


def _check_colourable(ctx: _Ctx, sets: list[tuple[str, ...]], max_hosts: int) -> None:
    """Anti-affinity sets must fit on max_hosts hosts: a graph colouring with max_hosts colours."""
    for s, members in enumerate(sets):
        if len(members) > max_hosts:
            ctx.add(("placement", "anti_affinity", s),
                    f"this set needs {len(members)} distinct hosts but placement.max_hosts is {max_hosts}")
            return
    adj: dict[str, set[str]] = {}
    for members in sets:
        for a in members:
            adj.setdefault(a, set()).update(m for m in members if m != a)
    order = sorted(adj, key=lambda v: (-len(adj[v]), v))
    colour: dict[str, int] = {}
    budget = [_MAX_ANTI_AFFINITY_SEARCH]

    def solve(i: int) -> bool | None:
        if i == len(order):
            return True
        budget[0] -= 1
        if budget[0] <= 0:
            return None  # too big to decide here; the planner will say if it cannot place
        v = order[i]
        used = {colour[u] for u in adj[v] if u in colour}
        for c in range(min(max_hosts, len(colour) + 1)):
            if c not in used:
                colour[v] = c
                r = solve(i + 1)
                if r is not False:
                    return r
                del colour[v]
        return False

    if solve(0) is False:
        shared = [v for v in sorted(adj) if sum(v in m for m in sets) > 1]
        which = f"VM {shared[0]!r} is in {sum(shared[0] in m for m in sets)} sets and " if shared else ""
        ctx.add(("placement", "anti_affinity"),
                f"{which}the anti-affinity sets together cannot be satisfied on at most {max_hosts} hosts")


# -- network services: exposed ports, routing, firewall ----------------------------------------

def _service_values(ctx: _Ctx, loc: tuple[str | int, ...], spec: VmSpec, index: int) -> tuple[Service, ...]:
    """Services of instance `index` of a VM group: a fixed host_port counts up like `ip` does."""
    out = []
    for i, s in enumerate(spec.services):
        allow = []
        for j, text in enumerate(s.allow):
            try:
                allow.append(IPv4Network(text, strict=True))
            except ValueError:
                if index == 0:
                    ctx.add(loc + ("services", i, "allow", j), f"{text!r} is not an IPv4 CIDR such as 203.0.113.0/24")
        host_port = None
        if s.host_port is not None:
            host_port = s.host_port + index
            if host_port > 65535:
                ctx.add(loc + ("services", i, "host_port"),
                        f"{s.host_port} + {index} (instance {index + 1} of `count`) is beyond port 65535")
                host_port = None
        out.append(Service(s.port, s.protocol, host_port, tuple(allow)))
    return tuple(out)


def _services(ctx: _Ctx, vms: list[tuple[VM, tuple[str | int, ...]]], networks: dict[str, Network]) -> None:
    used: dict[tuple[int, str], str] = {}
    groups: set[tuple[str | int, ...]] = set()
    for vm, loc in vms:
        first = loc not in groups  # instances of one `count` group share their problems
        groups.add(loc)
        if first and vm.services and loc not in ctx.unsure and \
                not any(n.ip is not None or networks[n.network].dhcp for n in vm.nics):
            ctx.add(loc + ("services",),
                    f"VM {vm.name!r} exposes services but none of its NICs has an address ravel knows: "
                    "give a NIC an `ip`, or put it on a network with `dhcp: true`")
        seen: dict[tuple[int, str], int] = {}
        for i, s in enumerate(vm.services):
            if first and (s.port, s.protocol) in seen:
                ctx.add(loc + ("services", i, "port"),
                        f"{s.port}/{s.protocol} is already exposed by services[{seen[(s.port, s.protocol)]}]")
            seen.setdefault((s.port, s.protocol), i)
            if s.host_port is None:
                continue
            key = (s.host_port, s.protocol)
            if key in {(22, "tcp"), (4789, "udp")}:  # plan.network.RESERVED_HOST_PORTS
                ctx.add(loc + ("services", i, "host_port"),
                        f"host port {s.host_port}/{s.protocol} is the hosts' own "
                        f"({'SSH' if s.protocol == 'tcp' else 'VXLAN tunnels'}); choose another")
            elif key in used:
                ctx.add(loc + ("services", i, "host_port"),
                        f"host port {s.host_port}/{s.protocol} is already used by {used[key]}")
            else:
                used[key] = f"{vm.name}.services[{i}]"


def _routing(ctx: _Ctx, raw: Any, networks: dict[str, Network], broken: set[str]) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    spec = _validate(ctx, RoutingSpec, raw, ("routing",)).spec
    if spec is None:
        return ()
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(spec.deny):
        loc = ("routing", "deny", i)
        if len(pair) != 2:
            ctx.add(loc, f"a pair names exactly two networks, got {len(pair)}")
            continue
        ok = True
        for j, name in enumerate(pair):
            if name not in networks:
                ok = False
                if name not in broken:  # a network with problems of its own is not also "undefined"
                    ctx.add(loc + (j,), f"network {name!r} is not defined{did_you_mean(name, networks)}")
        if ok and pair[0] == pair[1]:
            ctx.add(loc, f"network {pair[0]!r} is paired with itself; traffic inside a network is never routed")
            ok = False
        if ok:
            key = (min(pair), max(pair))
            if key not in pairs:
                pairs.append(key)
    return tuple(pairs)


def _routed_subnets(ctx: _Ctx, networks: dict[str, Network], deny: tuple[tuple[str, str], ...]) -> None:
    gated = [n for n in networks.values() if n.gateway is not None]
    for i, b in enumerate(gated):
        for a in gated[:i]:
            if (min(a.name, b.name), max(a.name, b.name)) in deny:
                continue
            if a.subnet.overlaps(b.subnet):
                ctx.add(("networks", b.name, "subnet"),
                        f"{b.subnet} overlaps {a.subnet} of network {a.name!r}; networks routed to each "
                        "other need distinct subnets (or deny routing between them)")


def _ports(ctx: _Ctx, loc: tuple[str | int, ...], raw: list[int | str]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for k, item in enumerate(raw):
        where = loc + ("ports", k)
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        else:
            m = re.fullmatch(PORT_RANGE_RE, str(item))
            if not m:
                ctx.add(where, f"{item!r} is not a port or a range such as \"8000-8100\"")
                continue
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                ctx.add(where, f"range {item!r} runs backwards; write {hi}-{lo}")
                continue
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            ctx.add(where, f"{item!r} is outside the ports 1..65535")
            continue
        out.append((lo, hi))
    return tuple(out)


def _firewall(ctx: _Ctx, raw: Any, networks: dict[str, Network],
              deny: tuple[tuple[str, str], ...], broken: set[str]) -> tuple[FirewallRule, ...]:
    if raw is None:
        return ()
    # each rule is checked on its own, so one bad rule does not hide the others' problems
    items = raw.get("allow") if isinstance(raw, dict) else None
    shape = PosDict({k: v for k, v in raw.items() if k != "allow"}) if isinstance(raw, dict) else raw
    if _validate(ctx, FirewallSpec, shape, ("firewall",)).spec is None:
        return ()
    if items is None:
        return ()
    if not isinstance(items, list):
        ctx.add(("firewall", "allow"), f"expected a list of rules, got {_kind(items)}")
        return ()
    rules: list[FirewallRule] = []
    for i, item in enumerate(items):
        loc = ("firewall", "allow", i)
        checked = _validate(ctx, FirewallRuleSpec, item, loc)
        rule = checked.spec
        if rule is None:
            continue
        ok = checked.ok(("protocol",))
        for key, name in (("from", rule.from_), ("to", rule.to)):
            if name in broken:
                ok = False
            elif name not in networks:
                ctx.add(loc + (key,), f"network {name!r} is not defined{did_you_mean(name, networks)}")
                ok = False
            elif networks[name].gateway is None:
                ctx.add(loc + (key,), f"network {name!r} has no gateway, so nothing is routed to or from it")
                ok = False
        if not ok:
            continue
        if rule.from_ == rule.to:
            ctx.add(loc, f"`from` and `to` are both {rule.to!r}; inside a network everything is allowed")
            continue
        if (min(rule.from_, rule.to), max(rule.from_, rule.to)) in deny:
            ctx.add(loc, f"routing between {rule.from_!r} and {rule.to!r} is off (routing.deny), "
                         "so there is nothing to allow")
            continue
        if rule.ports and rule.protocol not in ("tcp", "udp"):
            ctx.add(loc + ("ports",), f"ports need protocol tcp or udp, not {rule.protocol}")
            continue
        ports = _ports(ctx, loc, rule.ports)
        if len(ports) == len(rule.ports):
            rules.append(FirewallRule(rule.from_, rule.to, rule.protocol, ports))
    return tuple(rules)
