"""Issue 8, done-when: what failed on first contact with a real kube-apiserver v1.36.2 is accepted now.

1. `kubectl apply --server-side -f crds/`: our generated CRD passes the API server's CRD rules (through
   the test API's CRD endpoint, which applies tests/apiserver_rules.py), and the CRD from before the CEL
   guards (92a1627^) is refused with the message the real server gave.
2. The operator's watches: every watch kopf opens, with the settings `deepdetect-operator run` builds from
   its default flags, carries an integer `timeoutSeconds` and is answered 200 (the record's rule:
   watch-timeout-must-be-integer).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import kmock
import pytest
import yaml
from deepdetect_operator.runtime import add_arguments, config_from_args, run_operator

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/ (last: no shadowing)
from apiserver_rules import crd_defaults, crd_errors
from conftest_integration import write_kubeconfig
from kube_emulator import make_emulator, project_crds

OLD_CRD = Path(__file__).parent / "data" / "crd_before_cel_guards.yaml"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
REFUSED = (
    'CustomResourceDefinition.apiextensions.k8s.io "deepdetectservices.deepdetect.io" is invalid: ['
    "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].default: Invalid value: "
    '"object": no such key: minReplicas evaluating rule: autoscaling.minReplicas must not exceed '
    "autoscaling.maxReplicas, spec.validation.openAPIV3Schema.properties[spec].properties[rollout].default: "
    'Invalid value: "object": no such key: maxSurge evaluating rule: rollout.maxSurge and '
    "rollout.maxUnavailable cannot both be 0 (the rollout could never progress)]"
)


def test_generated_crd_passes_every_api_server_rule() -> None:
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    for crd in project_crds():
        assert crd_errors(crd_defaults(crd)) == []


def test_crd_before_the_cel_guards_fails_them() -> None:
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    errors = crd_errors(crd_defaults(yaml.safe_load(OLD_CRD.read_text())))
    assert [e.split(": ", 1)[0] for e in errors] == [
        "spec.validation.openAPIV3Schema.properties[spec].properties[autoscaling].default",
        "spec.validation.openAPIV3Schema.properties[spec].properties[rollout].default",
    ]


async def test_kubectl_apply_server_side_of_crds_is_accepted() -> None:
    pytest.importorskip("celpy", reason="cel-python (dev extra) evaluates the CEL rules")
    emu = make_emulator()  # it installed the CRD already: delete it, then send it as kubectl does
    async with emu, kmock.Server(emu) as server, aiohttp.ClientSession(base_url=str(server.url)) as http:
        for crd in project_crds():
            url = f"{CRDS}/{crd['metadata']['name']}"
            assert (await http.delete(url)).status == 200
            params = {"fieldManager": "kubectl", "fieldValidation": "Strict"}
            headers = {"Content-Type": "application/apply-patch+yaml"}
            created = await http.patch(url, params=params, data=yaml.safe_dump(crd), headers=headers)
            assert created.status == 201, await created.text()
            again = await http.patch(url, params=params, data=yaml.safe_dump(crd), headers=headers)
            assert again.status == 200  # a second `kubectl apply` is a no-op
            conditions = {c["type"]: c["status"] for c in (await again.json())["status"]["conditions"]}
            assert conditions == {"NamesAccepted": "True", "Established": "True"}
            group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
            served = await (await http.get(f"/apis/{group}/{version}")).json()
            assert crd["spec"]["names"]["plural"] in [r["name"] for r in served["resources"]]
        old = yaml.safe_load(OLD_CRD.read_text())
        url = f"{CRDS}/{old['metadata']['name']}"
        assert (await http.delete(url)).status == 200
        refused = await http.patch(
            url,
            params={"fieldManager": "kubectl"},
            data=yaml.safe_dump(old),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        body = await refused.json()
        assert refused.status == 422 and body["reason"] == "Invalid"
        assert body["message"] == REFUSED


@pytest.mark.timeout(60)
async def test_every_watch_of_the_operator_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--liveness", "", "--metrics-port", "0"]))
    assert config.watch_server_timeout_s == 300  # the shipped default
    emu = make_emulator()
    async with emu, kmock.Server(emu) as server:
        write_kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_operator(config, stop_flag=stop, ready_flag=ready))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            deadline = asyncio.get_running_loop().time() + 20
            while len([a for a in emu.answers if a.request.params.get("watch") == "true"]) < 4:
                assert asyncio.get_running_loop().time() < deadline, "kopf opened no watches"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    watches = [a for a in emu.answers if a.request.params.get("watch") == "true"]
    paths = {a.request.url.path for a in watches}
    assert "/apis/deepdetect.io/v1alpha1/deepdetectservices" in paths and "/apis/apps/v1/deployments" in paths
    for answer in watches:
        assert re.fullmatch(r"[0-9]+", answer.request.params["timeoutSeconds"]), answer.request.url
        assert int(answer.request.params["timeoutSeconds"]) == 300
        assert answer.status == 200, (answer.request.url, answer.message)
