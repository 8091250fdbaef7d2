"""Label and field selectors as the API server parses them (`k8s.io/apimachinery/pkg/labels`, `fields`)."""

from __future__ import annotations

import re
from typing import Any

from kube_emulator.errors import APIError, bad_request

_SET_EXPR = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")

# Field selectors each kind supports besides metadata.name and metadata.namespace (the registries'
# GetAttrs / field label conversion funcs); anything else is a 400.
_FIELD_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "pods": {
        "spec.nodeName": ("spec", "nodeName"),
        "status.phase": ("status", "phase"),
        "spec.serviceAccountName": ("spec", "serviceAccountName"),
    },
    "events": {
        "involvedObject.kind": ("involvedObject", "kind"),
        "involvedObject.name": ("involvedObject", "name"),
        "involvedObject.namespace": ("involvedObject", "namespace"),
        "involvedObject.uid": ("involvedObject", "uid"),
        "reason": ("reason",),
        "type": ("type",),
    },
    "secrets": {"type": ("type",)},
    "namespaces": {"status.phase": ("status", "phase")},
}


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics: =, ==, !=, in, notin, exists, !exists."""
    for term in _split(selector):
        m = _SET_EXPR.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            ok = (labels.get(key) in values) if op == "in" else (labels.get(key) not in values)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _field_value(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def field_selector_errors(selector: str, plural: str) -> APIError | None:
    allowed = {"metadata.name", "metadata.namespace"} | set(_FIELD_LABELS.get(plural, {}))
    for term in _split(selector):
        key = re.split(r"!=|==|=", term, maxsplit=1)[0].strip()
        if key not in allowed:
            return bad_request(
                f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"'
            )
    return None


def field_selector_matches(selector: str, obj: dict[str, Any], plural: str = "") -> bool:
    meta = obj.get("metadata") or {}
    labels = {
        "metadata.name": ("metadata", "name"),
        "metadata.namespace": ("metadata", "namespace"),
        **_FIELD_LABELS.get(plural, {}),
    }
    for term in _split(selector):
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("==", "=").replace("!=", "=").split("=", 1))
        path = labels.get(key)
        actual = _field_value(obj, path) if path else str(meta.get(key, ""))
        if (actual == value) == negate:
            return False
    return True


def selected(
    obj: dict[str, Any], label_selector: str | None, field_selector: str | None, plural: str
) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if label_selector and not label_selector_matches(label_selector, labels):
        return False
    return not field_selector or field_selector_matches(field_selector, obj, plural)
