"""Checks a real kube-apiserver makes on a CRD and on custom resources, written down so tests can make
them offline. Used by the CRD tests (our generated CRD must pass) and by the test API server
(tests/kube_emulator: a CRD it is sent must pass, or it answers 422 like the real one; a custom resource is
validated against its schema and CEL rules with the same functions).

Each check names the apiextensions-apiserver (k8s.io/apiextensions-apiserver, v1.36) code it follows:

- `crd_errors`: `pkg/apis/apiextensions/validation/validation.go` ValidateCustomResourceDefinition: name,
  group, scope, versions, names, subresources, printer columns, and per schema:
  - `schema_errors`: ValidateCustomResourceDefinitionOpenAPISchema (unsupported keywords, uniqueItems,
    properties and additionalProperties mutually exclusive, x-kubernetes-* extensions: preserve-unknown-fields
    true or absent, map/list types on objects/arrays only, list-map keys named, scalar and required or
    defaulted, set/map items not nullable, x-kubernetes-validations: rule, message, reason, fieldPath exists,
    the rule compiles and reads declared fields only), defaults forbidden in top-level metadata;
  - `structural_errors`: `pkg/apiserver/schema/validation.go` ValidateStructural (a type on every node but
    int-or-string/preserve-unknown ones, items on arrays, object at the root, no additionalProperties at
    the root, metadata may only constrain name and generateName, nothing structural inside anyOf/allOf/
    oneOf/not, patterns compile);
  - `default_errors`: `pkg/apiserver/schema/defaulting/validation.go` ValidateDefaults: every `default`
    pruned (no unknown fields), valid against its own schema, and against the CEL rules it reaches, as
    written: nested defaults NOT applied first (cases.json, crd-cel-rule-on-defaulted-empty-object).
- `value_errors`: `pkg/apiserver/validation/validation.go` ValidateCustomResource (kube-openapi's validator:
  type, enum, bounds, lengths, pattern, items, required; the same messages).
- `rule_errors`: `pkg/apiserver/schema/cel/validation.go`: x-kubernetes-validations on a value (cel-python).

What is not checked: CEL cost estimation and type checking beyond field names, formats, and the
completeness of value validations (a field only inside anyOf).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from typing import Any

from kube_emulator.errors import (
    FieldError,
    GoRepr,
    forbidden,
    go_number,
    invalid,
    not_supported,
    required,
    too_long,
    too_many,
)

Schema = dict[str, Any]

_OPENAPI_TYPES = ["array", "boolean", "integer", "number", "object", "string"]
_UNSUPPORTED = {
    "id": "id",
    "additionalItems": "additionalItems",
    "patternProperties": "patternProperties",
    "definitions": "definitions",
    "dependencies": "dependencies",
    "$ref": "$ref",
}
_REASONS = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"]
_META_FIELDS = ("metadata", "kind", "apiVersion")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def walk(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Every schema node with its field path in the API server's notation (`properties[spec]`)."""
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.properties[{key}]")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.additionalProperties")


def _types(node: Schema) -> str:
    return str(node.get("type") or "")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------- values against a schema


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_ok(node: Schema, value: Any) -> bool:
    if node.get("x-kubernetes-int-or-string"):
        return _json_kind(value) in ("integer", "string")
    wanted = _types(node)
    if not wanted:
        return True
    kind = _json_kind(value)
    return kind == wanted or (wanted == "number" and kind == "integer")


def value_errors(node: Schema, value: Any, field: str = "", name: str = "") -> list[FieldError]:
    """kube-openapi's validation of `value` against a structural schema node, as ValidateCustomResource
    reports it: `field` is the error path, `name` the path inside the validated value (messages say
    `<name> in body should ...`)."""
    where = f"{name} in body" if name else " in body"
    if value is None:
        if node.get("nullable") or not (_types(node) or node.get("x-kubernetes-int-or-string")):
            return []
        message = f'{where} must be of type {_types(node) or "integer,string"}: "null"'
        return [invalid(field, "null", message.strip())]
    if not _type_ok(node, value):
        kind = _json_kind(value)
        return [invalid(field, kind, f'{where} must be of type {_types(node)}: "{kind}"'.strip())]
    errors: list[FieldError] = []
    if "enum" in node and value not in node["enum"]:
        allowed = [v if isinstance(v, str) else json.dumps(v) for v in node["enum"]]
        errors.append(not_supported(field, value, allowed))
    if isinstance(value, str):
        errors += _string_errors(node, value, field, where)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        errors += _number_errors(node, value, field, where)
    elif isinstance(value, list):
        errors += _list_errors(node, value, field, name, where)
    elif isinstance(value, dict):
        errors += _object_errors(node, value, field, name)
    return errors


