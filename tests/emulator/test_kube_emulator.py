"""The test API server itself: each API-server behaviour the operator relies on, checked over HTTP."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/kube_emulator.py (last: no shadowing)
from kube_emulator import KubeEmulator, label_selector_matches, make_emulator

CR_PATH = "/apis/deepdetect.io/v1alpha1/namespaces/ns1/deepdetectservices"
DEP_PATH = "/apis/apps/v1/namespaces/ns1/deployments"
CM_PATH = "/api/v1/namespaces/ns1/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}
JSONP = {"Content-Type": "application/json-patch+json"}


@pytest.fixture()
async def emu() -> AsyncIterator[tuple[KubeEmulator, aiohttp.ClientSession]]:
    emulator = make_emulator()
    async with (
        emulator,
        kmock.Server(emulator) as server,
        aiohttp.ClientSession(base_url=str(server.url)) as session,
    ):
        yield emulator, session


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return await resp.json(content_type=None)


async def test_create_sets_server_fields(emu: Any) -> None:
    _, http = emu
    resp = await http.post(CR_PATH, json={"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {"s": 1}})
    assert resp.status == 201
    obj = await _json(resp)
    meta = obj["metadata"]
    assert meta["namespace"] == "ns1" and meta["uid"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    assert "status" not in obj  # status only through /status
    dup = await http.post(CR_PATH, json={"metadata": {"name": "a"}})
    assert dup.status == 409 and (await _json(dup))["kind"] == "Status"


async def test_generate_name(emu: Any) -> None:
    _, http = emu
    obj = await _json(await http.post(CM_PATH, json={"metadata": {"generateName": "x-"}}))
    assert obj["metadata"]["name"].startswith("x-") and len(obj["metadata"]["name"]) > 2


async def test_generation_and_resource_version(emu: Any) -> None:
    _, http = emu
    created = await _json(await http.post(CR_PATH, json={"metadata": {"name": "a"}, "spec": {"x": 1}}))
    rv0 = int(created["metadata"]["resourceVersion"])
    url = f"{CR_PATH}/a"
    labelled = await _json(await http.patch(url, json={"metadata": {"labels": {"k": "v"}}}, headers=MERGE))
    assert labelled["metadata"]["generation"] == 1  # metadata change: no generation bump
    rv1 = int(labelled["metadata"]["resourceVersion"])
    assert rv1 > rv0
    changed = await _json(await http.patch(url, json={"spec": {"x": 2}}, headers=MERGE))
    assert changed["metadata"]["generation"] == 2
    rv2 = int(changed["metadata"]["resourceVersion"])
    assert rv2 > rv1
    same = await _json(await http.patch(url, json={"spec": {"x": 2}}, headers=MERGE))
    assert int(same["metadata"]["resourceVersion"]) == rv2  # no-op: nothing written


async def test_status_isolation(emu: Any) -> None:
    _, http = emu
    await http.post(CR_PATH, json={"metadata": {"name": "a"}, "spec": {"x": 1}})
    url = f"{CR_PATH}/a"
    main = await _json(await http.patch(url, json={"status": {"phase": "X"}}, headers=MERGE))
    assert "status" not in main
    both = {"spec": {"x": 9}, "status": {"phase": "Ready"}}
    st = await _json(await http.patch(f"{url}/status", json=both, headers=MERGE))
    assert st["status"] == {"phase": "Ready"} and st["spec"] == {"x": 1}
    assert st["metadata"]["generation"] == 1
    again = await _json(await http.patch(url, json={"spec": {"x": 3}}, headers=MERGE))
    assert again["status"] == {"phase": "Ready"} and again["spec"] == {"x": 3}


async def test_apply_patch_creates_then_merges(emu: Any) -> None:
    emulator, http = emu
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    resp = await http.patch(f"{CM_PATH}/c?fieldManager=m&force=true", json=body, headers=APPLY)
    assert resp.status in (200, 201)
    assert emulator.stored("v1/configmaps", "ns1", "c")["data"] == {"a": "1"}
    body["data"] = {"a": "2"}
    await http.patch(f"{CM_PATH}/c?fieldManager=m&force=true", json=body, headers=APPLY)
    assert emulator.stored("v1/configmaps", "ns1", "c")["data"] == {"a": "2"}
    missing = await http.patch(f"{CM_PATH}/zz", json={"data": {}}, headers=MERGE)
    assert missing.status == 404  # a merge patch does not create


async def test_apply_removes_fields_its_manager_stopped_applying(emu: Any) -> None:
    """SSA ownership: a field one manager drops goes, unless another manager's apply still owns it."""
    emulator, http = emu

    async def apply(manager: str, data: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "own"}, "data": data}
        resp = await http.patch(f"{CM_PATH}/own?fieldManager={manager}&force=true", json=body, headers=APPLY)
        assert resp.status in (200, 201)

    await apply("a", {"x": "1", "y": "2", "z": "3"})
    await apply("b", {"z": "3"})
    await apply("a", {"x": "1"})
    stored = emulator.stored("v1/configmaps", "ns1", "own")
    assert stored["data"] == {"x": "1", "z": "3"}  # y had no other owner; z is b's too
    owners = {e["manager"]: e["fieldsV1"] for e in stored["metadata"]["managedFields"]}
    assert owners == {"a": {"f:data": {"f:x": {}}}, "b": {"f:data": {"f:z": {}}}}
    version = stored["metadata"]["resourceVersion"]
    await apply("a", {"x": "1"})  # a no-op apply writes nothing
    assert emulator.stored("v1/configmaps", "ns1", "own")["metadata"]["resourceVersion"] == version


