"""The test API server beyond the recorded cases (test_conformance_replay.py): each behaviour a real
kube-apiserver v1.36 has and the operator relies on, checked over HTTP with the real server's messages."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/kube_emulator (last: no shadowing)
from kube_emulator import KubeEmulator, label_selector_matches, make_emulator, quantity

NS = "ns1"
CR_PATH = f"/apis/deepdetect.io/v1alpha1/namespaces/{NS}/deepdetectservices"
DEP_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}
JSONP = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}
Emu = tuple[KubeEmulator, aiohttp.ClientSession]


@pytest.fixture()
async def emu() -> AsyncIterator[Emu]:
    emulator = make_emulator(namespaces=(NS,))
    async with (
        emulator,
        kmock.Server(emulator) as server,
        aiohttp.ClientSession(base_url=str(server.url)) as session,
    ):
        yield emulator, session


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return await resp.json(content_type=None)


def cr(name: str, **spec: Any) -> dict[str, Any]:
    body = {"model": {"checkpoint": {"uri": "https://models.example/b4.safetensors"}}, **spec}
    return {
        "apiVersion": "deepdetect.io/v1alpha1",
        "kind": "DeepDetectService",
        "metadata": {"name": name},
        "spec": body,
    }


def deployment(name: str = "d", **container: Any) -> dict[str, Any]:
    ctr = {"name": "server", "image": "img:1", **container}
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [ctr]}},
        },
    }


async def apply(
    http: aiohttp.ClientSession, path: str, body: dict[str, Any], manager: str, force: bool = False
) -> aiohttp.ClientResponse:
    params = {"fieldManager": manager, **({"force": "true"} if force else {})}
    return await http.patch(f"{path}/{body['metadata']['name']}", params=params, json=body, headers=APPLY)


# ---------------------------------------------------------------- objects and metadata


async def test_create_sets_server_fields_and_needs_a_namespace(emu: Emu) -> None:
    _, http = emu
    resp = await http.post(CR_PATH, json={**cr("a"), "status": {"phase": "Ready"}})
    assert resp.status == 201
    meta = (obj := await _json(resp))["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert "status" not in obj  # status only through /status
    assert obj["spec"]["autoscaling"] == {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 8,
        "targetCPUUtilization": 70,
        "targetInflightPerPod": 0,
    }  # defaults
    dup = await _json(await http.post(CR_PATH, json=cr("a")))
    assert dup["reason"] == "AlreadyExists"
    assert dup["message"] == 'deepdetectservices.deepdetect.io "a" already exists'
    missing = await http.post("/api/v1/namespaces/nowhere/configmaps", json={"metadata": {"name": "c"}})
    assert missing.status == 404 and (await _json(missing))["message"] == 'namespaces "nowhere" not found'


async def test_generate_name(emu: Emu) -> None:
    _, http = emu
    obj = await _json(await http.post(CM_PATH, json={"metadata": {"generateName": "x-"}}))
    assert obj["metadata"]["name"].startswith("x-") and len(obj["metadata"]["name"]) > 2


async def test_generation_and_resource_version(emu: Emu) -> None:
    _, http = emu
    created = await _json(await http.post(CR_PATH, json=cr("a")))
    rv0 = int(created["metadata"]["resourceVersion"])
    url = f"{CR_PATH}/a"
    labelled = await _json(await http.patch(url, json={"metadata": {"labels": {"k": "v"}}}, headers=MERGE))
    assert labelled["metadata"]["generation"] == 1  # metadata change: no generation bump
    rv1 = int(labelled["metadata"]["resourceVersion"])
    assert rv1 > rv0
    changed = await _json(await http.patch(url, json={"spec": {"replicas": 2}}, headers=MERGE))
    assert changed["metadata"]["generation"] == 2
    rv2 = int(changed["metadata"]["resourceVersion"])
    same = await _json(await http.patch(url, json={"spec": {"replicas": 2}}, headers=MERGE))
    assert int(same["metadata"]["resourceVersion"]) == rv2  # no-op: nothing written
    # A Deployment's annotations are copied to its ReplicaSets: changing them moves the generation too.
    await apply(http, DEP_PATH, deployment(), "op")
    annotated = await _json(
        await http.patch(f"{DEP_PATH}/d", json={"metadata": {"annotations": {"a": "b"}}}, headers=MERGE)
    )
    assert annotated["metadata"]["generation"] == 2


async def test_status_isolation(emu: Emu) -> None:
    _, http = emu
    await http.post(CR_PATH, json=cr("a"))
    url = f"{CR_PATH}/a"
    main = await _json(await http.patch(url, json={"status": {"phase": "Ready"}}, headers=MERGE))
    assert "status" not in main
    both = {"spec": {"replicas": 9}, "status": {"phase": "Ready"}}
    st = await _json(await http.patch(f"{url}/status", json=both, headers=MERGE))
    assert st["status"]["phase"] == "Ready" and st["spec"]["replicas"] == 1
    assert st["status"]["replicas"] == 0 and st["status"]["endpoint"] == ""  # status defaults apply too
    assert st["metadata"]["generation"] == 1
    bad = await http.patch(f"{url}/status", json={"status": {"phase": "Happy"}}, headers=MERGE)
    assert bad.status == 422
    assert (await _json(bad))["message"] == (
        'DeepDetectService.deepdetect.io "a" is invalid: status.phase: '
        'Unsupported value: "Happy": supported values: "Pending", '
        '"Progressing", "Ready", "Degraded", "Failed"'
    )


async def test_put_needs_the_current_resource_version(emu: Emu) -> None:
    _, http = emu
    created = await _json(await http.post(CR_PATH, json=cr("a")))
    body = copy.deepcopy(created)
    body["spec"]["replicas"] = 3
    ok = await http.put(f"{CR_PATH}/a", json=body)
    assert ok.status == 200
    stale = await _json(await http.put(f"{CR_PATH}/a", json=body))
    assert stale["code"] == 409 and "the object has been modified" in stale["message"]
    del body["metadata"]["resourceVersion"]
    unconditional = await _json(await http.put(f"{CR_PATH}/a", json=body))
    assert unconditional["code"] == 422  # custom resources allow no unconditional update
    assert (
        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
        in unconditional["message"]
    )
    cm = await _json(await http.post(CM_PATH, json={"metadata": {"name": "c"}, "data": {"a": "1"}}))
    del cm["metadata"]["resourceVersion"]
    assert (await http.put(f"{CM_PATH}/c", json={**cm, "data": {"a": "2"}})).status == 200  # built-ins do


async def test_finalizers_hold_deletion_and_cannot_be_added_then(emu: Emu) -> None:
    emulator, http = emu
    created = await _json(
        await http.post(CR_PATH, json={**cr("a"), "metadata": {"name": "a", "finalizers": ["f/x"]}})
    )
    owner = {
        "apiVersion": "deepdetect.io/v1alpha1",
        "kind": "DeepDetectService",
        "name": "a",
        "uid": created["metadata"]["uid"],
        "controller": True,
    }
    await http.post(CM_PATH, json={"metadata": {"name": "child", "ownerReferences": [owner]}})
    marked = await _json(await http.delete(f"{CR_PATH}/a"))
    assert marked["metadata"]["deletionTimestamp"]
    more = await http.patch(f"{CR_PATH}/a", json={"metadata": {"finalizers": ["f/x", "f/y"]}}, headers=MERGE)
    assert more.status == 422 and "no new finalizers can be added" in (await _json(more))["message"]
    await http.patch(f"{CR_PATH}/a", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert emulator.stored("deepdetect.io/v1alpha1/deepdetectservices", NS, "a") is None
    assert emulator.stored("v1/configmaps", NS, "child") is None  # garbage-collected
    assert (await http.delete(f"{CR_PATH}/a")).status == 404


async def test_delete_preconditions_and_answers(emu: Emu) -> None:
    _, http = emu
    await apply(http, DEP_PATH, deployment(), "op")
    wrong = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": "not-it"}}
    refused = await _json(await http.delete(f"{DEP_PATH}/d", json=wrong))
    assert refused["code"] == 409 and refused["message"].startswith(
        "Precondition failed: UID in precondition: not-it"
    )
    done = await _json(await http.delete(f"{DEP_PATH}/d"))
    assert done["kind"] == "Status" and done["status"] == "Success" and done["details"]["name"] == "d"


async def test_namespace_deletion_takes_its_content(emu: Emu) -> None:
    emulator, http = emu
    assert (await http.post("/api/v1/namespaces", json={"metadata": {"name": "gone"}})).status == 201
    ns = await _json(await http.get("/api/v1/namespaces/gone"))
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "gone"}
    assert ns["spec"]["finalizers"] == ["kubernetes"] and ns["status"]["phase"] == "Active"
    await http.post(
        "/apis/deepdetect.io/v1alpha1/namespaces/gone/deepdetectservices",
        json={**cr("held"), "metadata": {"name": "held", "finalizers": ["f/x"]}},
    )
    await http.post("/api/v1/namespaces/gone/configmaps", json={"metadata": {"name": "c"}})
    terminating = await _json(await http.delete("/api/v1/namespaces/gone"))
    assert terminating["status"]["phase"] == "Terminating"
    assert emulator.stored("v1/configmaps", "gone", "c") is None
    late = await http.post("/api/v1/namespaces/gone/configmaps", json={"metadata": {"name": "late"}})
    assert late.status == 403 and "because it is being terminated" in (await _json(late))["message"]
    assert (await http.get("/api/v1/namespaces/gone")).status == 200  # the CR's finalizer holds it
    await http.patch(
        "/apis/deepdetect.io/v1alpha1/namespaces/gone/deepdetectservices/held",
        json={"metadata": {"finalizers": None}},
        headers=MERGE,
    )
    assert (await http.get("/api/v1/namespaces/gone")).status == 404
    names = [i["metadata"]["name"] for i in (await _json(await http.get("/api/v1/namespaces")))["items"]]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system", NS]


# ---------------------------------------------------------------- CRDs


def crd(schema: dict[str, Any], name: str = "things", **version: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{name}.example.io"},
        "spec": {
            "group": "example.io",
            "scope": "Namespaced",
            "names": {"plural": name, "singular": name[:-1], "kind": name[:-1].capitalize()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    **version,
                }
            ],
        },
    }


def spec_schema(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": props}}}


ROOT = "spec.validation.openAPIV3Schema"
X = f"{ROOT}.properties[spec].properties[x]"
REFUSED_CRDS = [
    (
        "no-type",
        spec_schema(x={"description": "?"}),
        f"{X}.type: Required value: must not be empty for specified object fields",
    ),
    (
        "properties-and-additional",
        spec_schema(
            x={
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            }
        ),
        f"{X}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive",
    ),
    (
        "metadata-fields",
        {
            "type": "object",
            "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}},
        },
        f"{ROOT}.properties[metadata]: Forbidden: must not specify anything other than name and "
        "generateName, but "
        "metadata is implicitly specified",
    ),
    (
        "list-map-key-optional",
        spec_schema(
            x={
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["k"],
                "items": {"type": "object", "properties": {"k": {"type": "string"}}},
            }
        ),
        f"{X}.items.properties[k].default: Required value: this property is in "
        "x-kubernetes-list-map-keys, so it must have a default or be a required property",
    ),
    (
        "unguarded-rule-on-default",
        spec_schema(
            x={
                "type": "object",
                "default": {},
                "properties": {"a": {"type": "integer", "default": 1}},
                "x-kubernetes-validations": [{"rule": "self.a > 0"}],
            }
        ),
        f'{X}.default: Invalid value: "object": no such key: a evaluating rule: failed rule: self.a > 0',
    ),
    (
        "rule-reads-undeclared-field",
        spec_schema(
            x={
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.b > 0"}],
            }
        ),
        "compilation failed: ERROR: <input>:1:5: undefined field 'b'",
    ),
    (
        "rule-does-not-compile",
        spec_schema(x={"type": "integer", "x-kubernetes-validations": [{"rule": "self >"}]}),
        f"{X}.x-kubernetes-validations[0].rule: Invalid value:",
    ),
    (
        "field-path-missing",
        spec_schema(
            x={
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "true", "fieldPath": ".b"}],
            }
        ),
        f'{X}.x-kubernetes-validations[0].fieldPath: Invalid value: ".b": fieldPath must be a valid path',
    ),
    (
        "default-with-unknown-field",
        spec_schema(x={"type": "object", "default": {"zz": 1}, "properties": {"a": {"type": "integer"}}}),
        f"{X}.default: Invalid value:",
    ),
    (
        "default-out-of-range",
        spec_schema(x={"type": "integer", "minimum": 2, "default": 1}),
        "should be greater than or equal to 2",
    ),
    (
        "preserve-unknown-false",
        spec_schema(x={"type": "object", "x-kubernetes-preserve-unknown-fields": False}),
        f"{X}.x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined",
    ),
]


@pytest.mark.parametrize(
    ("schema", "expected"), [(s, e) for _, s, e in REFUSED_CRDS], ids=[i for i, _, _ in REFUSED_CRDS]
)
async def test_crd_endpoint_refuses_what_the_api_server_refuses(emu: Emu, schema: Any, expected: str) -> None:
    _, http = emu
    resp = await http.post(CRD_PATH, json=crd(schema))
    body = await _json(resp)
    assert resp.status == 422 and body["reason"] == "Invalid", body
    assert body["message"].startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "things.example.io" is invalid: '
    )
    assert expected in body["message"]


async def test_crd_serves_its_kind_from_its_schema(emu: Emu) -> None:
    emulator, http = emu
    schema = spec_schema(
        size={"type": "integer", "maximum": 10, "default": 3},
        mode={"type": "string", "enum": ["a", "b"]},
        tag={"type": "string", "pattern": "^v[0-9]+$"},
        items={"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
    )
    schema["properties"]["spec"]["required"] = ["mode"]
    schema["properties"]["status"] = {"type": "object", "properties": {"n": {"type": "integer"}}}
    resp = await http.post(CRD_PATH, json=crd(schema, subresources={"status": {}}))
    assert resp.status == 201, await resp.text()
    created = await _json(resp)
    assert created["spec"]["names"]["listKind"] == "ThingList"  # defaulted
    assert {c["type"] for c in created["status"]["conditions"]} == {"NamesAccepted", "Established"}
    discovery = await _json(await http.get("/apis/example.io/v1"))
    assert [r["name"] for r in discovery["resources"]] == ["things", "things/status"]
    path = f"/apis/example.io/v1/namespaces/{NS}/things"
    body = {
        "apiVersion": "example.io/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "spec": {"mode": "a", "bogus": 1},
    }
    ok = await http.post(path, json=body)
    assert ok.status == 201 and ok.headers.getall("Warning") == ['299 - "unknown field \\"spec.bogus\\""']
    assert (await _json(ok))["spec"] == {"mode": "a", "size": 3}
    strict = await _json(await http.post(path, params={"fieldValidation": "Strict"}, json=body))
    assert strict["code"] == 400
    assert strict["message"] == (
        'Thing in version "v1" cannot be handled as a Thing: strict decoding error: '
        'unknown field "spec.bogus"'
    )
    bad = {
        **body,
        "metadata": {"name": "u"},
        "spec": {"size": 11, "mode": "c", "tag": "x", "items": ["p", "p"]},
    }
    message = (await _json(await http.post(path, json=bad)))["message"]
    for part in (
        "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
        'spec.mode: Unsupported value: "c": supported values: "a", "b"',
        "spec.tag: Invalid value: \"x\": spec.tag in body should match '^v[0-9]+$'",
        'spec.items[1]: Duplicate value: "p"',
    ):
        assert part in message, message
    missing = (await _json(await http.post(path, json={**body, "metadata": {"name": "v"}, "spec": {}})))[
        "message"
    ]
    assert "spec.mode: Required value" in missing
    typed = (
        await _json(
            await http.post(
                path, json={**body, "metadata": {"name": "w"}, "spec": {"mode": "a", "size": "3"}}
            )
        )
    )["message"]
    assert 'spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"' in typed
    assert (await http.delete(f"{CRD_PATH}/things.example.io")).status == 200
    assert (await http.get(path)).status == 404  # the kind is no longer served
    assert emulator.stored("example.io/v1/things", NS, "t") is None  # and its objects are gone


async def test_our_crd_is_installed_server_side_and_applies_again_as_a_no_op(emu: Emu) -> None:
    emulator, _ = emu
    stored = emulator.stored(CRD_PATH.removeprefix("/apis/"), None, "deepdetectservices.deepdetect.io")
    assert stored is not None and [e["manager"] for e in stored["metadata"]["managedFields"]] == ["kubectl"]
    from kube_emulator import project_crds

    version = stored["metadata"]["resourceVersion"]
    emulator.install(project_crds()[0])  # `kubectl apply --server-side -f crds/` once more
    again = emulator.stored(CRD_PATH.removeprefix("/apis/"), None, "deepdetectservices.deepdetect.io")
    assert again["metadata"]["resourceVersion"] == version


# ---------------------------------------------------------------- server-side apply


async def test_apply_creates_then_merges_and_tracks_owners_per_element(emu: Emu) -> None:
    emulator, http = emu
    created = await apply(http, DEP_PATH, deployment(env=[{"name": "A", "value": "1"}]), "op")
    assert created.status == 201
    other = deployment()
    other["spec"]["template"]["spec"]["containers"] = [{"name": "sidecar", "image": "side:1"}]
    assert (await apply(http, DEP_PATH, other, "other")).status == 200
    stored = emulator.stored("apps/v1/deployments", NS, "d")
    assert [c["name"] for c in stored["spec"]["template"]["spec"]["containers"]] == ["server", "sidecar"]
    owners = {e["manager"]: e["fieldsV1"] for e in stored["metadata"]["managedFields"]}
    containers = owners["other"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert containers == {'k:{"name":"sidecar"}': {".": {}, "f:image": {}, "f:name": {}}}
    assert 'k:{"name":"server"}' in owners["op"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    # `kubectl edit` takes the image over (an Update); a later apply without force is a conflict with it.
    edited = copy.deepcopy(stored["spec"]["template"]["spec"]["containers"])
    edited[0]["image"] = "img:9"
    await emulator.edit(
        "apps/v1/deployments", NS, "d", {"spec": {"template": {"spec": {"containers": edited}}}}
    )
    refused = await _json(await apply(http, DEP_PATH, deployment(image="img:2"), "op"))
    assert refused["code"] == 409 and refused["reason"] == "Conflict"
    assert refused["message"].startswith(
        'Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1 at '
    )
    assert refused["message"].endswith('.spec.template.spec.containers[name="server"].image')


async def test_apply_removes_fields_its_manager_stopped_applying(emu: Emu) -> None:
    emulator, http = emu

    async def put(manager: str, data: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "own"}, "data": data}
        assert (await apply(http, CM_PATH, body, manager, force=True)).status in (200, 201)

    await put("a", {"x": "1", "y": "2", "z": "3"})
    await put("b", {"z": "3"})
    await put("a", {"x": "1"})
    stored = emulator.stored("v1/configmaps", NS, "own")
    assert stored["data"] == {"x": "1", "z": "3"}  # y had no other owner; z is b's too
    owners = {e["manager"]: e["fieldsV1"] for e in stored["metadata"]["managedFields"]}
    assert owners == {"a": {"f:data": {"f:x": {}}}, "b": {"f:data": {"f:z": {}}}}
    version = stored["metadata"]["resourceVersion"]
    await put("a", {"x": "1"})  # a no-op apply writes nothing
    assert emulator.stored("v1/configmaps", NS, "own")["metadata"]["resourceVersion"] == version
    no_manager = await http.patch(
        f"{CM_PATH}/own", json={"apiVersion": "v1", "kind": "ConfigMap"}, headers=APPLY
    )
    assert no_manager.status == 400


async def test_merge_and_strategic_patches(emu: Emu) -> None:
    _, http = emu
    await apply(http, DEP_PATH, deployment(), "op")
    extra = {"spec": {"template": {"spec": {"containers": [{"name": "extra", "image": "x:1"}]}}}}
    merged = await _json(await http.patch(f"{DEP_PATH}/d", json=extra, headers=STRATEGIC))
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["server", "extra"]
    replaced = await _json(await http.patch(f"{DEP_PATH}/d", json=extra, headers=MERGE))
    assert [c["name"] for c in replaced["spec"]["template"]["spec"]["containers"]] == ["extra"]
    await http.post(CR_PATH, json=cr("a"))
    unsupported = await http.patch(f"{CR_PATH}/a", json={"spec": {}}, headers=STRATEGIC)
    assert unsupported.status == 415


async def test_json_patch_test_failure_is_422(emu: Emu) -> None:
    _, http = emu
    await http.post(CM_PATH, json={"metadata": {"name": "c"}, "data": {"a": "1"}})
    ops = [
        {"op": "test", "path": "/data/a", "value": "2"},
        {"op": "replace", "path": "/data/a", "value": "3"},
    ]
    resp = await http.patch(f"{CM_PATH}/c", json=ops, headers=JSONP)
    assert resp.status == 422
    ops[0]["value"] = "1"
    assert (await _json(await http.patch(f"{CM_PATH}/c", json=ops, headers=JSONP)))["data"] == {"a": "3"}


# ---------------------------------------------------------------- built-in kinds


async def test_pod_template_and_service_defaults(emu: Emu) -> None:
    _, http = emu
    probe = {"httpGet": {"port": 8080}}
    dep = deployment(
        image="img",
        ports=[{"containerPort": 8080}],
        readinessProbe=probe,
        env=[{"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    )
    dep["spec"]["template"]["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "c"}},
        {"name": "scratch"},
    ]
    dep["spec"]["template"]["spec"]["containers"].append({"name": "pinned", "image": "img:2.1"})
    live = await _json(await apply(http, DEP_PATH, dep, "op"))
    pod = live["spec"]["template"]["spec"]
    server, pinned = pod["containers"]
    assert server["imagePullPolicy"] == "Always" and pinned["imagePullPolicy"] == "IfNotPresent"
    assert server["terminationMessagePath"] == "/dev/termination-log"
    assert server["terminationMessagePolicy"] == "File" and server["resources"] == {}
    assert server["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert server["readinessProbe"] == {
        "httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert server["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"
    assert pod["volumes"] == [
        {"name": "cfg", "configMap": {"name": "c", "defaultMode": 420}},
        {"name": "scratch", "emptyDir": {}},
    ]
    assert {
        k: pod[k]
        for k in (
            "dnsPolicy",
            "restartPolicy",
            "schedulerName",
            "securityContext",
            "terminationGracePeriodSeconds",
        )
    } == {
        "dnsPolicy": "ClusterFirst",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "terminationGracePeriodSeconds": 30,
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"selector": {"app": "d"}, "ports": [{"port": 80}]},
    }
    spec = (await _json(await apply(http, f"/api/v1/namespaces/{NS}/services", svc, "op")))["spec"]
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["internalTrafficPolicy"] == "Cluster" and spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    again = (await _json(await apply(http, f"/api/v1/namespaces/{NS}/services", svc, "op")))["spec"]
    assert again["clusterIP"] == spec["clusterIP"]  # allocated once


async def test_job_hpa_secret_defaults(emu: Emu) -> None:
    _, http = emu
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "j"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "img:1"}]},
            }
        },
    }
    live = await _json(await http.post(f"/apis/batch/v1/namespaces/{NS}/jobs", json=job))
    uid = live["metadata"]["uid"]
    assert live["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert live["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "j"
    assert {
        k: live["spec"][k]
        for k in (
            "completions",
            "parallelism",
            "backoffLimit",
            "completionMode",
            "suspend",
            "podReplacementPolicy",
        )
    } == {
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": 6,
        "completionMode": "NonIndexed",
        "suspend": False,
        "podReplacementPolicy": "TerminatingOrFailed",
    }
    changed = copy.deepcopy(live)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "img:2"
    immutable = await _json(await http.put(f"/apis/batch/v1/namespaces/{NS}/jobs/j", json=changed))
    assert immutable["code"] == 422 and "spec.template: Invalid value" in immutable["message"]
    assert "field is immutable" in immutable["message"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "h"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
            "maxReplicas": 3,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
        },
    }
    spec = (
        await _json(
            await http.post(f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers", json=hpa)
        )
    )["spec"]
    assert spec["minReplicas"] == 1 and spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    assert spec["behavior"]["scaleUp"]["policies"][0] == {"type": "Pods", "value": 4, "periodSeconds": 15}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    live = await _json(await http.post(f"/api/v1/namespaces/{NS}/secrets", json=secret))
    assert live["data"] == {"k": "dg=="} and live["type"] == "Opaque" and "stringData" not in live


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("0.5", "500m"),
        ("1000m", "1"),
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("2000", "2k"),
        ("1", "1"),
        ("100m", "100m"),
        ("0.0001", "1m"),
        ("512Ki", "512Ki"),
        ("1e3", "1e3"),
        (2, "2"),
    ],
)
def test_resource_quantities_are_stored_canonical(given: Any, stored: str) -> None:
    assert quantity.canonical(given, round_to_milli=True) == stored


async def test_what_comes_back_is_what_a_real_server_returns(emu: Emu) -> None:
    """Unknown fields dropped (warned, or 400 when strict), empty lists gone, quantities canonical."""
    _, http = emu
    dep = deployment(resources={"requests": {"cpu": "0.25", "memory": "256Mi"}}, bogus=True)
    dep["spec"]["template"]["spec"]["tolerations"] = []
    resp = await apply(http, DEP_PATH, dep, "op")
    assert resp.headers.getall("Warning") == [
        '299 - "unknown field \\"spec.template.spec.containers[0].bogus\\""'
    ]
    pod = (await _json(resp))["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "bogus" not in pod["containers"][0]
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    strict = await http.patch(
        f"{DEP_PATH}/d", params={"fieldManager": "op", "fieldValidation": "Strict"}, json=dep, headers=APPLY
    )
    assert strict.status == 400
    typed = deployment(ports=[{"containerPort": "8080"}])
    wrong = await _json(await apply(http, DEP_PATH, typed, "op"))
    assert wrong["code"] == 400 and "cannot unmarshal string into Go struct field" in wrong["message"]


async def test_builtin_validation(emu: Emu) -> None:
    _, http = emu
    mismatched = deployment()
    mismatched["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    refused = await _json(await apply(http, DEP_PATH, mismatched, "op"))
    assert refused["message"] == (
        'Deployment.apps "d" is invalid: spec.template.metadata.labels: Invalid value: '
        'map[string]string{"app":"d"}: `selector` does not match template `labels`'
    )
    await apply(http, DEP_PATH, deployment(), "op")
    moved = deployment()
    moved["spec"]["selector"]["matchLabels"]["tier"] = "x"
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    immutable = await _json(await apply(http, DEP_PATH, moved, "op"))
    assert immutable["code"] == 422 and "spec.selector: Invalid value" in immutable["message"]
    assert immutable["message"].endswith("field is immutable")
    stuck = deployment()
    stuck["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}
    assert (
        "may not be 0 when `maxSurge` is 0"
        in (await _json(await apply(http, DEP_PATH, stuck, "op")))["message"]
    )
    bad_key = await _json(await http.post(CM_PATH, json={"metadata": {"name": "k"}, "data": {"a b": "1"}}))
    assert bad_key["code"] == 422 and "a valid config key must consist of" in bad_key["message"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e"},
        "reason": "R",
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "elsewhere"},
    }
    wrong_ns = await _json(await http.post(f"/api/v1/namespaces/{NS}/events", json=event))
    assert wrong_ns["message"] == (
        'Event "e" is invalid: involvedObject.namespace: Invalid value: "elsewhere": '
        "does not match event.namespace"
    )
    event["involvedObject"]["namespace"] = NS
    assert (await http.post(f"/api/v1/namespaces/{NS}/events", json=event)).status == 201


async def test_scale_of_a_deployment(emu: Emu) -> None:
    _, http = emu
    await apply(http, DEP_PATH, deployment(), "op")
    scale = await _json(await http.get(f"{DEP_PATH}/d/scale"))
    assert (
        scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "app=d"
    )
    patched = await _json(
        await http.patch(f"{DEP_PATH}/d/scale", json={"spec": {"replicas": 4}}, headers=MERGE)
    )
    assert patched["spec"]["replicas"] == 4
    negative = await http.patch(f"{DEP_PATH}/d/scale", json={"spec": {"replicas": -1}}, headers=MERGE)
    assert negative.status == 422


# ---------------------------------------------------------------- reads and watches


async def test_label_and_field_selectors_and_pages(emu: Emu) -> None:
    _, http = emu
    for name, app in (("a", "x"), ("b", "y"), ("c", "x")):
        await http.post(CM_PATH, json={"metadata": {"name": name, "labels": {"app": app}}})
    items = (await _json(await http.get(CM_PATH, params={"labelSelector": "app=x"})))["items"]
    assert [i["metadata"]["name"] for i in items] == ["a", "c"] and "kind" not in items[0]  # typed list items
    items = (await _json(await http.get(CM_PATH, params={"fieldSelector": "metadata.name=b"})))["items"]
    assert [i["metadata"]["name"] for i in items] == ["b"]
    assert (await http.get(CM_PATH, params={"fieldSelector": "data.x=1"})).status == 400
    page = await _json(await http.get(CM_PATH, params={"limit": "2"}))
    assert [i["metadata"]["name"] for i in page["items"]] == ["a", "b"] and page["metadata"][
        "remainingItemCount"
    ] == 1
    rest = await _json(
        await http.get(CM_PATH, params={"limit": "2", "continue": page["metadata"]["continue"]})
    )
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"] and "continue" not in rest["metadata"]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1,b!=2", {"a": "1", "b": "3"}, True),
        ("a in (1, 2)", {"a": "2"}, True),
        ("a notin (1,2)", {"a": "2"}, False),
        ("a", {}, False),
        ("!a", {}, True),
    ],
)
def test_label_selector_parser(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert label_selector_matches(selector, labels) is expected


async def _events(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    out = []
    while len(out) < count:
        line = await resp.content.readline()
        if not line:
            break
        out.append(json.loads(line))
    return out


async def test_watch_from_a_resource_version_sends_only_what_came_after(emu: Emu) -> None:
    _, http = emu
    await http.post(CM_PATH, json={"metadata": {"name": "old", "labels": {"app": "x"}}})
    listed = await _json(await http.get(CM_PATH))
    await http.post(CM_PATH, json={"metadata": {"name": "new", "labels": {"app": "x"}}})
    params = {
        "watch": "true",
        "resourceVersion": listed["metadata"]["resourceVersion"],
        "timeoutSeconds": "5",
    }
    async with http.get(CM_PATH, params=params) as resp:
        [event] = await _events(resp, 1)
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "new")
    # With a selector, an object that stops matching leaves the watch as DELETED, and comes back ADDED.
    async with http.get(
        CM_PATH, params={"watch": "true", "labelSelector": "app=x", "timeoutSeconds": "5"}
    ) as resp:
        assert len(await _events(resp, 2)) == 2  # the synthetic ADDED of both
        await http.patch(f"{CM_PATH}/old", json={"metadata": {"labels": {"app": "y"}}}, headers=MERGE)
        await http.patch(f"{CM_PATH}/old", json={"metadata": {"labels": {"app": "x"}}}, headers=MERGE)
        assert [e["type"] for e in await _events(resp, 2)] == ["DELETED", "ADDED"]


async def test_set_status_and_watch_events(emu: Emu) -> None:
    emulator, http = emu
    await apply(http, DEP_PATH, deployment(), "op")
    await emulator.set_status("apps/v1/deployments", NS, "d", {"readyReplicas": 1})
    dep = emulator.stored("apps/v1/deployments", NS, "d")
    assert dep["status"] == {"readyReplicas": 1} and dep["metadata"]["generation"] == 1
    status_owner = next(e for e in dep["metadata"]["managedFields"] if e.get("subresource") == "status")
    assert status_owner["manager"] == "kube-controller-manager" and status_owner["operation"] == "Update"
    async with http.get(
        DEP_PATH, params={"watch": "true", "labelSelector": "", "timeoutSeconds": "5"}
    ) as resp:
        [event] = await _events(resp, 1)
        assert event["type"] == "ADDED" and event["object"]["status"] == {"readyReplicas": 1}
    assert [w.method.value for w in emulator.writes()] == ["PATCH"]  # set_status is not an HTTP request


@pytest.mark.parametrize(("query", "value"), [("timeoutSeconds", "300.0"), ("limit", "1.5")])
async def test_integer_query_parameters_are_parsed_strictly(emu: Emu, query: str, value: str) -> None:
    """A real API server parses these with strconv.ParseInt (cases.json): 300.0 is a 400, not a watch."""
    _, http = emu
    params = {query: value, **({"watch": "true"} if query == "timeoutSeconds" else {})}
    resp = await http.get(CM_PATH, params=params)
    assert resp.status == 400
    body = await resp.json()
    assert body["reason"] == "BadRequest"
    assert body["message"] == f'strconv.ParseInt: parsing "{value}": invalid syntax'
    assert (await http.get(CM_PATH, params={query: "1"})).status == 200