def _string_errors(node: Schema, value: str, field: str, where: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if "maxLength" in node and len(value) > node["maxLength"]:
        errors.append(too_long(field, node["maxLength"], crd_schema=True))
    if "minLength" in node and len(value) < node["minLength"]:
        errors.append(
            invalid(field, value, f"{where} should be at least {node['minLength']} chars long".strip())
        )
    if "pattern" in node and not re.search(node["pattern"], value):
        errors.append(invalid(field, value, f"{where} should match '{node['pattern']}'".strip()))
    return errors


def _number_errors(node: Schema, value: float, field: str, where: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if "minimum" in node:
        low = node["minimum"]
        if node.get("exclusiveMinimum") and value <= low:
            errors.append(invalid(field, value, f"{where} should be greater than {go_number(low)}".strip()))
        elif value < low:
            errors.append(
                invalid(field, value, f"{where} should be greater than or equal to {go_number(low)}".strip())
            )
    if "maximum" in node:
        high = node["maximum"]
        if node.get("exclusiveMaximum") and value >= high:
            errors.append(invalid(field, value, f"{where} should be less than {go_number(high)}".strip()))
        elif value > high:
            errors.append(
                invalid(field, value, f"{where} should be less than or equal to {go_number(high)}".strip())
            )
    if node.get("multipleOf") and (value / node["multipleOf"]) % 1:
        errors.append(
            invalid(field, value, f"{where} should be a multiple of {go_number(node['multipleOf'])}".strip())
        )
    return errors


def _list_errors(node: Schema, value: list[Any], field: str, name: str, where: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if "maxItems" in node and len(value) > node["maxItems"]:
        errors.append(too_many(field, len(value), node["maxItems"]))
    if "minItems" in node and len(value) < node["minItems"]:
        errors.append(
            invalid(field, len(value), f"{where} should have at least {node['minItems']} items".strip())
        )
    items = node.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            errors += value_errors(items, item, f"{field}[{i}]", f"{name}[{i}]")
    # structurallisttype.ValidateListSetsAndMaps: no duplicate set values or map keys.
    list_type = node.get("x-kubernetes-list-type")
    seen: list[Any] = []
    for i, item in enumerate(value):
        key = (
            item
            if list_type == "set"
            else (
                {k: item.get(k) for k in node.get("x-kubernetes-list-map-keys") or []}
                if isinstance(item, dict)
                else item
            )
        )
        if list_type in ("set", "map") and key in seen:
            errors.append(FieldError("Duplicate value", f"{field}[{i}]", key))
        seen.append(key)
    return errors


def _object_errors(node: Schema, value: dict[str, Any], field: str, name: str) -> list[FieldError]:
    errors = [required(_join(field, key)) for key in node.get("required") or [] if key not in value]
    props = node.get("properties") or {}
    extra = node.get("additionalProperties")
    for key, sub in value.items():
        if key in props:
            errors += value_errors(props[key], sub, _join(field, key), _join(name, key))
        elif isinstance(extra, dict):
            errors += value_errors(extra, sub, _join(field, key), _join(name, key))
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        errors.append(too_many(field, len(value), node["maxProperties"]))
    return errors


# ---------------------------------------------------------------- CEL rules on a value


def _cel_message(exc: Exception, rule: str, value: Any) -> str:
    """cel-python's error text in the API server's words ("no such key: x"). cel-go reports the first
    field read that is missing; cel-python sometimes only says that `||` got two errors, so the rule's
    own field reads are checked in order against the value."""
    text = str(exc.args[0]) if exc.args else str(exc)
    missing = re.search(r"no such member in mapping: '([^']+)'", text)
    if missing and "overload" not in text:
        return f"no such key: {missing.group(1)}"
    code = _STRING_LITERAL.sub(lambda m: " " * len(m.group()), rule)
    for match in _SELF_CHAIN.finditer(code):
        if match.start() >= 4 and code[max(0, match.start() - 4) : match.start()] == "has(":
            continue
        current = value
        for name in match.group(1).split(".")[1:]:
            if not isinstance(current, dict):
                break
            if name not in current:
                return f"no such key: {name}"
            current = current[name]
    return f"no such key: {missing.group(1)}" if missing else text


_REASON_TYPE = {
    "FieldValueForbidden": "Forbidden",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
}


@functools.lru_cache(maxsize=1024)
def _program(rule: str) -> Any:
    """A compiled CEL rule (parsing costs far more than evaluating: compile each rule once)."""
    import celpy  # type: ignore[import-untyped]

    env = celpy.Environment()
    return env.program(env.compile(rule))


def rule_errors(node: Schema, value: Any, path: str, *, old: Any = None) -> list[str]:
    """CEL rules of `node` and of the nodes below it that `value` reaches, evaluated on `value` (rules on
    oldSelf only where an old value exists: transition rules)."""
    import celpy  # type: ignore[import-untyped]

    errors: list[str] = []
    for rule in node.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"] and old is None:
            continue
        message = rule.get("message") or f"failed rule: {rule['rule']}"
        activation = {"self": celpy.json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = _program(rule["rule"]).evaluate(activation)
        except Exception as exc:  # CELEvalError, CELParseError: the server reports them the same way
            kind = type(value).__name__ if not isinstance(value, dict) else "object"
            why = _cel_message(exc, rule["rule"], value)
            errors.append(f'{path}: Invalid value: "{kind}": {why} evaluating rule: {message}')
            continue
        if not bool(ok):
            where = path + (rule.get("fieldPath") or "")
            errors.append(f"{where}: {_REASON_TYPE.get(rule.get('reason', ''), 'Invalid value')}: {message}")
    if isinstance(value, dict):
        for key, sub in (node.get("properties") or {}).items():
            if key in value:
                errors += rule_errors(
                    sub, value[key], _join(path, key), old=old.get(key) if isinstance(old, dict) else None
                )
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                errors += rule_errors(
                    extra, item, f"{path}[{key}]", old=old.get(key) if isinstance(old, dict) else None
                )
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            errors += rule_errors(node["items"], item, f"{path}[{i}]")
    return errors


# ---------------------------------------------------------------- defaults


def _unknown_fields(node: Schema, value: Any) -> bool:
    """Would pruning change this value? (defaults must be pruned already)"""
    if isinstance(value, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        props, extra = node.get("properties") or {}, node.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key, extra if isinstance(extra, dict) else None)
            if child is None or _unknown_fields(child, sub):
                return True
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return any(_unknown_fields(node["items"], item) for item in value)
    return False


def default_rule_errors(schema: Schema, path: str = "spec.validation.openAPIV3Schema") -> list[str]:
    """Every `default` in `schema` against the CEL rules it reaches, nested defaults NOT applied."""
    errors: list[str] = []
    for node_path, node in walk(schema, path):
        if "default" in node:
            errors += rule_errors(node, node["default"], f"{node_path}.default")
    return errors


def default_errors(schema: Schema, path: str = "spec.validation.openAPIV3Schema") -> list[str]:
    """ValidateDefaults: pruned, valid against the node's schema, then its CEL rules (in that order: a
    later check runs only when the earlier ones passed)."""
    errors: list[str] = []
    for node_path, node in _default_nodes(schema, path):
        default, at = node["default"], f"{node_path}.default"
        if _unknown_fields(node, default):
            errors.append(str(invalid(at, default, "must not have unknown fields")))
            continue
        found = [str(e) for e in value_errors(node, default, at)]
        errors += found or rule_errors(node, default, at)
    return errors


def _default_nodes(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Nodes whose default is validated: properties and items, not additionalProperties."""
    if "default" in node:
        yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from _default_nodes(sub, f"{path}.properties[{key}]")
    if isinstance(node.get("items"), dict):
        yield from _default_nodes(node["items"], f"{path}.items")


# ---------------------------------------------------------------- CEL: compile, fields read


_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_SELF_CHAIN = re.compile(r"\b(?:self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)(\s*\()?")


def _field_chain_error(node: Schema, rule: str) -> str:
    """CEL compiles rules against the schema's types: `self.typo` is `undefined field 'typo'`."""
    text = _STRING_LITERAL.sub(lambda m: " " * len(m.group()), rule)
    for match in _SELF_CHAIN.finditer(text):
        names = match.group(1).split(".")[1:]
        if match.group(2):
            names = names[:-1]  # the last one is a method: startsWith(...), size(), ...
        current: Schema | None = node
        column = match.start(1) + 1
        for name in names:
            if current is None or current.get("x-kubernetes-preserve-unknown-fields"):
                break
            props = current.get("properties")
            extra = current.get("additionalProperties")
            if props is not None and name in props:
                current = props[name]
            elif isinstance(extra, dict):
                current = extra
            elif _types(current) == "object" or props is not None:
                return f"compilation failed: ERROR: <input>:1:{column}: undefined field '{name}'"
            else:
                break
            column += len(name) + 1
    return ""


def _field_path_valid(node: Schema, field_path: str) -> bool:
    """pathValid: `.a.b` or `['a']` steps through declared properties (or a map's values)."""
    tokens = re.findall(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\['([^']*)'\]|(.)", field_path)
    current = node
    for name, quoted, junk in tokens:
        if junk:
            return False
        key = name or quoted
        props, extra = current.get("properties") or {}, current.get("additionalProperties")
        if key in props:
            current = props[key]
        elif isinstance(extra, dict):
            current = extra
        else:
            return False
    return bool(tokens)


def _rule_value(rule: dict[str, Any]) -> GoRepr:
    return GoRepr(
        f"apiextensions.ValidationRule{{Rule:{json.dumps(rule.get('rule', ''))}, "
        f"Message:{json.dumps(rule.get('message', ''))}, ...}}"
    )


def _validation_rule_errors(node: Schema, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        at = f"{path}.x-kubernetes-validations[{i}]"
        text, message = str(rule.get("rule", "")).strip(), rule.get("message")
        if not text:
            errors.append(required(f"{at}.rule", "rule is not specified"))
            continue
        if message is not None and not str(message).strip():
            errors.append(invalid(f"{at}.message", message, "message must be non-empty if specified"))
        elif message and "\n" in str(message).strip():
            errors.append(invalid(f"{at}.message", message, "message must not contain line breaks"))
        elif "\n" in text and not message and not rule.get("messageExpression"):
            errors.append(required(f"{at}.message", "message must be specified if rule contains line breaks"))
        if rule.get("reason") is not None and rule["reason"] not in _REASONS:
            errors.append(not_supported(f"{at}.reason", rule["reason"], _REASONS))
        field_path = rule.get("fieldPath")
        if field_path is not None and (
            not str(field_path).strip() or not _field_path_valid(node, field_path)
        ):
            errors.append(invalid(f"{at}.fieldPath", field_path, "fieldPath must be a valid path"))
        try:
            import celpy  # type: ignore[import-untyped]

            celpy.Environment().compile(text)
        except ImportError:
            continue
        except Exception as exc:  # CELParseError
            errors.append(invalid(f"{at}.rule", _rule_value(rule), f"compilation failed: {exc}"))
            continue
        problem = _field_chain_error(node, text)
        if problem:
            errors.append(invalid(f"{at}.rule", _rule_value(rule), problem))
    return errors


# ---------------------------------------------------------------- the OpenAPI schema of a CRD


def _extension_errors(node: Schema, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    kind = _types(node)
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        errors.append(
            invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined")
        )
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None:
        if kind != "object":
            errors.append(
                required(f"{path}.type", "must be object if x-kubernetes-map-type is specified")
                if not kind
                else invalid(f"{path}.type", kind, "must be object if x-kubernetes-map-type is specified")
            )
        if map_type not in ("atomic", "granular"):
            errors.append(not_supported(f"{path}.x-kubernetes-map-type", map_type, ["atomic", "granular"]))
    list_type, keys = node.get("x-kubernetes-list-type"), list(node.get("x-kubernetes-list-map-keys") or [])
    if list_type is not None and kind != "array":
        errors.append(
            required(f"{path}.type", "must be array if x-kubernetes-list-type is specified")
            if not kind
            else invalid(f"{path}.type", kind, "must be array if x-kubernetes-list-type is specified")
        )
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        errors.append(not_supported(f"{path}.x-kubernetes-list-type", list_type, ["atomic", "set", "map"]))
    if keys and list_type != "map":
        detail = "must be map if x-kubernetes-list-map-keys is non-empty"
        errors.append(
            required(f"{path}.x-kubernetes-list-type", detail)
            if list_type is None
            else invalid(f"{path}.x-kubernetes-list-type", list_type, detail)
        )
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if list_type == "map":
        if not keys:
            errors.append(
                required(
                    f"{path}.x-kubernetes-list-map-keys", "must not be empty if x-kubernetes-list-type is map"
                )
            )
        if items is None:
            errors.append(required(f"{path}.items", "must have a schema if x-kubernetes-list-type is map"))
        elif _types(items) != "object":
            errors.append(
                invalid(
                    f"{path}.items.type",
                    _types(items),
                    "must be object if parent array's x-kubernetes-list-type is map",
                )
            )
        else:
            props, needed = items.get("properties") or {}, set(items.get("required") or [])
            for k in keys:
                if k not in props:
                    errors.append(
                        invalid(
                            f"{path}.x-kubernetes-list-map-keys",
                            keys,
                            "entries must all be names of item properties",
                        )
                    )
                    continue
                sub, at = props[k], f"{path}.items.properties[{k}]"
                if _types(sub) in ("array", "object"):
                    errors.append(
                        invalid(
                            f"{at}.type",
                            _types(sub),
                            "must be a scalar type if parent array's x-kubernetes-list-type is map",
                        )
                    )
                if k not in needed and "default" not in sub:
                    errors.append(
                        required(
                            f"{at}.default",
                            "this property is in x-kubernetes-list-map-keys, "
                            "so it must have a default or be a required property",
                        )
                    )
                if sub.get("nullable"):
                    errors.append(
                        forbidden(
                            f"{at}.nullable",
                            "this property is in x-kubernetes-list-map-keys, so it cannot be nullable",
                        )
                    )
            if len(set(keys)) != len(keys):
                errors.append(
                    invalid(f"{path}.x-kubernetes-list-map-keys", keys, "must not contain duplicate entries")
                )
    if list_type in ("set", "map") and items is not None and items.get("nullable"):
        errors.append(
            forbidden(
                f"{path}.items.nullable", f"cannot be nullable when x-kubernetes-list-type is {list_type}"
            )
        )
    if (
        list_type == "set"
        and items is not None
        and _types(items) in ("array", "object")
        and (
            items.get("x-kubernetes-map-type") != "atomic" and items.get("x-kubernetes-list-type") != "atomic"
        )
    ):
        errors.append(
            invalid(
                f"{path}.items.x-kubernetes-map-type",
                items.get("x-kubernetes-map-type"),
                "must be atomic as item of a list with x-kubernetes-list-type=set",
            )
        )
    return errors


def schema_errors(
    node: Schema, path: str, *, root: bool = True, defaults_forbidden: str = ""
) -> list[FieldError]:
    """ValidateCustomResourceDefinitionOpenAPISchema for one node and everything below it."""
    errors: list[FieldError] = []
    kind = _types(node)
    if kind and kind not in _OPENAPI_TYPES:
        errors.append(
            not_supported(f"{path}.type", kind, _OPENAPI_TYPES)
            if kind != "null"
            else forbidden(f"{path}.type", "type cannot be set to null, use nullable as an alternative")
        )
    if "default" in node and defaults_forbidden:
        errors.append(forbidden(f"{path}.default", f"must not be set {defaults_forbidden}"))
    for key, label in _UNSUPPORTED.items():
        if node.get(key):
            errors.append(forbidden(f"{path}.{key}", f"{label} is not supported"))
    if isinstance(node.get("items"), list):
        errors.append(forbidden(f"{path}.items", "items must be a schema object and not an array"))
    if node.get("uniqueItems") is True:
        errors.append(
            forbidden(
                f"{path}.uniqueItems",
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            )
        )
    extra = node.get("additionalProperties")
    if extra is not None and node.get("properties") and (extra is False or isinstance(extra, dict)):
        errors.append(
            forbidden(
                f"{path}.additionalProperties", "additionalProperties and properties are mutual exclusive"
            )
        )
    if isinstance(extra, dict):
        errors += schema_errors(
            extra, f"{path}.additionalProperties", root=False, defaults_forbidden=defaults_forbidden
        )
    for key, sub in (node.get("properties") or {}).items():
        reason = defaults_forbidden
        if root and key in _META_FIELDS:
            reason = f"in top-level {key}"
        errors += schema_errors(sub, f"{path}.properties[{key}]", root=False, defaults_forbidden=reason)
    if isinstance(node.get("items"), dict):
        errors += schema_errors(
            node["items"], f"{path}.items", root=False, defaults_forbidden=defaults_forbidden
        )
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor) or []):
            errors += schema_errors(sub, f"{path}.{junctor}[{i}]", root=False)
    if isinstance(node.get("not"), dict):
        errors += schema_errors(node["not"], f"{path}.not", root=False)
    errors += _extension_errors(node, path)
    if not errors:  # the real server skips CEL checks on a schema that is already wrong
        errors += _validation_rule_errors(node, path)
    return errors


_LEVEL_MESSAGE = {
    "root": "must not be empty at the root",
    "items": "must not be empty for specified array items",
    "field": "must not be empty for specified object fields",
}
_NESTED_FORBIDDEN = {
    "type": "must be empty to be structural",
    "default": "must be undefined to be structural",
    "title": "must be empty to be structural",
    "description": "must be empty to be structural",
    "additionalProperties": "must be undefined to be structural",
    "externalDocs": "must be undefined to be structural",
    "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
    "x-kubernetes-embedded-resource": "must be false to be structural",
    "x-kubernetes-int-or-string": "must be false to be structural",
    "x-kubernetes-list-map-keys": "must be empty to be structural",
    "x-kubernetes-list-type": "must be undefined to be structural",
    "x-kubernetes-map-type": "must be undefined to be structural",
    "x-kubernetes-validations": "must be empty to be structural",
}


def _is_int_or_string_any_of(node: Schema) -> bool:
    return node.get("anyOf") == [{"type": "integer"}, {"type": "string"}]


def _nested_errors(node: Schema, path: str) -> list[FieldError]:
    """validateNestedValueValidation: inside anyOf/allOf/oneOf/not, only value validations."""
    errors = [
        forbidden(f"{path}.{key}", message)
        for key, message in _NESTED_FORBIDDEN.items()
        if node.get(key) not in (None, False, "", [], {})
    ]
    if node.get("nullable"):
        errors.append(forbidden(f"{path}.nullable", "must be false to be structural"))
    if "metadata" in (node.get("properties") or {}):
        errors.append(forbidden(f"{path}.properties[metadata]", "must not be specified in a nested context"))
    for key, sub in (node.get("properties") or {}).items():
        errors += _nested_errors(sub, f"{path}.properties[{key}]")
    if isinstance(node.get("items"), dict):
        errors += _nested_errors(node["items"], f"{path}.items")
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor) or []):
            errors += _nested_errors(sub, f"{path}.{junctor}[{i}]")
    return errors


def structural_errors(node: Schema, path: str, level: str = "root") -> list[FieldError]:
    """ValidateStructural (validateStructuralInvariants), sorted by message as the server sorts them."""
    errors: list[FieldError] = []
    kind = _types(node)
    if kind == "array" and not isinstance(node.get("items"), dict):
        errors.append(required(f"{path}.items", "must be specified"))
    if isinstance(node.get("items"), dict):
        errors += structural_errors(node["items"], f"{path}.items", "items")
    for key, sub in (node.get("properties") or {}).items():
        errors += structural_errors(sub, f"{path}.properties[{key}]", "field")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) or extra is True:
        if level == "root":
            errors.append(forbidden(f"{path}.additionalProperties", "must not be used at the root"))
        if isinstance(extra, dict):
            errors += structural_errors(extra, f"{path}.additionalProperties", "field")
    if node.get("x-kubernetes-int-or-string") and node.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(
            invalid(
                f"{path}.x-kubernetes-preserve-unknown-fields",
                True,
                "must be false if x-kubernetes-int-or-string is true",
            )
        )
    skip_any_of = _is_int_or_string_any_of(node)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor) or []):
            if junctor == "anyOf" and skip_any_of:
                continue
            errors += _nested_errors(sub, f"{path}.{junctor}[{i}]")
    if isinstance(node.get("not"), dict):
        errors += _nested_errors(node["not"], f"{path}.not")
    if node.get("pattern"):
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            errors.append(
                invalid(
                    f"{path}.pattern",
                    node["pattern"],
                    f"must be a valid regular expression, but isn't: {exc}",
                )
            )
    if (
        not kind
        and not node.get("x-kubernetes-int-or-string")
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        errors.append(required(f"{path}.type", _LEVEL_MESSAGE[level]))
    if level == "root":
        if kind and kind != "object":
            errors.append(invalid(f"{path}.type", kind, "must be object at the root"))
        props = node.get("properties") or {}
        for key in ("kind", "apiVersion"):
            if key in props and _types(props[key]) != "string":
                errors.append(invalid(f"{path}.properties[{key}].type", _types(props[key]), "must be string"))
        if "metadata" in props:
            errors += _metadata_errors(props["metadata"], f"{path}.properties[metadata]")
    return sorted(errors, key=str)


def _metadata_errors(meta: Schema, path: str) -> list[FieldError]:
    """validateStructuralMetadataInvariants at the root: object, and nothing but name and generateName."""
    errors: list[FieldError] = []
    if _types(meta) != "object":
        errors.append(invalid(f"{path}.type", _types(meta), "must be object"))
    rest = {k: v for k, v in meta.items() if k not in ("type", "default")}
    props = set((rest.pop("properties", None) or {}).keys())
    if (props and not props <= {"name", "generateName"}) or rest:
        errors.append(
            forbidden(
                path,
                "must not specify anything other than name and generateName, but metadata is "
                "implicitly specified",
            )
        )
    return errors


# ---------------------------------------------------------------- the whole CRD


def _schema_path(versions: list[dict[str, Any]], index: int, what: str) -> str:
    """Where errors point: `spec.validation...` when every version has the same one (the internal API
    hoists it there, as in cases.json), else `spec.versions[i].schema...`."""
    values = [v.get(what) for v in versions]
    if len(values) >= 1 and all(v == values[0] for v in values):
        return {
            "schema": "spec.validation",
            "subresources": "spec.subresources",
            "additionalPrinterColumns": "spec.additionalPrinterColumns",
        }[what]
    return f"spec.versions[{index}].{what}"


def crd_defaults(crd: dict[str, Any]) -> dict[str, Any]:
    """SetDefaults_CustomResourceDefinition (apiextensions/v1): singular, listKind, conversion None."""
    crd = copy.deepcopy(crd)
    spec = crd.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})
    return crd


