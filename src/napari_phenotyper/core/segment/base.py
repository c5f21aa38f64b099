"""The segmenter protocol shared by every backend, and plane-by-plane iteration."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..progress import Progress

__all__ = ["SegmentationError", "Segmenter", "as_label_image", "check_image", "planewise"]


class SegmentationError(ValueError):
    """Raised for input a segmenter cannot handle; the message tells the user what to do."""


@runtime_checkable
class Segmenter(Protocol):
    """What every segmentation backend provides.

    Attributes
    ----------
    name : str
        Registry key (e.g. ``"classical"``, ``"cellpose"``).
    display_name : str
        Name shown in the GUI.
    params_type : type
        A frozen dataclass holding every parameter with defaults.
    spatial_ndim : int
        Number of trailing axes the backend segments at once (2 for plane by plane).
    """

    name: ClassVar[str]
    display_name: ClassVar[str]
    params_type: ClassVar[type]
    spatial_ndim: ClassVar[int]

    def segment(self, image: np.ndarray, params: Any) -> Generator[Progress, None, np.ndarray]:
        """Segment a single-channel image.

        ``image`` has ``spatial_ndim`` spatial axes, possibly preceded by extra leading
        axes (time, z) that are segmented plane by plane. Yields :class:`Progress` and
        returns a ``uint32`` label image of the same shape, 0 = background, label ids
        unique over the whole array.
        """
        ...

    def device(self, params: Any) -> str:
        """Human-readable description of where the computation runs (e.g. ``"CPU"``)."""
        ...


def check_image(image: np.ndarray, spatial_ndim: int = 2) -> np.ndarray:
    """Validate a single-channel image and return it as a numpy array.

    Raises
    ------
    SegmentationError
        If the image has too few axes, is empty, complex, or not numeric.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise SegmentationError(
            f"Cannot segment an image of dtype {arr.dtype}: expected integer or float pixels."
        )
    if arr.ndim < spatial_ndim:
        raise SegmentationError(
            f"Expected an image with at least {spatial_ndim} axes, got shape {arr.shape}."
        )
    if arr.size == 0 or min(arr.shape[-spatial_ndim:]) < 2:
        raise SegmentationError(f"The image is empty or too small to segment (shape {arr.shape}).")
    return arr


def as_label_image(labels: np.ndarray) -> np.ndarray:
    """Return ``labels`` as ``uint32`` (0 = background)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint32:
        if labels.size and labels.min() < 0:
            raise SegmentationError("Label images cannot contain negative values.")
        labels = labels.astype(np.uint32)
    return labels


def planewise(
    image: np.ndarray,
    segment_plane: Callable[[np.ndarray], np.ndarray],
    spatial_ndim: int = 2,
    message: str = "Segmenting",
) -> Generator[Progress, None, np.ndarray]:
    """Segment every ``spatial_ndim``-D plane of ``image`` with ``segment_plane``.

    Label ids are offset plane after plane so that they are unique across the stack
    (one row per label in a features table). Yields one :class:`Progress` per plane.
    """
    image = check_image(image, spatial_ndim)
    lead = image.shape[:-spatial_ndim]
    n = int(np.prod(lead)) if lead else 1
    out = np.zeros(image.shape, dtype=np.uint32)
    offset = 0
    yield Progress(0, n, f"{message}: plane 1/{n}" if n > 1 else message)
    for i, idx in enumerate(np.ndindex(*lead) if lead else [()]):
        lab = as_label_image(segment_plane(image[idx]))
        if lab.shape != image.shape[-spatial_ndim:]:
            raise RuntimeError(
                f"segmenter returned shape {lab.shape} for a plane of {image.shape[-spatial_ndim:]}"
            )
        if offset:
            lab = np.where(lab > 0, lab + np.uint32(offset), np.uint32(0))
        out[idx] = lab
        if lab.size:
            offset = max(offset, int(lab.max()))
        yield Progress(i + 1, n, f"{message}: plane {min(i + 2, n)}/{n}" if n > 1 else message)
    return out
