"""Where an annotated cell is: a compact, JSON-safe record of its shape.

Session files key annotations by label id, and label ids mean nothing across
segmentations: another segmenter, other parameters or a re-run can give the same
nucleus another id, and another nucleus the old one. Each annotation therefore keeps its
cell's geometry (bounding box, area, centroid and the mask inside the box, bit-packed and
compressed), so that it can be put back on the right cell of any segmentation of the same
image by overlap, or kept as a *lost* annotation with its position when no cell matches.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CellShape", "cell_shape", "match_shape"]


@dataclass(frozen=True)
class CellShape:
    """A cell's footprint in its image's pixel grid.

    Attributes
    ----------
    lo, hi : tuple of int
        Bounding box, ``hi`` exclusive (one entry per image axis).
    area : int
        Number of pixels (voxels).
    centroid : tuple of float
        Mean pixel position.
    mask : numpy.ndarray
        Boolean mask of the cell inside the box (shape ``hi - lo``).
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    area: int
    centroid: tuple[float, ...]
    mask: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (the mask bit-packed, zlib-compressed, base64)."""
        packed = zlib.compress(np.packbits(self.mask.ravel()).tobytes(), 6)
        return {
            "bbox": [*self.lo, *self.hi],
            "area": int(self.area),
            "centroid": [round(float(c), 2) for c in self.centroid],
            "mask": base64.b64encode(packed).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CellShape:
        """Read :meth:`to_json`'s dict back.

        Raises
        ------
        ValueError
            For a malformed record (says what is wrong).
        """
        try:
            box = [int(v) for v in data["bbox"]]
            if len(box) % 2 or not box:
                raise ValueError("bbox needs lo and hi per axis")
            nd = len(box) // 2
            lo, hi = tuple(box[:nd]), tuple(box[nd:])
            shape = tuple(h - lo_ for lo_, h in zip(lo, hi, strict=True))
            if any(s <= 0 for s in shape):
                raise ValueError(f"empty bbox {box}")
            raw = zlib.decompress(base64.b64decode(str(data["mask"]), validate=True))
            bits = np.unpackbits(np.frombuffer(raw, np.uint8))[: int(np.prod(shape))]
            if bits.size != int(np.prod(shape)):
                raise ValueError("mask is shorter than its bbox")
            centroid = tuple(float(c) for c in data["centroid"])
            return cls(lo, hi, int(data["area"]), centroid, bits.reshape(shape).astype(bool))
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise ValueError(f"malformed cell geometry ({exc})") from None


def _bbox_of(labels: np.ndarray, label: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    where = np.nonzero(labels == label)
    if where[0].size == 0:
        return None
    return tuple(int(w.min()) for w in where), tuple(int(w.max()) + 1 for w in where)


def cell_shape(
    labels: np.ndarray,
    label: int,
    bbox: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> CellShape | None:
    """The geometry of cell ``label`` (``None`` when it is not in ``labels``).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image (any number of axes).
    label : int
        The cell's id.
    bbox : (lo, hi), optional
        Its bounding box when known (e.g. from the feature table's ``bbox_*`` columns),
        which avoids a scan of the whole image.
    """
    arr = np.asarray(labels)
    given = bbox is not None
    if bbox is None:
        bbox = _bbox_of(arr, int(label))
        if bbox is None:
            return None
    lo, hi = bbox
    crop = np.asarray(arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
    mask = crop == int(label)
    area = int(mask.sum())
    if area == 0:
        return cell_shape(arr, label) if given else None  # a stale bbox: scan the image
    where = np.nonzero(mask)
    centroid = tuple(float(w.mean()) + a for w, a in zip(where, lo, strict=True))
    return CellShape(tuple(int(v) for v in lo), tuple(int(v) for v in hi), area, centroid, mask)


def match_shape(
    shape: CellShape,
    labels: np.ndarray,
    areas: Mapping[int, int] | None = None,
) -> tuple[int, float]:
    """The cell of ``labels`` that overlaps ``shape`` most, by intersection over union.

    Returns ``(label, iou)``, ``(0, 0.0)`` when nothing overlaps. ``areas`` (label ->
    pixel count, e.g. the feature table's ``area``) saves counting a candidate's pixels.
    """
    arr = np.asarray(labels)
    if len(shape.lo) != arr.ndim:
        return 0, 0.0
    lo = [max(0, a) for a in shape.lo]
    hi = [min(s, b) for s, b in zip(arr.shape, shape.hi, strict=True)]
    if any(b <= a for a, b in zip(lo, hi, strict=True)):
        return 0, 0.0
    crop = np.asarray(arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
    mask = shape.mask[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, shape.lo, strict=True))]
    under = crop[mask]
    under = under[under > 0]
    if under.size == 0:
        return 0, 0.0
    ids, inter = np.unique(under, return_counts=True)
    best, best_iou = 0, 0.0
    for lab, i in zip(ids.tolist(), inter.tolist(), strict=True):
        area = areas.get(int(lab)) if areas is not None else None
        if area is None:
            area = int(np.count_nonzero(arr == lab))
        iou = i / (shape.area + int(area) - i)
        if iou > best_iou:
            best, best_iou = int(lab), float(iou)
    return best, best_iou
