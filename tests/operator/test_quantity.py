"""The operator renders resource quantities as the API server stores them (so a resync compares equal).

Checked against the test API server's own, independent implementation (tests/kube_emulator/quantity.py,
after apimachinery's CanonicalizeBytes): the two must agree on every spelling the CRD accepts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from deepdetect_operator import quantity

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/kube_emulator (last: no shadowing)
from kube_emulator import quantity as apiserver_quantity

SPELLINGS = ["0.5", "1", "1.0", "4", "1000m", "1500m", "250m", "0.0001", "2000", "1Gi", "1024Mi", "1.5Gi",
             "16Gi", "512Mi", "0.5Gi", "1536Mi", "2G", "500M", "1.5k", "1Ti", "100Ki", "1023Ki"]  # fmt: skip


@pytest.mark.parametrize("text", SPELLINGS)
def test_canonical_form_is_the_api_servers(text: str) -> None:
    assert quantity.canonical(text) == apiserver_quantity.canonical(text, round_to_milli=True)


@pytest.mark.parametrize(
    ("text", "stored"), [("0.5", "500m"), ("1024Mi", "1Gi"), ("1.5Gi", "1536Mi"), ("2000", "2k")]
)
def test_examples(text: str, stored: str) -> None:
    assert quantity.canonical(text) == stored


@pytest.mark.parametrize("text", ["512K", "four", "1.5x", ""])
def test_what_kubernetes_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.canonical(text)
