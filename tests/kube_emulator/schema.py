"""One typed view over the two kinds of schema an API server knows.

Built-in kinds: the upstream OpenAPI definitions that `kubernetes-validate` ships (Kubernetes 1.36, the
recorded server's minor version). They carry what server-side apply needs (`x-kubernetes-list-type`,
`x-kubernetes-list-map-keys`, `x-kubernetes-map-type`) and every field, so unknown fields can be dropped
as the server's decoder drops them. Custom kinds: their CRD's structural schema, where `metadata` is the
built-in ObjectMeta (apiextensions-apiserver builds the same typed view in `schema/smd`).

`Node.kind` is one of: struct (declared properties), map (additionalProperties), list, scalar, quantity,
intorstring, untyped (JSON, RawExtension, x-kubernetes-preserve-unknown-fields without properties).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import kubernetes_validate

DEFINITIONS_VERSION = "1.36.0"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_REF_PREFIX = "#/$defs/"


@functools.cache
def definitions() -> dict[str, dict[str, Any]]:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    data = json.loads((root / f"v{DEFINITIONS_VERSION}-local" / "_definitions.json").read_text())
    return dict(data["$defs"])


@functools.cache
def _by_gvk() -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for name, node in definitions().items():
        for gvk in node.get("x-kubernetes-group-version-kind") or []:
            out[(gvk["group"], gvk["version"], gvk["kind"])] = name
    return out


def _types(raw: dict[str, Any]) -> set[str]:
    value = raw.get("type")
    if value is None:
        return set()
    return {value} if isinstance(value, str) else {t for t in value if t != "null"}


class Node:
    """A schema node with `$ref`s resolved lazily; children are cached."""

    def __init__(self, raw: dict[str, Any], *, ref: str = "", crd: bool = False) -> None:
        while "$ref" in raw:  # a property pointing at a definition keeps its own keys (map type, ...)
            name = raw["$ref"].removeprefix(_REF_PREFIX)
            ref = name
            raw = {**definitions()[name], **{k: v for k, v in raw.items() if k != "$ref"}}
        self.raw = raw
        self.ref = ref
        self.crd = crd
        self._children: dict[str, Node | None] = {}

    @classmethod
    def builtin(cls, group: str, version: str, kind: str) -> Node | None:
        name = _by_gvk().get((group, version, kind))
        return None if name is None else cls(definitions()[name], ref=name)

    @classmethod
    def structural(cls, schema: dict[str, Any]) -> Node:
        """A CRD's openAPIV3Schema (the root of a custom resource)."""
        return _CustomRoot(schema, crd=True)

    # ------------------------------------------------------------ shape

    @functools.cached_property
    def kind(self) -> str:
        raw, types = self.raw, _types(self.raw)
        if self.ref == QUANTITY:
            return "quantity"
        if self.ref == INT_OR_STRING or raw.get("x-kubernetes-int-or-string"):
            return "intorstring"
        if "array" in types:
            return "list"
        if "object" in types or "properties" in raw or "additionalProperties" in raw:
            if raw.get("properties"):
                return "struct"
            if isinstance(raw.get("additionalProperties"), dict):
                return "map"
            # A CRD's `type: object` without properties keeps nothing (pruning); a built-in one is free-form.
            if self.crd and not raw.get("x-kubernetes-preserve-unknown-fields"):
                return "struct"
            return "untyped"
        if types:
            return "scalar"
        return "untyped"

    @property
    def scalar_type(self) -> str:
        types = _types(self.raw)
        return next(iter(types)) if len(types) == 1 else ""

    @property
    def preserve_unknown(self) -> bool:
        return self.kind == "untyped" or bool(self.raw.get("x-kubernetes-preserve-unknown-fields"))

    @property
    def list_type(self) -> str:
        """atomic, set or map; a CRD list without the extension is atomic (so is a built-in one)."""
        return str(self.raw.get("x-kubernetes-list-type") or "atomic")

    @property
    def list_keys(self) -> tuple[str, ...]:
        return tuple(self.raw.get("x-kubernetes-list-map-keys") or ())

    @property
    def atomic(self) -> bool:
        """Replaced as a whole by server-side apply (atomic structs and maps, atomic lists)."""
        if self.kind == "list":
            return self.list_type == "atomic"
        return self.raw.get("x-kubernetes-map-type") == "atomic"

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(self.raw.get("required") or ())

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.raw.get("properties") or {})

    # ------------------------------------------------------------ children

    def field(self, name: str) -> Node | None:
        """The node of a declared property, or of a map value; None for an unknown field."""
        if name in self._children:
            return self._children[name]
        child: Node | None = None
        props = self.raw.get("properties") or {}
        if name in props:
            child = self._child(props[name])
        elif isinstance(self.raw.get("additionalProperties"), dict):
            child = self._child(self.raw["additionalProperties"])
        elif self.preserve_unknown:
            child = UNTYPED_CRD if self.crd else UNTYPED
        self._children[name] = child
        return child

    def declared(self, name: str) -> bool:
        return name in (self.raw.get("properties") or {})

    @property
    def items(self) -> Node:
        if "\0items" not in self._children:
            raw = self.raw.get("items")
            self._children["\0items"] = self._child(raw) if isinstance(raw, dict) else UNTYPED
        node = self._children["\0items"]
        assert node is not None
        return node

    def _child(self, raw: dict[str, Any]) -> Node:
        return Node(raw, crd=self.crd)


class _CustomRoot(Node):
    """A custom resource's root: its `metadata` is the built-in ObjectMeta, whatever the CRD says."""

    def field(self, name: str) -> Node | None:
        if name == "metadata":
            return Node(definitions()[OBJECT_META], ref=OBJECT_META)
        if name in ("apiVersion", "kind"):
            return Node({"type": "string"}, crd=True)
        return super().field(name)

    def declared(self, name: str) -> bool:
        return name in ("apiVersion", "kind", "metadata") or super().declared(name)


UNTYPED = Node({})
UNTYPED_CRD = Node({}, crd=True)
