"""Every recorded answer of a real kube-apiserver v1.36.2 (tests/k8s_conformance/cases.json), replayed
against the test API server: same status, reason, message and picked values, case by case, in order.

One emulator serves the whole record over HTTP (a thread of its own), as the real server did; a case run
alone (`-k`) first replays the cases before it, set-up cases first, so each test stands by itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/kube_emulator (last: no shadowing)
from kube_emulator import make_emulator
from kube_emulator.threaded import ThreadedEmulator

TESTS = Path(__file__).resolve().parents[1]
RECORD = TESTS / "k8s_conformance" / "cases.json"
SHARED = Path(
    os.environ.get(
        "DEEPDETECT_CONFORMANCE_RECORD", TESTS.parents[1] / "shared" / "k8s-conformance" / "cases.json"
    )
)
DATA = json.loads(RECORD.read_text())

# Controllers a real cluster runs next to the API server, by the resource whose status they write. A
# recorded answer that reads such a status needs that controller, which the emulator does not run.
CONTROLLERS = {
    "deployments": "kube-controller-manager's deployment controller",
    "replicasets": "kube-controller-manager's replicaset controller",
    "statefulsets": "kube-controller-manager's statefulset controller",
    "daemonsets": "kube-controller-manager's daemonset controller",
    "jobs": "kube-controller-manager's job controller",
    "horizontalpodautoscalers": "kube-controller-manager's horizontal-pod-autoscaler controller",
    "poddisruptionbudgets": "kube-controller-manager's disruption controller",
    "pods": "the kubelet",
    "nodes": "the kubelet",
}


def ordered_cases(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The set-up cases the `about` text names first, then the others in file order."""
    named = re.search(r"set-up cases first: ([^)]*)\)", data["about"])
    setup = [s.strip() for s in named.group(1).split(",")] if named else []
    cases = data["cases"]
    return [c for s in setup for c in cases if c["name"] == s] + [c for c in cases if c["name"] not in setup]


CASES = ordered_cases(DATA)


def needs_controller(case: dict[str, Any]) -> str:
    """The controller a case's recorded answers depend on ("" when the API server alone answers)."""
    for step in case["steps"]:
        request = step["request"]
        plural = next((p for p in reversed(request["path"].split("/")) if p in CONTROLLERS), "")
        reads_status = any(
            p == "status" or p.startswith("status.") or ".status." in p for p in request.get("pick", [])
        )
        if plural and request["method"] == "GET" and reads_status and step["real"].get("values"):
            return CONTROLLERS[plural]
    return ""


# ---------------------------------------------------------------- picked values


def _tokens(path: str) -> Iterator[tuple[str, str]]:
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path):
        if part.startswith("["):
            yield ("select", part[1:-1])
        else:
            yield ("field", part)


def pick(doc: Any, path: str) -> Any:
    """A value as `about` defines it: [] for no match, the value for one, a list for several."""
    matches = [doc]
    for kind, text in _tokens(path):
        found: list[Any] = []
        for node in matches:
            if kind == "field" and isinstance(node, dict) and text in node:
                found.append(node[text])
            elif kind == "select" and isinstance(node, list):
                if text == "*":
                    found += node
                else:
                    key, _, value = text.partition("=")
                    found += [x for x in node if isinstance(x, dict) and str(x.get(key)) == value]
        matches = found
    return [] if not matches else matches[0] if len(matches) == 1 else matches


# ---------------------------------------------------------------- the replay


@dataclass
class Answer:
    status: int
    body: Any

    def reason(self) -> str | None:
        return (
            self.body.get("reason")
            if isinstance(self.body, dict) and self.body.get("kind") == "Status"
            else None
        )

    def message(self) -> str | None:
        return (
            self.body.get("message")
            if isinstance(self.body, dict) and self.body.get("kind") == "Status"
            else None
        )


