"""Per-cell results -> a small-integer "phenotype view" image, fast.

Colouring 100,000 labels through a per-label colour map is slow in napari (a Python
dictionary with one entry per label). Instead each cell gets a small code (its class,
or a quantised uncertainty or value), a lookup table maps label id -> code, and one
vectorised gather paints the code image; a display layer then needs a colour map of
at most 256 entries. The label ids of the segmentation are never changed.

Codes (uint8):

- ``"predictions"``: 0 background / unpredicted, ``1 + k`` predicted class ``k``,
  ``1 + n_classes + k`` annotated class ``k`` (annotations win, and are shown apart);
- ``"annotations"``: only the annotated codes;
- ``"uncertainty"`` and ``"value"``: ``1 + round(254 * x)`` for ``x`` in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["MODES", "N_LEVELS", "cell_codes", "label_lut", "paint"]

MODES = ("predictions", "annotations", "uncertainty", "value")
#: Number of levels of a continuous display (uncertainty, value).
N_LEVELS = 255


def _levels(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=float), nan=-1.0), -1.0, 1.0)
    out = (1 + np.rint(254 * np.clip(x, 0, 1))).astype(np.uint8)
    out[x < 0] = 0  # missing -> not shown
    return out


def cell_codes(
    table: pd.DataFrame,
    classes: Sequence[str],
    mode: str = "predictions",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """One uint8 display code per row of ``table`` (see the module docstring).

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table with any of ``pheno_class``, ``pheno_annotation``,
        ``pheno_uncertainty``, ``pheno_value``, ``pheno_value_annotation``.
    classes : sequence of str
        The class order that fixes the codes (at most 127 classes).
    mode : str
        One of :data:`MODES`.
    value_range : (float, float), optional
        Range mapped onto the colour scale in ``"value"`` mode (default: the data's).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown display mode {mode!r}; choose one of {', '.join(MODES)}.")
    if len(classes) > 127:
        raise ValueError("At most 127 classes can be displayed.")
    n = len(table)
    codes = np.zeros(n, dtype=np.uint8)
    lookup = {c: i for i, c in enumerate(classes)}

    def _class_idx(column: str) -> np.ndarray:
        col = table[column]
        if isinstance(col.dtype, pd.CategoricalDtype):
            cats = np.array([lookup.get(str(c), -1) for c in col.cat.categories] + [-1])
            return cats[col.cat.codes.to_numpy()]  # code -1 (missing) -> last entry -1
        return np.array([lookup.get(str(v), -1) if pd.notna(v) else -1 for v in col], dtype=int)

    if mode == "uncertainty":
        if "pheno_uncertainty" in table:
            codes = _levels(table["pheno_uncertainty"].to_numpy(dtype=float))
        return codes
    if mode == "value":
        values = None
        if "pheno_value" in table:
            values = table["pheno_value"].to_numpy(dtype=float, copy=True)
        if "pheno_value_annotation" in table:
            given = table["pheno_value_annotation"].to_numpy(dtype=float)
            values = given if values is None else np.where(np.isnan(given), values, given)
        if values is None:
            return codes
        lo, hi = value_range if value_range is not None else (np.nanmin(values), np.nanmax(values))
        scale = (values - lo) / (hi - lo) if np.isfinite(hi - lo) and hi > lo else np.zeros_like(values)
        return _levels(np.where(np.isnan(values), np.nan, scale))
    if mode == "predictions" and "pheno_class" in table:
        k = _class_idx("pheno_class")
        codes[k >= 0] = (1 + k[k >= 0]).astype(np.uint8)
    if "pheno_annotation" in table:
        k = _class_idx("pheno_annotation")
        codes[k >= 0] = (1 + len(classes) + k[k >= 0]).astype(np.uint8)
    return codes


def label_lut(label_ids: np.ndarray, codes: np.ndarray, max_label: int | None = None) -> np.ndarray:
    """Lookup table label id -> code (0 for labels without a row)."""
    label_ids = np.asarray(label_ids, dtype=np.int64)
    top = int(label_ids.max(initial=0)) if max_label is None else int(max_label)
    lut = np.zeros(top + 1, dtype=np.uint8)
    ok = (label_ids > 0) & (label_ids <= top)
    lut[label_ids[ok]] = np.asarray(codes)[ok]
    return lut


def paint(labels: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The code image ``lut[labels]``; labels beyond the table are painted 0.

    ``out`` (uint8, same shape) is reused when given, to avoid a new allocation.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"Labels must be integers, not {labels.dtype}.")
    if labels.size == 0:
        return np.zeros(labels.shape, np.uint8)
    if labels.dtype.kind == "i" and int(labels.min()) < 0:
        raise ValueError("Labels must not be negative.")
    top = int(labels.max())
    if top >= lut.shape[0]:  # labels painted after the last measurement: not shown
        lut = np.concatenate([lut, np.zeros(top + 1 - lut.shape[0], np.uint8)])
    return np.take(lut, labels, out=out)
