"""Training pairs for fine-tuning: checked at the boundary, read from folders, split.

Every check names the image it is about, so that a biologist with ten layers open knows
which mask to fix. The rules (see :func:`check_training_pairs`): a 2-D image (or
``(Y, X, C)`` with at most 4 channels) and an integer label image of the same shape,
with at least two objects, and at least ``min_side`` pixels along each side when a
patch size is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TrainingData", "check_training_pairs", "load_training_folder", "split_indices"]


@dataclass(frozen=True)
class TrainingData:
    """Checked training (or validation) pairs.

    Parameters
    ----------
    images : tuple of ndarray
        ``(Y, X)`` or ``(Y, X, C)`` images.
    masks : tuple of ndarray
        Label images (``int32``, 0 = background), one per image.
    names : tuple of str
        Names for messages and the model's metadata (layer or file names).
    """

    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_objects(self) -> int:
        """Objects over all masks."""
        return int(sum(len(np.unique(m)) - int((m == 0).any()) for m in self.masks))


def _as_labels(mask: np.ndarray, where: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == bool:
        raise ValueError(
            f"{where} is a binary mask (True/False); fine-tuning needs instance labels "
            "(one id per cell). Label it first, e.g. with skimage.measure.label, or paint cells "
            "with different label ids."
        )
    if m.dtype.kind == "f":
        if not np.all(np.isfinite(m)) or not np.array_equal(m, np.round(m)):
            raise ValueError(
                f"{where} holds non-integer values ({m.dtype}); a mask must be a label image "
                "of whole numbers (0 = background, one id per cell)."
            )
        m = m.astype(np.int64)
    elif m.dtype.kind not in "iu":
        raise ValueError(f"{where} has dtype {m.dtype}; a mask must be a label image of integers.")
    if m.size and m.min() < 0:
        raise ValueError(f"{where} has negative labels; use 0 for background and positive ids for cells.")
    if m.size and m.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{where} has label ids above {np.iinfo(np.int32).max}; relabel it.")
    return m.astype(np.int32, copy=False)


def check_training_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    what: str = "training",
    min_side: int | None = None,
    max_channels: int = 4,
) -> TrainingData:
    """Check image/mask pairs and return them ready for training.

    Parameters
    ----------
    images, masks : sequences of ndarray
        Images ``(Y, X)`` or ``(Y, X, C)`` and their instance label images.
    names : sequence of str, optional
        Names used in messages (default ``image 1``, ``image 2``...).
    what : str
        ``"training"`` or ``"validation"``: said in messages.
    min_side : int, optional
        Smallest allowed height and width (the training patch size).
    max_channels : int
        Most channels an image may have (1 for single-channel backends).

    Returns
    -------
    TrainingData

    Raises
    ------
    ValueError
        With the image's name, for: no pairs, unequal counts, an image that is not 2-D,
        not numeric or not finite, a mask of another shape, a mask that is not integer
        labels, a mask with no object or a single object, an image smaller than
        ``min_side``, or images with different channel counts.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} {what} images but {len(masks)} masks: give one mask per image.")
    if not images:
        raise ValueError(f"No {what} images were given: add at least one image with its corrected mask.")
    labels = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} names for {len(images)} {what} images.")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    channels: set[int] = set()
    for img, mask, name in zip(images, masks, labels, strict=True):
        x = np.asarray(img)
        where = f"{what.capitalize()} image {name!r}"
        if x.ndim == 3 and x.shape[-1] > max_channels and x.shape[0] <= max_channels:
            raise ValueError(
                f"{where} has shape {x.shape}: channels must be the last axis (Y, X, C); "
                "move them there first (e.g. numpy.moveaxis(image, 0, -1))."
            )
        if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] <= max_channels)):
            hint = (
                "single-channel (Y, X)"
                if max_channels == 1
                else f"(Y, X) or (Y, X, C) with C <= {max_channels}"
            )
            raise ValueError(
                f"{where} has shape {x.shape}: a 2-D {hint} image is needed. For a stack, pick one plane."
            )
        if x.dtype.kind not in "uif":
            raise ValueError(f"{where} has dtype {x.dtype}: pixels must be numbers.")
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise ValueError(f"{where} has NaN or infinite pixels; replace them first.")
        y = _as_labels(mask, f"The mask of {what} image {name!r}")
        if y.shape != x.shape[:2]:
            raise ValueError(
                f"The mask of {what} image {name!r} has shape {y.shape} but the image is {x.shape[:2]}: "
                "pair each image with the labels drawn on it."
            )
        n = len(np.unique(y)) - int((y == 0).any())
        if n == 0:
            raise ValueError(
                f"The mask of {what} image {name!r} has no objects: segment it and correct the labels, "
                "or leave the image out."
            )
        if n == 1:
            raise ValueError(
                f"The mask of {what} image {name!r} has a single object: a model learns from many "
                "cells (and the background between them). Label all cells of the image."
            )
        if min_side is not None and min(y.shape) < min_side:
            raise ValueError(
                f"{where} is {y.shape[0]} x {y.shape[1]} pixels, smaller than the {min_side} x {min_side} "
                "training patch: choose a smaller patch size, or a larger image."
            )
        channels.add(1 if x.ndim == 2 else x.shape[-1])
        xs.append(x)
        ys.append(y)
    if len(channels) > 1:
        raise ValueError(f"The {what} images have different numbers of channels ({sorted(channels)}).")
    return TrainingData(tuple(xs), tuple(ys), tuple(labels))


def load_training_folder(
    images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str], *, what: str = "training"
) -> TrainingData:
    """Read image/mask pairs from two folders (paired by file stem) and check them.

    Images are paired with masks as :func:`~napari_phenotyper.core.evaluate.match_masks`
    does (``a1.png`` with ``a1.tif`` or ``a1_mask.tif``...). RGB(A) images are reduced to
    gray by luminance, as ``evaluate`` does.

    Raises
    ------
    FileNotFoundError
        If a folder is missing or holds no pairs.
    ValueError
        For an unpaired image (named) or a pair that fails :func:`check_training_pairs`.
    """
    from ...io.images import read_image, to_grayscale
    from ..evaluate import match_masks

    for folder, label in ((images_dir, "images"), (masks_dir, "masks")):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"The {what} {label} folder {folder} does not exist.")
    pairs, no_mask, _ = match_masks(images_dir, masks_dir)
    if no_mask:
        raise ValueError(
            f"No mask found for {len(no_mask)} {what} image(s): "
            + ", ".join(p.name for p in no_mask[:5])
            + (" ..." if len(no_mask) > 5 else "")
            + ". Masks pair with images by file name (a1.png <-> a1.tif or a1_mask.tif)."
        )
    if not pairs:
        raise FileNotFoundError(f"No {what} image/mask pairs in {images_dir} and {masks_dir}.")
    images, masks, names = [], [], []
    for img_path, mask_path in pairs:
        images.append(to_grayscale(read_image(img_path)))
        masks.append(np.asarray(read_image(mask_path)))
        names.append(img_path.name)
    return check_training_pairs(images, masks, names, what=what)


def split_indices(n: int, n_train: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """A deterministic split of ``n`` items: ``n_train`` for training, the rest held out.

    Parameters
    ----------
    n : int
        Number of items.
    n_train : int
        Items for training (``1 <= n_train < n``).
    seed : int
        Seeds the permutation.

    Returns
    -------
    (list of int, list of int)
        Sorted training and held-out indices.
    """
    if not 1 <= n_train < n:
        raise ValueError(f"n_train must be between 1 and {n - 1} for {n} items, got {n_train}.")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())
