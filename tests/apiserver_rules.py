"""Checks a real kube-apiserver makes on a CRD's schema, written down so tests can make them offline.

Each function names the apiextensions-apiserver code it follows. Used by the CRD tests (our generated CRD
must pass) and by the test API server (a CRD it is sent must pass, or it answers 422 like the real one).

- `default_rule_errors`: `pkg/apiserver/schema/defaulting/validation.go` validates every `default` as it
  is written, without applying the nested defaults first, against the CEL rules
  (`x-kubernetes-validations`) of its node and of every node below that the default value reaches. A rule
  reading a field the default lacks fails with `no such key` (recorded in
  ../shared/k8s-conformance/cases.json, case crd-cel-rule-on-defaulted-empty-object).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

Schema = dict[str, Any]


def walk(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Every schema node with its field path in the API server's notation (`properties[spec]`)."""
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.properties[{key}]")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.additionalProperties")


def _cel_message(exc: Exception) -> str:
    """cel-python's error text in the API server's words ("no such key: x")."""
    text = str(exc.args[0]) if exc.args else str(exc)
    missing = re.search(r"no such member in mapping: '([^']+)'", text)
    return f"no such key: {missing.group(1)}" if missing else text


def rule_errors(node: Schema, value: Any, path: str) -> list[str]:
    """CEL rules of `node` and of the nodes below it that `value` reaches, evaluated on `value`."""
    import celpy  # type: ignore[import-untyped]

    errors: list[str] = []
    env = celpy.Environment()
    for rule in node.get("x-kubernetes-validations") or []:
        message = rule.get("message") or f"failed rule: {rule['rule']}"
        try:
            ok = env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as exc:  # CELEvalError, CELParseError: the server reports them the same way
            kind = type(value).__name__ if not isinstance(value, dict) else "object"
            errors.append(f'{path}: Invalid value: "{kind}": {_cel_message(exc)} evaluating rule: {message}')
            continue
        if not bool(ok):
            errors.append(f"{path}: Invalid value: {message}")
    if isinstance(value, dict):
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                errors += rule_errors(sub, value[key], f"{path}.{key}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                errors += rule_errors(extra, item, f"{path}[{key}]")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errors += rule_errors(node["items"], item, f"{path}[{i}]")
    return errors


def default_rule_errors(schema: Schema, path: str = "spec.validation.openAPIV3Schema") -> list[str]:
    """Every `default` in `schema` against the CEL rules it reaches, nested defaults NOT applied."""
    errors: list[str] = []
    for node_path, node in walk(schema, path):
        if "default" in node:
            errors += rule_errors(node, node["default"], f"{node_path}.default")
    return errors
