"""The DeepDetectService CustomResourceDefinition, generated from the pydantic models in `api.py`.

api.py is the single source of truth: this module turns its JSON Schema into the *structural* OpenAPI v3
schema the API server wants ($refs inlined, `nullable` instead of anyOf-null, free-form maps marked
`x-kubernetes-preserve-unknown-fields`), adds the CEL rules the API server enforces
(`x-kubernetes-validations`), the status and scale subresources and the printer columns.
`crds/deepdetectservices.deepdetect.io.yaml` is this module's output (`make crds`); a test fails when it
is stale. `validate_cr` checks a CR the way the API server would (schema + defaults + CEL), offline.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import yaml

from deepdetect_operator import __version__
from deepdetect_operator.api import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    DeepDetectServiceSpec,
    DeepDetectServiceStatus,
)

Schema = dict[str, Any]

CRD_NAME = f"{PLURAL}.{GROUP}"
CATEGORIES = ["deepdetect", "all"]
# Keys a JSON Schema from pydantic may carry that the structural schema keeps as they are.
_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "format",
}


@dataclass(frozen=True)
class CelRule:
    """One `x-kubernetes-validations` entry, attached to the schema node at `path` (under spec)."""

    path: tuple[str, ...]
    rule: str
    message: str
    field_path: str = ""

    def as_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


# The same rules are pydantic validators in api.py, so the operator and the `render` CLI reject what the
# API server rejects; tests evaluate these CEL expressions (cel-python) against the same table of CRs.
# Every field a rule reads is guarded with has(): at CRD creation the API server evaluates each rule
# against the node's `default: {}` as written, before nested defaults apply, and an unguarded
# `self.minReplicas` refuses the whole CRD ("no such key"). On a CR the defaults are in place first, so
# the guards never weaken a rule there.
CEL_RULES: tuple[CelRule, ...] = (
    CelRule(
        ("autoscaling",),
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ".minReplicas",
    ),
    CelRule(
        ("model", "checkpoint"),
        "!self.uri.startsWith('pvc://') || (has(self.sha256) && self.sha256 != '')",
        "checkpoint.sha256 is required for pvc:// URIs (the copy on the claim is verified against it)",
        ".sha256",
    ),
    CelRule(
        ("model", "checkpoint"),
        "!self.uri.startsWith('pvc://') || self.uri.matches('^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+$')",
        "pvc:// URIs take the form pvc://CLAIM/PATH",
        ".uri",
    ),
    CelRule(
        ("model", "checkpoint"),
        "!self.uri.startsWith('s3://') || self.uri.matches('^s3://[^/]+/.+$')",
        "s3:// URIs take the form s3://BUCKET/KEY",
        ".uri",
    ),
    CelRule(
        ("model",),
        "!has(self.precision) || self.precision != 'int8' || has(self.samples)",
        "model.precision int8 needs model.samples (the calibration and held-out set)",
        ".samples",
    ),
    CelRule(
        ("model",),
        "!has(self.precision) || self.precision != 'int8' || !has(self.runtime) || self.runtime != 'torch'",
        "model.precision int8 runs on onnxruntime: set model.runtime to auto or onnxruntime",
        ".runtime",
    ),
    CelRule(
        ("rollout",),
        "!has(self.maxSurge) || !has(self.maxUnavailable) || self.maxSurge > 0 || self.maxUnavailable > 0",
        "rollout.maxSurge and rollout.maxUnavailable cannot both be 0 (the rollout could never progress)",
        ".maxSurge",
    ),
    CelRule(
        (),
        "!has(self.disruption) || !has(self.disruption.minAvailable) || !has(self.autoscaling)"
        " || !has(self.autoscaling.enabled) || !has(self.autoscaling.maxReplicas) || !has(self.replicas)"
        " || (self.autoscaling.enabled ? self.disruption.minAvailable <= self.autoscaling.maxReplicas"
        " : (self.replicas == 0 || self.disruption.minAvailable <= self.replicas))",
        "disruption.minAvailable must not exceed replicas (or autoscaling.maxReplicas): lower it first",
        ".disruption.minAvailable",
    ),
)

CEL_RULES += (
    CelRule(
        ("jobs", "callbacks"),
        "!has(self.allowedHosts) || size(self.allowedHosts) == 0"
        " || (has(self.secretName) && self.secretName != '')",
        "jobs.callbacks.secretName is required with allowedHosts: callbacks are always signed",
        ".secretName",
    ),
)

CEL_RULES += (
    CelRule(
        (),
        "!has(self.media) || !has(self.media.limits) || !has(self.media.limits.decodeTimeoutSeconds)"
        " || !has(self.server) || !has(self.server.requestTimeoutSeconds)"
        " || self.media.limits.decodeTimeoutSeconds <= self.server.requestTimeoutSeconds",
        "media.limits.decodeTimeoutSeconds must not exceed server.requestTimeoutSeconds",
        ".media.limits.decodeTimeoutSeconds",
    ),
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Digest", "type": "string", "jsonPath": ".status.model.digest"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


# ---------------------------------------------------------------- JSON Schema -> structural schema


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline a $ref, keeping the referring node's own keys (description, default)."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    return {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}


def _unwrap_optional(node: Schema, defs: dict[str, Schema]) -> Schema:
    """anyOf [X, null] -> X with `nullable: true` (the structural schema forbids types in anyOf)."""
    options = node.get("anyOf")
    if not options:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"cannot express anyOf {options!r} structurally")
    merged = {**_resolve(non_null[0], defs), **{k: v for k, v in node.items() if k != "anyOf"}}
    if len(non_null) < len(options):
        merged["nullable"] = True
    return merged


def _convert_object(node: Schema, defs: dict[str, Schema], out: Schema) -> None:
    props = node.get("properties")
    extra = node.get("additionalProperties")
    if props is not None:
        out["properties"] = {name: convert(sub, defs) for name, sub in props.items()}
        required = node.get("required")
        if required:
            out["required"] = list(required)
        for name, sub in out["properties"].items():
            # A whole sub-object left out defaults to {}, so its fields' own defaults apply.
            # Not for an optional (nullable) object with required fields of its own: {} would be invalid,
            # and absent is its meaning (model.samples).
            if (sub.get("type") == "object" and "properties" in sub and name not in (required or [])
                    and not (sub.get("nullable") and sub.get("required"))):
                sub["default"] = {}
    elif isinstance(extra, dict):
        out["additionalProperties"] = convert(extra, defs)
    else:
        # dict[str, Any]: free-form (affinity, tolerations): keep whatever the user wrote.
        out["x-kubernetes-preserve-unknown-fields"] = True


def convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    """One pydantic JSON Schema node -> one structural OpenAPI v3 node."""
    node = _unwrap_optional(_resolve(node, defs), defs)
    out: Schema = {k: v for k, v in node.items() if k in _KEEP}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "exclusiveMinimum" in node:
        out |= {"minimum": node["exclusiveMinimum"], "exclusiveMinimum": True}
    if "exclusiveMaximum" in node:
        out |= {"maximum": node["exclusiveMaximum"], "exclusiveMaximum": True}
    if node.get("nullable"):
        out["nullable"] = True
    if out.get("default", 0) is None or isinstance(out.get("default"), dict | list):
        out.pop("default")  # null is not a default; object defaults are set to {} by the parent
    if out.get("type") == "object":
        _convert_object(node, defs, out)
    elif out.get("type") == "array":
        out["items"] = convert(node.get("items", {"type": "object"}), defs)
    return out


def _at(schema: Schema, path: tuple[str, ...]) -> Schema:
    for name in path:
        schema = schema["properties"][name]
    return schema


def spec_schema() -> Schema:
    raw = DeepDetectServiceSpec.model_json_schema(by_alias=True)
    schema = convert(raw, raw.get("$defs", {}))
    schema.pop("default", None)
    schema["description"] = "Desired state: one model served by an autoscaled inference Deployment."
    for rule in CEL_RULES:
        _at(schema, rule.path).setdefault("x-kubernetes-validations", []).append(rule.as_schema())
    _at(schema, ("scheduling", "tolerations"))["x-kubernetes-list-type"] = "atomic"
    return schema


def status_schema() -> Schema:
    raw = DeepDetectServiceStatus.model_json_schema(by_alias=True)
    schema = convert(raw, raw.get("$defs", {}))
    schema["description"] = "Observed state, written by the operator only."
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    # kopf keeps its handler progress under status.kopf: leave it alone instead of pruning it.
    schema["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return schema


def open_api_schema() -> Schema:
    return {
        "type": "object",
        "description": "A deepfake-detection model served over HTTP, autoscaled, with checkpoint rollouts.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }


def build_crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition."""
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": open_api_schema()},
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": PRINTER_COLUMNS,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "deepdetect-operator",
                "app.kubernetes.io/part-of": "deepdetect",
                "app.kubernetes.io/version": __version__,
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [version],
        },
    }


