"""The generated CRD: up to date, structural, valid for the API server, and it agrees with api.py.

The API server is not here, so the CRD is checked against kubernetes-validate's CustomResourceDefinition
schema (strict), its CEL rules are compiled and evaluated with cel-python, and every rule is checked to
reject the same specs as the pydantic validators in api.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deepdetect_operator.api import DeepDetectServiceSpec, DeepDetectServiceStatus, parse_spec
from deepdetect_operator.crd import (
    CEL_RULES,
    CRD_NAME,
    apply_defaults,
    build_crd,
    crd_yaml,
    open_api_schema,
    reference_markdown,
    spec_schema,
    validate_cr,
)
from pydantic import ValidationError

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/apiserver_rules.py (last: no shadowing)
from apiserver_rules import default_rule_errors, rule_errors

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / f"{CRD_NAME}.yaml"
K8S_VERSIONS = ["1.29.0", "1.33.0"]


def make_cr(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"checkpoint": {"uri": "https://models.example/b4.safetensors"}}}
    base.update(spec)
    return {
        "apiVersion": "deepdetect.io/v1alpha1",
        "kind": "DeepDetectService",
        "metadata": {"name": "faces", "namespace": "ns"},
        "spec": base,
    }


def test_docs_reference_table_is_up_to_date() -> None:
    docs = (REPO / "docs" / "operator.md").read_text()
    assert reference_markdown() in docs, (
        "docs/operator.md spec table is stale: paste the output of "
        "`python -c 'from deepdetect_operator.crd import reference_markdown as r; print(r())'`"
    )


def test_crd_file_is_up_to_date() -> None:
    assert CRD_FILE.exists(), "crds/ has no CRD: run `make crds`"
    assert CRD_FILE.read_text() == crd_yaml(), f"{CRD_FILE.name} is stale: run `make crds` and commit it"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_is_a_valid_custom_resource_definition(version: str) -> None:
    kubernetes_validate.validate(build_crd(), version, strict=True)


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.get("properties", {}).items():
            out += _walk(sub, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out += _walk(node[key], f"{path}[{key}]")
    return out


def test_schema_is_structural() -> None:
    for path, node in _walk(open_api_schema()):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & node.keys(), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node["default"] is not None, path


def test_free_form_fields_keep_unknown_fields() -> None:
    sched = spec_schema()["properties"]["scheduling"]["properties"]
    assert sched["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert sched["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert sched["nodeSelector"]["additionalProperties"] == {"type": "string"}


def test_optional_becomes_nullable() -> None:
    threshold = spec_schema()["properties"]["model"]["properties"]["threshold"]
    assert threshold == {
        "type": "number",
        "description": threshold["description"],
        "minimum": 0.0,
        "maximum": 1.0,
        "nullable": True,
    }


def test_subresources_names_and_columns() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["dds"]
    assert "deepdetect" in names["categories"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Ready", "Replicas", "Digest", "Endpoint", "Age"]


def _drop_empty_collections(value: Any) -> Any:
    """Empty maps/lists (nodeSelector, tolerations, affinity) get no schema default: absent == empty."""
    if isinstance(value, dict):
        return {k: _drop_empty_collections(v) for k, v in value.items() if v not in ({}, [])}
    return value


def test_schema_defaults_equal_pydantic_defaults() -> None:
    minimal = make_cr()["spec"]
    defaulted = apply_defaults(spec_schema(), minimal)
    expected = parse_spec(minimal).model_dump(by_alias=True, exclude_none=True)
    assert _drop_empty_collections(defaulted) == _drop_empty_collections(expected)


def test_status_model_validates_against_status_schema() -> None:
    status = DeepDetectServiceStatus.model_validate(
        {
            "observedGeneration": 3,
            "phase": "Ready",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Available",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "replicas": 2,
            "readyReplicas": 2,
            "selector": "app.kubernetes.io/instance=faces",
            "endpoint": "http://faces.ns.svc:80",
        }
    )
    cr = make_cr()
    cr["status"] = status.model_dump(by_alias=True) | {"kopf": {"progress": {"anything": 1}}}
    assert validate_cr(cr) == []


def test_every_cel_rule_compiles() -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    env = celpy.Environment()
    for rule in CEL_RULES:
        env.compile(rule.rule)


def test_cel_rules_hold_on_every_schema_default() -> None:
    """The API server evaluates each rule against each `default` as written, nested defaults not applied:
    an unguarded `self.minReplicas` on `autoscaling: {default: {}}` refused the whole CRD (issue 8)."""
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert default_rule_errors(schema) == []


def test_default_rule_check_refuses_an_unguarded_rule() -> None:
    """The check itself, on the recorded case: an unguarded rule on `default: {}` gives the server's error."""
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    rule = {"rule": "self.min <= self.max", "message": "min must not exceed max"}
    node = {"type": "object", "default": {}, "properties": {"min": {"type": "integer", "default": 1},
            "max": {"type": "integer", "default": 8}}, "x-kubernetes-validations": [rule]}
    schema = {"type": "object", "properties": {"spec": {"type": "object", "properties": {"scaling": node}}}}
    assert default_rule_errors(schema) == [
        "spec.validation.openAPIV3Schema.properties[spec].properties[scaling].default: Invalid value:"
        ' "object": no such key: min evaluating rule: min must not exceed max'
    ]
    node["x-kubernetes-validations"][0]["rule"] = "!has(self.min) || !has(self.max) || self.min <= self.max"
    assert default_rule_errors(schema) == []


