"""core/, io/, the CLI and the package root must never load napari or Qt."""

import subprocess
import sys

FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy", "tensorflow")

CODE = """
import importlib, pkgutil, sys
import napari_phenotyper, napari_phenotyper.core, napari_phenotyper.io
for pkg in (napari_phenotyper.core, napari_phenotyper.io):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
import napari_phenotyper.cli, napari_phenotyper.samples
bad = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(",".join(bad))
""".replace("%r", repr(FORBIDDEN))


def test_core_io_cli_import_no_gui_modules():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"GUI/heavy modules loaded by headless code: {out.stdout.strip()}"


def test_forbidden_check_can_fail():
    # The same probe sees napari once it is imported, so the test above is meaningful.
    code = "import sys, napari_phenotyper._napari.layers; print('napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


#: The docks are views: no GUI module grows past this many lines (algorithms and state
#: belong in core, e.g. core/classify/session.py).
MAX_GUI_LINES = 600


def test_gui_modules_stay_thin():
    from pathlib import Path

    gui = Path(__file__).resolve().parents[1] / "src" / "napari_phenotyper" / "_napari"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in gui.glob("*.py")}
    assert len(sizes) > 10  # the folder was found
    assert {n: k for n, k in sizes.items() if k > MAX_GUI_LINES} == {}
