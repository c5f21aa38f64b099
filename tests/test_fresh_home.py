"""The test session runs as a new user: an empty HOME, no settings, no pre-made folders."""

from __future__ import annotations

import os
from pathlib import Path


def test_the_session_home_is_empty_and_nothing_points_elsewhere(fresh_home, user_state_vars):
    assert Path.home() == fresh_home
    assert not (fresh_home / ".napari-phenotyper" / "settings.json").exists()
    for name in user_state_vars:
        assert name not in os.environ, f"{name} leaks the developer's own folders into the tests"


def test_user_folders_default_under_the_empty_home(fresh_home):
    from napari_phenotyper._napari.phenotype_widget import default_session_path
    from napari_phenotyper.core.segment.models import models_dir

    assert default_session_path().is_relative_to(fresh_home / ".napari-phenotyper" / "sessions")
    assert models_dir().is_relative_to(fresh_home)
