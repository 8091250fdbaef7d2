"""Server-side apply and field ownership, after sigs.k8s.io/structured-merge-diff v4 (`merge/update.go`),
which every API server runs, and k8s.io/apimachinery's `managedfields` (manager names, stripped fields,
the conflict message).

- A field set is a set of paths; a path element is a field (`f:name`), a list-map element by its keys
  (`k:{"name":"server"}`) or a set element by value (`v:"x"`), as in `metadata.managedFields[].fieldsV1`.
- Lists merge as the schema declares them (`x-kubernetes-list-type: map` by their keys, `set` by value,
  atomic ones are replaced); atomic structs and maps (LabelSelector, ...) are replaced whole.
- Apply: merge the applied config into the live object (keeping the order structured-merge-diff keeps),
  then remove what this manager applied last time, no longer applies, and nobody else owns; a field
  another manager owns and this apply changes is a conflict (409) unless `force`, which takes it over.
- Update (create, PUT, merge and JSON patches): the writer owns what it changed or added, and takes it
  away from the others.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kube_emulator.errors import APIError
from kube_emulator.schema import UNTYPED, Node

PathElement = tuple[str, str]  # ("f", name) | ("k", '{"name":"x"}') | ("v", '"x"')
Path = tuple[PathElement, ...]

# managedfields' StripMetaManager: identity and server-set metadata are never anybody's fields.
STRIPPED: frozenset[Path] = frozenset(
    {(("f", "apiVersion"),), (("f", "kind"),), (("f", "metadata"),)}
    | {
        (("f", "metadata"), ("f", f))
        for f in (
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        )
    }
)
# List-map keys the API server defaults before keying (a port applied without `protocol` is the TCP one).
_KEY_DEFAULTS = {"protocol": "TCP"}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def element(item: Any, node: Node) -> PathElement:
    """The path element of one item of a map- or set-typed list."""
    if node.list_type == "map" and isinstance(item, dict):
        keys = {k: item.get(k, _KEY_DEFAULTS.get(k)) for k in node.list_keys}
        return ("k", _json({k: v for k, v in keys.items() if v is not None}))
    return ("v", _json(item))


def _is_set_like(node: Node, value: Any) -> bool:
    return node.kind == "list" and node.list_type in ("map", "set") and isinstance(value, list)


def _is_granular_map(node: Node, value: Any) -> bool:
    return node.kind in ("struct", "map", "untyped") and not node.atomic and isinstance(value, dict)


def path_string(path: Path) -> str:
    """fieldpath.Path.String(): `.spec.template.spec.containers[name="server"].image`."""
    out = ""
    for kind, text in path:
        if kind == "f":
            out += f".{text}"
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(text).items()) + "]"
        else:
            out += f"[={text}]"
    return out


# ---------------------------------------------------------------- field sets


def field_set(value: Any, node: Node, path: Path = ()) -> set[Path]:
    """typed.TypedValue.ToFieldSet(): scalars, atomics, list items, map keys, empty or null fields."""
    out: set[Path] = set()
    _collect(value, node, path, out)
    return out


def _collect(value: Any, node: Node, path: Path, out: set[Path]) -> None:
    if _is_set_like(node, value):
        for item in value:
            child = (*path, element(item, node))
            out.add(child)
            if node.list_type == "map":
                _collect(item, node.items, child, out)
        return
    if _is_granular_map(node, value):
        for key, sub in value.items():
            child = (*path, ("f", key))
            _collect(sub, node.field(key) or UNTYPED, child, out)
            if sub is None or sub == {} or not node.declared(key):
                out.add(child)
        return
    if path:
        out.add(path)


def ensure_named_fields(paths: Iterable[Path], root: Node) -> set[Path]:
    """fieldpath.Set.EnsureNamedFieldsAreMembers: every declared struct field on a path is a member too."""
    out = set(paths)
    for path in list(out):
        node: Node | None = root
        for i, (kind, text) in enumerate(path[:-1]):
            if node is None:
                break
            if kind == "f":
                if node.declared(text):
                    out.add(path[: i + 1])
                node = node.field(text)
            else:
                node = node.items
    return out


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        tree = root
        for kind, text in path:
            tree = tree.setdefault(f"{kind}:{text}", {})
    for path in paths:  # a member with children says so with "."
        tree = root
        for kind, text in path:
            tree = tree[f"{kind}:{text}"]
        if tree and "." not in tree:
            tree["."] = {}
    return root


def from_fields_v1(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, sub in (fields or {}).items():
        if key == ".":
            out.add(prefix)
            continue
        kind, _, text = key.partition(":")
        child = (*prefix, (kind, text))
        if sub:
            out |= from_fields_v1(sub, child)
        else:
            out.add(child)
    return out


# ---------------------------------------------------------------- merge, remove, compare


def merge(live: Any, config: Any, node: Node) -> Any:
    """typed.TypedValue.Merge: `config` over `live`, lists by their keys (structured-merge-diff's order)."""
    if _is_set_like(node, config) and isinstance(live, list):
        return _merge_list(live, config, node)
    if _is_granular_map(node, config) and isinstance(live, dict):
        out = dict(live)
        for key, sub in config.items():
            out[key] = (
                merge(live[key], sub, node.field(key) or UNTYPED) if key in live else copy.deepcopy(sub)
            )
        return out
    return copy.deepcopy(config)


def _merge_list(lhs: list[Any], rhs: list[Any], node: Node) -> list[Any]:
    """mergingWalker.visitListItems: shared items in the config's order, live-only items where they were."""
    lpe = [element(x, node) for x in lhs]
    rpe = [element(x, node) for x in rhs]
    lmap: dict[PathElement, Any] = {}
    rmap: dict[PathElement, Any] = {}
    for pe, item in zip(lpe, lhs, strict=True):
        lmap.setdefault(pe, item)
    for pe, item in zip(rpe, rhs, strict=True):
        rmap.setdefault(pe, item)
    shared = [pe for pe in rpe if pe in lmap]
    next_shared = shared.pop(0) if shared else None
    merged_rhs: set[PathElement] = set()
    out: list[Any] = []

    def both(pe: PathElement) -> Any:
        if node.list_type != "map" or pe not in lmap:
            return copy.deepcopy(rmap[pe])
        return merge(lmap[pe], rmap[pe], node.items)

    li = ri = 0
    while li < len(lpe) or ri < len(rpe):
        if li < len(lpe) and ri < len(rpe):
            pe = lpe[li]
            if pe == rpe[ri]:
                merged_rhs.add(pe)
                out.append(both(pe))
                li, ri = li + 1, ri + 1
                next_shared = shared.pop(0) if shared else None
                continue
            if pe in rmap and next_shared is not None and next_shared != pe:
                li += 1  # a shared item, but not the one due now: it comes in the config's order
                continue
        if li < len(lpe):
            pe = lpe[li]
            if pe not in rmap:
                out.append(lhs[li])
                li += 1
                continue
            if pe in merged_rhs:
                li += 1
                continue
        if ri < len(rpe):
            pe = rpe[ri]
            merged_rhs.add(pe)
            out.append(both(pe))
            ri += 1
            if next_shared is not None and next_shared == pe:
                next_shared = shared.pop(0) if shared else None
    return out


def remove_paths(obj: dict[str, Any], paths: Iterable[Path], root: Node) -> None:
    """typed.TypedValue.RemoveItems, in place: a removed field or item takes its subtree with it."""
    for path in sorted(paths, key=len, reverse=True):
        parent: Any = obj
        node = root
        for pe in path[:-1]:
            parent, node = _step(parent, pe, node)
            if parent is None:
                break
        else:
            kind, text = path[-1]
            if kind == "f" and isinstance(parent, dict):
                parent.pop(text, None)
            elif isinstance(parent, list):
                parent[:] = [x for x in parent if element(x, node) != path[-1]]


def _step(value: Any, pe: PathElement, node: Node) -> tuple[Any, Node]:
    kind, text = pe
    if kind == "f":
        return (value.get(text) if isinstance(value, dict) else None), (node.field(text) or UNTYPED)
    if isinstance(value, list):
        for item in value:
            if element(item, node) == pe:
                return item, node.items
    return None, UNTYPED


@dataclass
class Comparison:
    modified: set[Path] = field(default_factory=set)
    added: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)


