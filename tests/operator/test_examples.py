"""examples/*.yaml are valid CRs, and the real `deepdetect-operator` console script renders them strictly.

The CLI runs as a subprocess (the installed console script), exactly as a user or CI would run it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deepdetect_operator.api import parse_spec
from deepdetect_operator.crd import crd_yaml, validate_cr

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
K8S_VERSIONS = ["1.29.0", "1.33.0"]


def cli() -> list[str]:
    script = Path(sys.executable).with_name("deepdetect-operator")
    if script.exists():
        return [str(script)]
    found = shutil.which("deepdetect-operator")
    return [found] if found else [sys.executable, "-m", "deepdetect_operator"]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_required_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"gpu.yaml", "cpu.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_against_crd_and_models(path: Path) -> None:
    cr = load(path)
    assert validate_cr(cr) == []
    parse_spec(cr["spec"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_render_output_validates_strict(path: Path) -> None:
    result = run_cli("render", "-f", str(path), "--digest", "sha256:" + "ab" * 32, "--service-monitor")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget"} <= set(kinds)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: its shape is checked in test_render.py against an embedded schema
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def _render(path: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("render", "-f", str(path))
    assert result.returncode == 0, result.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}


def test_gpu_example_asks_for_a_gpu_and_autoscales() -> None:
    docs = _render(REPO / "examples" / "gpu.yaml")
    server = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "HorizontalPodAutoscaler" in docs
    config = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
    assert config["precision"] == "fp16"


def test_cpu_example_is_small_and_fixed() -> None:
    cr = load(REPO / "examples" / "cpu.yaml")
    assert cr["spec"]["model"]["checkpoint"]["uri"] == (
        "http://deepdetect-checkpoints.deepdetect-e2e.svc/model.safetensors"
    )
    docs = _render(REPO / "examples" / "cpu.yaml")
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert "HorizontalPodAutoscaler" not in docs
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert not any("gpu" in key for key in limits)


def test_render_mentions_the_generated_secret_without_printing_one() -> None:
    result = run_cli("render", "-f", str(REPO / "examples" / "gpu.yaml"))
    assert "faces-api-key" in result.stdout
    assert "Secret" not in [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]


INVALID = [
    ("min-gt-max", {"autoscaling": {"minReplicas": 9, "maxReplicas": 2}}, "spec.autoscaling"),
    (
        "bad-precision",
        {"model": {"precision": "fp8", "checkpoint": {"uri": "s3://b/k"}}},
        "spec.model.precision",
    ),
    ("missing-uri", {"model": {"checkpoint": {}}}, "spec.model.checkpoint.uri"),
    ("unknown-field", {"replicaz": 2}, "spec.replicaz"),
    ("jobs-need-redis", {"jobs": {"enabled": True}}, "needs spec.redis.urlSecret"),
]


@pytest.mark.parametrize(("spec", "path"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_render_rejects_an_invalid_cr_with_exit_2(spec: dict[str, Any], path: str) -> None:
    cr = load(REPO / "examples" / "gpu.yaml")
    cr["spec"] = {"model": {"checkpoint": {"uri": "s3://b/k"}}, **spec}
    result = run_cli("render", "-f", "-", stdin=yaml.safe_dump(cr))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert path in lines[0]


def test_render_rejects_another_kind() -> None:
    result = run_cli("render", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert result.returncode == 2 and "DeepDetectService" in result.stderr


def test_crd_command_prints_the_committed_crd() -> None:
    result = run_cli("crd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == crd_yaml()
