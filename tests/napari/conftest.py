"""napari tests: the GUI process must never import TensorFlow (it crashes Mesa's GL)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_tensorflow_in_the_gui_process():
    yield
    assert "tensorflow" not in sys.modules, (
        "TensorFlow was imported into the napari test process; deep-learning backends must run in the engine process"
    )
