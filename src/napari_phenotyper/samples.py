"""Sample images that work offline, and extra ones fetched with known hashes.

No napari import here: the CLI and the tests use these too.
"""

from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["NUCLEI_3D_SPACING", "SAMPLES", "SampleUnavailable", "human_mitosis", "nuclei_2d", "nuclei_3d"]

#: Voxel size (z, y, x) of :func:`nuclei_3d` relative to its pixels: its nuclei are about
#: 7 planes tall and 14-15 pixels across, a z step about twice the pixel size.
NUCLEI_3D_SPACING = (2.0, 1.0, 1.0)


class SampleUnavailable(RuntimeError):
    """A sample cannot be loaded here; the message says how to get it."""


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
    if importlib.util.find_spec("stardist") is None:
        raise SampleUnavailable(
            "The offline nuclei sample ships with the 'stardist' package, which is not installed. "
            "Install it with: pip install 'napari-phenotyper[samples]'  (or pip install stardist)."
        )
    from stardist.data import test_image_nuclei_2d  # the data module imports no TensorFlow

    image, mask = test_image_nuclei_2d(return_mask=True)
    return np.asarray(image), np.asarray(mask)


def nuclei_3d() -> tuple[np.ndarray, np.ndarray]:
    """A (31, 61, 57) uint16 stack of fluorescent nuclei and its 51 annotated 3-D nuclei.

    Ships inside the ``stardist`` wheel (BSD-3-Clause) like :func:`nuclei_2d`, so it works
    offline. The voxels are about twice as tall as wide (:data:`NUCLEI_3D_SPACING`).
    """
    if importlib.util.find_spec("stardist") is None:
        raise SampleUnavailable(
            "The offline 3-D nuclei sample ships with the 'stardist' package, which is not installed. "
            "Install it with: pip install 'napari-phenotyper[samples]'  (or pip install stardist)."
        )
    from stardist.data import test_image_nuclei_3d  # the data module imports no TensorFlow

    image, mask = test_image_nuclei_3d(return_mask=True)
    return np.asarray(image), np.asarray(mask)


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