def crd_yaml() -> str:
    """The CRD file's exact text (what `deepdetect-operator crd` prints and `make crds` writes)."""
    header = "# Generated from operator/deepdetect_operator/api.py by `make crds`: do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=110)


# ---------------------------------------------------------------- offline validation of a CR


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Structural defaulting as the API server does it: missing fields with a default get it, recursively."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and "items" in schema:
            return [apply_defaults(schema["items"], v) for v in value]
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def to_json_schema(node: Schema) -> Schema:
    """Structural OpenAPI node -> JSON Schema (nullable -> type list; unknown fields forbidden like pruning
    would drop them, so a typo shows up as an error instead of vanishing)."""
    out: Schema = {k: v for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "exclusiveMinimum" in out:
        out["exclusiveMinimum"] = out.pop("minimum")
    if "exclusiveMaximum" in out:
        out["exclusiveMaximum"] = out.pop("maximum")
    if "properties" in out:
        out["properties"] = {k: to_json_schema(v) for k, v in out["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(out["additionalProperties"])
    if "items" in out:
        out["items"] = to_json_schema(out["items"])
    return out


def _cel_errors(spec: dict[str, Any]) -> list[str]:
    """Evaluate CEL_RULES with cel-python when it is installed (dev extra); [] otherwise."""
    try:
        import celpy  # type: ignore[import-untyped]
    except ImportError:
        return []
    env = celpy.Environment()
    errors = []
    for rule in CEL_RULES:
        node: Any = spec
        for name in rule.path:
            node = node.get(name) if isinstance(node, dict) else None
        if node is None:
            continue
        result = env.program(env.compile(rule.rule)).evaluate({"self": celpy.json_to_cel(node)})
        if not bool(result):
            errors.append(f"spec{''.join('.' + p for p in rule.path)}{rule.field_path}: {rule.message}")
    return errors


def validate_cr(obj: dict[str, Any]) -> list[str]:
    """Errors the API server would report for this CR (schema after defaulting, then CEL); [] if valid."""
    import jsonschema

    schema = open_api_schema()
    defaulted = apply_defaults(schema, obj)
    validator = jsonschema.Draft7Validator(to_json_schema(schema))
    errors = [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(defaulted), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if errors:
        return errors
    return _cel_errors(defaulted.get("spec", {}))


# ---------------------------------------------------------------- reference table for docs/operator.md


def _type_of(node: Schema) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" if v != "" else '`""`' for v in node["enum"])
    kind = str(node.get("type", "any"))
    if kind == "array":
        kind = f"list of {node.get('items', {}).get('type', 'any')}"
    elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
        kind = f"map of {node['additionalProperties'].get('type', 'any')}"
    bounds = [
        f">= {node['minimum']}" if "minimum" in node else "",
        f"<= {node['maximum']}" if "maximum" in node else "",
    ]
    text = " ".join([kind, *(b for b in bounds if b)])
    return f"{text}, nullable" if node.get("nullable") else text


def _default_of(node: Schema, required: bool) -> str:
    if required:
        return "**required**"
    if "default" in node:
        return f"`{json.dumps(node['default'])}`"
    return "`null`" if node.get("nullable") else "empty"


def _rows(node: Schema, path: str, required: bool) -> list[str]:
    props = node.get("properties")
    if props and not node.get("x-kubernetes-preserve-unknown-fields"):
        req = set(node.get("required", []))
        return [row for name, sub in props.items() for row in _rows(sub, f"{path}.{name}", name in req)]
    desc = node.get("description", "").replace("|", "\\|")
    return [f"| `{path}` | {_type_of(node)} | {_default_of(node, required)} | {desc} |"]


def reference_markdown() -> str:
    """The spec field table in docs/operator.md (a test keeps the two equal)."""
    header = ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    return "\n".join(header + _rows(spec_schema(), "spec", True)) + "\n"
