"""Aggregation of per-cell results: one row per image (later also per well).

A per-cell table has a ``label`` column and one row per cell; our phenotype columns
are ``pheno_annotation`` (the class the user gave, or missing), ``pheno_class``
(categorical predicted class), ``pheno_proba_<class>``, ``pheno_uncertainty`` and, in
regression mode, ``pheno_value_annotation``, ``pheno_value`` and ``pheno_value_spread``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "PHENOTYPE_COLUMNS",
    "PROBA_PREFIX",
    "class_summary",
    "classes_of",
    "combine_tables",
    "effective_class",
    "has_phenotype_columns",
    "phenotype_columns",
]

#: Our fixed phenotype columns, in the order they are exported (``pheno_proba_<class>``
#: columns go between ``pheno_class`` and ``pheno_uncertainty``).
PHENOTYPE_COLUMNS = (
    "pheno_annotation",
    "pheno_class",
    "pheno_uncertainty",
    "pheno_value_annotation",
    "pheno_value",
    "pheno_value_spread",
)

#: Prefix of the per-class probability columns.
PROBA_PREFIX = "pheno_proba_"

_VALUE = "pheno_value"
_VALUE_ANNOTATION = "pheno_value_annotation"
_UNCERTAINTY = "pheno_uncertainty"


def phenotype_columns(columns: Iterable[Hashable]) -> list[str]:
    """The phenotype columns among ``columns``, in export order.

    The order is ``pheno_annotation``, ``pheno_class``, ``pheno_proba_*`` (as they come),
    ``pheno_uncertainty``, ``pheno_value_annotation``, ``pheno_value``,
    ``pheno_value_spread``, then any other ``pheno_*`` column (as they come).
    """
    cols = [str(c) for c in columns]
    present = set(cols)
    fixed = [c for c in PHENOTYPE_COLUMNS if c in present]
    proba = [c for c in cols if c.startswith(PROBA_PREFIX)]
    ordered = fixed[:2] + proba + fixed[2:]
    other = [c for c in cols if c.startswith("pheno_") and c not in ordered]
    return ordered + other


def has_phenotype_columns(table: pd.DataFrame) -> bool:
    """Whether ``table`` carries any phenotype (``pheno_*``) column."""
    return bool(phenotype_columns(table.columns))


def _text(values: pd.Series) -> np.ndarray:
    """Values as an object array of ``str``; missing values become ``""``."""
    return np.array([("" if pd.isna(v) else str(v)) for v in values.astype(object)], dtype=object)


def _is_missing(values: pd.Series) -> np.ndarray:
    """Missing values, counting empty strings (as CSV files write them) as missing."""
    return _text(values) == ""


def _unique(items: Iterable[Any]) -> list[Any]:
    """The items without repeats, in order of first appearance."""
    return list(dict.fromkeys(items))


def classes_of(
    table: pd.DataFrame, class_column: str = "pheno_class", annotation_column: str = "pheno_annotation"
) -> list[str]:
    """The phenotype classes of a per-cell table, in a stable order.

    First the classes of ``class_column``: its categories when it is categorical (so a
    class that no cell got is still listed), else the classes named by the
    ``pheno_proba_<class>`` columns followed by any other value, sorted. Then the
    classes of ``annotation_column`` not seen yet: its categories when categorical,
    else its values, sorted. Names are returned as ``str``.
    """
    classes: list[str] = []
    for column, from_proba in ((class_column, True), (annotation_column, False)):
        if column not in table.columns:
            continue
        values = table[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            found = [str(c) for c in values.cat.categories]
        else:
            found = (
                [str(c)[len(PROBA_PREFIX) :] for c in table.columns if str(c).startswith(PROBA_PREFIX)]
                if from_proba
                else []
            )
            found += sorted(set(_text(values)) - {""})
        classes = _unique([*classes, *(c for c in found if c != "")])
    return classes


def effective_class(
    table: pd.DataFrame, class_column: str = "pheno_class", annotation_column: str = "pheno_annotation"
) -> np.ndarray:
    """Each cell's class: its annotation where it has one, else its predicted class.

    Returns
    -------
    numpy.ndarray
        Object array of ``str``, ``""`` for a cell with neither annotation nor prediction.
    """
    out = np.full(len(table), "", dtype=object)
    if class_column in table.columns:
        out = _text(table[class_column])
    if annotation_column in table.columns:
        annotated = _text(table[annotation_column])
        out = np.where(annotated != "", annotated, out)
    return out


def _group_codes(table: pd.DataFrame, image_column: str) -> tuple[list[str], np.ndarray]:
    """Group names (str, in order) and each row's group index."""
    if image_column not in table.columns:
        return [""], np.zeros(len(table), dtype=np.intp)
    values = table[image_column]
    keys = _text(values)
    names = _unique(keys)
    if isinstance(values.dtype, pd.CategoricalDtype):  # every category gets a row, even without cells
        names = _unique([*(str(c) for c in values.cat.categories), *names])
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[k] for k in keys], dtype=np.intp)


