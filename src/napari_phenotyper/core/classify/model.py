"""Phenotype classifiers over per-cell feature tables (scikit-learn, deterministic).

The training set is the source of truth: a classifier is always rebuilt from the
annotated rows and its settings (see :mod:`napari_phenotyper.io.classifier_io`), so a
saved classifier never needs pickle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "CLASSIFIERS",
    "FEATURE_GROUP_NAMES",
    "SELF_TRAIN_MAX_UNLABELLED",
    "ClassifierSettings",
    "TrainedClassifier",
    "check_columns",
    "check_feature_groups",
    "cross_validate",
    "feature_columns_for",
    "feature_matrix",
    "predict",
    "predict_proba",
    "prediction_frame",
    "train",
    "unlabelled_sample",
]

#: Classifier kinds and their display names.
CLASSIFIERS: dict[str, str] = {
    "self_trained": "Self-trained logistic",
    "random_forest": "Random forest",
    "gradient_boosting": "Histogram gradient boosting",
    "logistic_regression": "Logistic regression",
    "svm": "SVM (RBF, probabilities)",
    "knn": "k-nearest neighbours",
}

#: At most this many unannotated cells (a seeded random sample) teach a self-trained
#: classifier: the fit stays a fraction of a second at 100,000 cells, and a saved
#: classifier file can hold them, so that loading it rebuilds the same model.
SELF_TRAIN_MAX_UNLABELLED = 2000

#: Feature groups a user can switch on and off.
FEATURE_GROUP_NAMES = ("shape", "intensity", "texture", "neighbors")

# Identity and position columns are never features: where a cell is says nothing of
# its phenotype, and a classifier must not learn the label ids.
_NOT_FEATURES = re.compile(
    r"^(label|index|image|axis\d+|centroid_.*|bbox_.*|pheno_.*"
    # the CellProfiler set's positions and neighbour object numbers
    r"|AreaShape_Center_.*|AreaShape_BoundingBox(Minimum|Maximum)_.*|Location_.*|Neighbors_.*ClosestObjectNumber_.*)$"
)
_GROUP_PATTERNS = {
    "texture": re.compile(r"^(haralick|glcm|Texture)_"),
    "neighbors": re.compile(r"^n_neighbors$|^Neighbors_"),
    "intensity": re.compile(
        r"^(mean|std|min|max|median|q25|q75|integrated)_intensity_|^mass_displacement_|^Intensity_"
    ),
}


@dataclass(frozen=True)
class ClassifierSettings:
    """How to train a phenotype classifier.

    Parameters
    ----------
    kind : str
        One of :data:`CLASSIFIERS` (default ``"random_forest"``). ``"self_trained"`` is
        :class:`~.workflow.SelfTrainedClassifier`: a balanced logistic regression that
        also learns from unannotated cells (``train(..., unlabelled=...)``); the
        interactive loop's default (see :class:`~.session.LoopSettings`).
    feature_groups : tuple of str or None
        Groups among ``shape``, ``intensity``, ``texture``, ``neighbors`` to use; ``None``
        uses every numeric feature column (also for tables not made by this package).
    balanced : bool
        Weight classes inversely to their frequency (default True), so that a rare
        phenotype is not ignored.
    seed : int
        Random seed (forests, boosting, cross-validation splits).
    trees : int
        Trees of a random forest (default 100). Fewer trees retrain and predict
        faster (the live loop's cost is dominated by predicting every cell with every
        tree); more give smoother probabilities.
    """

    kind: Literal[
        "self_trained", "random_forest", "gradient_boosting", "logistic_regression", "svm", "knn"
    ] = "random_forest"
    feature_groups: tuple[str, ...] | None = None
    balanced: bool = True
    seed: int = 0
    trees: int = 100

    def __post_init__(self) -> None:
        if int(self.trees) < 1:
            raise ValueError(f"A forest needs at least one tree, not {self.trees}.")
        if self.kind not in CLASSIFIERS:
            raise ValueError(f"Unknown classifier {self.kind!r}; choose one of {', '.join(CLASSIFIERS)}.")
        check_feature_groups(self.feature_groups)


def check_feature_groups(groups: Sequence[str] | None) -> None:
    """Refuse feature groups that are empty or not among :data:`FEATURE_GROUP_NAMES`."""
    if groups is not None:
        bad = [g for g in groups if g not in FEATURE_GROUP_NAMES]
        if bad or not groups:
            raise ValueError(
                f"feature_groups must be a non-empty subset of {', '.join(FEATURE_GROUP_NAMES)}; got {groups}."
            )


def _group_of(column: str) -> str:
    for group, pattern in _GROUP_PATTERNS.items():
        if pattern.search(column):
            return group
    return "shape"


def feature_columns_for(table: pd.DataFrame, groups: Sequence[str] | None = None) -> list[str]:
    """The numeric feature columns of ``table`` in the given groups (all when ``None``)."""
    cols = [
        c
        for c in table.columns
        if not _NOT_FEATURES.match(str(c))
        and pd.api.types.is_numeric_dtype(table[c])
        and not pd.api.types.is_bool_dtype(table[c])
    ]
    if groups is not None:
        cols = [c for c in cols if _group_of(str(c)) in groups]
    return cols


def check_columns(feature_names: Sequence[str], table: pd.DataFrame) -> None:
    """Refuse a table that lacks any of the classifier's feature columns.

    Raises
    ------
    ValueError
        Naming the missing columns, so that the user can measure them (or pick a
        classifier trained on the same features) instead of getting garbage predictions.
    """
    missing = [c for c in feature_names if c not in table.columns]
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise ValueError(
            f"This table lacks {len(missing)} of the classifier's {len(feature_names)} feature columns ({shown}). "
            "Measure the same feature groups and channels as the cells it was trained on."
        )


def _estimator(settings: ClassifierSettings) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    weight = "balanced" if settings.balanced else None
    kind = settings.kind
    if kind == "self_trained":
        return SelfTrainedPipeline()
    if kind == "random_forest":
        model = RandomForestClassifier(
            n_estimators=int(settings.trees), class_weight=weight, random_state=settings.seed, n_jobs=1
        )
        return make_pipeline(SimpleImputer(strategy="median"), model)
    if kind == "gradient_boosting":
        model = HistGradientBoostingClassifier(class_weight=weight, random_state=settings.seed, max_iter=200)
        return make_pipeline(SimpleImputer(strategy="median"), model)
    if kind == "logistic_regression":
        model = LogisticRegression(class_weight=weight, max_iter=2000)
    elif kind == "svm":
        # Platt-scaled probabilities, calibrated on held-out folds (sklearn's own
        # SVC(probability=True) is deprecated); the fold count adapts to the data.
        model = CalibratedClassifierCV(
            SVC(class_weight=weight, random_state=settings.seed), ensemble=False, cv=3
        )
    else:
        model = KNeighborsClassifier(n_neighbors=5, weights="distance")
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), model)


def _adapt(est: Any, settings: ClassifierSettings, n_rows: int, smallest: int) -> None:
    """Size-dependent settings: k of k-NN, calibration folds of the SVM."""
    if settings.kind == "knn":
        est.set_params(kneighborsclassifier__n_neighbors=max(1, min(5, n_rows - 1)))
    elif settings.kind == "svm":
        if smallest < 2:
            raise ValueError(
                "The SVM needs at least 2 annotated cells of every class (for its probabilities)."
            )
        est.set_params(calibratedclassifiercv__cv=min(3, smallest))


class SelfTrainedPipeline:
    """Median imputation, then :class:`~.workflow.SelfTrainedClassifier`.

    The imputer's medians and the features' scaling are taken over the annotated and the
    unannotated cells together, as the self-training is. ``coef_`` (the logistic
    regression's, on standardised features) gives the importances.
    """

    def __init__(self) -> None:
        self.classes_: np.ndarray = np.empty(0)
        self._imputer: Any = None
        self._model: Any = None

    def fit(self, X: np.ndarray, y: Any, X_unlabelled: np.ndarray | None = None) -> SelfTrainedPipeline:
        from sklearn.impute import SimpleImputer

        from .workflow import SelfTrainedClassifier

        xu = np.empty((0, X.shape[1])) if X_unlabelled is None else np.asarray(X_unlabelled, dtype=np.float64)
        # the same median imputation as the other kinds; an all-NaN column becomes 0
        self._imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(np.vstack([X, xu]))
        pool = self._imputer.transform(xu) if len(xu) else None
        self._model = SelfTrainedClassifier().fit(self._imputer.transform(X), y, pool)
        self.classes_ = self._model.classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict_proba(self._imputer.transform(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict(self._imputer.transform(X))

    @property
    def coef_(self) -> np.ndarray:
        return self._model.coef_


@dataclass
class TrainedClassifier:
    """A fitted classifier and what it was fitted on."""

    estimator: Any
    classes: list[str]
    feature_names: list[str]
    settings: ClassifierSettings
    n_train: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)


def _xy(table: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    X = table[list(feature_names)].to_numpy(dtype=np.float64, copy=True)
    X[~np.isfinite(X)] = np.nan  # inf (e.g. from a degenerate cell) -> imputed
    return X


def train(
    table: pd.DataFrame,
    labels: Sequence[Any],
    settings: ClassifierSettings | None = None,
    feature_names: Sequence[str] | None = None,
    *,
    n_jobs: int = 1,
    unlabelled: pd.DataFrame | None = None,
) -> TrainedClassifier:
    """Fit a classifier on the annotated cells.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per annotated cell with its feature columns.
    labels : sequence
        The class of each row (same length as ``table``).
    settings : ClassifierSettings, optional
    feature_names : sequence of str, optional
        Columns to use; by default :func:`feature_columns_for` with the settings' groups.
    n_jobs : int
        Threads of a random forest, for fitting and later predicting (-1: all cores).
        Results do not depend on it.
    unlabelled : pandas.DataFrame, optional
        Unannotated cells (the feature columns at least) that a ``"self_trained"``
        classifier learns from as well; other kinds ignore them. Pass at most
        :data:`SELF_TRAIN_MAX_UNLABELLED` (:func:`unlabelled_sample` picks them).

    Raises
    ------
    ValueError
        With fewer than two classes, or a row count that does not match the labels.
    """
    settings = settings or ClassifierSettings()
    y = np.asarray([str(v) for v in labels], dtype=object)
    if len(y) != len(table):
        raise ValueError(f"{len(table)} rows but {len(y)} labels.")
    classes = sorted(set(y))
    if len(classes) < 2:
        raise ValueError("Annotate cells of at least two classes before training.")
    names = (
        list(feature_names)
        if feature_names is not None
        else feature_columns_for(table, settings.feature_groups)
    )
    if not names:
        raise ValueError("No numeric feature columns to learn from; measure the cells first.")
    check_columns(names, table)
    est = _estimator(settings)
    _adapt(est, settings, len(y), int(np.unique(y, return_counts=True)[1].min()))
    if settings.kind == "random_forest":
        est.set_params(randomforestclassifier__n_jobs=n_jobs)
    if settings.kind == "self_trained":
        xu = None
        if unlabelled is not None and len(unlabelled):
            check_columns(names, unlabelled)
            xu = _xy(unlabelled, names)
        est.fit(_xy(table, names), y, xu)
    else:
        est.fit(_xy(table, names), y)
    counts = {c: int((y == c).sum()) for c in classes}
    return TrainedClassifier(est, classes, names, settings, len(y), counts)


def unlabelled_sample(
    tables: Sequence[pd.DataFrame],
    masks: Sequence[np.ndarray],
    columns: Sequence[str],
    n: int = SELF_TRAIN_MAX_UNLABELLED,
    seed: int = 0,
) -> pd.DataFrame:
    """At most ``n`` unannotated cells of ``tables`` (``columns`` only), a seeded sample.

    ``masks[i]`` is True for the rows of ``tables[i]`` to sample from. The draw is
    uniform over all those rows (not per table) and its rows keep the tables' order,
    so the same inputs always give the same sample.
    """
    counts = [int(np.count_nonzero(m)) for m in masks]
    total = sum(counts)
    if total == 0:
        return pd.DataFrame(columns=list(columns))
    pick = (
        np.arange(total)
        if total <= n
        else np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    )
    parts, start = [], 0
    for table, mask, count in zip(tables, masks, counts, strict=True):
        mine = pick[(pick >= start) & (pick < start + count)] - start
        if len(mine):
            rows = np.flatnonzero(mask)[mine]
            parts.append(table.iloc[rows][list(columns)])
        start += count
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


def feature_matrix(table: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """The float32 matrix a classifier predicts from (inf -> NaN, imputed by the model).

    Converting a large table is a noticeable part of a prediction; callers that
    predict the same cells repeatedly (the live loop) compute it once and pass it
    to :func:`predict_proba`.
    """
    X = table[list(feature_names)].to_numpy(dtype=np.float32, copy=True)
    X[~np.isfinite(X)] = np.nan
    return X


def predict_proba(model: TrainedClassifier, X: np.ndarray) -> np.ndarray:
    """Class probabilities of the rows of ``X`` (columns in ``model.classes`` order)."""
    n_classes = len(model.classes)
    if len(X) == 0:
        return np.zeros((0, n_classes))
    proba = model.estimator.predict_proba(X)
    order = [list(model.estimator.classes_).index(c) for c in model.classes]
    return np.asarray(proba[:, order])


def prediction_frame(
    model: TrainedClassifier, proba: np.ndarray, index: pd.Index | None = None
) -> pd.DataFrame:
    """``pheno_class``, ``pheno_proba_<class>`` and ``pheno_uncertainty`` from probabilities."""
    n_classes = len(model.classes)
    out = pd.DataFrame(index=index if index is not None else pd.RangeIndex(len(proba)))
    out["pheno_class"] = pd.Categorical.from_codes(
        proba.argmax(axis=1) if len(proba) else np.zeros(0, int), categories=model.classes
    )
    for k, c in enumerate(model.classes):
        out[f"pheno_proba_{c}"] = proba[:, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(proba > 0, proba * np.log(proba), 0.0).sum(axis=1)
    out["pheno_uncertainty"] = ent / np.log(n_classes)
    return out


def predict(model: TrainedClassifier, table: pd.DataFrame) -> pd.DataFrame:
    """Class, per-class probabilities and uncertainty for every row of ``table``.

    Returns
    -------
    pandas.DataFrame
        Same index as ``table``: ``pheno_class`` (categorical over the classes),
        ``pheno_proba_<class>`` for each class, and ``pheno_uncertainty`` (normalised
        entropy of the probabilities, 0 = certain, 1 = uniform).
    """
    check_columns(model.feature_names, table)
    proba = predict_proba(model, feature_matrix(table, model.feature_names))
    return prediction_frame(model, proba, table.index)


def cross_validate(
    table: pd.DataFrame,
    labels: Sequence[Any],
    settings: ClassifierSettings | None = None,
    folds: int = 5,
) -> dict[str, Any] | None:
    """Stratified cross-validated quality of the classifier on the annotated cells.

    Returns ``None`` while some class has fewer annotations than 2 (too few to split).
    Otherwise a dict with ``accuracy``, ``balanced_accuracy``, ``precision`` and
    ``recall`` per class, ``confusion`` (a DataFrame, true classes as rows), and
    ``folds`` (the number of folds used: at most the smallest class count).
    A ``"self_trained"`` classifier is cross-validated on the annotated cells alone (its
    logistic regression without the unannotated cells), so the figure is conservative.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )
    from sklearn.model_selection import StratifiedKFold

    settings = settings or ClassifierSettings()
    y = np.asarray([str(v) for v in labels], dtype=object)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return None
    k = int(min(folds, counts.min()))
    names = feature_columns_for(table, settings.feature_groups)
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=settings.seed)
    X = _xy(table, names)
    pred = np.empty(len(y), dtype=object)
    for fit_rows, test_rows in cv.split(X, y):  # cross_val_predict, for any estimator
        est = _estimator(settings)
        _adapt(est, settings, len(fit_rows), int(np.unique(y[fit_rows], return_counts=True)[1].min()))
        pred[test_rows] = est.fit(X[fit_rows], y[fit_rows]).predict(X[test_rows])
    p, r, _, _ = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "precision": dict(zip(classes.tolist(), p.tolist(), strict=True)),
        "recall": dict(zip(classes.tolist(), r.tolist(), strict=True)),
        "confusion": pd.DataFrame(confusion_matrix(y, pred, labels=classes), index=classes, columns=classes),
        #: each cell's out-of-fold class, in the order of the rows (the confusion matrix's cells)
        "predicted": [str(v) for v in pred],
        "folds": k,
    }
