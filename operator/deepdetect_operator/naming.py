"""Names and labels of the children of a DeepDetectService, in one place.

A CR name may be up to 253 characters and contain dots, but most child names end up in places that take
at most 63 (label values, pod hostnames, Service DNS names). Every name and label value derived from a CR
goes through `shorten`, which keeps a readable prefix and appends a hash of the full name, so two long
names never collide and the same CR always gets the same children (re-applies stay no-ops).
"""

from __future__ import annotations

import hashlib
import re

from deepdetect_operator import __version__

MAX_NAME = 63
HASH_LEN = 8

APP_NAME = "deepdetect-server"
MANAGED_BY = "deepdetect-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"

# Components, one per child kind (the `app.kubernetes.io/component` label value).
COMPONENT_INFERENCE = "inference"
COMPONENT_CONFIG = "config"
COMPONENT_AUTH = "auth"
COMPONENT_AUTOSCALER = "autoscaler"
COMPONENT_DISRUPTION = "disruption-budget"
COMPONENT_MONITORING = "monitoring"
COMPONENT_NETWORK = "network-policy"

_DNS1035_BAD = re.compile(r"[^a-z0-9-]")
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def shorten(name: str, limit: int = MAX_NAME) -> str:
    """`name` when it fits in `limit`, else a prefix plus `-<8 hex of sha256(name)>` (exactly `limit` max)."""
    if len(name) <= limit:
        return name
    prefix = name[: limit - HASH_LEN - 1].rstrip("-.")
    return f"{prefix}-{_digest(name)}"


def child_name(name: str, suffix: str = "") -> str:
    """DNS-1123 name of a child: `<cr>` or `<cr>-<suffix>`, shortened to 63 characters with a hash."""
    full = f"{name}-{suffix}" if suffix else name
    return shorten(full)


def dns1035_name(name: str, suffix: str = "") -> str:
    """A DNS-1035 label (Service names): lower-case alphanumerics and '-', starting with a letter."""
    full = f"{name}-{suffix}" if suffix else name
    clean = _DNS1035_BAD.sub("-", full.lower())
    if not clean[:1].isalpha():
        clean = f"dd-{clean}"
    if clean != full:
        # Mangling could map two CR names to one; the hash of the original keeps them apart.
        clean = f"{clean[: MAX_NAME - HASH_LEN - 1].rstrip('-')}-{_digest(full)}"
    return shorten(clean).rstrip("-")


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars, alphanumeric at both ends) derived from `value`."""
    clean = _LABEL_VALUE_BAD.sub("-", value)
    if clean != value:
        clean = f"{clean[: MAX_NAME - HASH_LEN - 1]}-{_digest(value)}"
    return shorten(clean).strip("-._")


def deployment_name(name: str) -> str:
    return child_name(name)


def service_name(name: str) -> str:
    return dns1035_name(name)


def configmap_name(name: str) -> str:
    return child_name(name, "config")


def hpa_name(name: str) -> str:
    return child_name(name)


def pdb_name(name: str) -> str:
    return child_name(name)


def service_monitor_name(name: str) -> str:
    return child_name(name)


def network_policy_name(name: str) -> str:
    return child_name(name)


def generated_api_key_secret_name(name: str) -> str:
    return child_name(name, "api-key")


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select this instance's pods: immutable in the Deployment, so never add to them."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: label_value(name)}


def selector_string(name: str) -> str:
    """`selector_labels` as a label-selector string (for `status.selector`, the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def pod_labels(name: str, component: str) -> dict[str, str]:
    """Pod-template labels: no version label, so an operator upgrade alone does not roll every pod."""
    return {**selector_labels(name), LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGED_BY}


def child_labels(name: str, component: str) -> dict[str, str]:
    """Labels on every child object."""
    return {**pod_labels(name, component), LABEL_VERSION: label_value(__version__)}
