"""Regression of a continuous phenotype over per-cell feature tables (the "regression plane").

Instead of a class, the user gives some cells a value (for example cell-cycle
progression from 0 to 1, as in Advanced Cell Classifier's regression plane) and a
regressor predicts it for every cell, together with a spread that says how unsure the
prediction is, for active learning.

Like the classifiers of :mod:`~napari_phenotyper.core.classify.model`, a regressor is
always rebuilt from the annotated rows and its settings (see
:mod:`napari_phenotyper.io.classifier_io`), so a saved regressor never needs pickle.
Feature selection, the schema check and the handling of NaN / inf features are those of
the classifiers.

The spread (``pheno_value_spread``, in the units of the value) depends on the kind:

``random_forest``
    standard deviation of the predictions of the forest's trees (each tree is fitted on
    a bootstrap sample, so the forest is its own committee);
``gradient_boosting`` and ``ridge``
    standard deviation of the predictions of a committee of :data:`COMMITTEE_SIZE`
    models of the same kind fitted on bootstrap samples of the annotated cells (query
    by committee for regression, Burbidge, Rowland & King 2007); the committee costs
    that many extra fits at training time, and is not used for ``pheno_value``;
``knn``
    standard deviation of the values of the ``k`` nearest annotated cells, weighted as
    in the prediction (by inverse distance; 0 on an annotated cell itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from .model import _xy, check_columns, check_feature_groups, feature_columns_for

__all__ = [
    "COMMITTEE_SIZE",
    "REGRESSORS",
    "RegressorSettings",
    "TrainedRegressor",
    "cross_validate_regressor",
    "predict_values",
    "regression_query_scores",
    "train_regressor",
]

#: Regressor kinds and their display names.
REGRESSORS: dict[str, str] = {
    "random_forest": "Random forest",
    "gradient_boosting": "Histogram gradient boosting",
    "ridge": "Ridge regression",
    "knn": "k-nearest neighbours",
}

#: Bootstrap committee size behind the spread of gradient boosting and ridge regressors.
COMMITTEE_SIZE = 5

_MIN_TRAIN = 3  # annotated cells needed to train
_MIN_CV = 5  # annotated cells needed to cross-validate


@dataclass(frozen=True)
class RegressorSettings:
    """How to train a phenotype regressor.

    Parameters
    ----------
    kind : str
        One of :data:`REGRESSORS` (default ``"random_forest"``).
    feature_groups : tuple of str or None
        Groups among ``shape``, ``intensity``, ``texture``, ``neighbors`` to use; ``None``
        uses every numeric feature column (also for tables not made by this package).
    seed : int
        Random seed (forests, boosting, bootstrap committees, cross-validation splits).
    """

    kind: Literal["random_forest", "gradient_boosting", "ridge", "knn"] = "random_forest"
    feature_groups: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in REGRESSORS:
            raise ValueError(f"Unknown regressor {self.kind!r}; choose one of {', '.join(REGRESSORS)}.")
        check_feature_groups(self.feature_groups)


@dataclass
class TrainedRegressor:
    """A fitted regressor and what it was fitted on.

    Attributes
    ----------
    estimator : sklearn Pipeline
        Median imputation (+ standard scaling for ridge and kNN) and the regressor.
    feature_names : list of str
        The feature columns, in the order the estimator expects them.
    settings : RegressorSettings
    n_train : int
        Number of annotated cells it was fitted on.
    value_range : tuple of float
        ``(min, max)`` of the training values, e.g. for a colormap.
    committee : list
        Bootstrap-fitted pipelines behind ``pheno_value_spread`` for gradient boosting
        and ridge (see the module docstring); empty for forests and kNN.
    """

    estimator: Any
    feature_names: list[str]
    settings: RegressorSettings
    n_train: int
    value_range: tuple[float, float]
    committee: list[Any] = field(default_factory=list)


def _estimator(settings: RegressorSettings, n_rows: int, seed: int | None = None) -> Any:
    """An unfitted pipeline; size-dependent parameters follow ``n_rows`` training cells."""
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seed = settings.seed if seed is None else seed
    kind = settings.kind
    if kind == "random_forest":
        # sqrt(n_features) per split, as the classifier: on the 239 H2B features as good
        # as a third or all of them (CV r2 0.927 / 0.932 / 0.932) at 3x / 8x less time,
        # and more diverse trees for the spread
        model = RandomForestRegressor(n_estimators=100, max_features="sqrt", random_state=seed, n_jobs=1)
        return make_pipeline(SimpleImputer(strategy="median"), model)
    if kind == "gradient_boosting":
        # sklearn's 20 cells per leaf would allow hardly a split on a few dozen annotations
        leaf = max(2, min(20, n_rows // 10))
        model = HistGradientBoostingRegressor(max_iter=200, min_samples_leaf=leaf, random_state=seed)
        return make_pipeline(SimpleImputer(strategy="median"), model)
    if kind == "ridge":
        # the penalty is chosen by efficient leave-one-out among a fixed grid (deterministic)
        model = RidgeCV(alphas=np.logspace(-3, 3, 13))
    else:
        model = KNeighborsRegressor(n_neighbors=max(1, min(5, n_rows)), weights="distance")
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), model)


def _check_values(values: Sequence[float], n_rows: int, minimum: int) -> np.ndarray:
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("Phenotype values must be numbers.") from None
    if y.ndim != 1:
        raise ValueError(f"Phenotype values must be one number per cell; got shape {y.shape}.")
    if len(y) != n_rows:
        raise ValueError(f"{n_rows} rows but {len(y)} values.")
    if not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).sum())
        raise ValueError(
            f"{bad} of the phenotype values are NaN or infinite; give every cell a finite value."
        )
    if len(y) < minimum:
        raise ValueError(f"Give at least {minimum} cells a value before training (got {len(y)}).")
    if np.ptp(y) == 0:
        raise ValueError(
            f"All {len(y)} annotated cells have the same value ({y[0]:g}); give cells different values."
        )
    return y


def _names(
    table: pd.DataFrame, settings: RegressorSettings, feature_names: Sequence[str] | None
) -> list[str]:
    names = (
        list(feature_names)
        if feature_names is not None
        else feature_columns_for(table, settings.feature_groups)
    )
    if not names:
        raise ValueError("No numeric feature columns to learn from; measure the cells first.")
    check_columns(names, table)
    return names


def train_regressor(
    table: pd.DataFrame,
    values: Sequence[float],
    settings: RegressorSettings | None = None,
    feature_names: Sequence[str] | None = None,
) -> TrainedRegressor:
    """Fit a regressor on the cells that have a value.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per annotated cell with its feature columns.
    values : sequence of float
        The phenotype value of each row (same length as ``table``).
    settings : RegressorSettings, optional
    feature_names : sequence of str, optional
        Columns to use; by default :func:`~.model.feature_columns_for` with the settings' groups.

    Returns
    -------
    TrainedRegressor

    Raises
    ------
    ValueError
        If the lengths differ, fewer than 3 cells have a value, a value is NaN or
        infinite, all values are identical, or there are no feature columns.
    """
    settings = settings or RegressorSettings()
    y = _check_values(values, len(table), _MIN_TRAIN)
    names = _names(table, settings, feature_names)
    X = _xy(table, names)
    est = _estimator(settings, len(y)).fit(X, y)
    committee = []
    if settings.kind in ("gradient_boosting", "ridge"):
        rng = np.random.default_rng(settings.seed)
        for b in range(COMMITTEE_SIZE):
            idx = rng.integers(0, len(y), len(y))
            member = _estimator(settings, len(y), seed=settings.seed + 1 + b)
            committee.append(member.fit(X[idx], y[idx]))
    return TrainedRegressor(est, names, settings, len(y), (float(y.min()), float(y.max())), committee)


def _knn_spread(est: Any, X: np.ndarray) -> np.ndarray:
    """Inverse-distance-weighted std of the neighbours' values (as the prediction weighs them)."""
    knn = est[-1]
    dist, ind = knn.kneighbors(est[:-1].transform(X))
    neighbours = np.asarray(knn._y, dtype=np.float64)[ind]
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    exact = dist == 0
    has_exact = exact.any(axis=1)
    w[has_exact] = exact[has_exact].astype(np.float64)  # sklearn's rule for a zero distance
    w /= w.sum(axis=1, keepdims=True)
    mean = (w * neighbours).sum(axis=1)
    var = (w * (neighbours - mean[:, None]) ** 2).sum(axis=1)
    return np.sqrt(np.maximum(var, 0.0))


