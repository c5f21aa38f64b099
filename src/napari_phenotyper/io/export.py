"""Per-cell tables, per-image summaries and label images to files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.profiles import class_summary, classes_of, combine_tables, phenotype_columns
from .atomic import atomic_write_with

__all__ = [
    "read_table_csv",
    "summary_path",
    "table_for_export",
    "write_labels_tiff",
    "write_summary_csv",
    "write_table_csv",
]

#: Text columns of our tables (read back as strings, never as numbers).
_TEXT_COLUMNS = ("image", "pheno_annotation", "pheno_class")


def _as_strings(values: pd.Series) -> pd.Series:
    """A categorical column as its values' strings, missing values as ``""``."""
    text = [("" if pd.isna(v) else str(v)) for v in values.astype(object)]
    return pd.Series(text, index=values.index, dtype=object, name=values.name)


def table_for_export(features: pd.DataFrame, image_name: str | None = None) -> pd.DataFrame:
    """The table as exported.

    Columns come in the order ``image`` (when given or present), ``label``, the
    phenotype columns (``pheno_annotation``, ``pheno_class``, ``pheno_proba_*``,
    ``pheno_uncertainty``, ``pheno_value_annotation``, ``pheno_value``,
    ``pheno_value_spread``, other ``pheno_*``), then every feature in its order.
    napari's ``index`` helper column is dropped, and categorical columns (such as
    ``pheno_class``) become their values' strings, missing values ``""``.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per cell with a ``label`` column.
    image_name : str, optional
        Replaces (or adds) the ``image`` column.

    Returns
    -------
    pandas.DataFrame
        A new table; ``features`` is left untouched.

    Raises
    ------
    ValueError
        If the table has no ``label`` column.
    """
    if "label" not in features.columns:
        raise ValueError("The table has no 'label' column; measure the labels layer first.")
    out = features.drop(columns="index") if "index" in features.columns else features.copy()
    if image_name is not None:
        if "image" in out.columns:
            out = out.drop(columns="image")
        out.insert(0, "image", image_name)
    first = [c for c in ("image", "label") if c in out.columns] + phenotype_columns(out.columns)
    out = out[first + [c for c in out.columns if c not in first]]
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = _as_strings(out[column])
    return out


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

    See Also
    --------
    table_for_export : the column order and formats.
    """
    table = table_for_export(features, image_name)
    return atomic_write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g"))


def summary_path(path: str | os.PathLike) -> Path:
    """Where the summary of a per-cell CSV goes: ``<stem>_summary.csv`` beside it."""
    p = Path(path)
    return p.with_name(f"{p.stem}_summary.csv")


def write_summary_csv(
    table_or_tables: pd.DataFrame | Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    image_column: str = "image",
) -> Path:
    """Save the per-image summary (cells per class, proportions) as CSV, atomically.

    Parameters
    ----------
    table_or_tables : pandas.DataFrame or mapping of str to pandas.DataFrame
        One per-cell table with an ``image`` column (without one, all cells are one
        image named ``""``), or image name -> per-cell table (an image without cells
        still gets a row).
    path : path-like
        Destination ``.csv`` file; its folder must exist.
    image_column : str
        The column that names the image.

    Returns
    -------
    pathlib.Path
        The written path.

    See Also
    --------
    napari_phenotyper.core.profiles.class_summary : the columns.
    """
    if isinstance(table_or_tables, pd.DataFrame):
        table = table_or_tables
    else:
        table = combine_tables(table_or_tables, image_column)
    summary = class_summary(table, image_column=image_column)
    return atomic_write_with(path, lambda tmp: summary.to_csv(tmp, index=False, float_format="%.10g"))


def read_table_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table_csv`.

    ``image``, ``pheno_annotation`` and ``pheno_class`` are read as text (an image
    named ``001`` stays ``"001"``), empty fields as missing; ``pheno_class`` becomes
    categorical again, its categories from the ``pheno_proba_<class>`` columns (so
    classes without cells survive the round trip) then any other value, sorted.
    """
    header = pd.read_csv(path, nrows=0).columns
    table = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS if c in header})
    if "pheno_class" in table.columns:
        table["pheno_class"] = pd.Categorical(
            table["pheno_class"], categories=classes_of(table, annotation_column="")
        )
    return table


def write_labels_tiff(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a label image as a compressed TIFF, atomically (smallest fitting uint dtype)."""
    import tifffile

    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if top < 2**16 else np.uint32
    data = labels.astype(dtype, copy=False)
    return atomic_write_with(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib"))
