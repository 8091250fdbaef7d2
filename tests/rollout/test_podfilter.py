"""Pod events reach the rollout only when something it reads moved (podfilter.py)."""

from __future__ import annotations

import copy
from typing import Any

from deepdetect_operator.podfilter import PodTransitions


def pod(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Pending",
        "conditions": [{"type": "Ready", "status": "False", "lastProbeTime": "t0"}],
        "initContainerStatuses": [{"name": "fetch", "ready": False, "restartCount": 0,
                                   "state": {"running": {}}}],
        "containerStatuses": [{"name": "server", "ready": False, "restartCount": 0,
                               "state": {"waiting": {"reason": "PodInitializing"}}}],
    }  # fmt: skip
    base.update(status)
    return {"metadata": {"uid": "u1", "name": "p", "resourceVersion": "1"}, "status": base}


def test_first_sighting_counts_then_noise_does_not() -> None:
    t = PodTransitions()
    p = pod()
    assert t.changed("ADDED", p)
    noisy = copy.deepcopy(p)
    noisy["metadata"]["resourceVersion"] = "2"
    noisy["status"]["conditions"][0]["lastProbeTime"] = "t1"
    noisy["status"]["podIP"] = "10.0.0.7"
    assert not t.changed("MODIFIED", noisy)


def test_readiness_restarts_init_failure_and_deletion_count() -> None:
    t = PodTransitions()
    p = pod()
    t.changed(None, p)  # kopf's initial listing has no event type
    failed = copy.deepcopy(p)
    failed["status"]["initContainerStatuses"][0].update(
        state={"terminated": {"exitCode": 3, "message": "digest mismatch"}}
    )
    assert t.changed("MODIFIED", failed)
    restarted = copy.deepcopy(failed)
    restarted["status"]["initContainerStatuses"][0]["restartCount"] = 1
    assert t.changed("MODIFIED", restarted)
    ready = pod(phase="Running", conditions=[{"type": "Ready", "status": "True"}])
    assert t.changed("MODIFIED", ready)
    assert not t.changed("MODIFIED", copy.deepcopy(ready))
    assert t.changed("DELETED", ready)
    assert len(t) == 0