def test_cel_rules_hold_on_every_defaulted_example() -> None:
    """The same rules on the examples after defaulting (what the API server does for a CR)."""
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    import yaml

    schema = open_api_schema()
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "DeepDetectService":
                continue
            assert rule_errors(schema, apply_defaults(schema, doc), "") == [], path.name


def _set(cr: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    cr = copy.deepcopy(cr)
    node = cr["spec"]
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return cr


_DELETE = object()
PVC = "pvc://models/b4/model.safetensors"
HEX = "a" * 64

INVALID = [
    ("min-gt-max", [("autoscaling.minReplicas", 5), ("autoscaling.maxReplicas", 2)], "minReplicas"),
    ("bad-precision", [("model.precision", "fp8")], "precision"),
    ("int8-without-samples", [("model.precision", "int8")], "samples"),
    (
        "int8-on-torch",
        [("model.precision", "int8"), ("model.runtime", "torch"),
         ("model.samples", {"uri": "https://data.example/samples.safetensors"})],
        "onnxruntime",
    ),
    ("bad-runtime", [("model.runtime", "tensorrt")], "runtime"),
    ("samples-bad-scheme", [("model.samples", {"uri": "ftp://x/y"})], "uri"),
    ("missing-uri", [("model.checkpoint.uri", _DELETE)], "uri"),
    ("bad-scheme", [("model.checkpoint.uri", "ftp://x/y")], "uri"),
    ("pvc-without-sha256", [("model.checkpoint.uri", PVC)], "sha256"),
    (
        "pvc-without-path",
        [("model.checkpoint.uri", "pvc://claim"), ("model.checkpoint.sha256", HEX)],
        "pvc://",
    ),
    ("s3-without-key", [("model.checkpoint.uri", "s3://bucket")], "s3://"),
    ("short-sha256", [("model.checkpoint.sha256", "abc")], "sha256"),
    ("bad-poll-interval", [("model.checkpoint.pollInterval", "often")], "pollInterval"),
    ("surge-and-unavailable-zero", [("rollout.maxSurge", 0), ("rollout.maxUnavailable", 0)], "maxSurge"),
    (
        "min-available-over-replicas",
        [("autoscaling.enabled", False), ("replicas", 2), ("disruption.minAvailable", 3)],
        "minAvailable",
    ),
    (
        "min-available-over-max",
        [("autoscaling.maxReplicas", 2), ("disruption.minAvailable", 3)],
        "minAvailable",
    ),
    ("typo-field", [("autoscalling", {"enabled": False})], "autoscalling"),
    ("bad-cpu", [("resources.cpu", "four")], "cpu"),
    ("memory-suffix-kubernetes-refuses", [("resources.memory", "512K")], "memory"),  # k, not K
    ("too-many-gpus", [("resources.gpus", 17)], "gpus"),
    ("threshold-above-one", [("model.threshold", 1.5)], "threshold"),
    ("bad-auth-mode", [("auth.mode", "oauth")], "mode"),
    ("callbacks-unsigned", [("jobs.callbacks", {"allowedHosts": ["hooks.acme.io"]})], "secretName"),
    ("bad-rate", [("rateLimits.requests", "600 a minute")], "requests"),
    ("bad-tenant-rate", [("rateLimits.tenants", {"acme": {"media": "lots"}})], "media"),
    ("bad-cache-scope", [("cache.scope", "shared")], "scope"),
    ("jobs-zero-lease", [("jobs.leaseSeconds", 0)], "leaseSeconds"),
    ("decode-past-request-timeout", [("server.requestTimeoutSeconds", 10),
                                     ("media", {"video": True, "limits": {"decodeTimeoutSeconds": 30}})],
     "decodeTimeoutSeconds"),
    ("video-frames-zero", [("media", {"limits": {"maxFrames": 0}})], "maxFrames"),
    ("redis-prefix-hash-tag", [("redis", {"urlSecret": "r", "keyPrefix": "a{b}"})], "keyPrefix"),
]


@pytest.mark.parametrize(
    ("changes", "needle"), [(c, n) for _, c, n in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_specs_are_rejected_by_crd_and_by_api_models(changes: list[Any], needle: str) -> None:
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    cr = make_cr()
    for dotted, value in changes:
        cr = _set(cr, dotted, value)
    errors = validate_cr(cr)
    assert errors, "the API server would accept this"
    assert any(needle in e for e in errors), errors
    with pytest.raises(ValidationError):
        DeepDetectServiceSpec.model_validate(cr["spec"])


VALID = [
    ("minimal", []),
    ("pvc-with-sha256", [("model.checkpoint.uri", PVC), ("model.checkpoint.sha256", HEX)]),
    ("scaled-to-zero", [("autoscaling.enabled", False), ("replicas", 0), ("disruption.minAvailable", 1)]),
    ("min-equals-max", [("autoscaling.minReplicas", 3), ("autoscaling.maxReplicas", 3)]),
    ("null-threshold", [("model.threshold", None)]),
    (
        "int8-with-samples",
        [("model.precision", "int8"), ("model.samples", {"uri": "s3://bucket/samples.safetensors"})],
    ),
    ("runtime-torch", [("model.runtime", "torch")]),
    ("affinity-free-form", [("scheduling.affinity", {"nodeAffinity": {"whatever": [1, 2]}})]),
    ("jobs-redis-limits", [("redis", {"urlSecret": "redis", "caKey": "ca.crt"}),
                           ("jobs", {"enabled": True, "callbacks": {"allowedHosts": ["*.acme.io"],
                                                                     "secretName": "hooks"}}),
                           ("rateLimits", {"requests": "10/second;600/minute", "media": "6000/minute",
                                           "tenants": {"vip": {"requests": "100/second"}}}),
                           ("cache", {"scope": "global", "ttlSeconds": 60})]),
    ("video-on", [("media", {"video": True, "decodeWorkers": 4,
                             "limits": {"maxVideoMB": 200, "decodeTimeoutSeconds": 30}})]),
    ("network-policy", [("networkPolicy", {"enabled": True, "ingressFrom": [
        {"namespaceSelector": {"matchLabels": {"team": "trust"}}}]})]),
]


@pytest.mark.parametrize("changes", [c for _, c in VALID], ids=[i for i, _ in VALID])
def test_valid_specs_pass_crd_and_api_models(changes: list[Any]) -> None:
    cr = make_cr()
    for dotted, value in changes:
        cr = _set(cr, dotted, value)
    assert validate_cr(cr) == []
    DeepDetectServiceSpec.model_validate(cr["spec"])