def _numeric(table: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)


def _group_mean_median(values: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    ok = ~np.isnan(values)
    series = pd.Series(values[ok])
    grouped = series.groupby(codes[ok])
    index = pd.RangeIndex(n_groups)
    mean = grouped.mean().reindex(index).to_numpy(dtype=float)
    median = grouped.median().reindex(index).to_numpy(dtype=float)
    return mean, median


def class_summary(
    table: pd.DataFrame,
    image_column: str = "image",
    class_column: str = "pheno_class",
    annotation_column: str = "pheno_annotation",
) -> pd.DataFrame:
    """Per-image counts and proportions of the phenotype classes.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table, one row per cell (see the module docstring for the columns).
    image_column : str
        Column that names each cell's image (or any other group, e.g. a well). Without
        it, all cells form a single group named ``""``. Groups come in the order of
        their first cell; when the column is categorical every category gets a row, in
        category order, even one with no cells.
    class_column : str
        Predicted class of each cell (categorical).
    annotation_column : str
        Class the user gave (missing or ``""`` where none).

    Returns
    -------
    pandas.DataFrame
        One row per group with the columns:

        - ``<image_column>``: the group name (``str``);
        - ``n_cells``: the number of cells;
        - ``n_annotated``: cells with a class annotation or a value annotation;
        - ``n_<class>`` for each class (see :func:`classes_of`, so a class without cells
          gets a 0 column): cells of that class. **Where a cell is annotated, the
          annotation wins over the prediction**;
        - ``fraction_<class>``: ``n_<class>`` over the cells that have a class (annotated
          or predicted; all cells once the classifier has run), NaN if none has;
        - ``mean_uncertainty``, when ``pheno_uncertainty`` exists: its mean;
        - ``mean_value`` and ``median_value`` in regression mode (``pheno_value``
          exists): of each cell's value, where again an annotated value
          (``pheno_value_annotation``) wins over the predicted one.

        A table with no phenotype column gives only the group name and ``n_cells``.
        Means and medians skip missing values and are NaN for a group without any.

    Raises
    ------
    ValueError
        If a class name would make a column that clashes with ``n_cells`` or
        ``n_annotated``.
    """
    names, codes = _group_codes(table, image_column)
    n_groups = len(names)
    out: dict[str, Any] = {
        image_column: names,
        "n_cells": np.bincount(codes, minlength=n_groups).astype(np.int64),
    }
    has_class = class_column in table.columns or annotation_column in table.columns
    has_value = _VALUE in table.columns or _VALUE_ANNOTATION in table.columns
    if not (has_class or has_value or _UNCERTAINTY in table.columns):
        return pd.DataFrame(out)

    annotated = np.zeros(len(table), dtype=bool)
    for column in (annotation_column, _VALUE_ANNOTATION):
        if column in table.columns:
            annotated |= ~_is_missing(table[column])
    out["n_annotated"] = np.bincount(codes[annotated], minlength=n_groups).astype(np.int64)

    classes = classes_of(table, class_column, annotation_column) if has_class else []
    clash = sorted({f"n_{c}" for c in classes} & {"n_cells", "n_annotated"})
    if clash:
        raise ValueError(
            f"A class name makes the summary column {clash[0]!r}, which is taken; rename that class."
        )
    if classes:
        index = {c: k for k, c in enumerate(classes)}
        cls = np.array(
            [index.get(c, -1) for c in effective_class(table, class_column, annotation_column)], dtype=np.intp
        )
        has = cls >= 0
        counts = np.bincount(codes[has] * len(classes) + cls[has], minlength=n_groups * len(classes))
        counts = counts.reshape(n_groups, len(classes)).astype(np.int64)
        total = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            fractions = np.where(total > 0, counts / np.maximum(total, 1), np.nan)
        for k, c in enumerate(classes):
            out[f"n_{c}"] = counts[:, k]
        for k, c in enumerate(classes):
            out[f"fraction_{c}"] = fractions[:, k]

    if _UNCERTAINTY in table.columns:
        out["mean_uncertainty"] = _group_mean_median(_numeric(table, _UNCERTAINTY), codes, n_groups)[0]
    if _VALUE in table.columns:
        value = _numeric(table, _VALUE)
        if _VALUE_ANNOTATION in table.columns:
            given = _numeric(table, _VALUE_ANNOTATION)
            value = np.where(np.isnan(given), value, given)
        out["mean_value"], out["median_value"] = _group_mean_median(value, codes, n_groups)
    return pd.DataFrame(out)


def combine_tables(tables: Mapping[str, pd.DataFrame], image_column: str = "image") -> pd.DataFrame:
    """Concatenate per-image tables into one, with a categorical image column.

    Parameters
    ----------
    tables : mapping of str to pandas.DataFrame
        Image name -> its per-cell table. A table's own ``image_column`` is replaced
        by the name.
    image_column : str
        Name of the image column put first in the result.

    Returns
    -------
    pandas.DataFrame
        All rows, with a fresh index. The image column is categorical with the names as
        categories, in order (so :func:`class_summary` keeps an image without cells).
        Columns that are categorical in some table get the union of all categories (in
        order of appearance) in every table, so that no class is lost.
    """
    names = [str(n) for n in tables]
    if len(set(names)) != len(names):
        raise ValueError("Two tables have the same image name.")
    frames = [t.drop(columns=image_column, errors="ignore") for t in tables.values()]
    categorical = _unique(c for f in frames for c in f.columns if isinstance(f[c].dtype, pd.CategoricalDtype))
    unified: dict[Hashable, list[Any]] = {}
    for col in categorical:
        cats: list[Any] = []
        for f in frames:
            if col in f.columns:
                values = f[col]
                found = (
                    list(values.cat.categories)
                    if isinstance(values.dtype, pd.CategoricalDtype)
                    else sorted(set(values.dropna()), key=str)
                )
                cats = _unique([*cats, *found])
        unified[col] = cats
    image_dtype = pd.CategoricalDtype(names)
    fixed = []
    for name, f in zip(names, frames, strict=True):
        f = f.copy()
        for col, cats in unified.items():
            values = f[col] if col in f.columns else pd.Series([None] * len(f), index=f.index, dtype=object)
            f[col] = pd.Categorical(values, categories=cats)
        f.insert(0, image_column, pd.Categorical([name] * len(f), dtype=image_dtype))
        fixed.append(f)
    if not fixed:
        return pd.DataFrame({image_column: pd.Categorical([], dtype=image_dtype)})
    nonempty = [f for f in fixed if len(f)] or fixed[:1]  # empty frames only matter for their columns
    columns = _unique(c for f in fixed for c in f.columns)
    combined = pd.concat(nonempty, ignore_index=True)
    for col in columns:  # columns known only from empty tables
        if col not in combined.columns:
            combined[col] = np.nan
    return combined[columns]
