"""Per-cell tables and label images to files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write_with

__all__ = ["read_table_csv", "table_for_export", "write_labels_tiff", "write_table_csv"]


def table_for_export(features: pd.DataFrame, image_name: str | None = None) -> pd.DataFrame:
    """The table as exported: ``image`` (when given), ``label``, then every feature.

    Raises
    ------
    ValueError
        If the table has no ``label`` column.
    """
    if "label" not in features.columns:
        raise ValueError("The table has no 'label' column; measure the labels layer first.")
    out = features.copy()
    if image_name is not None:
        if "image" in out.columns:
            out = out.drop(columns="image")
        out.insert(0, "image", image_name)
    first = [c for c in ("image", "label") if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def write_table_csv(features: pd.DataFrame, path: str | os.PathLike, image_name: str | None = None) -> Path:
    """Save a per-cell table as CSV, atomically (temporary file, then rename).

    Parameters
    ----------
    features : pandas.DataFrame
        One row per cell with a ``label`` column.
    path : path-like
        Destination ``.csv`` file; its folder must exist.
    image_name : str, optional
        Written as an ``image`` column so that tables of several images can be
        concatenated.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    table = table_for_export(features, image_name)
    return atomic_write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g"))


def read_table_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table_csv`."""
    return pd.read_csv(path)


def write_labels_tiff(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a label image as a compressed TIFF, atomically (smallest fitting uint dtype)."""
    import tifffile

    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if top < 2**16 else np.uint32
    data = labels.astype(dtype, copy=False)
    return atomic_write_with(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib"))
