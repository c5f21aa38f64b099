"""napari-phenotyper: cell segmentation, measurement and phenotyping for napari.

Importing this package loads neither napari nor Qt; the GUI lives in
``napari_phenotyper._napari`` and is loaded by napari through ``napari.yaml``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-phenotyper")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__"]
