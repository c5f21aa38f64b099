"""Aggregation of per-cell results: one row per image, per well, or any other group.

A per-cell table has a ``label`` column and one row per cell; our phenotype columns
are ``pheno_annotation`` (the class the user gave, or missing), ``pheno_class``
(categorical predicted class), ``pheno_proba_<class>``, ``pheno_uncertainty`` and, in
regression mode, ``pheno_value_annotation``, ``pheno_value`` and ``pheno_value_spread``.

:func:`class_summary` counts classes per group; :func:`profile_row` and
:func:`profiles` add the mean and median of every feature and per-class feature means;
:func:`zscore_to_controls` and :func:`z_prime` compare profiles with control wells.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
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
    "profile_features",
    "profile_row",
    "profiles",
    "readout_columns",
    "z_prime",
    "zscore_to_controls",
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


# ------------------------------------------------------------------ feature profiles
#: Columns that say where a cell comes from; never features, never readouts.
ID_COLUMNS = ("plate", "well", "site", "image", "label")
#: Count columns of a profile that are bookkeeping, not readouts.
_NOT_READOUTS = ("n_annotated", "n_images")


def profile_features(table: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The feature columns a profile aggregates: numeric, not identifiers or phenotype columns.

    Uses the classifier's rule (:func:`~napari_phenotyper.core.classify.model.feature_columns_for`:
    no ``label``, ``axis*``, ``centroid_*``, ``bbox_*`` or ``pheno_*``) and also drops
    ``plate``, ``well``, ``site`` and the columns in ``exclude`` (e.g. annotations such as
    ``concentration``).
    """
    from .classify.model import feature_columns_for

    skip = {*ID_COLUMNS, *map(str, exclude)}
    return [c for c in feature_columns_for(table) if str(c) not in skip]


def _with_classes(cells: pd.DataFrame, classes: Sequence[str] | None, class_column: str) -> pd.DataFrame:
    """``cells`` whose class column is categorical over ``classes`` (then any other class)."""
    if classes is None:
        return cells
    classes = [str(c) for c in classes]
    if class_column not in cells.columns:
        values = pd.Series([None] * len(cells), index=cells.index, dtype=object)
    else:
        values = cells[class_column]
    found = sorted(set(_text(values)) - {"", *classes})
    cells = cells.copy()
    cells[class_column] = pd.Categorical(
        [None if v == "" else v for v in _text(values)], categories=[*classes, *found]
    )
    return cells


