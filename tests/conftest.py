"""Shared fixtures for the whole test suite."""
from __future__ import annotations

import pytest


@pytest.fixture
def store_path(tmp_path):
    """Path (str) of ``db.json`` in a fresh temporary folder."""
    return str(tmp_path / "db.json")
