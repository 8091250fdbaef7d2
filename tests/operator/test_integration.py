"""The real kopf operator against a cluster: children, status, faults, deletion.

Against the emulator by default; `DEEPDETECT_TEST_CLUSTER=existing` runs the same tests against the
cluster in KUBECONFIG (conftest_integration.py). Where a test writes a Deployment's status by hand (what
only the emulator allows while no controller runs), a counterpart checks the same behaviour against
whatever the cluster's own controllers report.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from conftest_integration import (
    DEPLOYMENTS,
    MERGE,
    NS,
    OPERATOR_UA,
    Cluster,
    cluster,
    cluster_backend,
    cr_manifest,
    emulator_only,
    eventually,
    make_emulator,
    needs_controllers,
)
from deepdetect_operator import naming
from deepdetect_operator.api import (
    ANNOTATION_CHECKPOINT_DIGEST,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_SECRET_HASH,
)
from deepdetect_operator.kubeapi import CONFIGMAPS, FIELD_MANAGER, Conflict, Invalid, KubeAPI
from kube_emulator import SERVICE_MONITOR_CRD

__all__ = ["cluster", "cluster_backend"]  # the fixture, imported for pytest

pytestmark = pytest.mark.timeout(60)

CHILDREN = [
    ("v1/configmaps", naming.configmap_name),
    ("v1/services", naming.service_name),
    (DEPLOYMENTS, naming.deployment_name),
    ("autoscaling/v2/horizontalpodautoscalers", naming.hpa_name),
    ("policy/v1/poddisruptionbudgets", naming.pdb_name),
    ("v1/secrets", naming.generated_api_key_secret_name),
]
HAND_WRITTEN_STATUS = ("writes the Deployment's status by hand (make_available/miss_deadline): a real "
                       "deployment controller would overwrite it")  # fmt: skip


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[str, str]:
    path = tmp_path / "model.safetensors"
    data = b"not really safetensors, but bytes with a digest"
    path.write_bytes(data)
    return f"file://{path}", f"sha256:{hashlib.sha256(data).hexdigest()}"


def _children_present(c: Cluster, name: str, uid: str) -> bool:
    for resource, namer in CHILDREN:
        obj = c.get(resource, namer(name))
        if obj is None:
            return False
        meta = obj["metadata"]
        assert [r["uid"] for r in meta["ownerReferences"] if r.get("controller")] == [uid], resource
        assert meta["labels"][naming.LABEL_MANAGED_BY] == naming.MANAGED_BY
        assert meta["labels"][naming.LABEL_INSTANCE] == name
        assert meta["labels"][naming.LABEL_NAME] == naming.APP_NAME
    return True


def _owned_by(obj: dict[str, Any], manager: str, operation: str = "Apply") -> dict[str, Any]:
    entry = next((e for e in obj["metadata"].get("managedFields") or []
                  if e["manager"] == manager and e["operation"] == operation), {})  # fmt: skip
    return dict(entry.get("fieldsV1") or {})


@emulator_only(HAND_WRITTEN_STATUS)
async def test_create_makes_every_child_then_ready(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, digest = checkpoint
    created = await cluster.create(cr_manifest("faces", uri))
    uid = created["metadata"]["uid"]
    await eventually(lambda: _children_present(cluster, "faces", uid), message="children")
    dep = cluster.deployment("faces")
    assert dep is not None
    assert dep["spec"]["template"]["metadata"]["annotations"][ANNOTATION_CHECKPOINT_DIGEST] == digest
    # The HPA owns the replica count: the operator never applies it; the API server defaults it to 1.
    assert "f:replicas" not in _owned_by(dep, FIELD_MANAGER)["f:spec"]
    assert dep["spec"]["replicas"] == 1
    status = await eventually(
        lambda: cluster.status("faces").get("phase") == "Progressing" and cluster.status("faces")
    )
    assert status["selector"] == naming.selector_string("faces")
    assert status["endpoint"] == f"http://faces.{cluster.ns}.svc:80"
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


async def test_create_makes_every_child_and_an_honest_status(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    """The counterpart without hand-written status: children with owner references, and a status that
    never claims Ready while no pod is (on a cluster without kubelet, pods stay Pending)."""
    uri, digest = checkpoint
    created = await cluster.create(cr_manifest("faces", uri))
    uid = created["metadata"]["uid"]
    await eventually(lambda: _children_present(cluster, "faces", uid), message="children")
    status = await eventually(
        lambda: cluster.status("faces").get("phase") == "Progressing" and cluster.status("faces"),
        message="status",
    )
    assert status["model"]["digest"] == digest and status["readyReplicas"] == 0
    assert cluster.condition("faces", "Ready")["status"] == "False"
    if cluster.backend.has_controllers:  # the Deployment controller's own account of the missing pods

        def observed() -> bool:
            dep = cluster.deployment("faces") or {}
            return (dep.get("status") or {}).get("observedGeneration") == dep["metadata"]["generation"]

        await eventually(observed, message="controller status")
        ready = lambda: cluster.condition("faces", "Ready").get("message", "")  # noqa: E731
        await eventually(lambda: "0/1 replicas ready" in ready(), message="the controller's counts")


@emulator_only(HAND_WRITTEN_STATUS)
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


@needs_controllers("the deployment controller reports ProgressDeadlineExceeded for pods that never start")
@pytest.mark.timeout(150)
async def test_progress_deadline_reported_by_the_deployment_controller(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    """The counterpart: no kubelet runs the pods, the controller gives up after 30 s, the CR says Failed."""
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri, rollout={"progressDeadlineSeconds": 30}))
    await eventually(lambda: cluster.status("faces").get("phase") == "Failed", within=120, message="Failed")
    assert cluster.condition("faces", "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert cluster.condition("faces", "Ready")["status"] == "False"
    await eventually(lambda: cluster.events("ProgressDeadlineExceeded"), message="event")


async def test_spec_update_scale_and_autoscaling_off(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    await eventually(lambda: cluster.deployment("faces"))
    before = cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"][
        ANNOTATION_CONFIG_HASH
    ]
    config_before = cluster.get("v1/configmaps", naming.configmap_name("faces"))["data"]
    await cluster.patch_spec("faces", {"batching": {"maxBatchSize": 4}})

    def config_changed() -> bool:
        cm = cluster.get("v1/configmaps", naming.configmap_name("faces"))
        ann = cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"]
        return cm["data"] != config_before and ann[ANNOTATION_CONFIG_HASH] != before

    await eventually(config_changed, message="ConfigMap and config hash")
    config = cluster.get("v1/configmaps", naming.configmap_name("faces"))["data"]["config.yaml"]
    assert "max_batch_size: 4" in config
    # Autoscaling off: the HPA goes, the Deployment gets spec.replicas; `kubectl scale` edits spec.replicas.
    await cluster.patch_spec("faces", {"autoscaling": {"enabled": False}, "replicas": 2})
    hpa = "autoscaling/v2/horizontalpodautoscalers"
    await eventually(lambda: cluster.get(hpa, naming.hpa_name("faces")) is None, message="HPA deleted")
    await eventually(lambda: cluster.deployment("faces")["spec"].get("replicas") == 2)
    # `kubectl scale dds/faces --replicas=3`: a merge patch of the scale subresource.
    scale_url = f"{cluster.cr_url}/faces/scale"
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
    await eventually(lambda: cluster.get(hpa, naming.hpa_name("faces")), message="HPA created")
    deployment = cluster.deployment("faces")
    assert deployment["spec"].get("replicas") == 3
    assert "f:replicas" not in _owned_by(deployment, FIELD_MANAGER)["f:spec"]
    assert "f:replicas" in _owned_by(deployment, "deepdetect-operator-replicas-handover")["f:spec"]


async def test_deleted_or_edited_child_is_restored(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    svc = naming.service_name("faces")
    await eventually(lambda: cluster.get("v1/services", svc) and cluster.deployment("faces"))
    await cluster.remove("v1/services", svc)
    await eventually(lambda: cluster.get("v1/services", svc), message="Service restored")
    # An edit of a field we own is reverted (the Deployment's own event triggers the pass).
    dep_name = naming.deployment_name("faces")
    image = cluster.deployment("faces")["spec"]["template"]["spec"]["containers"][0]["image"]
    edited = cluster.deployment("faces")["spec"]["template"]["spec"]["containers"]
    edited[0]["image"] = "evil:latest"
    await cluster.edit(DEPLOYMENTS, dep_name, {"spec": {"template": {"spec": {"containers": edited}}}})
    await eventually(
        lambda: cluster.deployment("faces")["spec"]["template"]["spec"]["containers"][0]["image"] == image,
        message="Deployment restored",
    )
    # A deleted Deployment comes back too.
    await cluster.remove(DEPLOYMENTS, dep_name)
    await eventually(lambda: cluster.deployment("faces"), message="Deployment recreated")


@emulator_only("counts every request the API server received, kopf's included (the emulator's recording)")
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


@pytest.mark.parametrize("resources", [{"cpu": "1", "memory": "1Gi"}, {"cpu": "0.5", "memory": "1024Mi"}])
async def test_noop_resync_writes_nothing_by_the_operators_count(
    cluster: Cluster, checkpoint: tuple[str, str], resources: dict[str, str]
) -> None:
    """The counterpart: the operator's own count of its writes stands still over several resyncs of a
    settled CR, whatever the cluster's controllers report meanwhile (what the API server returns for
    what we applied must compare equal to it: defaults, canonical quantities, dropped empties). `0.5`
    and `1024Mi` come back as `500m` and `1Gi`: rendered as typed, they were re-applied on every pass."""
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri, resources={"gpus": 0, **resources}))
    await eventually(lambda: cluster.status("faces").get("phase") == "Progressing")
    await cluster.quiet()
    calls = cluster.memo.reconciler.api.calls
    before = {verb: calls[verb] for verb in ("apply", "create", "delete", "status")}
    passes = cluster.memo.reconciler.passes
    await eventually(lambda: cluster.memo.reconciler.passes >= passes + 3, message="resyncs", within=10)
    assert {verb: calls[verb] for verb in before} == before


async def test_bad_crs_degrade_and_others_still_reconcile(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("nosecret", uri, auth={"mode": "apiKey", "secretName": "missing-key"}))
    await cluster.create(cr_manifest("nofile", "file:///nonexistent/model.safetensors"))
    # A spec the CRD's CEL rules forbid never reaches the operator: the API server refuses it.
    bad: dict[str, Any] = cr_manifest("badspec", uri)
    bad["spec"]["autoscaling"] = {"enabled": True, "minReplicas": 5, "maxReplicas": 2}
    bad["metadata"]["namespace"] = cluster.ns
    refused = await cluster.http.post(cluster.cr_url, json=bad)
    assert refused.status == 422
    assert (await refused.json())["message"] == (
        'DeepDetectService.deepdetect.io "badspec" is invalid: spec.autoscaling.minReplicas: Invalid value: '
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
    )
    await cluster.create(cr_manifest("good", uri))

    def reason(name: str) -> str:
        cond = cluster.condition(name, "Degraded")
        return cond.get("reason", "") if cond.get("status") == "True" else ""

    await eventually(lambda: reason("nosecret") == "SecretNotFound", message="SecretNotFound")
    await eventually(lambda: reason("nofile") == "CheckpointNotResolved", message="CheckpointNotResolved")
    assert "missing-key" in cluster.condition("nosecret", "Degraded")["message"]
    assert "not found" in cluster.condition("nofile", "CheckpointResolved")["message"]
    for name in ("nosecret", "nofile"):
        assert cluster.status(name)["phase"] == "Degraded"
        assert cluster.deployment(name) is None  # nothing half-made
    await eventually(lambda: cluster.events("SecretNotFound"), message="event")
    await eventually(lambda: cluster.events("CheckpointNotResolved"), message="event")
    await eventually(lambda: cluster.deployment("good"), message="the good CR still reconciles")


@emulator_only("stores a CR as an older, laxer CRD accepted it (a real server never re-validates it)")
async def test_spec_the_crd_no_longer_allows_degrades_then_recovers(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    uri, _ = checkpoint
    bad: dict[str, Any] = cr_manifest("badspec", uri)
    bad["spec"]["autoscaling"] = {"enabled": True, "minReplicas": 5, "maxReplicas": 2}
    cluster.emu.seed("deepdetect.io/v1alpha1/deepdetectservices", cluster.ns, bad)

    def reason() -> str:
        cond = cluster.condition("badspec", "Degraded")
        return cond.get("reason", "") if cond.get("status") == "True" else ""

    await eventually(lambda: reason() == "InvalidSpec", message="InvalidSpec")
    assert "minReplicas" in cluster.condition("badspec", "Degraded")["message"]
    assert cluster.status("badspec")["phase"] == "Degraded" and cluster.deployment("badspec") is None
    await eventually(lambda: cluster.events("InvalidSpec"), message="event")
    # Fixing the spec clears Degraded.
    await cluster.patch_spec("badspec", {"autoscaling": {"minReplicas": 1}})
    await eventually(lambda: reason() == "" and cluster.deployment("badspec"), message="recovered")


async def test_delete_clears_finalizer_and_children_go(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    await eventually(
        lambda: cluster.deployment("faces") and cluster.cr("faces")["metadata"].get("finalizers")
    )
    await cluster.delete("faces")
    await eventually(lambda: cluster.cr("faces") is None, message="CR gone (finalizer cleared)")
    # Owner-reference garbage collection (the garbage collector's work: at once here, soon on a cluster).
    await eventually(lambda: cluster.deployment("faces") is None, message="children collected", within=30)
    assert cluster.memo.reconciler.metrics.managed._value.get() == 0


@emulator_only("injects API errors (fail_next) and counts the retries in the emulator's recording")
async def test_api_faults_are_retried(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    # Two 503s on the Deployment apply (retried inside the wrapper with backoff), then a 500 storm on the
    # Service longer than the wrapper's retries (kopf retries the handler; the timer also resyncs).
    cluster.emu.fail_next("PATCH", r"/deployments/faces$", status=503, times=2)
    cluster.emu.fail_next("PATCH", r"/services/faces$", status=500, times=6)
    cluster.emu.fail_next("POST", r"/secrets$", status=409, times=1)  # "exists": read back, never overwrite
    await cluster.create(cr_manifest("faces", uri))
    await eventually(lambda: cluster.deployment("faces"), message="Deployment despite 503s")
    await eventually(lambda: cluster.get("v1/services", "faces"), message="Service after the storm")
    await eventually(lambda: cluster.get("v1/secrets", "faces-api-key"), message="API-key Secret")
    failed = [
        w for w in cluster.emu.writes() if w.url.path.endswith(("/deployments/faces", "/services/faces"))
    ]
    assert len(failed) >= 2 + 6 + 2


async def test_service_monitor_follows_api_and_spec(cluster: Cluster, checkpoint: tuple[str, str]) -> None:
    uri, _ = checkpoint
    sm = "monitoring.coreos.com/v1/servicemonitors"
    # Prometheus operator installed: its API is discovered (the reconciler caches discovery; start afresh).
    if not await cluster.install_crd(SERVICE_MONITOR_CRD):
        pytest.skip("this cluster serves no monitoring.coreos.com/v1 ServiceMonitors (prometheus-operator)")
    cluster.memo.reconciler._sm_cache = None
    await cluster.create(cr_manifest("faces", uri, monitoring={"serviceMonitor": True}))
    await eventually(lambda: cluster.get(sm, naming.service_monitor_name("faces")), message="created")
    await cluster.patch_spec("faces", {"monitoring": {"serviceMonitor": False}})
    await eventually(lambda: cluster.get(sm, naming.service_monitor_name("faces")) is None, message="gone")


async def test_api_key_secret_created_once_never_overwritten(
    cluster: Cluster, checkpoint: tuple[str, str]
) -> None:
    uri, _ = checkpoint
    await cluster.create(cr_manifest("faces", uri))
    name = naming.generated_api_key_secret_name("faces")
    secret = await eventually(lambda: cluster.get("v1/secrets", name), message="Secret")
    assert (
        secret["data"]["api-key"] and secret["metadata"]["ownerReferences"][0]["kind"] == "DeepDetectService"
    )
    await eventually(lambda: cluster.deployment("faces"))
    hash_before = cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"][
        ANNOTATION_SECRET_HASH
    ]
    # The key is rotated by hand: the operator keeps it, and the new hash rolls the pods.
    await cluster.edit("v1/secrets", name, {"data": {"api-key": "cm90YXRlZA=="}})
    await eventually(
        lambda: (
            cluster.deployment("faces")["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SECRET_HASH]
            != hash_before
        ),
        message="secret hash rolled",
    )
    assert cluster.get("v1/secrets", name)["data"] == {"api-key": "cm90YXRlZA=="}
    assert cluster.memo.reconciler.api.calls["create"] == 1  # the Secret, once


async def test_kubeapi_maps_api_answers() -> None:
    """The wrapper alone against the emulator: each HTTP answer becomes the documented outcome."""
    emu = make_emulator(namespaces=(NS,))
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
            with pytest.raises(Invalid):  # a real 422 from the API server's validation, not an injected one
                await api.apply({**cm, "data": {"bad key!": "x"}})
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
    assert cluster.get("v1/configmaps", naming.configmap_name("jobs")) is None  # nothing half-made
    await eventually(lambda: cluster.events("JobsNeedRedis"), message="event")

    await cluster.patch_spec("jobs", {"redis": {"urlSecret": "redis-url"}})
    await eventually(lambda: degraded().get("reason") == "SecretNotFound", message="SecretNotFound")
    assert "redis-url (redis.urlSecret)" in degraded()["message"]

    meta = {"name": "redis-url", "namespace": cluster.ns}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
              "stringData": {"url": "rediss://:pw@redis.data.svc:6380/0"}}
    resp = await cluster.http.post(f"/api/v1/namespaces/{cluster.ns}/secrets", json=secret)
    assert resp.status == 201, await resp.text()
    dep = await eventually(lambda: cluster.deployment("jobs"), message="reconciled once Redis is named")
    await eventually(lambda: not degraded(), message="Degraded cleared")
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "redis", "secret": {"secretName": "redis-url", "items": [{"key": "url", "path": "url"}],
                                        "defaultMode": 0o440}} in pod["volumes"]
    assert cluster.get("networking.k8s.io/v1/networkpolicies", "jobs") is not None
    first_hash = dep["spec"]["template"]["metadata"]["annotations"]["deepdetect.io/secret-hash"]
    resp = await cluster.http.patch(f"/api/v1/namespaces/{cluster.ns}/secrets/redis-url", headers=MERGE,
                                    json={"stringData": {"url": "rediss://:rotated@redis.data.svc:6380/0"}})
    assert resp.status == 200
    await cluster.patch_spec("jobs", {"cache": {"ttlSeconds": 60}})  # any trigger: a pass re-reads Secrets
    await eventually(lambda: cluster.deployment("jobs")["spec"]["template"]["metadata"]["annotations"]
                     ["deepdetect.io/secret-hash"] != first_hash, message="a new Redis URL rolls the pods")
