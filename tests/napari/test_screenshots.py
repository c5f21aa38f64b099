"""docs/make_screenshots.py still drives napari through the user guide and saves real screenshots."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "make_screenshots.py"


def _screenshots() -> tuple[str, ...]:
    """``IMAGES`` of the script, read without importing it."""
    for node in ast.parse(SCRIPT.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IMAGES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("docs/make_screenshots.py has no IMAGES tuple")


@pytest.mark.timeout(600)
def test_make_screenshots(tmp_path):
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        pytest.skip("no X display: run under pytest-xvfb (the default) or xvfb-run")
    out = tmp_path / "images"
    # the same environment, hence the same (virtual) display, as this test session
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=520,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    pixels = {}
    for name in _screenshots():
        path = out / name
        assert path.is_file(), f"{name} was not written:\n{proc.stdout}"
        assert path.stat().st_size > 50_000, f"{name} is only {path.stat().st_size} bytes"
        rgb = np.asarray(Image.open(path).convert("RGB"))
        height, width, _ = rgb.shape
        assert width >= 1000 and height >= 700, f"{name} is {width}x{height}"
        # not a blank or uniform window: many colours, and the canvas drew something
        assert rgb.std() > 20, f"{name} is nearly uniform"
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 500, f"{name} has few colours"
        pixels[name] = rgb
    shots = list(pixels.values())
    for i, a in enumerate(shots):
        for b in shots[i + 1 :]:
            assert a.shape != b.shape or not np.array_equal(a, b), "two screenshots are identical"