def compare(old: Any, new: Any, node: Node) -> Comparison:
    out = Comparison()
    _compare(old, new, node, (), out)
    return out


def _compare(a: Any, b: Any, node: Node, path: Path, out: Comparison) -> None:
    if _is_set_like(node, a) and _is_set_like(node, b):
        am = {element(x, node): x for x in a}
        bm = {element(x, node): x for x in b}
        for pe in am.keys() | bm.keys():
            child = (*path, pe)
            if pe not in bm:
                out.removed |= {child} | field_set(am[pe], node.items, child)
            elif pe not in am:
                out.added |= {child} | field_set(bm[pe], node.items, child)
            elif node.list_type == "map":
                _compare(am[pe], bm[pe], node.items, child, out)
        return
    if _is_granular_map(node, a) and _is_granular_map(node, b):
        for key in a.keys() | b.keys():
            child, sub = (*path, ("f", key)), node.field(key) or UNTYPED
            # A built-in's struct field is never "added" itself: Go's empty object already has it (a
            # custom resource's old object is truly empty, so there it is).
            member = {child} if sub.crd or not node.declared(key) or sub.kind != "struct" else set()
            if key not in b:
                out.removed |= member | field_set(a[key], sub, child)
            elif key not in a:
                out.added |= member | field_set(b[key], sub, child)
            else:
                _compare(a[key], b[key], sub, child, out)
        return
    if path and a != b:
        out.modified.add(path)


