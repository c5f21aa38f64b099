"""Instance-segmentation accuracy: matched-instance average precision.

The definition is the one of StarDist and of the 2018 Data Science Bowl:

1. The intersection over union (IoU) of every ground-truth object with every predicted
   object is computed at once from a joint histogram of label pairs.
2. At an IoU threshold ``t``, ground-truth and predicted objects are paired one to one so
   that the number of pairs with IoU >= ``t`` is as large as possible (ties broken by the
   largest total IoU), solved with :func:`scipy.optimize.linear_sum_assignment`. For
   ``t > 0.5`` such pairs are unique anyway, since an object can overlap at most one
   other object with IoU above 0.5.
3. Matched pairs are true positives (TP), unmatched predictions false positives (FP),
   unmatched ground-truth objects false negatives (FN), and

   ``AP(t) = TP / (TP + FP + FN)``.

``ap50`` is AP at ``t = 0.5``; ``ap50_95`` the mean of AP over ``t = 0.5, 0.55, ..., 0.95``.

A pair matches when IoU >= ``t`` (StarDist's ``matching``, the default rule
``"stardist"``); the 2018 Data Science Bowl's Kaggle metric counted IoU > ``t``
(``rule="kaggle"``). They differ only for pairs whose IoU is exactly ``t``, which small
objects do reach (e.g. 2 of 4 pixels). Folder scores (:func:`summarize`) are means over
images; StarDist's ``matching_dataset`` pools the counts of all images by default.

:func:`iter_evaluate_folder` runs a registered segmenter over a folder of images with
ground-truth masks and returns one row of scores per image.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .progress import Progress, sub_progress

__all__ = [
    "AP_THRESHOLDS",
    "IOU_RULES",
    "MatchStats",
    "average_precision",
    "iou_matrix",
    "iter_evaluate_folder",
    "match_masks",
    "match_stats",
    "summarize",
]

#: IoU thresholds 0.5, 0.55, ..., 0.95 over which ``ap50_95`` is averaged.
AP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: Matching rules: ``"stardist"`` pairs objects with IoU >= t, ``"kaggle"`` with IoU > t.
IOU_RULES: tuple[str, ...] = ("stardist", "kaggle")


def _check_rule(rule: str) -> str:
    if rule not in IOU_RULES:
        raise ValueError(f"Unknown IoU rule {rule!r}; choose one of {', '.join(IOU_RULES)}.")
    return rule


@dataclass(frozen=True)
class MatchStats:
    """Matching scores of one prediction against its ground truth at one IoU threshold.

    Parameters
    ----------
    threshold : float
        IoU a pair needs to count as a match.
    tp, fp, fn : int
        Matched pairs; unmatched predicted objects; unmatched ground-truth objects.
    precision : float
        ``tp / n_pred`` (1.0 when both images are empty, 0.0 when only ``n_pred`` is 0).
    recall : float
        ``tp / n_true`` (1.0 when both images are empty, 0.0 when only ``n_true`` is 0).
    f1 : float
        ``2 tp / (n_true + n_pred)`` (1.0 when both images are empty).
    ap : float
        ``tp / (tp + fp + fn)`` (1.0 when both images are empty).
    mean_matched_iou : float
        Mean IoU of the matched pairs; 0.0 when nothing is matched (StarDist's convention).
    n_true, n_pred : int
        Number of ground-truth and predicted objects.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    mean_matched_iou: float
    n_true: int
    n_pred: int


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(
            f"Ground truth and prediction must have the same shape, got {gt.shape} and {pred.shape}."
        )
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if arr.dtype == bool:
            continue
        if arr.dtype.kind not in "iu":
            if (
                arr.dtype.kind == "f"
                and arr.size
                and np.all(np.isfinite(arr))
                and np.all(arr == np.round(arr))
            ):
                continue
            raise ValueError(f"The {name} must be an integer label image, got dtype {arr.dtype}.")
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise ValueError(f"The {name} label image contains negative ids.")
    return gt, pred


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the ids of ``labels`` to 0 (background), 1..n, returning the flat map and n."""
    flat = labels.ravel()
    if flat.dtype == bool:
        return flat.astype(np.intp), int(flat.any())
    flat = flat.astype(np.int64, copy=False)
    if flat.size == 0:
        return flat.astype(np.intp), 0
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        # Lookup table: fast for the usual case of ids not much larger than the pixel count.
        present = np.zeros(top + 1, dtype=bool)
        present[flat] = True
        present[0] = False
        lut = np.zeros(top + 1, dtype=np.intp)
        n = int(present.sum())
        lut[present] = np.arange(1, n + 1)
        return lut[flat], n
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        return inverse.astype(np.intp) + 1, len(ids)
    return inverse.astype(np.intp), len(ids) - 1


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth object (rows) with every predicted object (columns).

    Label ids need not be contiguous; rows and columns follow the sorted non-zero ids of
    ``gt`` and ``pred``. Computed from a joint histogram of label pairs (one
    :func:`numpy.bincount`), not object by object.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Integer label images of the same shape, 0 = background.

    Returns
    -------
    numpy.ndarray
        ``(n_true, n_pred)`` float array.
    """
    gt, pred = _check_pair(gt, pred)
    g, ng = _sequential(gt)
    p, npred = _sequential(pred)
    joint = np.bincount(g * (npred + 1) + p, minlength=(ng + 1) * (npred + 1))
    overlap = joint.reshape(ng + 1, npred + 1)
    area_g = overlap.sum(axis=1)
    area_p = overlap.sum(axis=0)
    inter = overlap[1:, 1:].astype(np.float64)
    union = area_g[1:, None] + area_p[None, 1:] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou


def _match(iou: np.ndarray, threshold: float, rule: str = "stardist") -> np.ndarray:
    """IoU values of the optimal one-to-one matching at ``threshold`` (one per TP)."""
    strict = rule == "kaggle"
    candidate = iou > threshold if strict else iou >= threshold
    rows, cols = np.nonzero(candidate)
    if rows.size == 0:
        return np.zeros(0)
    if threshold > 0.5 or (strict and threshold >= 0.5):
        # Each object has at most one partner with IoU > 0.5: the pairs are the matching.
        return iou[rows, cols]
    # Solve the assignment separately in each connected group of candidate pairs; most
    # groups are a single pair.
    n_true, n_pred = iou.shape
    graph = coo_matrix((np.ones(rows.size), (rows, n_true + cols)), shape=(n_true + n_pred, n_true + n_pred))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[rows]
    order = np.argsort(pair_comp, kind="stable")
    rows, cols, pair_comp = rows[order], cols[order], pair_comp[order]
    starts = np.flatnonzero(np.r_[True, pair_comp[1:] != pair_comp[:-1]])
    ends = np.r_[starts[1:], rows.size]
    scores: list[np.ndarray] = []
    single = (ends - starts) == 1
    scores.append(iou[rows[starts[single]], cols[starts[single]]])
    for s, e in zip(starts[~single], ends[~single], strict=True):
        r_ids = np.unique(rows[s:e])
        c_ids = np.unique(cols[s:e])
        block = iou[np.ix_(r_ids, c_ids)]
        ok = block > threshold if strict else block >= threshold
        # Maximise the number of matches first, then their total IoU (StarDist's cost).
        cost = -ok.astype(np.float64) - block * ok / (2 * max(ok.sum(), 1))
        ri, ci = linear_sum_assignment(cost)
        keep = ok[ri, ci]
        scores.append(block[ri[keep], ci[keep]])
    return np.concatenate(scores)


def _stats(matched: np.ndarray, n_true: int, n_pred: int, threshold: float) -> MatchStats:
    tp = int(matched.size)
    fp = n_pred - tp
    fn = n_true - tp
    if n_true == 0 and n_pred == 0:
        precision = recall = f1 = ap = 1.0
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (n_true + n_pred)
        ap = tp / (tp + fp + fn)
    miou = float(matched.mean()) if tp else 0.0
    return MatchStats(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        ap=float(ap),
        mean_matched_iou=miou,
        n_true=int(n_true),
        n_pred=int(n_pred),
    )


def match_stats(
    gt: np.ndarray, pred: np.ndarray, thresholds: float | Iterable[float] = (0.5,), rule: str = "stardist"
) -> dict[float, MatchStats]:
    """Match predicted objects to ground-truth objects and score them.

    Parameters
    ----------
    gt : numpy.ndarray
        Ground-truth label image (integer ids, 0 = background; ids need not be contiguous).
    pred : numpy.ndarray
        Predicted label image of the same shape.
    thresholds : float or iterable of float
        IoU thresholds in (0, 1] at which to match.
    rule : {"stardist", "kaggle"}
        A pair matches when IoU >= t (StarDist) or IoU > t (the DSB 2018 Kaggle metric).

    Returns
    -------
    dict of float to MatchStats
        Scores per threshold, keyed by the threshold as given.

    Raises
    ------
    ValueError
        If the shapes differ, a threshold is outside (0, 1], an image is not a label image,
        or the rule is unknown.
    """
    _check_rule(rule)
    if isinstance(thresholds, int | float | np.number):
        ths = [float(thresholds)]
    else:
        ths = [float(t) for t in thresholds]
    for t in ths:
        if not 0.0 < t <= 1.0:
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {t}.")
    iou = iou_matrix(gt, pred)
    n_true, n_pred = iou.shape
    return {t: _stats(_match(iou, t, rule), n_true, n_pred, t) for t in ths}


def average_precision(gt: np.ndarray, pred: np.ndarray, rule: str = "stardist") -> dict[str, Any]:
    """Average precision at IoU 0.5 and averaged over IoU 0.5:0.05:0.95.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Ground-truth and predicted label images of the same shape.
    rule : {"stardist", "kaggle"}
        IoU >= t (StarDist, default) or IoU > t (the DSB 2018 Kaggle metric).

    Returns
    -------
    dict
        ``ap50`` (AP at IoU 0.5), ``ap50_95`` (mean AP over the 10 thresholds of
        :data:`AP_THRESHOLDS`), ``f1_50`` (F1 at IoU 0.5), ``n_true``, ``n_pred`` and
        ``per_threshold`` (the :class:`MatchStats` of every threshold).
    """
    stats = match_stats(gt, pred, AP_THRESHOLDS, rule=rule)
    s50 = stats[0.5]
    return {
        "ap50": s50.ap,
        "ap50_95": float(np.mean([s.ap for s in stats.values()])),
        "f1_50": s50.f1,
        "n_true": s50.n_true,
        "n_pred": s50.n_pred,
        "per_threshold": stats,
    }


# --------------------------------------------------------------------------- folders

#: Words that may follow an image's stem in its mask's name (see :func:`match_masks`).
MASK_SUFFIX_WORDS: tuple[str, ...] = (
    "mask",
    "masks",
    "label",
    "labels",
    "labeled",
    "seg",
    "segmentation",
    "gt",
    "cp_masks",
)


def _image_files(folder: Path) -> list[Path]:
    from ..io.images import IMAGE_SUFFIXES

    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    )