def predict_values(model: TrainedRegressor, table: pd.DataFrame) -> pd.DataFrame:
    """Predicted value and its spread for every row of ``table``.

    Parameters
    ----------
    model : TrainedRegressor
    table : pandas.DataFrame
        Cells with (at least) the model's feature columns.

    Returns
    -------
    pandas.DataFrame
        Same index as ``table``: ``pheno_value`` (float64; not clipped to
        ``model.value_range``, ridge may extrapolate) and ``pheno_value_spread``
        (float64, >= 0, in the units of the value; how it is computed per kind is in the
        module docstring).

    Raises
    ------
    ValueError
        If ``table`` lacks any of the model's feature columns (see :func:`~.model.check_columns`).
    """
    check_columns(model.feature_names, table)
    out = pd.DataFrame(index=table.index)
    if len(table) == 0:
        out["pheno_value"] = np.zeros(0)
        out["pheno_value_spread"] = np.zeros(0)
        return out
    X = _xy(table, model.feature_names)
    est = model.estimator
    if model.settings.kind == "random_forest":
        Xi = np.asarray(est[:-1].transform(X), dtype=np.float32)  # trees split on float32
        # running sums: no (trees x cells) array, whatever the number of cells
        total = np.zeros(len(Xi))
        total_sq = np.zeros(len(Xi))
        trees = est[-1].estimators_
        for tree in trees:
            p = tree.predict(Xi)
            total += p
            total_sq += p * p
        value = total / len(trees)
        spread = np.sqrt(np.maximum(total_sq / len(trees) - value * value, 0.0))
    else:
        value = np.asarray(est.predict(X), dtype=np.float64)
        if model.settings.kind == "knn":
            spread = _knn_spread(est, X)
        elif model.committee:
            spread = np.stack([m.predict(X) for m in model.committee]).std(axis=0)
        else:
            spread = np.zeros(len(table))
    out["pheno_value"] = value.astype(np.float64)
    out["pheno_value_spread"] = spread.astype(np.float64)
    return out


