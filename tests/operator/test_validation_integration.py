"""Issue 10, done-when: the quality gate on the operator test API.

A new digest creates the validation Job and no rollout; the Job's success rolls the Deployment and puts the
metrics in status.model; its failure leaves the pod template untouched, sets Degraded/ValidationFailed with
the metrics and an Event naming the gate, and is not retried for that digest, while a newer digest is tried;
deleting the CR deletes its Jobs. The emulator runs no Job controller or kubelet: the test writes the Job's
status and its Pod's termination message as they would (emulator-only).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest_integration import Cluster, cluster, cluster_backend, cr_manifest, emulator_only, eventually
from deepdetect_operator import render
from test_rollout_integration import CheckpointServer, http_checkpoint, template_digest

__all__ = ["cluster", "cluster_backend", "http_checkpoint"]

pytestmark = pytest.mark.timeout(90)

JOBS = "batch/v1/jobs"
PODS = "v1/pods"
BY_HAND = "writes the Job's status and its Pod's termination message by hand (no Job controller, no kubelet)"
VALIDATION = {
    "datasetUri": "https://data.example/sets/holdout.safetensors",
    "gates": {"minAuc": 0.9},
    "timeoutSeconds": 600,
}


def validated_cr(name: str, uri: str) -> dict[str, Any]:
    return cr_manifest(
        name,
        uri,
        model={"checkpoint": {"uri": uri, "pollInterval": "1s"}},
        rollout={"validation": VALIDATION},
    )


def jobs(c: Cluster) -> list[dict[str, Any]]:
    return c.backend.list(JOBS, c.ns)


def job_for(c: Cluster, name: str, digest: str) -> dict[str, Any] | None:
    return c.get(JOBS, render.validation_job_name(name, digest))


async def finish_job(c: Cluster, job: dict[str, Any], *, passed: bool, summary: dict[str, Any]) -> None:
    """What the Job controller and the kubelet leave behind: a terminated Pod with the evaluate container's
    termination message, and the Job's final condition."""
    meta, template = job["metadata"], job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-x1",
            "namespace": c.ns,
            "labels": {**template["metadata"]["labels"], "job-name": meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    resp = await c.http.post(f"/api/v1/namespaces/{c.ns}/pods", json=pod)
    assert resp.status == 201, await resp.text()
    code = 0 if passed else 3
    await c.emu.set_status(
        PODS,
        c.ns,
        pod["metadata"]["name"],
        {
            "phase": "Succeeded" if passed else "Failed",
            "containerStatuses": [
                {
                    "name": "evaluate",
                    "ready": False,
                    "restartCount": 0,
                    "image": "x",
                    "imageID": "",
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if passed else "Error",
                            "message": json.dumps(summary),
                            "finishedAt": "2026-01-01T00:00:00Z",
                        }
                    },
                }
            ],
        },
    )
    cond = (
        {"type": "Complete", "status": "True", "reason": "CompletionsReached"}
        if passed
        else {
            "type": "Failed",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
    )
    counts = {"succeeded": 1} if passed else {"failed": 1}
    await c.emu.set_status(
        JOBS, c.ns, meta["name"], {"conditions": [cond], **counts, "startTime": "2026-01-01T00:00:00Z"}
    )


def summary(auc: float, failed: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metrics": {
            "auc": auc,
            "log_loss": 0.2,
            "accuracy": 0.9,
            "precision": 0.9,
            "recall": 0.88,
            "threshold": 0.5,
        },
        "dataset": "sha256:" + "d" * 64,
        "items": 200,
        "errors": 0,
        "passed": failed is None,
    }
    if failed:
        body["failed"] = failed
    return body


@emulator_only(BY_HAND)
async def test_gate_rolls_only_what_passed(cluster: Cluster, http_checkpoint: CheckpointServer) -> None:
    v1 = http_checkpoint.publish(b"checkpoint v1")
    await cluster.create(validated_cr("faces", http_checkpoint.url))

    # The first digest is validated before anything serves it: a Job, no Deployment.
    job1 = await eventually(lambda: job_for(cluster, "faces", v1), message="validation Job for v1")
    await eventually(
        lambda: (
            (cluster.status("faces").get("model", {}).get("candidate") or {}).get("state") == "Validating"
        ),
        message="candidate Validating",
    )
    assert cluster.deployment("faces") is None
    assert cluster.condition("faces", "Progressing")["reason"] == "Validating"
    assert cluster.status("faces")["phase"] == "Progressing"
    evaluate = job1["spec"]["template"]["spec"]["containers"][0]
    assert evaluate["command"][:2] == ["deepdetect-server", "evaluate"]
    assert evaluate["command"][evaluate["command"].index("--min-auc") + 1] == "0.9"

    await finish_job(cluster, job1, passed=True, summary=summary(0.97))
    await eventually(lambda: template_digest(cluster, "faces") == v1, message="v1 rolled after passing")
    await cluster.make_available("faces")
    await eventually(
        lambda: (cluster.status("faces")["model"].get("metrics") or {}).get("auc") == 0.97,
        message="serving metrics in status.model",
    )
    assert cluster.status("faces")["rollout"]["state"] == "Complete"

    # A new digest: validated, not rolled; it fails its gate.
    v2 = http_checkpoint.publish(b"checkpoint v2 that misses fakes")
    job2 = await eventually(lambda: job_for(cluster, "faces", v2), message="validation Job for v2")
    template_before = cluster.deployment("faces")["spec"]["template"]
    assert template_digest(cluster, "faces") == v1
    failed_line = "gate --min-auc 0.9 failed: auc 0.6100 is 0.2900 below it"
    await finish_job(cluster, job2, passed=False, summary=summary(0.61, failed_line))
    await eventually(
        lambda: cluster.condition("faces", "Degraded").get("reason") == "ValidationFailed",
        message="Degraded/ValidationFailed",
    )
    status = cluster.status("faces")
    assert status["model"]["candidate"]["state"] == "Failed"
    assert status["model"]["candidate"]["metrics"]["auc"] == 0.61
    assert status["model"]["metrics"]["auc"] == 0.97  # the serving checkpoint's, next to the candidate's
    assert status["model"]["digest"] == v1
    assert failed_line in cluster.condition("faces", "Degraded")["message"]
    assert cluster.deployment("faces")["spec"]["template"] == template_before
    await eventually(
        lambda: any(failed_line in e.get("message", "") for e in cluster.events("ValidationFailed")),
        message="a ValidationFailed Event naming the gate",
    )

    # Not retried for the same digest (the source is polled every second).
    await cluster.quiet(3.0)
    assert [j["metadata"]["name"] for j in jobs(cluster)].count(job2["metadata"]["name"]) == 1
    assert job_for(cluster, "faces", v2)["metadata"]["uid"] == job2["metadata"]["uid"]
    assert template_digest(cluster, "faces") == v1

    # A newer digest is tried.
    v3 = http_checkpoint.publish(b"checkpoint v3")
    await eventually(lambda: job_for(cluster, "faces", v3), message="validation Job for v3")
    assert template_digest(cluster, "faces") == v1

    # Deleting the CR deletes its Jobs (owner references).
    await cluster.delete("faces")
    await eventually(lambda: not jobs(cluster), message="Jobs deleted with the CR")
