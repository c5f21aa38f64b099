"""The default annotation workflow: which page of cells to show next, and what learns from it.

The unit of work is a gallery *page*: :data:`PAGE_SIZE` cells shown at once and answered
together, after which the classifier is retrained. Two parts make the workflow:

- :func:`query_page` picks a page: among the unlabelled cells, the ``pool_factor x
  page_size`` with the smallest margin between their two most probable classes
  (:func:`~.query.margin`) are clustered with k-means into ``page_size`` groups in feature
  space, and the most uncertain cell of each group is shown. A page of plain top-margin
  cells is full of near-copies (the same ambiguous boundary, twelve times); the clusters
  spread it over different boundaries.
- :class:`SelfTrainedClassifier` learns from the answers *and* from the unlabelled cells:
  features are standardised on every cell (labelled or not), a balanced, strongly
  regularised logistic regression is fitted on the answers, and then, for a few rounds,
  refitted with every unlabelled cell added under its predicted class, each weighted by
  ``unlabelled_weight x`` its predicted probability (soft self-training). With tens of
  labels and hundreds of features a linear model generalises much better than a forest,
  and the pseudo-labelled cells pull its boundaries into the gaps between clusters.

Measured by ``benchmarks/active_learning.py --workflow default`` on the CellCognition H2B
expert table against random picks with a random forest on the labelled cells only (see
the benchmark's docstring for the figures and for what lost).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .query import RngLike, _as_rng, _check_features, _check_proba, margin, select

__all__ = [
    "PAGE_SIZE",
    "POOL_FACTOR",
    "SelfTrainedClassifier",
    "query_page",
]

#: Cells per gallery page in the default workflow.
PAGE_SIZE = 12
#: Candidates clustered per page, as a multiple of the page size.
POOL_FACTOR = 5


def query_page(
    proba: ArrayLike,
    X: ArrayLike,
    labelled: ArrayLike,
    page_size: int = PAGE_SIZE,
    rng: RngLike = None,
    *,
    pool_factor: int = POOL_FACTOR,
) -> NDArray[np.intp]:
    """The next page of cells to annotate: uncertain, and spread over feature space.

    Parameters
    ----------
    proba : array-like of shape (n_cells, n_classes)
        The current classifier's class probabilities for every cell; rows sum to 1.
    X : array-like of shape (n_cells, n_features)
        Scaled (e.g. standardised) features of the same cells.
    labelled : array-like of bool, shape (n_cells,)
        True for cells already annotated (or excluded); they are never returned.
    page_size : int, default :data:`PAGE_SIZE`
        Cells on the page.
    rng : numpy.random.Generator, int or None
        Randomness for tie-breaking and k-means; ``None`` means seed 0 (reproducible).
    pool_factor : int, default :data:`POOL_FACTOR`
        The most uncertain ``pool_factor * page_size`` cells are clustered.

    Returns
    -------
    numpy.ndarray of int
        ``min(page_size, n_unlabelled)`` cell indices (fewer only when the unlabelled
        cells have fewer distinct feature rows), most uncertain first.

    Raises
    ------
    ValueError
        On mismatched shapes, non-probabilities, ``page_size < 1``, ``pool_factor < 1``
        or when every cell is labelled.
    """
    p = _check_proba(proba)
    x = _check_features(X, p.shape[0], "query_page")
    mask = np.asarray(labelled)
    if mask.dtype != bool or mask.shape != (p.shape[0],):
        raise ValueError(
            f"labelled must be a boolean mask of shape ({p.shape[0]},), one entry per cell, "
            f"got dtype {mask.dtype} and shape {mask.shape}"
        )
    if int(page_size) < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size!r}")
    if int(pool_factor) < 1:
        raise ValueError(f"pool_factor must be >= 1, got {pool_factor!r}")
    gen = _as_rng(rng)
    picked = select(
        margin(p),
        ~mask,
        k=int(page_size),
        X=x,
        diverse=int(page_size) > 1,
        rng=gen,
        pool_factor=int(pool_factor),
    )
    scores = margin(p)[picked]
    return picked[np.argsort(-scores, kind="stable")]


class SelfTrainedClassifier:
    """Balanced logistic regression, soft self-trained on the unlabelled cells.

    Parameters
    ----------
    C : float, default 0.1
        Inverse regularisation strength of the logistic regression (on standardised
        features; small, because there are few labels and many features).
    rounds : int, default 2
        Self-training rounds; 0 gives the plain logistic regression on the labels.
    unlabelled_weight : float, default 0.3
        Weight of a pseudo-labelled cell relative to an annotated one, times its
        predicted probability.
    max_iter : int, default 500
        Iterations of the solver.

    Attributes
    ----------
    classes_ : numpy.ndarray
        The annotated classes, in the order of :meth:`predict_proba`'s columns.
    """

    def __init__(
        self, C: float = 0.1, rounds: int = 2, unlabelled_weight: float = 0.3, max_iter: int = 500
    ) -> None:
        if not np.isfinite(C) or C <= 0:
            raise ValueError(f"C must be a finite number > 0, got {C!r}")
        if int(rounds) < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds!r}")
        if not np.isfinite(unlabelled_weight) or unlabelled_weight < 0:
            raise ValueError(f"unlabelled_weight must be a finite number >= 0, got {unlabelled_weight!r}")
        self.C = float(C)
        self.rounds = int(rounds)
        self.unlabelled_weight = float(unlabelled_weight)
        self.max_iter = int(max_iter)
        self.classes_: NDArray[Any] = np.empty(0)
        self._scaler: Any = None
        self._model: Any = None

    def _fit_once(self, X: NDArray[np.float64], y: NDArray[Any], weight: NDArray[np.float64]) -> Any:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=self.max_iter)
        return model.fit(X, y, sample_weight=weight)

    def fit(
        self, X_labelled: ArrayLike, y_labelled: ArrayLike, X_unlabelled: ArrayLike | None = None
    ) -> SelfTrainedClassifier:
        """Fit on the annotated cells and (when given) the unlabelled ones.

        Parameters
        ----------
        X_labelled : array-like of shape (n_labelled, n_features)
            Features of the annotated cells.
        y_labelled : array-like of shape (n_labelled,)
            Their classes (at least two different ones).
        X_unlabelled : array-like of shape (n_unlabelled, n_features), optional
            Features of the cells not annotated; used for the scaling and the self-training.

        Returns
        -------
        SelfTrainedClassifier
            ``self``.

        Raises
        ------
        ValueError
            On NaN or infinite features, mismatched lengths or fewer than two classes.
        """
        from sklearn.preprocessing import StandardScaler

        xl = _check_features(X_labelled, np.asarray(X_labelled).shape[0], "SelfTrainedClassifier.fit")
        yl = np.asarray(y_labelled)
        if yl.ndim != 1 or yl.shape[0] != xl.shape[0]:
            raise ValueError(f"{xl.shape[0]} labelled rows but y_labelled has shape {yl.shape}")
        if np.unique(yl).size < 2:
            raise ValueError("Annotate cells of at least two classes before training.")
        xu: np.ndarray
        if X_unlabelled is None:
            xu = np.empty((0, xl.shape[1]))
        else:
            xu = _check_features(X_unlabelled, np.asarray(X_unlabelled).shape[0], "SelfTrainedClassifier.fit")
            if xu.shape[1] != xl.shape[1]:
                raise ValueError(f"X_unlabelled has {xu.shape[1]} features but X_labelled has {xl.shape[1]}")
        self._scaler = StandardScaler().fit(np.vstack([xl, xu]))
        xl = self._scaler.transform(xl)
        xu = self._scaler.transform(xu) if len(xu) else xu
        self._model = self._fit_once(xl, yl, np.ones(len(yl)))
        self.classes_ = np.asarray(self._model.classes_)
        if len(xu) and self.rounds and self.unlabelled_weight > 0:
            x_all = np.vstack([xl, xu])
            for _ in range(self.rounds):
                p = self._model.predict_proba(xu)
                pseudo = self.classes_[np.argmax(p, axis=1)]
                weight = np.concatenate([np.ones(len(yl)), self.unlabelled_weight * p.max(axis=1)])
                self._model = self._fit_once(x_all, np.concatenate([yl, pseudo]), weight)
        return self

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Class probabilities, columns in :attr:`classes_` order.

        Raises
        ------
        ValueError
            Before :meth:`fit`, or on features that do not match the fitted ones.
        """
        if self._model is None:
            raise ValueError("SelfTrainedClassifier is not fitted yet; call fit(...) first")
        x = _check_features(X, np.asarray(X).shape[0], "SelfTrainedClassifier.predict_proba")
        if x.shape[1] != self._scaler.n_features_in_:
            raise ValueError(
                f"X has {x.shape[1]} features, the classifier was fitted on {self._scaler.n_features_in_}"
            )
        return np.asarray(self._model.predict_proba(self._scaler.transform(x)), dtype=np.float64)

    @property
    def coef_(self) -> NDArray[np.float64]:
        """The logistic regression's coefficients (on standardised features), per class."""
        if self._model is None:
            raise ValueError("SelfTrainedClassifier is not fitted yet; call fit(...) first")
        return np.asarray(self._model.coef_, dtype=np.float64)

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """The most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