async def test_json_patch_test_failure_is_422(emu: Any) -> None:
    _, http = emu
    await http.post(CM_PATH, json={"metadata": {"name": "c"}, "data": {"a": "1"}})
    ops = [
        {"op": "test", "path": "/data/a", "value": "2"},
        {"op": "replace", "path": "/data/a", "value": "3"},
    ]
    resp = await http.patch(f"{CM_PATH}/c", json=ops, headers=JSONP)
    assert resp.status == 422
    ops[0]["value"] = "1"
    ok = await _json(await http.patch(f"{CM_PATH}/c", json=ops, headers=JSONP))
    assert ok["data"] == {"a": "3"}


async def test_label_and_field_selectors(emu: Any) -> None:
    _, http = emu
    for name, app in (("a", "x"), ("b", "y"), ("c", "x")):
        await http.post(CM_PATH, json={"metadata": {"name": name, "labels": {"app": app}}})
    items = (await _json(await http.get(CM_PATH, params={"labelSelector": "app=x"})))["items"]
    assert sorted(i["metadata"]["name"] for i in items) == ["a", "c"]
    items = (await _json(await http.get(CM_PATH, params={"fieldSelector": "metadata.name=b"})))["items"]
    assert [i["metadata"]["name"] for i in items] == ["b"]


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


async def test_namespaces_endpoints(emu: Any) -> None:
    _, http = emu
    await http.post(CM_PATH, json={"metadata": {"name": "c"}})
    resp = await http.post("/api/v1/namespaces", json={"metadata": {"name": "extra"}})
    assert resp.status == 201
    names = [i["metadata"]["name"] for i in (await _json(await http.get("/api/v1/namespaces")))["items"]]
    assert names == ["extra", "ns1"]
    assert (await http.get("/api/v1/namespaces/ns1")).status == 200
    assert (await http.get("/api/v1/namespaces/nope")).status == 404


async def test_delete_honours_finalizers_and_collects_dependents(emu: Any) -> None:
    emulator, http = emu
    cr = await _json(await http.post(CR_PATH, json={"metadata": {"name": "a", "finalizers": ["f/x"]}}))
    owner = {"apiVersion": "deepdetect.io/v1alpha1", "kind": "DeepDetectService", "name": "a"}
    owner["uid"] = cr["metadata"]["uid"]
    await http.post(CM_PATH, json={"metadata": {"name": "child", "ownerReferences": [owner]}})
    marked = await _json(await http.delete(f"{CR_PATH}/a"))
    assert marked["metadata"]["deletionTimestamp"]
    assert emulator.stored("deepdetect.io/v1alpha1/deepdetectservices", "ns1", "a") is not None
    await http.patch(f"{CR_PATH}/a", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert emulator.stored("deepdetect.io/v1alpha1/deepdetectservices", "ns1", "a") is None
    assert emulator.stored("v1/configmaps", "ns1", "child") is None  # garbage-collected
    assert (await http.delete(f"{CR_PATH}/a")).status == 404


async def test_set_status_and_watch_events(emu: Any) -> None:
    emulator, http = emu
    dep = {"metadata": {"name": "d", "labels": {"app": "x"}}, "spec": {"replicas": 1}}
    await http.post(DEP_PATH, json=dep)
    await emulator.set_status("apps/v1/deployments", "ns1", "d", {"readyReplicas": 1})
    dep = emulator.stored("apps/v1/deployments", "ns1", "d")
    assert dep["status"] == {"readyReplicas": 1} and dep["metadata"]["generation"] == 1
    async with http.get(DEP_PATH, params={"watch": "true", "labelSelector": "app=x"}) as resp:
        line = await resp.content.readline()
        assert b'"ADDED"' in line and b'"readyReplicas": 1' in line
    writes = emulator.writes()
    assert [w.method.value for w in writes] == ["POST"]  # set_status is not an HTTP request


@pytest.mark.parametrize(("query", "value"), [("timeoutSeconds", "300.0"), ("limit", "1.5")])
async def test_integer_query_parameters_are_parsed_strictly(query: str, value: str) -> None:
    """A real API server parses these with strconv.ParseInt (cases.json): 300.0 is a 400, not a watch."""
    emu = make_emulator()
    async with emu, kmock.Server(emu) as server, aiohttp.ClientSession(base_url=str(server.url)) as http:
        params = {query: value, **({"watch": "true"} if query == "timeoutSeconds" else {})}
        resp = await http.get("/api/v1/namespaces/ns/configmaps", params=params)
        assert resp.status == 400
        body = await resp.json()
        assert body["reason"] == "BadRequest"
        assert body["message"] == f'strconv.ParseInt: parsing "{value}": invalid syntax'
        ok = await http.get("/api/v1/namespaces/ns/configmaps", params={query: "1"})
        assert ok.status == 200
