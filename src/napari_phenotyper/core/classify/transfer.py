"""Carry annotations across a re-segmentation by overlap (ilastik-style label transfer).

When a labels layer changes (re-run with other parameters, manual painting, a
fine-tuned model), every annotated cell moves to the new label it overlaps most, if
their intersection over union is at least ``min_iou``; otherwise the annotation is
reported as lost so that the user can re-check that cell.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TransferResult", "transfer_annotations"]


@dataclass(frozen=True)
class TransferResult:
    """Outcome of :func:`transfer_annotations`.

    Attributes
    ----------
    annotations : dict
        New label id -> annotation value.
    moved : dict
        Old label id -> new label id, for every kept annotation.
    lost : dict
        Old label id -> best IoU found (below ``min_iou``; 0 when the cell vanished).
    """

    annotations: dict[int, Any] = field(default_factory=dict)
    moved: dict[int, int] = field(default_factory=dict)
    lost: dict[int, float] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return len(self.moved)


def transfer_annotations(
    old_labels: np.ndarray,
    new_labels: np.ndarray,
    annotations: Mapping[int, Hashable],
    min_iou: float = 0.5,
) -> TransferResult:
    """Move annotations from ``old_labels`` to the best-overlapping cells of ``new_labels``.

    Only annotated cells are looked at, so this is cheap on images with many cells.
    With ``min_iou >= 0.5`` the result is one-to-one (two cells cannot both overlap one
    cell by more than half of their union).

    Parameters
    ----------
    old_labels, new_labels : numpy.ndarray
        Integer label images of the same shape (0 = background).
    annotations : mapping
        Old label id -> annotation (class name or value).
    min_iou : float
        Smallest intersection over union for an annotation to move (default 0.5).

    Raises
    ------
    ValueError
        For label images of different shapes or ``min_iou`` outside (0, 1].
    """
    old = np.asarray(old_labels)
    new = np.asarray(new_labels)
    if old.shape != new.shape:
        raise ValueError(
            f"The label images differ in shape ({old.shape} vs {new.shape}); annotations can only "
            "be transferred between segmentations of the same image."
        )
    if not 0 < min_iou <= 1:
        raise ValueError("min_iou must be in (0, 1].")
    ids = np.array(sorted(int(k) for k in annotations if int(k) > 0), dtype=np.int64)
    if ids.size == 0:
        return TransferResult()
    old_flat = old.ravel().astype(np.int64, copy=False)
    new_flat = new.ravel().astype(np.int64, copy=False)
    sel = np.isin(old_flat, ids)
    o, n = old_flat[sel], new_flat[sel]
    area_old = dict(zip(*np.unique(o, return_counts=True), strict=True))
    keep = n > 0
    pairs, inter = np.unique(np.stack([o[keep], n[keep]]), axis=1, return_counts=True)
    touched = np.unique(pairs[1]) if pairs.size else np.zeros(0, np.int64)
    # areas of the new cells that touch an annotated cell (only those are needed)
    in_touched = np.isin(new_flat, touched)
    area_new = dict(zip(*np.unique(new_flat[in_touched], return_counts=True), strict=True))
    best: dict[int, tuple[float, int]] = {}
    for (oid, nid), i in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        iou = i / (area_old[oid] + area_new[nid] - i)
        if iou > best.get(oid, (-1.0, 0))[0]:
            best[oid] = (iou, nid)
    out: dict[int, Any] = {}
    moved: dict[int, int] = {}
    lost: dict[int, float] = {}
    for oid in ids.tolist():
        iou, nid = best.get(oid, (0.0, 0))
        if iou >= min_iou and nid not in out:
            out[nid] = annotations[oid]
            moved[oid] = nid
        else:
            lost[oid] = float(iou)
    return TransferResult(out, moved, lost)
