"""Fixtures for the packaging tests (images, manifests, chart, observability, GitOps).

pytest's default `prepend` import mode puts this folder on sys.path (it has no __init__.py, on purpose:
a package named `packaging` would shadow the PyPI library), so tests import `packaging_helpers` directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging_helpers import ROOT


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
