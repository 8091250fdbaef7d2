"""Session fixtures of the kind e2e suite: cluster, images, the operator installed from the chart, and an
in-cluster HTTP server for demo checkpoints. Each fixture does real work; nothing is mocked.

Order: cluster (kind create, or the KUBECONFIG cluster) -> images (docker build CPU variant, kind load)
-> operator (helm install of charts/deepdetect-operator) -> checkpoints (Deployment + Service
deepdetect-checkpoints in deepdetect-e2e). Teardown deletes the kind cluster (E2E_KEEP_CLUSTER=1 keeps it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_env import (
    CHART_DIR,
    CLUSTER_NAME,
    CPU_BASE,
    NAMESPACE,
    OPERATOR_IMAGE,
    OPERATOR_NAMESPACE,
    RELEASE,
    ROOT,
    SERVER_IMAGE,
    apply,
    checkpoint_server_manifests,
    existing_cluster,
    images_prebuilt,
    kubectl,
    run,
    skip_reason,
)

RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kind cluster of our own (KUBECONFIG points at it for the session), or the existing one."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if existing_cluster():
        yield os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        return
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run(["kind", "delete", "cluster", "--name", CLUSTER_NAME], check=False)
    create = ["kind", "create", "cluster", "--name", CLUSTER_NAME, "--kubeconfig", str(kubeconfig)]
    run([*create, "--wait", "180s"], timeout=600)
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        yield str(kubeconfig)
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
        if os.environ.get("E2E_KEEP_CLUSTER") != "1":
            run(["kind", "delete", "cluster", "--name", CLUSTER_NAME], check=False)


@pytest.fixture(scope="session")
def images(cluster: str) -> tuple[str, str]:
    """Both images built from this tree (server: CPU variant) and loaded into the kind nodes."""
    if images_prebuilt():
        return SERVER_IMAGE, OPERATOR_IMAGE
    run(["docker", "build", "-f", str(ROOT / "Dockerfile.server"), "--build-arg", "VARIANT=cpu",
         "--build-arg", f"BASE={CPU_BASE}", "-t", SERVER_IMAGE, str(ROOT)], timeout=3600)
    run(["docker", "build", "-f", str(ROOT / "Dockerfile.operator"), "-t", OPERATOR_IMAGE, str(ROOT)],
        timeout=1800)
    name = CLUSTER_NAME
    if existing_cluster():
        name = kubectl("config", "current-context").strip().removeprefix("kind-")
    for image in (SERVER_IMAGE, OPERATOR_IMAGE):
        run(["kind", "load", "docker-image", image, "--name", name], timeout=900)
    return SERVER_IMAGE, OPERATOR_IMAGE


def _split(image: str) -> dict[str, str]:
    repository, _, tag = image.rpartition(":")
    return {"repository": repository, "tag": tag}


@pytest.fixture(scope="session")
def operator(cluster: str, images: tuple[str, str]) -> Iterator[str]:
    """The operator installed with the Helm chart (helm CLI when present, else helm-python-sdk)."""
    server_image, operator_image = images
    values = {
        "image": {**_split(operator_image), "pullPolicy": "IfNotPresent"},
        "serverImage": _split(server_image),
    }
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kubectl("label", "--overwrite", "namespace", OPERATOR_NAMESPACE, RESTRICTED)
    if shutil.which("helm"):
        sets = [f"image.repository={values['image']['repository']}", f"image.tag={values['image']['tag']}",
                f"serverImage.repository={values['serverImage']['repository']}",
                f"serverImage.tag={values['serverImage']['tag']}"]
        cmd = ["helm", "upgrade", "--install", RELEASE, str(CHART_DIR), "-n", OPERATOR_NAMESPACE,
               "--wait", "--timeout", "5m"]
        for item in sets:
            cmd += ["--set", item]
        run(cmd, timeout=600)
    else:
        import helm_python

        config = helm_python.Config(kubeconfig_path=cluster, namespace=OPERATOR_NAMESPACE)
        try:
            config.install(str(CHART_DIR), RELEASE, values, namespace=OPERATOR_NAMESPACE, wait="watcher",
                           timeout=300)
        finally:
            config.close()
    kubectl("-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s")
    yield RELEASE
    if existing_cluster():
        if shutil.which("helm"):
            run(["helm", "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE], check=False)
        else:
            import helm_python

            config = helm_python.Config(kubeconfig_path=cluster, namespace=OPERATOR_NAMESPACE)
            try:
                config.uninstall(RELEASE, ignore_not_found=True)
            finally:
                config.close()


@pytest.fixture(scope="session")
def checkpoints(operator: str, images: tuple[str, str]) -> Iterator[str]:
    """The e2e namespace (Pod Security `restricted` enforced) with the checkpoint HTTP server running."""
    kubectl("create", "namespace", NAMESPACE, check=False)
    kubectl("label", "--overwrite", "namespace", NAMESPACE, RESTRICTED)
    apply(checkpoint_server_manifests(images[0]))
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/deepdetect-checkpoints", "--timeout=300s")
    yield f"http://deepdetect-checkpoints.{NAMESPACE}.svc/model.safetensors"
    if existing_cluster():
        kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
