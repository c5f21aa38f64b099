"""The default annotation workflow: page queries and the self-trained classifier."""

from __future__ import annotations

import numpy as np
import pytest

from napari_phenotyper.core.classify.query import margin
from napari_phenotyper.core.classify.workflow import PAGE_SIZE, SelfTrainedClassifier, query_page


def _blobs(seed: int = 0, n_per: int = 60, sep: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in 5-D, centres ``sep`` apart on the first three axes."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 5) * sep
    X = np.vstack([rng.normal(c, 1.0, size=(n_per, 5)) for c in centres])
    y = np.repeat(np.array(["a", "b", "c"]), n_per)
    return X, y


def test_query_page_returns_uncertain_unlabelled_cells_spread_over_clusters():
    # two far-apart groups of equally uncertain cells and a block of confident ones
    X = np.vstack([np.full((10, 2), 0.0), np.full((10, 2), 10.0), np.full((10, 2), 5.0)])
    X += np.random.default_rng(0).normal(0, 0.01, X.shape)
    proba = np.vstack([np.full((20, 2), 0.5), np.tile([0.95, 0.05], (10, 1))])
    labelled = np.zeros(30, dtype=bool)
    labelled[[0, 10]] = True
    page = query_page(proba, X, labelled, page_size=2, rng=0)
    assert page.shape == (2,)
    assert not labelled[page].any()
    # one from each uncertain group, none of the confident cells
    assert sorted(int(i) // 10 for i in page) == [0, 1]
    np.testing.assert_allclose(margin(proba)[page], [1.0, 1.0])
    # deterministic for a seed
    np.testing.assert_array_equal(page, query_page(proba, X, labelled, page_size=2, rng=0))


def test_query_page_sorted_by_uncertainty_and_capped_by_unlabelled():
    proba = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.99, 0.01]])
    X = np.arange(8, dtype=float).reshape(4, 2)
    page = query_page(proba, X, np.array([False, False, False, True]), page_size=12, rng=0)
    np.testing.assert_array_equal(page, [0, 2, 1])
    assert query_page(proba, X, np.array([True, False, True, True]), page_size=1).tolist() == [1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labelled": np.zeros(3, dtype=bool)}, "boolean mask of shape"),
        ({"labelled": np.zeros(4, dtype=int)}, "boolean mask"),
        ({"page_size": 0}, "page_size must be >= 1"),
        ({"pool_factor": 0}, "pool_factor must be >= 1"),
        ({"labelled": np.ones(4, dtype=bool)}, "no candidate cells"),
        ({"X": np.zeros((3, 2))}, "X has 3 rows"),
        ({"proba": np.full((4, 2), 0.7)}, "sum to 1"),
    ],
)
def test_query_page_rejects_bad_input(kwargs, match):
    args = {
        "proba": np.full((4, 2), 0.5),
        "X": np.zeros((4, 2)),
        "labelled": np.zeros(4, dtype=bool),
        "page_size": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        query_page(**args)


def test_default_page_size_is_a_gallery_page():
    assert 12 <= PAGE_SIZE <= 48


def test_self_training_uses_the_unlabelled_cells():
    X, y = _blobs(seed=1, sep=2.5)
    X_test, y_test = _blobs(seed=2, sep=2.5)
    rng = np.random.default_rng(3)
    lab = np.concatenate([rng.choice(np.flatnonzero(y == c), 2, replace=False) for c in "abc"])
    unl = np.setdiff1d(np.arange(len(y)), lab)
    plain = SelfTrainedClassifier(rounds=0).fit(X[lab], y[lab], X[unl])
    self_trained = SelfTrainedClassifier().fit(X[lab], y[lab], X[unl])
    acc_plain = np.mean(plain.predict(X_test) == y_test)
    acc_self = np.mean(self_trained.predict(X_test) == y_test)
    assert acc_self > 0.85
    assert acc_self >= acc_plain
    proba = self_trained.predict_proba(X_test)
    assert proba.shape == (len(y_test), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert self_trained.classes_.tolist() == ["a", "b", "c"]
    # without unlabelled cells (or weight 0) it is the plain logistic regression
    np.testing.assert_allclose(
        SelfTrainedClassifier(unlabelled_weight=0).fit(X[lab], y[lab], X[unl]).predict_proba(X_test),
        plain.predict_proba(X_test),
    )


def test_self_trained_classifier_rejects_bad_input():
    X, y = _blobs(n_per=5)
    with pytest.raises(ValueError, match="C must be"):
        SelfTrainedClassifier(C=0)
    with pytest.raises(ValueError, match="rounds must be"):
        SelfTrainedClassifier(rounds=-1)
    with pytest.raises(ValueError, match="unlabelled_weight"):
        SelfTrainedClassifier(unlabelled_weight=np.nan)
    with pytest.raises(ValueError, match="not fitted"):
        SelfTrainedClassifier().predict_proba(X)
    with pytest.raises(ValueError, match="at least two classes"):
        SelfTrainedClassifier().fit(X[:5], y[:5])
    with pytest.raises(ValueError, match="labelled rows"):
        SelfTrainedClassifier().fit(X, y[:-1])
    with pytest.raises(ValueError, match="features but X_labelled"):
        SelfTrainedClassifier().fit(X, y, X[:, :2])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SelfTrainedClassifier().fit(bad, y)
    model = SelfTrainedClassifier().fit(X, y)
    with pytest.raises(ValueError, match="fitted on 5"):
        model.predict(X[:, :3])


def test_the_self_trained_kind_is_the_workflow_learner_and_imputes_nan():
    import pandas as pd

    from napari_phenotyper.core.classify.model import (
        SELF_TRAIN_MAX_UNLABELLED,
        ClassifierSettings,
        cross_validate,
        predict,
        train,
        unlabelled_sample,
    )

    X, y = _blobs(seed=1, sep=2.5)
    names = [f"f{j}" for j in range(X.shape[1])]
    table = pd.DataFrame(X, columns=names)
    rng = np.random.default_rng(3)
    lab = np.concatenate([rng.choice(np.flatnonzero(y == c), 2, replace=False) for c in "abc"])
    unannotated = np.ones(len(y), bool)
    unannotated[lab] = False
    pool = unlabelled_sample([table], [unannotated], names)
    assert len(pool) == len(y) - 6
    settings = ClassifierSettings(kind="self_trained")
    model = train(table.iloc[lab], y[lab], settings, unlabelled=pool)
    # the product's kind is the workflow's learner: the same probabilities
    ref = SelfTrainedClassifier().fit(X[lab], y[lab], pool.to_numpy())
    frame = predict(model, table)
    np.testing.assert_allclose(
        frame[[f"pheno_proba_{c}" for c in "abc"]].to_numpy(), ref.predict_proba(X), atol=1e-5
    )  # float32 features
    assert (frame["pheno_class"].astype(str).to_numpy() == y).mean() > 0.85
    # a cell whose feature could not be measured still gets a class (median imputed)
    holed = table.copy()
    holed.iloc[lab[0], 0] = np.nan
    holed.iloc[int(np.flatnonzero(unannotated)[0]), 1] = np.nan
    again = train(
        holed.iloc[lab], y[lab], settings, unlabelled=unlabelled_sample([holed], [unannotated], names)
    )
    assert predict(again, holed)["pheno_class"].notna().all()
    # cross-validated on the answers alone
    cv = cross_validate(table.iloc[lab], y[lab], settings, folds=2)
    assert cv is not None and cv["folds"] == 2 and len(cv["predicted"]) == 6
    # a large pool is sampled: bounded, seeded, in the tables' order
    big = pd.DataFrame({"f0": np.arange(5000.0)})
    masks = [np.ones(5000, bool), np.arange(5000) % 2 == 0]
    sample = unlabelled_sample([big, big], masks, ["f0"], seed=1)
    assert len(sample) == SELF_TRAIN_MAX_UNLABELLED
    pd.testing.assert_frame_equal(sample, unlabelled_sample([big, big], masks, ["f0"], seed=1))
    assert not sample.equals(unlabelled_sample([big, big], masks, ["f0"], seed=2))