def _names_errors(names: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for key in ("plural", "singular", "kind", "listKind"):
        value = names.get(key)
        if not value:
            errors.append(required(f"spec.names.{key}", ""))
        elif not _DNS1035.match(str(value).lower()):
            errors.append(
                invalid(
                    f"spec.names.{key}",
                    value,
                    "a DNS-1035 label must consist of lower case alphanumeric "
                    "characters or '-', start with an alphabetic character, and end with an "
                    "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation "
                    "is '[a-z]([-a-z0-9]*[a-z0-9])?')",
                )
            )
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        errors.append(
            invalid("spec.names.listKind", names["listKind"], "kind and listKind may not be the same")
        )
    return errors


def _scale_errors(scale: dict[str, Any], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, prefixes in (
        ("specReplicasPath", (".spec.",)),
        ("statusReplicasPath", (".status.",)),
        ("labelSelectorPath", (".spec.", ".status.")),
    ):
        value = scale.get(key)
        if not value:
            if key != "labelSelectorPath":
                errors.append(required(f"{path}.scale.{key}", ""))
            continue
        if not str(value).startswith(prefixes):
            where = " or ".join(p.strip(".") for p in prefixes)
            errors.append(invalid(f"{path}.scale.{key}", value, f"should be a json path under .{where}"))
    return errors


_COLUMN_TYPES = ["boolean", "date", "integer", "number", "string"]


def crd_errors(crd: dict[str, Any]) -> list[str]:
    """ValidateCustomResourceDefinition on a (defaulted) apiextensions.k8s.io/v1 CRD: [] when accepted."""
    errors: list[FieldError] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = str(spec.get("group") or "")
    name = str((crd.get("metadata") or {}).get("name") or "")
    if name != f"{names.get('plural', '')}.{group}":
        errors.append(invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if not group:
        errors.append(required("spec.group", ""))
    elif not _DNS1123_SUBDOMAIN.match(group):
        errors.append(
            invalid(
                "spec.group",
                group,
                "a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                "character",
            )
        )
    elif "." not in group:
        errors.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    scope = spec.get("scope")
    if not scope:
        errors.append(required("spec.scope", ""))
    elif scope not in ("Cluster", "Namespaced"):
        errors.append(not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    versions = list(spec.get("versions") or [])
    if sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(
            invalid(
                "spec.versions",
                GoRepr("[]apiextensions.CustomResourceDefinitionVersion{...}"),
                "must have exactly one version marked as storage version",
            )
        )
    if len({v.get("name") for v in versions}) != len(versions):
        errors.append(
            invalid(
                "spec.versions",
                GoRepr("[]apiextensions.CustomResourceDefinitionVersion{...}"),
                "must contain unique version names",
            )
        )
    errors += _names_errors(names)
    text: list[str] = []
    for i, version in enumerate(versions):
        if not _DNS1035.match(str(version.get("name", ""))):
            errors.append(
                invalid(
                    f"spec.versions[{i}].name",
                    version.get("name"),
                    "a DNS-1035 label must consist of "
                    "lower case alphanumeric characters or '-', start with an alphabetic character, "
                    "and end with an alphanumeric character",
                )
            )
        base = _schema_path(versions, i, "schema")
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(required(f"{base}.openAPIV3Schema", "schemas are required"))
        elif base.startswith("spec.versions") or i == 0:
            found = schema_errors(schema, f"{base}.openAPIV3Schema")
            found += structural_errors(schema, f"{base}.openAPIV3Schema")
            errors += found
            if not found:
                text += default_errors(schema, f"{base}.openAPIV3Schema")
        sub_base = _schema_path(versions, i, "subresources")
        scale = (version.get("subresources") or {}).get("scale")
        if isinstance(scale, dict) and (sub_base.startswith("spec.versions") or i == 0):
            errors += _scale_errors(scale, sub_base)
        col_base = _schema_path(versions, i, "additionalPrinterColumns")
        for j, column in enumerate(version.get("additionalPrinterColumns") or []):
            if not (col_base.startswith("spec.versions") or i == 0):
                break
            at = f"{col_base}[{j}]"
            for key in ("name", "jsonPath"):
                if not column.get(key):
                    errors.append(required(f"{at}.{key}", ""))
            if column.get("type") not in _COLUMN_TYPES:
                errors.append(not_supported(f"{at}.type", column.get("type"), _COLUMN_TYPES))
    return [str(e) for e in errors] + text