# ---------------------------------------------------------------- managers


@dataclass
class Manager:
    """One metadata.managedFields entry, its fieldsV1 decoded."""

    manager: str
    operation: str  # Apply | Update
    api_version: str
    time: str
    paths: set[Path]
    subresource: str = ""

    @property
    def key(self) -> tuple[str, str, str, str]:
        # BuildManagerIdentifier: an applier is the same manager whatever apiVersion it applies with.
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    def entry(self) -> dict[str, Any]:
        out = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.paths),
        }
        if self.subresource:
            out["subresource"] = self.subresource
        return out

    def label(self) -> str:
        """printManager in managedfields' conflict.go."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version} at {self.time}"
        return text


def managers_of(obj: dict[str, Any] | None) -> list[Manager]:
    out = []
    for e in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        out.append(
            Manager(
                str(e.get("manager", "")),
                str(e.get("operation", "Update")),
                str(e.get("apiVersion", "")),
                str(e.get("time", "")),
                from_fields_v1(e.get("fieldsV1") or {}),
                str(e.get("subresource", "")),
            )
        )
    return out


def encode(managers: list[Manager]) -> list[dict[str, Any]]:
    """Non-empty entries, sorted as the API server sorts them (operation, time, manager)."""
    kept = [m for m in managers if m.paths]
    kept.sort(key=lambda m: (m.operation, m.time, m.manager, m.api_version, m.subresource))
    return [m.entry() for m in kept]


def _owned(paths: set[Path], keep: str) -> set[Path]:
    """The part of a field set a write may own: `status` for /status writes, the rest for the main one."""
    status = ("f", "status")
    if keep == "status":
        return {p for p in paths if p[:1] == (status,)}
    if keep == "main":
        return {p for p in paths if p[:1] != (status,)}
    return set(paths)


def conflict_error(conflicts: list[tuple[Manager, Path]]) -> APIError:
    """managedfields' NewConflictError / getConflictMessage."""
    if len(conflicts) == 1:
        who, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {who.label()}: {path_string(path)}"
    else:
        by_manager: dict[str, list[Path]] = {}
        for who, path in conflicts:
            by_manager.setdefault(who.label(), []).append(path)
        lines = []
        for label in sorted(by_manager):
            lines.append(f"conflicts with {label}:")
            lines += [f"- {path_string(p)}" for p in sorted(by_manager[label])]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f"conflict with {who.label()}",
            "field": path_string(path),
        }
        for who, path in conflicts
    ]
    return APIError(409, "Conflict", message, {"causes": causes})