def _mask_key(stem: str) -> str:
    """A mask's stem with one trailing ``[_-.]<word>`` from MASK_SUFFIX_WORDS removed."""
    words = "|".join(sorted(MASK_SUFFIX_WORDS, key=len, reverse=True))
    return re.sub(rf"[_\-.]({words})$", "", stem, flags=re.IGNORECASE)


def match_masks(
    images_dir: str | PathLike[str], masks_dir: str | PathLike[str]
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pair image files with mask files by file stem.

    The rule: a mask belongs to the image whose stem (file name without its suffix) equals
    the mask's stem, or equals the mask's stem without one trailing separator (``_``, ``-``
    or ``.``) and word of :data:`MASK_SUFFIX_WORDS` (case-insensitive). So ``a1.png`` pairs
    with ``a1.tif``, ``a1.png``, ``a1_mask.tif``, ``a1-labels.png``, ``a1_cp_masks.png``.
    If several masks fit one image, one with exactly the image's stem wins, then the first
    in sorted order. Files of any suffix in :data:`~napari_phenotyper.io.images.IMAGE_SUFFIXES`
    count; hidden files are ignored.

    Parameters
    ----------
    images_dir, masks_dir : path-like
        Folders with the images and the ground-truth label images (may be the same folder,
        in which case masks must carry a suffix word).

    Returns
    -------
    pairs : list of (Path, Path)
        Matched ``(image, mask)`` files in sorted image order.
    unmatched_images : list of Path
        Images without a mask.
    unmatched_masks : list of Path
        Masks without an image.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"No such folder: {d}")
    masks = _image_files(masks_dir)
    same = images_dir.resolve() == masks_dir.resolve()
    by_stem: dict[str, list[Path]] = {}
    for m in masks:
        key = _mask_key(m.stem)
        if same and key == m.stem:
            continue  # in a shared folder, only suffixed files are masks
        by_stem.setdefault(key, []).append(m)
    mask_set = {m for ms in by_stem.values() for m in ms}
    images = [f for f in _image_files(images_dir) if f not in mask_set]
    pairs: list[tuple[Path, Path]] = []
    unmatched_images: list[Path] = []
    used: set[Path] = set()
    for img in images:
        cands = by_stem.get(img.stem, [])
        if not cands:
            unmatched_images.append(img)
            continue
        exact = [m for m in cands if m.stem == img.stem]
        mask = (exact or cands)[0]
        used.add(mask)
        pairs.append((img, mask))
    unmatched_masks = sorted(mask_set - used)
    return pairs, unmatched_images, unmatched_masks


