"""Lint and type checks run with the tests so that CI enforces them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name):
    exe = Path(sys.executable).parent / name
    path = str(exe) if exe.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[testing]')")
    return path


def test_ruff_clean():
    out = subprocess.run(
        # --no-cache: a stale cache once hid an import-order error that a clean clone (CI) found
        [
            _tool("ruff"),
            "check",
            "--no-cache",
            "--output-format",
            "concise",
            "src",
            "tests",
            "benchmarks",
            "docs",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_core_clean():
    out = subprocess.run([_tool("mypy")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
