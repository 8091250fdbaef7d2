"""The real kopf operator against the kmock-based API server: children, status, faults, deletion."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from conftest_integration import (
    CR_URL,
    DEPLOYMENTS,
    MERGE,
    NS,
    OPERATOR_UA,
    Cluster,
    cluster,
    cr_manifest,
    eventually,
    make_emulator,
)
from deepdetect_operator import naming
from deepdetect_operator.api import (
    ANNOTATION_CHECKPOINT_DIGEST,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_SECRET_HASH,
)
from deepdetect_operator.kubeapi import CONFIGMAPS, Conflict, Invalid, KubeAPI

__all__ = ["cluster"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(60)

CHILDREN = [
    ("v1/configmaps", naming.configmap_name),
    ("v1/services", naming.service_name),
    (DEPLOYMENTS, naming.deployment_name),
    ("autoscaling/v2/horizontalpodautoscalers", naming.hpa_name),
    ("policy/v1/poddisruptionbudgets", naming.pdb_name),
    ("v1/secrets", naming.generated_api_key_secret_name),
]


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "model.safetensors"
    data = b"not really safetensors, but bytes with a digest"
    path.write_bytes(data)
    return f"file://{path}", f"sha256:{hashlib.sha256(data).hexdigest()}"


def _children_present(c: Cluster, name: str, uid: str) -> bool:
    for resource, namer in CHILDREN:
        obj = c.emu.stored(resource, NS, namer(name))
        if obj is None:
            return False
        meta = obj["metadata"]
        assert [r["uid"] for r in meta["ownerReferences"] if r.get("controller")] == [uid], resource
        assert meta["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
        assert meta["labels"][naming.LABEL_INSTANCE] == name
        assert meta["labels"][naming.LABEL_NAME] == naming.APP_NAME
    return True


async def test_create_makes_every_child_then_ready(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, digest = checkpoint
    created = await cluster.create(cr_manifest("faces", uri))
    uid = created["metadata"]["uid"]
    await eventually(lambda: _children_present(cluster, "faces", uid), message="children")
    dep = cluster.deployment("faces")
    assert dep is not None
    assert dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKPOINT_DIGEST] == digest
    assert "replicas" not in dep["spec"]  # the HPA owns it
    status = await eventually(
        lambda: cluster.status("faces").get("phase") == "Progressing" and cluster.status("faces")
    )
    assert status["selector"] == naming.selector_string("faces")
    assert status["endpoint"] == f"http://faces.{NS}.svc:80"
    assert status["model"]["digest"] == digest
    assert cluster.condition("faces", "CheckpointResolved")["status"] == "True"
    assert "deepdetect.io/finalizer" in cluster.cr("faces")["metadata"]["finalizers"]
    assert "spec" not in {k for k in status}  # nothing of ours leaks elsewhere
    # The Deployment controller reports the replicas available: the CR follows.
    await cluster.make_available("faces")
    await eventually(lambda: cluster.status("faces").get("phase") == "Ready", message="Ready")
    assert cluster.condition("faces", "Ready")["status"] == "True"
    assert cluster.status("faces")["readyReplicas"] == 1
    assert cluster.status("faces")["model"]["lastGoodDigest"] == digest
    assert cluster.status("faces")["observedGeneration"] == cluster.cr("faces")["metadata"]["generation"]


async def test_progress_deadline_exceeded_degrades(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    await eventually(lambda: cluster.deployment("faces"), message="deployment")
    await cluster.make_available("faces")
    await eventually(lambda: cluster.status("faces").get("phase") == "Ready")
    # A later change (config) misses its deadline: Degraded, with the replicas still serving.
    await cluster.patch_spec("faces", {"batching": {"maxBatchSize": 8}})
    await eventually(lambda: cluster.deployment("faces")["metadata"]["generation"] == 2)
    await cluster.miss_deadline("faces", ready=1)
    await eventually(lambda: cluster.status("faces").get("phase") == "Degraded", message="Degraded")
    degraded = cluster.condition("faces", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ProgressDeadlineExceeded"
    assert cluster.condition("faces", "Ready")["status"] == "True"  # old pods still serve
    await eventually(lambda: cluster.events("ProgressDeadlineExceeded"), message="event")
    # Nothing ready at all: Failed.
    await cluster.miss_deadline("faces", ready=0)
    await eventually(lambda: cluster.status("faces").get("phase") == "Failed", message="Failed")


async def test_spec_update_scale_and_autoscaling_off(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    await eventually(lambda: cluster.deployment("faces"))
    before = cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"][
        ANNOTATION_CONFIG_HASH
    ]
    config_before = cluster.emu.stored("v1/configmaps", NS, naming.configmap_name("faces"))["data"]
    await cluster.patch_spec("faces", {"batching": {"maxBatchSize": 4}})

    def config_changed() -> bool:
        cm = cluster.emu.stored("v1/configmaps", NS, naming.configmap_name("faces"))
        ann = cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"]
        return cm["data"] != config_before and ann[ANNOTATION_CONFIG_HASH] != before

    await eventually(config_changed, message="ConfigMap and config hash")
    assert (
        "max_batch_size: 4"
        in cluster.emu.stored("v1/configmaps", NS, naming.configmap_name("faces"))["data"]["config.yaml"]
    )
    # Autoscaling off: the HPA goes, the Deployment gets spec.replicas; `kubectl scale` edits spec.replicas.
    await cluster.patch_spec("faces", {"autoscaling": {"enabled": False}, "replicas": 2})
    hpa = "autoscaling/v2/horizontalpodautoscalers"
    await eventually(
        lambda: cluster.emu.stored(hpa, NS, naming.hpa_name("faces")) is None, message="HPA deleted"
    )
    await eventually(lambda: cluster.deployment("faces")["spec"].get("replicas") == 2)
    # `kubectl scale dds/faces --replicas=3`: a merge patch of the scale subresource.
    scale_url = f"{CR_URL}/faces/scale"
    resp = await cluster.http.patch(scale_url, json={"spec": {"replicas": 3}}, headers=MERGE)
    assert resp.status == 200, await resp.text()
    await eventually(lambda: cluster.deployment("faces")["spec"].get("replicas") == 3, message="scaled")
    scale = await (await cluster.http.get(scale_url)).json()
    assert scale["spec"]["replicas"] == 3 and scale["status"]["selector"] == naming.selector_string("faces")


async def test_turning_autoscaling_on_keeps_the_replica_count(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    """Server-side apply removes a field its manager stops applying: dropping spec.replicas for the HPA
    would scale a 3-pod service to the default 1. The operator hands the field over first."""
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri, autoscaling={"enabled": False}, replicas=3))
    await eventually(lambda: (cluster.deployment("faces") or {}).get("spec", {}).get("replicas") == 3)
    await cluster.patch_spec("faces", {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 5}})
    hpa = "autoscaling/v2/horizontalpodautoscalers"
    await eventually(lambda: cluster.emu.stored(hpa, NS, naming.hpa_name("faces")), message="HPA created")
    deployment = cluster.deployment("faces")
    assert deployment["spec"].get("replicas") == 3
    owners = {e["manager"]: e["fieldsV1"] for e in deployment["metadata"]["managedFields"]}
    assert "f:replicas" not in owners["deepdetect-operator"]["f:spec"]
    assert "f:replicas" in owners["deepdetect-operator-replicas-handover"]["f:spec"]


async def test_deleted_or_edited_child_is_restored(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    svc = naming.service_name("faces")
    await eventually(lambda: cluster.emu.stored("v1/services", NS, svc) and cluster.deployment("faces"))
    await cluster.emu.remove("v1/services", NS, svc)
    assert cluster.emu.stored("v1/services", NS, svc) is None
    await eventually(lambda: cluster.emu.stored("v1/services", NS, svc), message="Service restored")
    # An edit of a field we own is reverted (the Deployment's own event triggers the pass).
    dep_name = naming.deployment_name("faces")
    image = cluster.deployment("faces")["spec"]["template"]["spec"]["containers"][0]["image"]
    edited = cluster.deployment("faces")["spec"]["template"]["spec"]["containers"]
    edited[0]["image"] = "evil:latest"
    await cluster.emu.edit(
        DEPLOYMENTS, NS, dep_name, {"spec": {"template": {"spec": {"containers": edited}}}}
    )
    await eventually(
        lambda: cluster.deployment("faces")["spec"]["template"]["spec"]["containers"][0]["image"] == image,
        message="Deployment restored",
    )
    # A deleted Deployment comes back too.
    await cluster.emu.remove(DEPLOYMENTS, NS, dep_name)
    await eventually(lambda: cluster.deployment("faces"), message="Deployment recreated")


async def test_noop_resync_makes_zero_writes(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    await eventually(lambda: cluster.deployment("faces"))
    await cluster.make_available("faces")
    await eventually(lambda: cluster.status("faces").get("phase") == "Ready")
    since = await cluster.quiet()
    passes = cluster.memo.reconciler.passes
    # Several resync periods: the operator reads, compares, and writes nothing at all.
    await eventually(lambda: cluster.memo.reconciler.passes >= passes + 3, message="resyncs", within=10)
    writes = [(w.url.path, w.data) for w in cluster.emu.writes(since)]
    assert not writes, writes
    reads = [
        r
        for r in cluster.emu.recorded[since:]
        if str(r.headers.get("User-Agent", "")).startswith(OPERATOR_UA)
    ]
    assert reads, "the resyncs did read the cluster"


async def test_bad_crs_degrade_and_others_still_reconcile(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("nosecret", uri, auth={"mode": "apiKey", "secretName": "missing-key"}))
    await cluster.create(cr_manifest("nofile", "file:///nonexistent/model.safetensors"))
    bad: dict[str, Any] = cr_manifest("badspec", uri)
    bad["spec"]["autoscaling"] = {"enabled": True, "minReplicas": 5, "maxReplicas": 2}  # CEL would refuse
    await cluster.create(bad)
    await cluster.create(cr_manifest("good", uri))

    def reason(name: str) -> str:
        cond = cluster.condition(name, "Degraded")
        return cond.get("reason", "") if cond.get("status") == "True" else ""

    await eventually(lambda: reason("nosecret") == "SecretNotFound", message="SecretNotFound")
    await eventually(lambda: reason("nofile") == "CheckpointNotResolved", message="CheckpointNotResolved")
    await eventually(lambda: reason("badspec") == "InvalidSpec", message="InvalidSpec")
    assert "missing-key" in cluster.condition("nosecret", "Degraded")["message"]
    assert "not found" in cluster.condition("nofile", "CheckpointResolved")["message"]
    assert "minReplicas" in cluster.condition("badspec", "Degraded")["message"]
    for name in ("nosecret", "nofile", "badspec"):
        assert cluster.status(name)["phase"] == "Degraded"
        assert cluster.deployment(name) is None  # nothing half-made
    await eventually(
        lambda: cluster.events("SecretNotFound") and cluster.events("InvalidSpec"), message="events"
    )
    await eventually(lambda: cluster.events("CheckpointNotResolved"), message="event")
    await eventually(lambda: cluster.deployment("good"), message="the good CR still reconciles")
    await cluster.make_available("good")
    await eventually(lambda: cluster.status("good").get("phase") == "Ready")
    # Fixing the spec clears Degraded.
    await cluster.patch_spec("badspec", {"autoscaling": {"minReplicas": 1}})
    await eventually(lambda: reason("badspec") == "" and cluster.deployment("badspec"), message="recovered")


async def test_delete_clears_finalizer_and_children_go(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    await eventually(
        lambda: cluster.deployment("faces") and cluster.cr("faces")["metadata"].get("finalizers")
    )
    await cluster.delete("faces")
    await eventually(lambda: cluster.cr("faces") is None, message="CR gone (finalizer cleared)")
    assert cluster.deployment("faces") is None  # owner-reference garbage collection
    assert cluster.memo.reconciler.metrics.managed._value.get() == 0


async def test_api_faults_are_retried(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    # Two 503s on the Deployment apply (retried inside the wrapper with backoff), then a 500 storm on the
    # Service longer than the wrapper's retries (kopf retries the handler; the timer also resyncs).
    cluster.emu.fail_next("PATCH", r"/deployments/faces$", status=503, times=2)
    cluster.emu.fail_next("PATCH", r"/services/faces$", status=500, times=6)
    cluster.emu.fail_next("POST", r"/secrets$", status=409, times=1)  # "exists": read back, never overwrite
    await cluster.create(cr_manifest("faces", uri))
    await eventually(lambda: cluster.deployment("faces"), message="Deployment despite 503s")
    await eventually(
        lambda: cluster.emu.stored("v1/services", NS, "faces"), message="Service after the storm"
    )
    await eventually(lambda: cluster.emu.stored("v1/secrets", NS, "faces-api-key"), message="API-key Secret")
    failed = [
        w for w in cluster.emu.writes() if w.url.path.endswith(("/deployments/faces", "/services/faces"))
    ]
    assert len(failed) >= 2 + 6 + 2


async def test_service_monitor_follows_api_and_spec(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    sm = "monitoring.coreos.com/v1/servicemonitors"
    # Prometheus operator installed: its API is discovered (the reconciler caches discovery; start afresh).
    cluster.emu.resources[sm] = kmock.ResourceInfo(
        kind="ServiceMonitor", namespaced=True, verbs={"get", "patch"}
    )
    cluster.memo.reconciler._sm_cache = None
    await cluster.create(cr_manifest("faces", uri, monitoring={"serviceMonitor": True}))
    await eventually(
        lambda: cluster.emu.stored(sm, NS, naming.service_monitor_name("faces")), message="created"
    )
    await cluster.patch_spec("faces", {"monitoring": {"serviceMonitor": False}})
    await eventually(
        lambda: cluster.emu.stored(sm, NS, naming.service_monitor_name("faces")) is None, message="gone"
    )


async def test_api_key_secret_created_once_never_overwritten(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    name = naming.generated_api_key_secret_name("faces")
    secret = await eventually(lambda: cluster.emu.stored("v1/secrets", NS, name), message="Secret")
    assert (
        secret["data"]["api-key"] and secret["metadata"]["ownerReferences"][0]["kind"] == "DeepDetectService"
    )
    await eventually(lambda: cluster.deployment("faces"))
    hash_before = cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"][
        ANNOTATION_SECRET_HASH
    ]
    # The key is rotated by hand: the operator keeps it, and the new hash rolls the pods.
    await cluster.emu.edit("v1/secrets", NS, name, {"data": {"api-key": "cm90YXRlZA=="}})
    await eventually(
        lambda: (
            cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SECRET_HASH]
            != hash_before
        ),
        message="secret hash rolled",
    )
    assert cluster.emu.stored("v1/secrets", NS, name)["data"] == {"api-key": "cm90YXRlZA=="}
    creates = [
        w for w in cluster.emu.writes() if w.method.value == "POST" and w.url.path.endswith("/secrets")
    ]
    assert len(creates) == 1


async def test_kubeapi_maps_api_answers() -> None:
    """The wrapper alone against the emulator: each HTTP answer becomes the documented outcome."""
    emu = make_emulator()
    async with emu, kmock.Server(emu) as server:
        logins: list[int] = []

        def login() -> kopf.ConnectionInfo:
            logins.append(1)
            return kopf.ConnectionInfo(server=str(server.url).rstrip("/"), token="fresh")

        api = KubeAPI(kopf.ConnectionInfo(server=str(server.url).rstrip("/"), token="old"), login=login,
                      backoff=0.01, temporary_delay=1.5)  # fmt: skip
        try:
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}}
            assert await api.get(CONFIGMAPS, NS, "c") is None  # 404 -> absent
            await api.create(cm)
            with pytest.raises(Conflict):
                await api.create(cm)  # 409
            emu.fail_next("PATCH", r"/configmaps/c$", status=422)
            with pytest.raises(Invalid):
                await api.apply(cm)
            emu.fail_next("GET", r"/configmaps/c$", status=503, times=2)
            assert (await api.get(CONFIGMAPS, NS, "c"))["metadata"]["name"] == "c"  # retried
            emu.fail_next("GET", r"/configmaps/c$", status=500, times=4)  # 1 try + 3 retries
            with pytest.raises(kopf.TemporaryError) as exc:
                await api.get(CONFIGMAPS, NS, "c")
            assert exc.value.delay == 1.5
            emu.fail_next("GET", r"/configmaps/c$", status=401)
            assert await api.get(CONFIGMAPS, NS, "c") is not None and logins == [1]  # logged in again
            emu.fail_next("GET", r"/configmaps/c$", status=403)
            with pytest.raises(kopf.TemporaryError) as exc:
                await api.get(CONFIGMAPS, NS, "c")
            assert exc.value.delay == 60.0
            assert await api.delete(CONFIGMAPS, NS, "c", uid="not-its-uid") is False  # precondition: 409
            uid = (await api.get(CONFIGMAPS, NS, "c"))["metadata"]["uid"]
            assert await api.delete(CONFIGMAPS, NS, "c", uid=uid) is True
            assert await api.delete(CONFIGMAPS, NS, "nope") is False
            assert await api.serves("monitoring.coreos.com", "v1", "servicemonitors") is False
        finally:
            await api.close()


async def test_jobs_on_several_replicas_need_redis(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    """Jobs with up to 3 replicas and no Redis: Degraded/JobsNeedRedis, nothing made. Naming a Redis Secret
    that does not exist yet: SecretNotFound. Once it exists the service reconciles, reads it through a
    mounted file, and a change of the URL rolls the pods (secret hash)."""
    uri, _ = checkpoint
    await cluster.create(cr_manifest("jobs", uri, jobs={"enabled": True}, networkPolicy={"enabled": True}))

    def degraded() -> dict[str, Any]:
        cond = cluster.condition("jobs", "Degraded")
        return cond if cond.get("status") == "True" else {}

    await eventually(lambda: degraded().get("reason") == "JobsNeedRedis", message="JobsNeedRedis")
    message = degraded()["message"]
    assert "needs spec.redis.urlSecret" in message and "up to 3 replicas" in message
    assert cluster.deployment("jobs") is None and cluster.status("jobs")["phase"] == "Degraded"
    assert cluster.emu.stored("v1/configmaps", NS, naming.configmap_name("jobs")) is None  # nothing half-made
    await eventually(lambda: cluster.events("JobsNeedRedis"), message="event")

    await cluster.patch_spec("jobs", {"redis": {"urlSecret": "redis-url"}})
    await eventually(lambda: degraded().get("reason") == "SecretNotFound", message="SecretNotFound")
    assert "redis-url (redis.urlSecret)" in degraded()["message"]

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis-url", "namespace": NS},
              "stringData": {"url": "rediss://:pw@redis.data.svc:6380/0"}}
    resp = await cluster.http.post(f"/api/v1/namespaces/{NS}/secrets", json=secret)
    assert resp.status == 201, await resp.text()
    dep = await eventually(lambda: cluster.deployment("jobs"), message="reconciled once Redis is named")
    await eventually(lambda: not degraded(), message="Degraded cleared")
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "redis", "secret": {"secretName": "redis-url", "items": [{"key": "url", "path": "url"}],
                                        "defaultMode": 0o440}} in pod["volumes"]
    assert cluster.emu.stored("networking.k8s.io/v1/networkpolicies", NS, "jobs") is not None
    first_hash = dep["spec"]["template"]["metadata"]["annotations"]["deepdetect.io/secret-hash"]
    resp = await cluster.http.patch(f"/api/v1/namespaces/{NS}/secrets/redis-url", headers=MERGE,
                                    json={"stringData": {"url": "rediss://:rotated@redis.data.svc:6380/0"}})
    assert resp.status == 200
    await cluster.patch_spec("jobs", {"cache": {"ttlSeconds": 60}})  # any trigger: a pass re-reads Secrets
    await eventually(lambda: cluster.deployment("jobs")["spec"]["template"]["metadata"]["annotations"]
                     ["deepdetect.io/secret-hash"] != first_hash, message="a new Redis URL rolls the pods")