def _names(files: Sequence[Path], limit: int = 10) -> str:
    shown = ", ".join(f.name for f in files[:limit])
    return shown + (f", ... ({len(files) - limit} more)" if len(files) > limit else "")


def _read_mask(path: Path) -> np.ndarray:
    from ..io.images import read_image, to_grayscale

    mask = read_image(path)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = to_grayscale(mask)  # identical channels come back with their integer dtype
    if mask.dtype.kind not in "iub":
        raise ValueError(f"Mask {path.name} is not an integer label image (dtype {mask.dtype}).")
    return mask


def iter_evaluate_folder(
    images_dir: str | PathLike[str],
    masks_dir: str | PathLike[str],
    segmenter_name: str = "classical",
    params: Any = None,
    channel: int | None = None,
    diameter: float | Literal["auto"] | None = None,
    iou_rule: str = "stardist",
) -> Generator[Progress, None, pd.DataFrame]:
    """Segment every image of a folder and score it against its ground-truth mask.

    Images and masks are paired by :func:`match_masks`. Each image is read with
    :func:`~napari_phenotyper.io.images.read_image` and reduced to one channel with
    :func:`~napari_phenotyper.io.images.to_grayscale` (RGB/RGBA by luminance, or the
    given ``channel``), segmented by the registered segmenter, and scored with
    :func:`average_precision`.

    Parameters
    ----------
    images_dir, masks_dir : path-like
        Folder of images and folder of label masks.
    segmenter_name : str
        Registry name of the segmenter (see :func:`~napari_phenotyper.core.segment.get_segmenter`).
    params : dataclass, optional
        The segmenter's parameters; ``None`` uses the defaults of its ``params_type``.
    channel : int, optional
        Channel to segment in multi-channel images (see :func:`~napari_phenotyper.io.images.to_grayscale`).
    diameter : float or "auto", optional
        Override of the ``diameter`` parameter. ``"auto"`` estimates it for every image
        with the segmenter's ``estimate_diameter`` (the classical segmenter has one), as a
        user pressing the GUI's "estimate" button would. ``None`` keeps ``params``.
    iou_rule : {"stardist", "kaggle"}
        How a pair matches: IoU >= t (default) or IoU > t (see :func:`match_stats`).

    Yields
    ------
    Progress
        Within each image (the segmenter's own progress) and once per finished image.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``image`` (file name), ``n_true``, ``n_pred``, ``ap50``,
        ``ap50_95``, ``f1_50``, ``seconds`` (segmentation wall time, excluding reading and
        scoring) and ``diameter`` (the diameter used; NaN if the parameters have none).

    Raises
    ------
    FileNotFoundError
        If no image could be paired with a mask (the message lists the files), or a
        folder does not exist.
    ValueError
        If a mask's shape differs from its image's, or ``diameter`` is given for a
        segmenter without one.

    Warns
    -----
    UserWarning
        When some images have no mask or some masks no image; those are skipped.
    """
    from ..io.images import read_image, to_grayscale
    from .segment import get_segmenter

    _check_rule(iou_rule)
    pairs, lone_images, lone_masks = match_masks(images_dir, masks_dir)
    if not pairs:
        raise FileNotFoundError(
            f"No image in {images_dir} has a mask in {masks_dir} (masks must be named like the "
            f"image, optionally with a suffix such as _mask). Images: {_names(lone_images) or 'none'}. "
            f"Masks: {_names(lone_masks) or 'none'}."
        )
    if lone_images or lone_masks:
        parts = []
        if lone_images:
            parts.append(f"{len(lone_images)} image(s) without a mask ({_names(lone_images)})")
        if lone_masks:
            parts.append(f"{len(lone_masks)} mask(s) without an image ({_names(lone_masks)})")
        warnings.warn("Skipping " + " and ".join(parts) + ".", UserWarning, stacklevel=2)

    segmenter = get_segmenter(segmenter_name)
    base_params = segmenter.params_type() if params is None else params
    has_diameter = dataclasses.is_dataclass(base_params) and any(
        f.name == "diameter" for f in dataclasses.fields(base_params)
    )
    if diameter is not None and not has_diameter:
        raise ValueError(f"The {segmenter_name} segmenter's parameters have no diameter to set.")
    estimator = getattr(segmenter, "estimate_diameter", None)
    if diameter == "auto" and estimator is None:
        raise ValueError(f"The {segmenter_name} segmenter cannot estimate a diameter.")

    rows = []
    n = len(pairs)
    yield Progress(0, n, f"Evaluating {n} image(s)")
    for i, (img_path, mask_path) in enumerate(pairs):
        image = to_grayscale(read_image(img_path), channel)
        gt = _read_mask(mask_path)
        if gt.shape != image.shape:
            raise ValueError(
                f"Mask {mask_path.name} has shape {gt.shape} but image {img_path.name} has {image.shape}."
            )
        p = base_params
        if diameter == "auto":
            estimate_3d = getattr(segmenter, "estimate_diameter_3d", None)
            volumetric = getattr(segmenter, "spatial_ndim_for", lambda _p: 2)(p) == 3 and image.ndim == 3
            est = estimate_3d if volumetric and estimate_3d is not None else estimator
            p = dataclasses.replace(p, diameter=float(est(image)))  # type: ignore[misc]
        elif diameter is not None:
            p = dataclasses.replace(p, diameter=float(diameter))
        t0 = time.perf_counter()
        pred = yield from sub_progress(segmenter.segment(image, p), i, n, f"{img_path.name}: ")
        seconds = time.perf_counter() - t0
        scores = average_precision(gt, pred, rule=iou_rule)
        rows.append(
            {
                "image": img_path.name,
                "n_true": scores["n_true"],
                "n_pred": scores["n_pred"],
                "ap50": scores["ap50"],
                "ap50_95": scores["ap50_95"],
                "f1_50": scores["f1_50"],
                "seconds": seconds,
                "diameter": float(p.diameter) if has_diameter else float("nan"),
            }
        )
        yield Progress(i + 1, n, f"Evaluated {img_path.name} (AP50 {scores['ap50']:.3f})")
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Mean scores over the images of :func:`iter_evaluate_folder`'s table.

    Parameters
    ----------
    df : pandas.DataFrame
        Per-image table with ``ap50`` and ``ap50_95`` columns.

    Returns
    -------
    dict
        ``ap50`` and ``ap50_95`` (means over images; NaN for an empty table) and
        ``n_images``.
    """
    n = len(df)
    return {
        "ap50": float(df["ap50"].mean()) if n else float("nan"),
        "ap50_95": float(df["ap50_95"].mean()) if n else float("nan"),
        "n_images": int(n),
    }
