"""What an API server's decoder does to a body before anything else looks at it, driven by the schema.

- Unknown fields are dropped (CRs: `pruning/algorithm.go`; built-ins: the JSON decoder ignores them).
  Their paths are returned: `fieldValidation=Strict` turns them into a 400 (`strict decoding error:
  unknown field "spec.bogus"`), the default (`Warn`) into `Warning` headers.
- Built-in kinds are typed: a string where an integer belongs is a 400 (json.Unmarshal's error), and what
  Go's `omitempty` drops (null, empty maps and lists) is gone when the object is read back.
- Quantities come back canonical (`quantity.py`).
"""

from __future__ import annotations

from typing import Any

from kube_emulator import quantity
from kube_emulator.schema import Node

_JSON_TYPES = {"string": str, "boolean": bool, "integer": int, "number": (int, float)}
_GO_TYPES = {"string": "string", "boolean": "bool", "integer": "int64", "number": "float64"}


def _child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(value: Any, node: Node, path: str = "") -> list[str]:
    """Drop fields the schema does not declare (in place); return their paths."""
    unknown: list[str] = []
    if isinstance(value, dict) and node.kind in ("struct", "map"):
        for key in list(value):
            child = node.field(key)
            if child is None:
                unknown.append(_child_path(path, key))
                del value[key]
            else:
                unknown += prune(value[key], child, _child_path(path, key))
    elif isinstance(value, list) and node.kind == "list":
        for i, item in enumerate(value):
            unknown += prune(item, node.items, f"{path}[{i}]")
    return unknown


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def type_errors(value: Any, node: Node, go_type: str, path: str = "") -> list[str]:
    """json.Unmarshal's complaints about a typed (built-in) object, e.g. `json: cannot unmarshal string
    into Go struct field ContainerPort.spec.template.spec.containers.ports.containerPort of type int32`."""
    if value is None:
        return []
    kind = node.kind
    found = _json_type(value)
    where = f"Go struct field {go_type}.{path}" if path else "Go value"
    if kind == "list":
        if not isinstance(value, list):
            return [f"json: cannot unmarshal {found} into {where} of type []interface {{}}"]
        return [e for item in value for e in type_errors(item, node.items, go_type, path)]
    if kind in ("struct", "map"):
        if not isinstance(value, dict):
            return [f"json: cannot unmarshal {found} into {where} of type map[string]interface {{}}"]
        return [
            e
            for k, v in value.items()
            for e in type_errors(v, node.field(k) or node, go_type, _child_path(path, k))
        ]
    if kind == "quantity":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return [
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            ]
        try:
            quantity.parse(value)
        except quantity.QuantityError as exc:
            return [str(exc)]
        return []
    if kind == "intorstring":
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        return [] if ok else [f"json: cannot unmarshal {found} into {where} of type intstr.IntOrString"]
    if kind == "scalar":
        expected = node.scalar_type
        py = _JSON_TYPES.get(expected)
        bad = py is not None and (
            not isinstance(value, py) or (expected != "boolean" and isinstance(value, bool))
        )
        if expected == "integer" and isinstance(value, float) and value.is_integer():
            bad = False
        if bad:
            return [f"json: cannot unmarshal {found} into {where} of type {_GO_TYPES[expected]}"]
    return []


def normalize_builtin(value: Any, node: Node, *, resource_list: bool = False) -> Any:
    """A typed object as it is serialized back: nulls and empty optional maps/lists gone, canonical
    quantities, whole-number floats as integers."""
    kind = node.kind
    if kind == "quantity" and value is not None:
        return quantity.canonical(value, round_to_milli=resource_list)
    if kind == "scalar" and node.scalar_type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list) and kind == "list":
        return [normalize_builtin(v, node.items) for v in value]
    if isinstance(value, dict) and kind in ("struct", "map"):
        out: dict[str, Any] = {}
        is_resource_list = kind == "map" and node.field("") is not None and node.field("").kind == "quantity"  # type: ignore[union-attr]
        for key, sub in value.items():
            child = node.field(key)
            if child is None:
                out[key] = sub
                continue
            sub = normalize_builtin(sub, child, resource_list=is_resource_list)
            optional = key not in node.required
            if sub is None or (optional and sub in ({}, []) and child.kind in ("map", "list")):
                continue  # omitempty
            out[key] = sub
        return out
    return value