def _float_matrix(cells: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """Features as float64, non-finite values as NaN; a missing column is all NaN."""
    data = {}
    for f in features:
        if f in cells.columns:
            v = pd.to_numeric(cells[f], errors="coerce").to_numpy(dtype=np.float64, copy=True)
            v[~np.isfinite(v)] = np.nan
        else:
            v = np.full(len(cells), np.nan)
        data[f] = v
    return pd.DataFrame(data, index=pd.RangeIndex(len(cells)), columns=list(features))


def profile_row(
    cells: pd.DataFrame,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    *,
    class_means: bool = True,
    class_column: str = "pheno_class",
    annotation_column: str = "pheno_annotation",
) -> dict[str, Any]:
    """The profile of one group of cells (an image, a well...) as a single row.

    Parameters
    ----------
    cells : pandas.DataFrame
        The group's per-cell table (may be empty).
    features : sequence of str, optional
        Feature columns to aggregate (default :func:`profile_features`). A column the
        table lacks gives NaN, so that groups aggregated separately get the same columns.
    classes : sequence of str, optional
        The phenotype classes, in order (default: those found, see :func:`classes_of`).
        Give the classifier's classes so that every group gets every class column.
    class_means : bool
        Also give the mean of every feature over the cells of each class.

    Returns
    -------
    dict
        In order: the columns of :func:`class_summary` without the group name
        (``n_cells``, ``n_annotated``, ``n_<class>``, ``fraction_<class>``,
        ``mean_uncertainty``, ``mean_value``, ``median_value`` as they apply), then
        ``mean_<feature>`` and ``median_<feature>`` for each feature, then
        ``mean_<feature>__<class>`` for each class and feature. Non-finite feature values
        are skipped; a mean or median without values is NaN. Each cell counts in its
        annotated class where it has one, else its predicted class.

    Raises
    ------
    ValueError
        If two output columns would get the same name (e.g. a feature named
        ``uncertainty``).
    """
    features = list(profile_features(cells) if features is None else features)
    cells = _with_classes(cells, classes, class_column)
    group = "\0group"
    summary = class_summary(
        cells.drop(columns=[group], errors="ignore"),
        image_column=group,
        class_column=class_column,
        annotation_column=annotation_column,
    )
    row: dict[str, Any] = {k: v[0] for k, v in summary.drop(columns=group).to_dict("list").items()}

    def put(key: str, value: float) -> None:
        if key in row:
            raise ValueError(f"The profile column {key!r} would be made twice; rename that feature or class.")
        row[key] = value

    X = _float_matrix(cells, features)
    means, medians = X.mean(), X.median()
    for f in features:
        put(f"mean_{f}", float(means[f]))
    for f in features:
        put(f"median_{f}", float(medians[f]))
    if class_means:
        names = [
            str(c)
            for c in (classes if classes is not None else classes_of(cells, class_column, annotation_column))
        ]
        eff = effective_class(cells, class_column, annotation_column)
        for c in names:
            sub = X[eff == c].mean()
            for f in features:
                put(f"mean_{f}__{c}", float(sub[f]))
    return row


def _group_keys(table: pd.DataFrame, by: Sequence[str]) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Group keys (text tuples, in order of first appearance) and each row's group index."""
    if not by:
        return [()], np.zeros(len(table), dtype=np.intp)
    columns = [_text(table[c]) for c in by]
    keys = list(zip(*columns, strict=True)) if len(table) else []
    names: list[tuple[str, ...]] = _unique(keys)
    if len(by) == 1 and isinstance(table[by[0]].dtype, pd.CategoricalDtype):
        names = _unique([*((str(c),) for c in table[by[0]].cat.categories), *names])
    index = {k: i for i, k in enumerate(names)}
    return names, np.array([index[k] for k in keys], dtype=np.intp)


def profiles(
    table: pd.DataFrame,
    by: Sequence[str] = ("image",),
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    annotations: Sequence[str] = (),
    *,
    class_means: bool = True,
) -> pd.DataFrame:
    """Per-group profiles of a per-cell table: class proportions and feature statistics.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table.
    by : sequence of str
        Grouping columns, e.g. ``("image",)`` or ``("plate", "well")``; those the table
        lacks are ignored (none left: one group). Groups come in order of their first cell
        (a single categorical column: every category, in order, even without cells).
    features : sequence of str, optional
        Feature columns (default :func:`profile_features` without ``by`` and
        ``annotations``).
    classes : sequence of str, optional
        Phenotype classes (default: those of the whole table, see :func:`classes_of`).
    annotations : sequence of str
        Columns constant within a group (treatment, concentration, control...), copied
        to the profile after the group columns: the group's first non-missing value.
    class_means : bool
        Add per-class feature means.

    Returns
    -------
    pandas.DataFrame
        One row per group: the ``by`` columns (text), the annotations, then the columns
        of :func:`profile_row`.
    """
    by = [c for c in by if c in table.columns]
    annotations = [c for c in annotations if c in table.columns and c not in by]
    if features is None:
        features = profile_features(table, exclude=[*by, *annotations])
    if classes is None and ("pheno_class" in table.columns or "pheno_annotation" in table.columns):
        classes = classes_of(table)
    names, codes = _group_keys(table, by)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    rows = []
    for g, key in enumerate(names):
        sub = table.iloc[order[bounds[g] : bounds[g + 1]]]
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        for a in annotations:
            present = sub[a].dropna()
            row[a] = present.iloc[0] if len(present) else None
        row.update(profile_row(sub, features, classes, class_means=class_means))
        rows.append(row)
    if not rows:
        empty = profile_row(table.iloc[:0], features, classes, class_means=class_means)
        return pd.DataFrame(columns=[*by, *annotations, *empty])
    return pd.DataFrame(rows)


def readout_columns(profile_table: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The numeric readouts of a profile table: every numeric column except identifiers,
    ``n_annotated``, ``n_images`` and ``exclude`` (annotations such as ``concentration``)."""
    skip = {*ID_COLUMNS, *_NOT_READOUTS, *map(str, exclude)}
    return [
        str(c)
        for c in profile_table.columns
        if str(c) not in skip
        and pd.api.types.is_numeric_dtype(profile_table[c])
        and not pd.api.types.is_bool_dtype(profile_table[c])
    ]


def _control_mask(profile_table: pd.DataFrame, control_column: str, value: str) -> np.ndarray:
    if control_column not in profile_table.columns:
        raise ValueError(
            f"The profiles have no {control_column!r} column: mark the control wells in the plate "
            f"layout ({control_column}=negative or positive)."
        )
    return np.asarray(_text(profile_table[control_column]) == value)


def _stats(values: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Count, mean and sample standard deviation (ddof=1) per column, skipping NaN."""
    return values.count(), values.mean(), values.std(ddof=1)


def zscore_to_controls(
    profile_table: pd.DataFrame,
    readouts: Sequence[str] | None = None,
    *,
    control_column: str = "control",
    negative: str = "negative",
    by: Sequence[str] = ("plate",),
) -> pd.DataFrame:
    """Readouts as z-scores against the negative control wells.

    ``z = (x - mean_neg) / sd_neg`` with the mean and the sample standard deviation
    (``ddof=1``) of the negative controls in the same ``by`` group (per plate by default;
    over the whole table when the ``by`` columns are absent).

    Parameters
    ----------
    profile_table : pandas.DataFrame
        Per-well (or per-image) profiles with a control column.
    readouts : sequence of str, optional
        Columns to normalise (default :func:`readout_columns`).
    control_column, negative : str
        The column flagging controls and its value for negative controls.
    by : sequence of str
        Columns whose groups are normalised separately (plates).

    Returns
    -------
    pandas.DataFrame
        A copy with each readout replaced by its z-score. NaN where the group has fewer
        than two negative controls with a value, or their standard deviation is 0.

    Raises
    ------
    ValueError
        Without a control column or without any negative control.
    """
    neg = _control_mask(profile_table, control_column, negative)
    if not neg.any():
        raise ValueError(
            f"No {negative} control wells: mark some in the layout ({control_column}={negative})."
        )
    readouts = list(readout_columns(profile_table) if readouts is None else readouts)
    out = profile_table.copy()
    by = [c for c in by if c in profile_table.columns]
    _names, codes = _group_keys(profile_table, by)
    values = profile_table[readouts].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    z = np.full(values.shape, np.nan)
    for g in np.unique(codes):
        rows = codes == g
        n, mean, sd = _stats(values[rows & neg])
        ok = ((n >= 2) & (sd > 0) & np.isfinite(sd)).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            zg = (values[rows].to_numpy() - mean.to_numpy()) / sd.to_numpy()
        zg[:, ~ok] = np.nan
        z[rows] = zg
    for k, c in enumerate(readouts):
        out[c] = z[:, k]
    return out


def z_prime(
    profile_table: pd.DataFrame,
    readouts: Sequence[str] | None = None,
    *,
    control_column: str = "control",
    negative: str = "negative",
    positive: str = "positive",
    by: Sequence[str] = (),
) -> pd.DataFrame:
    """The Z'-factor of each readout between positive and negative controls.

    ``Z' = 1 - 3 (sd_pos + sd_neg) / |mean_pos - mean_neg|`` (Zhang, Chung & Oldenburg,
    1999), with sample standard deviations (``ddof=1``) over the control wells. Z' > 0.5
    is an excellent assay window; Z' <= 0 means the controls overlap.

    Parameters
    ----------
    profile_table : pandas.DataFrame
        Per-well (or per-image) profiles with a control column.
    readouts : sequence of str, optional
        Default :func:`readout_columns`.
    by : sequence of str
        Compute it per group (e.g. ``("plate",)``); columns absent are ignored.

    Returns
    -------
    pandas.DataFrame
        One row per group and readout: the ``by`` columns, ``readout``, ``n_negative``,
        ``n_positive``, ``mean_negative``, ``sd_negative``, ``mean_positive``,
        ``sd_positive``, ``z_prime``. Z' is NaN with fewer than two controls of either kind
        with a value, or equal means.

    Raises
    ------
    ValueError
        Without a control column.
    """
    neg = _control_mask(profile_table, control_column, negative)
    pos = _control_mask(profile_table, control_column, positive)
    readouts = list(readout_columns(profile_table) if readouts is None else readouts)
    by = [c for c in by if c in profile_table.columns]
    names, codes = _group_keys(profile_table, by)
    values = profile_table[readouts].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    rows = []
    for g, key in enumerate(names):
        in_group = codes == g
        n_n, m_n, s_n = _stats(values[in_group & neg])
        n_p, m_p, s_p = _stats(values[in_group & pos])
        for c in readouts:
            gap = abs(m_p[c] - m_n[c])
            valid = n_n[c] >= 2 and n_p[c] >= 2 and np.isfinite(gap) and gap > 0
            z = 1.0 - 3.0 * (s_p[c] + s_n[c]) / gap if valid else np.nan
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "readout": c,
                    "n_negative": int(n_n[c]),
                    "n_positive": int(n_p[c]),
                    "mean_negative": float(m_n[c]),
                    "sd_negative": float(s_n[c]),
                    "mean_positive": float(m_p[c]),
                    "sd_positive": float(s_p[c]),
                    "z_prime": float(z),
                }
            )
    columns = [*by, "readout", "n_negative", "n_positive", "mean_negative", "sd_negative"]
    columns += ["mean_positive", "sd_positive", "z_prime"]
    return pd.DataFrame(rows, columns=columns)
