"""The three non-apply patch types (`k8s.io/apiserver/pkg/endpoints/handlers/patch.go`).

- JSON merge patch (RFC 7386): null deletes, lists are replaced whole (cases.json,
  merge-patch-replaces-lists).
- JSON patch (RFC 6902): a failed `test` operation is a 422 (cases.json, json-patch-test-failure).
- Strategic merge patch: built-in kinds only (415 for custom resources); lists with
  `x-kubernetes-patch-strategy: merge` merge by their `x-kubernetes-patch-merge-key`, `$patch: delete`
  removes an item. (`$retainKeys`, `$setElementOrder` and `$deleteFromPrimitiveList` are not supported.)
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

from kube_emulator.errors import APIError
from kube_emulator.schema import UNTYPED, Node

REJECTED = "the server rejected our request due to an error in our request"


def merge_patch(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(base: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise APIError(
            400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    try:
        return dict(jsonpatch.apply_patch(copy.deepcopy(base), operations, in_place=False))
    except jsonpatch.JsonPatchTestFailed:
        raise APIError(422, "Invalid", REJECTED) from None
    except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise APIError(422, "Invalid", f"jsonpatch: {exc}") from None


def strategic_merge_patch(base: Any, patch: Any, node: Node) -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(base)
    for key, value in patch.items():
        child = node.field(key) or UNTYPED
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list) and _merge_key(node, key):
            result[key] = _merge_list(result[key], value, child, _merge_key(node, key))
        else:
            result[key] = strategic_merge_patch(result.get(key), value, child)
    return result


def _merge_key(node: Node, key: str) -> str:
    raw = node.properties.get(key) or {}
    if "merge" in str(raw.get("x-kubernetes-patch-strategy", "")).split(","):
        return str(raw.get("x-kubernetes-patch-merge-key") or "")
    return ""


def _merge_list(base: list[Any], patch: list[Any], node: Node, key: str) -> list[Any]:
    out = copy.deepcopy(base)
    for item in patch:
        if not isinstance(item, dict):
            continue
        index = next(
            (i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item.get(key)), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                out.pop(index)
        elif index is None:
            out.append(copy.deepcopy(item))
        else:
            out[index] = strategic_merge_patch(out[index], item, node.items)
    return out
