"""Sample images that work offline, and extra ones fetched with known hashes.

No napari import here: the CLI and the tests use these too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["NUCLEI_3D_SPACING", "SAMPLES", "SampleUnavailable", "human_mitosis", "nuclei_2d", "nuclei_3d"]

#: Voxel size (z, y, x) of :func:`nuclei_3d` relative to its pixels: its nuclei are about
#: 7 planes tall and 14-15 pixels across, a z step about twice the pixel size.
NUCLEI_3D_SPACING = (2.0, 1.0, 1.0)


class SampleUnavailable(RuntimeError):
    """A sample cannot be loaded here; the message says how to get it."""


def _stardist_images(*names: str, what: str) -> list[np.ndarray]:
    """Read files of the ``stardist`` wheel's ``data/images`` folder without importing
    stardist: its package imports scipy, numba and more, which froze napari's GUI for
    2.5 s when a new user opened the sample (``find_spec`` of a top-level package runs
    none of its code)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise SampleUnavailable(
            f"The offline {what} sample ships with the 'stardist' package, which is not installed. "
            "Install it with: pip install 'napari-phenotyper[samples]'  (or pip install stardist)."
        )
    import tifffile

    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SampleUnavailable(
            f"The installed 'stardist' package has no {', '.join(missing)} in {folder}; "
            "reinstall it with: pip install --force-reinstall stardist"
        )
    return [np.asarray(tifffile.imread(folder / n)) for n in names]


def nuclei_2d() -> tuple[np.ndarray, np.ndarray]:
    """Fluorescent nuclei (512x512, uint16) and their hand-annotated instance labels.

    The image and mask ship inside the ``stardist`` wheel (BSD-3-Clause), so this
    works offline; install ``napari-phenotyper[samples]`` or ``stardist``.

    Returns
    -------
    image : ndarray of uint16
    mask : ndarray of uint16
        Ground-truth label image (0 = background).
    """
    image, mask = _stardist_images("img2d.tif", "mask2d.tif", what="nuclei")
    return image, mask


def nuclei_3d() -> tuple[np.ndarray, np.ndarray]:
    """A (31, 61, 57) uint16 stack of fluorescent nuclei and its 51 annotated 3-D nuclei.

    Ships inside the ``stardist`` wheel (BSD-3-Clause) like :func:`nuclei_2d`, so it works
    offline. The voxels are about twice as tall as wide (:data:`NUCLEI_3D_SPACING`).
    """
    image, mask = _stardist_images("img3d.tif", "mask3d.tif", what="3-D nuclei")
    return image, mask


def human_mitosis() -> np.ndarray:
    """Human mitosis nuclei (scikit-image, 512x512 uint8), downloaded once by pooch.

    scikit-image fetches the file from its data repository with a known SHA-256
    and caches it (``SKIMAGE_DATADIR`` overrides the folder), so it needs network
    on first use and ``pooch`` installed.
    """
    import skimage.data

    try:
        return np.asarray(skimage.data.human_mitosis())
    except Exception as exc:  # pooch missing, offline, or a hash mismatch
        raise SampleUnavailable(
            "Could not load scikit-image's 'human_mitosis' sample: it is downloaded on first use "
            "and needs network access and the 'pooch' package (pip install pooch). "
            f"Underlying error: {exc}"
        ) from exc


#: Sample names for the command line.
SAMPLES = {"nuclei": nuclei_2d, "nuclei3d": nuclei_3d, "mitosis": human_mitosis}
