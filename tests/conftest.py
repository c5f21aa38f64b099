"""Shared fixtures: where the real test data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$NAPARI_PHENOTYPER_TEST_DATA`` or ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real annotated microscopy data (skips the test when it is absent)."""
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "real test data not found: set NAPARI_PHENOTYPER_TEST_DATA or put shared/data beside the repo"
        )
    return path
