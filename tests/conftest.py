"""Shared fixtures: a new user's empty home for the whole session, and where the real
test data lives."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Environment variables that point at a user's folders or settings. The test session
#: starts with all of them unset (so the defaults under the empty HOME are used), exactly
#: as on a fresh install: nothing made by hand, no settings, no downloaded models.
USER_STATE_VARS = (
    "NAPARI_PHENOTYPER_HOME",
    "NAPARI_PHENOTYPER_MODELS",
    "NAPARI_PHENOTYPER_OFFLINE",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "NAPARI_CONFIG",
    "MPLCONFIGDIR",
    "KERAS_HOME",
    "CELLPOSE_LOCAL_MODELS_PATH",
    "TORCH_HOME",
)

_FRESH_HOME: Path | None = None
_SAVED_ENV: dict[str, str | None] = {}


def _test_model_cache() -> str:
    """The trained-test-model cache (a test artefact, not user state), resolved before
    HOME is replaced so that it survives between test sessions."""
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_CACHE")
    if env is not None:
        return env
    return str(Path.home() / ".cache" / "napari-phenotyper-tests")


def pytest_configure(config: pytest.Config) -> None:
    """Point HOME at an empty folder and unset every user-state variable, before any test
    module (or napari) is imported."""
    global _FRESH_HOME
    _SAVED_ENV.update(
        {k: os.environ.get(k) for k in ("HOME", "NAPARI_PHENOTYPER_TEST_CACHE", *USER_STATE_VARS)}
    )
    os.environ["NAPARI_PHENOTYPER_TEST_CACHE"] = _test_model_cache()
    _FRESH_HOME = Path(tempfile.mkdtemp(prefix="napari-phenotyper-fresh-home-"))
    os.environ["HOME"] = str(_FRESH_HOME)
    for name in USER_STATE_VARS:
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if _FRESH_HOME is not None:
        shutil.rmtree(_FRESH_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def user_state_vars() -> tuple[str, ...]:
    """The variables that the session unsets (see :data:`USER_STATE_VARS`)."""
    return USER_STATE_VARS


@pytest.fixture(scope="session")
def fresh_home() -> Path:
    """The empty HOME of this test session (what a new user has)."""
    assert _FRESH_HOME is not None
    return _FRESH_HOME


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