def _take_over(managers: list[Manager], me: Manager, comparison: Comparison, *, force: bool) -> None:
    changed = comparison.modified | comparison.added
    conflicts = [(m, p) for m in managers if m is not me for p in sorted(m.paths & changed)]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for m in managers:
        if m is not me:
            m.paths -= changed | comparison.removed


def apply(
    live: dict[str, Any] | None,
    config: dict[str, Any],
    root: Node,
    *,
    manager: str,
    force: bool,
    scope: str,
    now: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Server-side apply of `config` (undefaulted) onto `live`: (new object, its managedFields).

    `scope` is "main" or "status" for a kind with a status subresource (the other part is reset and
    owned by nobody through this write), "" for a kind without one."""
    live = copy.deepcopy(live) if live else {}
    managers = managers_of(live)
    api_version = str(config.get("apiVersion", ""))
    me = next(
        (m for m in managers if m.key == (manager, "Apply", "", scope if scope == "status" else "")), None
    )
    last = set(me.paths) if me else set()
    merged = merge(live, config, root)
    applied = field_set(config, root)
    if me is None:
        me = Manager(manager, "Apply", api_version, now, set(), "status" if scope == "status" else "")
        managers.append(me)
    me.api_version = api_version
    # Prune: what this manager applied before, applies no more, and nobody else (nor this config) owns.
    owned = applied.union(*(m.paths for m in managers if m is not me))
    remove_paths(merged, ensure_named_fields(last, root) - ensure_named_fields(owned, root), root)
    comparison = compare(live, merged, root)
    _restrict(comparison, scope)
    _take_over(managers, me, comparison, force=force)
    new_paths = _owned(applied - STRIPPED, scope)
    if new_paths != me.paths:
        me.paths, me.time = new_paths, now
    merged.setdefault("metadata", {})["managedFields"] = encode(managers)
    return merged, merged["metadata"]["managedFields"]


def update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    root: Node,
    *,
    manager: str,
    scope: str,
    now: str,
) -> list[dict[str, Any]]:
    """The managedFields after a non-apply write by `manager` that turned `old` into `new` (defaulted)."""
    managers = managers_of(old)
    api_version = str(new.get("apiVersion", ""))
    subresource = "status" if scope == "status" else ""
    comparison = compare(_without_meta(old or {}), _without_meta(new), root)
    _restrict(comparison, scope)
    me = next((m for m in managers if m.key == (manager, "Update", api_version, subresource)), None)
    if me is None:
        me = Manager(manager, "Update", api_version, now, set(), subresource)
        managers.append(me)
    _take_over(managers, me, comparison, force=True)
    new_paths = ((me.paths - comparison.removed) | comparison.modified | comparison.added) - STRIPPED
    if new_paths != me.paths:
        me.paths, me.time = new_paths, now
    return encode(managers)


def _without_meta(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the server's own metadata (managedFields, resourceVersion...): nobody owns it."""
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp")
    }
    return {**obj, "metadata": meta}


def _restrict(comparison: Comparison, scope: str) -> None:
    comparison.modified = _owned(comparison.modified, scope)
    comparison.added = _owned(comparison.added, scope)
    comparison.removed = _owned(comparison.removed, scope)
