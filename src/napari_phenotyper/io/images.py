"""Reading microscopy images from disk and reducing them to one channel.

Kept free of napari and Qt so that the command line and the evaluation code can use it.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "read_image", "to_grayscale"]

#: File suffixes :func:`read_image` understands (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")

_TIFF_SUFFIXES = (".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (empty, truncated, corrupt, or a
    compression whose codec is missing); the message names the file and what to do."""


# ITU-R BT.709 luma weights, the ones skimage.color.rgb2gray uses.
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def read_image(path: str | PathLike[str]) -> np.ndarray:
    """Read an image file into a numpy array, unchanged.

    TIFF files (``.tif``, ``.tiff``) are read with :mod:`tifffile` (compressed TIFFs such
    as LZW need :mod:`imagecodecs`); PNG, JPEG and BMP with :func:`skimage.io.imread`.
    No axis is dropped or reordered: an RGBA PNG comes back as ``(Y, X, 4)``, a TIFF
    stack as stored. Use :func:`to_grayscale` to get one channel.

    Parameters
    ----------
    path : str or path-like
        File to read.

    Returns
    -------
    numpy.ndarray
        The pixel data.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the suffix is not one of :data:`IMAGE_SUFFIXES`.
    ImageReadError
        If the file is empty, truncated or corrupt (a :class:`ValueError`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such image file: {path}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"Cannot read {path.name}: unsupported file type {suffix!r} (supported: {', '.join(IMAGE_SUFFIXES)})."
        )
    if path.stat().st_size == 0:
        raise ImageReadError(f"Cannot read {path.name}: the file is empty (0 bytes); copy it again.")
    try:
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(path))
        import skimage.io

        return np.asarray(skimage.io.imread(path))
    except MemoryError:
        raise
    except ImportError as exc:  # e.g. a compressed TIFF without imagecodecs: say which package
        raise ImageReadError(f"Cannot read {path.name}: {exc}") from exc
    except Exception as exc:
        # imageio answers a corrupt PNG with "Could not find a backend ... pip install
        # imageio[pyav]", which sends users to install the wrong thing
        kind = "TIFF" if suffix in _TIFF_SUFFIXES else suffix.lstrip(".").upper()
        raise ImageReadError(
            f"Cannot read {path.name}: the file is unreadable or corrupt (not a valid {kind} image: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
            "Check the file, or copy it again."
        ) from exc


def to_grayscale(image: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Reduce an image to a single channel.

    Rules, in order:

    * 2-D images are returned unchanged (``channel`` is ignored).
    * ``channel`` given: if the last axis has at most 4 entries it is taken as the channel
      axis (``(..., Y, X, C)``, as in RGB PNGs); otherwise the first axis is
      (``(C, Y, X)``, as in many multi-channel TIFFs). That channel is returned.
    * ``channel`` not given and the last axis has 3 (RGB) or 4 (RGBA) entries: the alpha
      channel is dropped and the colour channels are combined by luminance
      (``0.2125 R + 0.7154 G + 0.0721 B``, as :func:`skimage.color.rgb2gray`, but in the
      image's own intensity units, as ``float32``). Grey images saved as RGB(A), whose
      three colour channels are identical, return the first channel with its dtype.
    * Otherwise the image is returned unchanged: a stack of planes (time, z) that
      segmenters process plane by plane.

    Parameters
    ----------
    image : numpy.ndarray
        Image as read by :func:`read_image`.
    channel : int, optional
        Index of the channel to keep in a multi-channel image (negative counts from the end).

    Returns
    -------
    numpy.ndarray
        The single-channel image (or stack).

    Raises
    ------
    ValueError
        If ``channel`` is out of range.
    """
    img = np.asarray(image)
    if img.ndim <= 2:
        return img
    if channel is not None:
        axis = img.ndim - 1 if img.shape[-1] <= 4 else 0
        n = img.shape[axis]
        if not -n <= channel < n:
            raise ValueError(
                f"Channel {channel} does not exist: the image of shape {img.shape} has {n} "
                f"channels along axis {axis}."
            )
        return np.take(img, channel, axis=axis)
    if img.shape[-1] in (3, 4):
        rgb = img[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        return (rgb.astype(np.float32) @ _LUMA.astype(np.float32)).astype(np.float32)
    return img