@dataclass
class Replay:
    http: httpx.Client
    played: dict[str, list[Answer]] = field(default_factory=dict)

    def send(self, request: dict[str, Any]) -> Answer:
        headers = {"Content-Type": request.get("ctype", "application/json")}
        body = request.get("body")
        content = None if body is None else json.dumps(body)
        response = self.http.request(
            request["method"],
            request["path"],
            params=request.get("query") or {},
            content=content,
            headers=headers,
        )
        text = response.text
        if (request.get("query") or {}).get("watch") == "true" and response.status_code == 200:
            lines = [line for line in text.splitlines() if line.strip()]
            return Answer(200, json.loads(lines[0]) if lines else {})
        try:
            return Answer(response.status_code, json.loads(text) if text else {})
        except ValueError:
            return Answer(response.status_code, text)

    def play(self, case: dict[str, Any]) -> list[Answer]:
        """Replay `case` after every case before it (once each)."""
        for earlier in CASES[: CASES.index(case) + 1]:
            if earlier["name"] not in self.played:
                self.played[earlier["name"]] = [self.send(step["request"]) for step in earlier["steps"]]
        return self.played[case["name"]]


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    with ThreadedEmulator(make_emulator()) as cluster, httpx.Client(base_url=cluster.url, timeout=30) as http:
        yield Replay(http)


def _params() -> list[Any]:
    out = []
    for case in CASES:
        controller = needs_controller(case)
        marks = [
            pytest.mark.xfail(reason=f"needs {controller}, which the emulator does not run", strict=True)
        ]
        out.append(pytest.param(case, id=case["name"], marks=marks if controller else []))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", _params())
def test_recorded_answer(replay: Replay, case: dict[str, Any]) -> None:
    answers = replay.play(case)
    for i, (step, got) in enumerate(zip(case["steps"], answers, strict=True)):
        real, where = (
            step["real"],
            f"{case['name']} step {i}: {step['request']['method']} {step['request']['path']}",
        )
        assert got.status == real["status"], f"{where}: {got.status} {got.body}"
        if "reason" in real:
            assert got.reason() == real["reason"], where
        if "message" in real:
            assert got.message() == real["message"], where
        for path, value in (real.get("values") or {}).items():
            assert pick(got.body, path) == value, f"{where}: {path}"


def test_every_case_is_replayed_in_record_order_after_set_up() -> None:
    names = [c["name"] for c in CASES]
    assert names[:2] == ["crd-with-status-and-scale", "namespace-create"]
    assert sorted(names) == sorted(c["name"] for c in DATA["cases"]) and DATA["server"] == "v1.36.2"


def test_pick_follows_the_record_format() -> None:
    doc = {"a": [{"name": "x", "v": [1, 2]}, {"name": "y", "v": [3]}], "b": {"c": 0}}
    assert pick(doc, "a[*].name") == ["x", "y"]
    assert pick(doc, "a[name=y].v[*]") == 3
    assert pick(doc, "a[name=x].v") == [1, 2]
    assert pick(doc, "b.c") == 0 and pick(doc, "b.missing") == [] and pick(doc, "a[name=z]") == []


def test_a_case_reading_controller_status_is_marked_with_its_controller() -> None:
    """The xfail mechanism itself: a read of a Deployment's status needs the deployment controller."""
    case = {
        "steps": [
            {
                "request": {
                    "method": "GET",
                    "path": "/apis/apps/v1/namespaces/conf/deployments/d1",
                    "pick": ["status.availableReplicas"],
                },
                "real": {"status": 200, "values": {"status.availableReplicas": 1}},
            }
        ]
    }
    assert needs_controller(case) == "kube-controller-manager's deployment controller"
    assert not any(needs_controller(c) for c in CASES)  # today, the API server alone answers every case


def test_vendored_record_is_the_shared_one() -> None:
    if not SHARED.exists():
        pytest.skip(f"no shared record at {SHARED} (a clean clone): the vendored copy is used as is")
    assert json.loads(SHARED.read_text()) == DATA, f"{RECORD} is stale: copy {SHARED} over it"