def cross_validate_regressor(
    table: pd.DataFrame,
    values: Sequence[float],
    settings: RegressorSettings | None = None,
    folds: int = 5,
) -> dict[str, Any] | None:
    """Cross-validated quality of the regressor on the cells that have a value.

    Parameters
    ----------
    table : pandas.DataFrame
        The annotated cells with their feature columns.
    values : sequence of float
        The value of each row.
    settings : RegressorSettings, optional
    folds : int
        Number of folds (at most the number of cells); :class:`~sklearn.model_selection.KFold`
        shuffled with the settings' seed.

    Returns
    -------
    dict or None
        ``None`` with fewer than 5 annotated cells. Otherwise ``r2``, ``mae`` and
        ``rmse`` of the pooled out-of-fold predictions, ``folds`` (the number used) and
        ``predicted`` (the out-of-fold prediction of each row, in the order of ``table``).

    Raises
    ------
    ValueError
        For the same bad input as :func:`train_regressor`.
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.model_selection import KFold, cross_val_predict

    settings = settings or RegressorSettings()
    if len(table) == len(values) and len(values) < _MIN_CV:
        return None
    y = _check_values(values, len(table), _MIN_CV)
    names = _names(table, settings, None)
    k = int(max(2, min(folds, len(y))))
    # parameters that depend on the data size follow the smallest training fold
    est = _estimator(settings, len(y) - int(np.ceil(len(y) / k)))
    cv = KFold(n_splits=k, shuffle=True, random_state=settings.seed)
    pred = np.asarray(cross_val_predict(est, _xy(table, names), y, cv=cv), dtype=np.float64)
    return {
        "r2": float(r2_score(y, pred)),
        "mae": float(mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "folds": k,
        "predicted": pred,
    }


def regression_query_scores(prediction: pd.DataFrame) -> np.ndarray:
    """Informativeness of each cell for the next annotation in regression mode.

    Parameters
    ----------
    prediction : pandas.DataFrame
        The output of :func:`predict_values` (needs ``pheno_value_spread``).

    Returns
    -------
    numpy.ndarray
        float64, one score per row in ``[0, 1]``: the spread divided by the largest
        spread among these cells (all 0 when no cell has any spread; NaN counts as 0).
        Higher means a more useful cell to annotate, as for the classification
        strategies of :mod:`~napari_phenotyper.core.classify.query`.
    """
    if "pheno_value_spread" not in prediction.columns:
        raise ValueError("prediction lacks 'pheno_value_spread'; pass the output of predict_values().")
    spread = prediction["pheno_value_spread"].to_numpy(dtype=np.float64, copy=True)
    spread[~np.isfinite(spread) | (spread < 0)] = 0.0
    top = spread.max() if len(spread) else 0.0
    return spread / top if top > 0 else np.zeros(len(spread))
