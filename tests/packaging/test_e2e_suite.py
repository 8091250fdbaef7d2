"""The kind e2e suite is wired up: `make e2e` exists, and where docker/kind are missing the suite is
collected and skipped with the exact reason instead of failing or, worse, passing without running."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

import pytest
from packaging_helpers import KUBE_VERSIONS, ROOT, restricted_violations, validate_strict


@functools.cache
def e2e_env() -> ModuleType:
    """e2e/e2e_env.py, loaded by path so e2e/ stays off sys.path."""
    spec = importlib.util.spec_from_file_location("deepdetect_e2e_env", ROOT / "e2e" / "e2e_env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def skip_reason() -> str | None:
    """The e2e suite's own probe of docker, its daemon, kind and kubectl."""
    reason: str | None = e2e_env().skip_reason()
    return reason


def test_make_targets_run_the_e2e_suite() -> None:
    makefile = (ROOT / "Makefile").read_text()
    e2e = re.search(r"^e2e:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    existing = re.search(r"^e2e-existing:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert e2e and "-m e2e e2e/" in e2e.group(1)
    assert existing and "E2E_EXISTING_CLUSTER=1" in existing.group(1) and "-m e2e e2e/" in existing.group(1)


def test_e2e_suite_skips_with_the_reason_here() -> None:
    """Run `pytest e2e/ -m e2e` for real; every test must be skipped, with the probe's reason."""
    reason = skip_reason()
    if reason is None:
        pytest.skip("docker, its daemon and kind are available: the e2e suite would really run (make e2e)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e/", "-m", "e2e", "-rs", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    counts = re.fullmatch(r"=*\s*(\d+) skipped in [\d.]+s\s*=*", summary)
    assert counts and int(counts.group(1)) >= 5, summary
    assert "SKIPPED" in out and reason in out, out
    assert "passed" not in summary and "failed" not in summary


def test_skip_reason_names_what_is_missing() -> None:
    """The reason is specific (tool + detail), never a generic 'not available'."""
    reason = skip_reason()
    if reason is None:
        pytest.skip("nothing is missing here")
    assert re.match(
        r"(kubectl not found|docker not found|docker daemon not reachable: .+|kind not found"
        r"|E2E_EXISTING_CLUSTER)",
        reason,
    ), reason


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_e2e_objects_validate_and_are_restricted(version: str) -> None:
    """What the e2e suite applies (checkpoint server, client pods) is checked here too, offline: it must
    pass strict validation and the `restricted` Pod Security Standard its namespace enforces, or the
    suite would fail on a cluster for a reason unrelated to the product."""
    env = e2e_env()
    objects = [*env.checkpoint_server_manifests("deepdetect-server:e2e"),
               env.client_pod("c", "print(1)", {"URL": "http://x"}, "deepdetect-server:e2e")]
    for obj in objects:
        validate_strict(obj, version)
        pod = obj["spec"] if obj["kind"] == "Pod" else obj["spec"].get("template", {}).get("spec")
        if pod is not None:
            assert restricted_violations(pod) == [], obj["metadata"]["name"]


def test_cpu_example_points_at_the_e2e_checkpoint_server() -> None:
    """examples/cpu.yaml's checkpoint URI is the in-cluster server the e2e suite deploys (Service name,
    namespace, port 80), and its model is the one the suite's checkpoint is created for."""
    import yaml

    env = e2e_env()
    cr = yaml.safe_load((ROOT / "examples" / "cpu.yaml").read_text())
    deployment, service = env.checkpoint_server_manifests("img")
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert cr["metadata"]["namespace"] == env.NAMESPACE == namespace
    assert service["spec"]["ports"][0]["port"] == 80
    assert cr["spec"]["model"]["checkpoint"]["uri"] == f"http://{name}.{namespace}.svc/model.safetensors"
    args = env.CHECKPOINT_ARGS
    assert cr["spec"]["model"]["architecture"] == args[args.index("--arch") + 1]
    assert cr["spec"]["model"]["inputSize"] == int(args[args.index("--input-size") + 1])
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert init[-1] == "/srv/model.safetensors"
