"""The existing-cluster backend of the integration harness, proven without a cluster: the test API server
served over HTTP in its own thread, reached through a kubeconfig (the same code path as a real cluster:
kubeconfig credentials, the CRD applied server-side, a namespace per test, the operator watching it).
And a KUBECONFIG that cannot be used fails fast with what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_integration import (
    CRS,
    ClusterUnusable,
    connect_existing,
    cr_manifest,
    eventually,
    existing_cluster,
    install_crds,
    write_kubeconfig,
)
from deepdetect_operator import naming
from kube_emulator import make_emulator
from kube_emulator.threaded import ThreadedEmulator

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
async def test_existing_backend_against_a_cluster_behind_a_kubeconfig(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"bytes with a digest")
    kubeconfig = tmp_path / "kubeconfig"
    with ThreadedEmulator(make_emulator()) as server:
        write_kubeconfig(kubeconfig, server.url, token="a-real-looking-token")
        backend = connect_existing(str(kubeconfig))
        assert (
            backend.server == server.url and backend.has_controllers is False
        )  # no controller-manager lease
        install_crds(backend)
        async with existing_cluster(backend, kubeconfig=str(kubeconfig)) as cluster:
            ns = cluster.ns
            assert ns.startswith("dd-test-") and cluster.config.namespaces == (ns,)
            await cluster.create(cr_manifest("faces", f"file://{checkpoint}"))
            await eventually(lambda: cluster.deployment("faces"), message="Deployment")
            await eventually(lambda: cluster.status("faces").get("phase") == "Progressing", message="status")
            assert cluster.get("v1/services", naming.service_name("faces"))["metadata"]["namespace"] == ns
            agents = {str(r.headers.get("User-Agent", "")).split("/")[0] for r in server.emu.recorded}
            assert {"deepdetect-operator", "kopf"} <= agents  # the operator logged in through the kubeconfig
        left = backend.list(CRS, ns)
        if left:
            print("LEFT", left[0]["metadata"])
            for a in server.emu.answers:
                r = a.request
                print("REQ", r.method.value, r.url.path, dict(r.params), a.status, a.message[:200], str(r.headers.get("User-Agent",""))[:20])
        assert backend.list(CRS, ns) == []  # CRs deleted while the operator ran (its finalizer went)
        assert backend.get("v1/namespaces", None, ns) is None  # and the namespace after the test
        backend.client.close()


def test_unusable_kubeconfigs_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnusable, match="no such file"):
        connect_existing(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ClusterUnusable, match=r"cannot be read.*Current context is not set"):
        connect_existing(str(tmp_path / "empty"))
    write_kubeconfig(tmp_path / "closed", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(ClusterUnusable, match="does not answer"):
        connect_existing(str(tmp_path / "closed"), timeout=2)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
def test_the_suite_stops_at_once_on_an_unusable_cluster(tmp_path: Path) -> None:
    """`DEEPDETECT_TEST_CLUSTER=existing pytest`, KUBECONFIG unusable: one clear line, exit 4."""
    env = {**os.environ, "DEEPDETECT_TEST_CLUSTER": "existing", "KUBECONFIG": str(tmp_path / "nope")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/operator/test_integration.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        f"DEEPDETECT_TEST_CLUSTER=existing: KUBECONFIG={tmp_path / 'nope'}: no such file"
        in proc.stdout + proc.stderr
    )
