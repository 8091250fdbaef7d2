"""The reconciler reads from watch-fed caches (readcache.py): quiet passes make no request at all, and
what someone else does to a child still reaches the operator (through the watch, not a GET)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest_integration import (
    OPERATOR_UA,
    Cluster,
    cluster,
    cluster_backend,
    cr_manifest,
    emulator_only,
    eventually,
)
from deepdetect_operator import naming
from deepdetect_operator.readcache import compact

__all__ = ["cluster", "cluster_backend"]  # the fixture, imported for pytest
pytestmark = emulator_only("counts the operator's requests in the emulator's recording")


@pytest.fixture()
def checkpoint(tmp_path: Path) -> str:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    return f"file://{path}"


def _agent(req: Any) -> str:
    return next((str(v) for k, v in req.headers.items() if k.lower() == "user-agent"), "")


def _operator_calls(cluster: Cluster, since: int) -> list[str]:
    """The operator's requests after `since`, watches excepted (kopf's long-lived streams)."""
    out = []
    for req in cluster.emu.recorded[since:]:
        if "watch=true" in str(req.url.query_string):
            continue
        if _agent(req).startswith((OPERATOR_UA, "kopf")):
            out.append(f"{req.method.value} {req.url.path}")
    return out


async def _ready(cluster: Cluster, name: str, uri: str) -> None:
    await cluster.create(cr_manifest(name, uri))
    await eventually(lambda: cluster.deployment(name), message="deployment")
    await cluster.make_available(name)
    await eventually(lambda: cluster.status(name).get("phase") == "Ready", message="Ready")


async def test_quiet_passes_read_only_the_api_key_once_per_resync(cluster: Cluster, checkpoint: str) -> None:
    names = ("faces", "voices")
    for name in names:
        await _ready(cluster, name, checkpoint)
    mark = await cluster.quiet()
    passes = cluster.memo.reconciler.passes
    resyncs = 4
    await asyncio.sleep(cluster.config.resync_seconds * resyncs)  # several full resyncs of both CRs
    assert cluster.memo.reconciler.passes >= passes + resyncs, "the resyncs ran"
    calls = _operator_calls(cluster, mark)
    # Secrets are not watched: the generated key is re-read once per resync (a hand rotation rolls the
    # pods then); nothing else, no write.
    secrets = f"GET /api/v1/namespaces/{cluster.ns}/secrets"
    keys = {f"{secrets}/{naming.generated_api_key_secret_name(n)}" for n in names}
    assert set(calls) <= keys, calls
    assert len(calls) <= len(names) * (resyncs + 1)


async def test_a_deleted_child_is_seen_through_the_watch_and_recreated(
    cluster: Cluster, checkpoint: str
) -> None:
    await _ready(cluster, "faces", checkpoint)
    await cluster.quiet()
    old = cluster.get("v1/services", naming.service_name("faces"))
    assert old is not None
    await cluster.remove("v1/services", naming.service_name("faces"))
    again = await eventually(
        lambda: (svc := cluster.get("v1/services", naming.service_name("faces")))
        and svc["metadata"]["uid"] != old["metadata"]["uid"]
        and svc,
        message="the Service re-created",
    )
    assert again["spec"]["ports"] == old["spec"]["ports"]


async def test_an_edited_child_is_put_back_from_the_watched_copy(cluster: Cluster, checkpoint: str) -> None:
    await _ready(cluster, "faces", checkpoint)
    await cluster.quiet()
    name = naming.pdb_name("faces")
    before = cluster.get("policy/v1/poddisruptionbudgets", name)
    assert before is not None
    await cluster.edit("policy/v1/poddisruptionbudgets", name, {"spec": {"maxUnavailable": 7}})
    await eventually(
        lambda: (pdb := cluster.get("policy/v1/poddisruptionbudgets", name))
        and pdb["spec"].get("maxUnavailable") == before["spec"].get("maxUnavailable"),
        message="the PDB put back",
    )


def test_compact_keeps_what_the_reconciler_reads() -> None:
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "d",
            "annotations": {
                "deepdetect.io/last-handled-configuration": "{...}",
                "deepdetect.io/applied-hash": "abc",
                "user/note": "x",
            },
            "managedFields": [
                {"manager": "deepdetect-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
                {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}},
            ],
        },
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 2},
    }
    small = compact(obj)
    assert [f["manager"] for f in small["metadata"]["managedFields"]] == ["deepdetect-operator"]
    assert small["metadata"]["annotations"] == {"deepdetect.io/applied-hash": "abc", "user/note": "x"}
    assert small["spec"] == obj["spec"] and small["status"] == obj["status"]
    assert len(obj["metadata"]["managedFields"]) == 2, "the watched original is not changed"
