"""The project's test API server, held to a real kube-apiserver's answers (tests/k8s_conformance/).

`make_emulator()` is what every test harness starts: kmock's built-in kinds, the default namespaces, and
our real generated CRD (crds/*.yaml) installed through the CRD endpoint as `kubectl apply --server-side
-f crds/` would, so every test run proves the CRD installs. Modules:

- server.py: routing, the write pipeline, deletion, watches (KubeEmulator);
- ssa.py: server-side apply and managedFields;        - schema.py: typed schema views;
- defaults.py / validation.py: built-in kinds;         - kinds.py: custom kinds from CRDs;
- decoding.py, quantity.py, patches.py, selectors.py, watch.py, errors.py: the rest of the pieces;
- threaded.py: the emulator over HTTP in its own thread (a stand-in cluster behind a kubeconfig).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kube_emulator.selectors import field_selector_matches, label_selector_matches

if TYPE_CHECKING:
    from kube_emulator.server import Answer, KubeEmulator, integer_param_error, parse_route

__all__ = [
    "SERVICE_MONITOR_CRD",
    "Answer",
    "KubeEmulator",
    "field_selector_matches",
    "integer_param_error",
    "label_selector_matches",
    "make_emulator",
    "parse_route",
    "project_crds",
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

# prometheus-operator's ServiceMonitor, reduced to what makes it servable: the real CRD is larger, but the
# operator only applies and deletes these (it never reads their schema back).
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "plural": "servicemonitors",
            "singular": "servicemonitor",
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "categories": ["prometheus-operator"],
            "shortNames": ["smon"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


_SERVER_NAMES = ("Answer", "KubeEmulator", "integer_param_error", "parse_route")


def __getattr__(name: str) -> Any:
    """The server's names, imported on first use: apiserver_rules (which the server uses) imports this
    package's errors module, and an eager import here would make that a cycle."""
    if name in _SERVER_NAMES:
        return getattr(importlib.import_module("kube_emulator.server"), name)
    raise AttributeError(name)


def project_crds() -> list[dict[str, Any]]:
    """The CRDs `kubectl apply --server-side -f crds/` would send."""
    out = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def make_emulator(*, service_monitor: bool = False, namespaces: tuple[str, ...] = ()) -> KubeEmulator:
    """The built-in kinds, the default namespaces (plus `namespaces`), our CRD installed through the CRD
    endpoint, and (optionally) the ServiceMonitor CRD."""
    from kube_emulator.server import KubeEmulator

    emu = KubeEmulator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kmock 0.8 uses importlib's read_binary
        emu.resources.load_bundled()
    for name in (*DEFAULT_NAMESPACES, *namespaces):
        emu.create_namespace(name)
    for crd in project_crds() + ([SERVICE_MONITOR_CRD] if service_monitor else []):
        emu.install(crd, manager="kubectl")
    return emu
