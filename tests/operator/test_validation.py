"""The quality gate's pure parts: the validation Job a real API server accepts, the state machine's table,
the result read from a termination message, and which finished Jobs are pruned."""

from __future__ import annotations

import json
from typing import Any

import pytest
from deepdetect_operator import naming
from deepdetect_operator.api import CandidateStatus, ModelStatus
from deepdetect_operator.render import build_validation_job, render_children
from deepdetect_operator.validation import GateInput, evaluate_gate, jobs_to_delete, termination_summary
from test_render import HEX, inputs, spec_of, validate_strict

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
VALIDATION = {
    "datasetUri": "s3://models/holdout.safetensors",
    "gates": {"minAuc": 0.9, "minRecall": 0.8},
    "resources": {"cpu": "1500m", "memory": "2Gi", "gpus": 1},
}


def job_inputs(**rollout: Any) -> Any:
    spec = spec_of(
        model={
            "checkpoint": {"uri": "s3://models/b4.safetensors", "credentialsSecret": "creds"},
            "threshold": 0.7,
        },
        rollout={"validation": {**VALIDATION, **rollout}},
    )
    return inputs(spec=spec, checkpoint_digest="sha256:" + HEX)


def test_validation_job_is_valid_batch_v1_and_restricted() -> None:
    job = build_validation_job(job_inputs())
    validate_strict(job)  # kubernetes-validate --strict, 1.29 and 1.33
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 1800
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", "fetch-dataset"]
    assert "--sha256" in pod["initContainers"][0]["command"]  # the candidate's bytes, nothing else
    assert HEX in pod["initContainers"][0]["command"]
    evaluate = pod["containers"][0]
    cmd = evaluate["command"]
    assert cmd[cmd.index("--min-auc") + 1] == "0.9" and cmd[cmd.index("--min-recall") + 1] == "0.8"
    assert cmd[cmd.index("--threshold") + 1] == "0.7" and cmd[cmd.index("--device") + 1] == "cuda"
    assert evaluate["resources"]["limits"] == {"cpu": "1500m", "memory": "2Gi", "nvidia.com/gpu": "1"}
    for c in [*pod["initContainers"], evaluate]:
        sc = c["securityContext"]
        assert (
            sc["runAsNonRoot"]
            and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"] == {"drop": ["ALL"]}
            and sc["readOnlyRootFilesystem"]
        )
    # Never selected by the Deployment or the Service: validation pods must not take traffic.
    server_selector = naming.selector_labels("faces")
    labels = spec["template"]["metadata"]["labels"]
    assert not server_selector.items() <= labels.items()
    assert job["metadata"]["ownerReferences"][0]["uid"] == "0c6a5f1e-uid"
    assert all(c["kind"] != "Job" for c in render_children(job_inputs()))


def gate(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "enabled": True,
        "resolved_digest": B,
        "model": ModelStatus(digest=A),
        "rollout_target": A,
        "job": None,
        "job_pods": [],
        "job_name": "faces-validate-b",
        "now": "2026-01-01T00:00:00Z",
    }
    base.update(kw)
    return evaluate_gate(GateInput(**base))


def finished(kind: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "faces-validate-b"},
        "status": {"conditions": [{"type": kind, "status": "True"}]},
    }


def test_gate_table() -> None:
    new = gate()
    assert new.rollout_digest is None and new.create_job and new.candidate.state == "Validating"
    validating = ModelStatus(digest=A, candidate=new.candidate)
    again = gate(model=validating, job={"metadata": {"name": "faces-validate-b"}, "status": {}})
    assert again.rollout_digest is None and not again.create_job and again.event is None
    passed = gate(model=validating, job=finished("Complete"))
    assert passed.rollout_digest == B and passed.candidate.state == "Passed"
    failed = gate(model=validating, job=finished("Failed"))
    assert failed.rollout_digest is None and failed.problem[0] == "ValidationFailed"
    held = gate(model=ModelStatus(digest=A, candidate=failed.candidate), job=None)
    assert held.rollout_digest is None and not held.create_job and held.event is None  # not retried
    newer = gate(
        model=ModelStatus(digest=A, candidate=failed.candidate), resolved_digest="sha256:" + "c" * 64
    )
    assert newer.create_job and newer.candidate.digest.startswith("sha256:c")
    assert gate(enabled=False).rollout_digest == B
    assert gate(resolved_digest=A).rollout_digest == A and not gate(resolved_digest=A).create_job


def test_termination_summary_newest_pod_and_plain_text() -> None:
    def pod(msg: str, at: str) -> dict[str, Any]:
        return {
            "status": {
                "containerStatuses": [
                    {"name": "evaluate", "state": {"terminated": {"message": msg, "finishedAt": at}}}
                ]
            }
        }

    newer = json.dumps({"metrics": {"auc": 0.91}, "passed": True})
    assert termination_summary([pod("{}", "2026-01-01T00:00:00Z"), pod(newer, "2026-01-02T00:00:00Z")]) == {
        "metrics": {"auc": 0.91},
        "passed": True,
    }
    assert termination_summary([pod("Traceback...\nOSError: disk full", "x")]) == {
        "failed": "OSError: disk full"
    }
    assert termination_summary([]) is None


@pytest.mark.parametrize(("keep", "expected"), [(1, ["j3", "j2", "j1"]), (3, ["j1"]), (10, [])])
def test_jobs_pruned_beyond_history(keep: int, expected: list[str]) -> None:
    def job(name: str, at: str, done: bool = True) -> dict[str, Any]:
        conds = [{"type": "Complete", "status": "True"}] if done else []
        return {"metadata": {"name": name, "creationTimestamp": at}, "status": {"conditions": conds}}

    jobs = [
        job("j1", "2026-01-01T00:00:01Z"),
        job("j2", "2026-01-01T00:00:02Z"),
        job("j3", "2026-01-01T00:00:03Z"),
        job("current", "2026-01-01T00:00:04Z", done=False),
    ]
    assert sorted(j["metadata"]["name"] for j in jobs_to_delete(jobs, keep, "current")) == sorted(expected)
    assert CandidateStatus().state == ""
