"""The live loop in core: training set over many tables, train + predict all, proposals,
display codes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_phenotyper.core.classify.display import cell_codes, label_lut, paint
from napari_phenotyper.core.classify.engine import (
    MatrixCache,
    annotation_column,
    border_labels,
    common_feature_columns,
    feature_importances,
    iter_quality,
    iter_train_predict,
    propose,
    training_set,
)
from napari_phenotyper.core.classify.model import ClassifierSettings
from napari_phenotyper.core.features import compute_features
from napari_phenotyper.core.progress import Progress, run


def _table(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    df = pd.DataFrame(
        {
            "label": np.arange(1, n + 1),
            "area": np.where(kind == 1, 300.0, 80.0) + rng.normal(0, 10, n) + shift,
            "mean_intensity_image": np.where(kind == 1, 50.0, 200.0) + rng.normal(0, 5, n),
            "centroid_y": rng.uniform(0, 100, n),
        }
    )
    return df, np.where(kind == 1, "big", "small")


@pytest.fixture
def two_images():
    a, ya = _table(60, 0)
    b, yb = _table(40, 1)
    tables = {"a.tif": a, "b.tif": b}
    truth = {"a.tif": ya, "b.tif": yb}
    ann = {"a.tif": {1: ya[0], 2: ya[1], 3: ya[2], 4: ya[3]}, "b.tif": {5: yb[4], 6: yb[5]}}
    return tables, truth, ann


def test_training_set_collects_annotated_rows_of_every_table(two_images):
    tables, truth, ann = two_images
    names = common_feature_columns(tables)
    assert names == ["area", "mean_intensity_image"]  # centroids are never features
    X, y, keys = training_set(tables, ann, names)
    assert len(X) == 6 and keys == [
        ("a.tif", 1),
        ("a.tif", 2),
        ("a.tif", 3),
        ("a.tif", 4),
        ("b.tif", 5),
        ("b.tif", 6),
    ]
    assert y == [truth["a.tif"][i] for i in range(4)] + [truth["b.tif"][4], truth["b.tif"][5]]
    # an annotation of a label that no longer exists is skipped, not an error
    X2, _, _ = training_set(tables, {"a.tif": {999: "big", 1: truth["a.tif"][0]}}, names)
    assert len(X2) == 1


def test_train_predict_covers_every_cell_of_every_table(two_images):
    tables, truth, ann = two_images
    if len({c for a in ann.values() for c in a.values()}) < 2:
        pytest.skip("seeded draw has one class")
    steps = []
    gen = iter_train_predict(tables, ann, ClassifierSettings(trees=50))
    result = run(gen, steps.append)
    assert all(isinstance(p, Progress) for p in steps) and steps[-1].fraction == 1
    assert set(result.predictions) == {"a.tif", "b.tif"}
    for key, pred in result.predictions.items():
        assert len(pred) == len(tables[key]) and pred.index.equals(tables[key].index)
        acc = (pred["pheno_class"].astype(str).to_numpy() == truth[key]).mean()
        assert acc >= 0.95
        assert ((pred["pheno_uncertainty"] >= 0) & (pred["pheno_uncertainty"] <= 1)).all()
    assert result.n_train == 6 and result.feature_names == ["area", "mean_intensity_image"]


def test_matrix_cache_reuses_until_the_table_changes(two_images):
    tables, _, _ = two_images
    cache = MatrixCache()
    m1 = cache.get("a.tif", tables["a.tif"], ["area"])
    assert cache.get("a.tif", tables["a.tif"], ["area"]) is m1
    assert cache.get("a.tif", tables["a.tif"].copy(), ["area"]) is not m1  # a new table object
    assert m1.dtype == np.float32


def test_a_table_measured_differently_is_skipped_not_narrowing(two_images):
    tables, truth, ann = two_images
    tables = {**tables, "c.tif": tables["b.tif"].drop(columns="mean_intensity_image")}
    result = run(iter_train_predict(tables, ann, ClassifierSettings(trees=20)))
    assert result.feature_names == ["area", "mean_intensity_image"]
    assert set(result.predictions) == {"a.tif", "b.tif"}
    assert "mean_intensity_image" in result.skipped["c.tif"]


def test_tables_without_shared_features_are_refused():
    a = pd.DataFrame({"label": [1, 2], "area": [1.0, 2.0]})
    b = pd.DataFrame({"label": [1, 2], "perimeter": [1.0, 2.0]})
    with pytest.raises(ValueError, match="share no feature column"):
        run(iter_train_predict({"a": a, "b": b}, {"a": {1: "x"}, "b": {2: "y"}}))
    with pytest.raises(ValueError, match="two classes"):
        run(iter_train_predict({"a": a}, {"a": {1: "x"}}))


def test_quality_and_importances(two_images):
    tables, _, ann = two_images
    one_each = {"a.tif": {1: "big", 2: "small"}}
    assert run(iter_quality(tables, one_each)) is None  # too few to split
    big = {"a.tif": {i + 1: c for i, c in enumerate(_table(60, 0)[1][:30])}}
    q = run(iter_quality({"a.tif": tables["a.tif"]}, big, ClassifierSettings(trees=30)))
    assert q is not None and q["accuracy"] >= 0.9
    result = run(iter_train_predict({"a.tif": tables["a.tif"]}, big, ClassifierSettings(trees=30)))
    imp = feature_importances(result.model)
    assert imp is not None and set(imp.index) == {"area", "mean_intensity_image"}
    assert imp.sum() == pytest.approx(1.0)
    # computed with the model, in the worker (the dock only shows them)
    pd.testing.assert_series_equal(result.importances, imp)


def test_propose_ranks_uncertain_unannotated_cells(two_images):
    tables, _, ann = two_images
    predictions = {
        "a.tif": pd.DataFrame(
            {"pheno_class": pd.Categorical(["x"] * 60), "pheno_proba_x": 0.9, "pheno_proba_y": 0.1}
        ),
        "b.tif": pd.DataFrame(
            {"pheno_class": pd.Categorical(["x"] * 40), "pheno_proba_x": 0.9, "pheno_proba_y": 0.1}
        ),
    }
    predictions["b.tif"].loc[7, ["pheno_proba_x", "pheno_proba_y"]] = [0.5, 0.5]  # label 8 of b
    predictions["a.tif"].loc[9, ["pheno_proba_x", "pheno_proba_y"]] = [0.6, 0.4]  # label 10 of a
    annotated = {k: a.keys() for k, a in ann.items()}
    top = propose(tables, predictions, annotated, strategy="margin", k=2)
    assert [(p.image, p.label) for p in top] == [("b.tif", 8), ("a.tif", 10)]
    assert top[0].predicted == "x"
    # annotated cells are never proposed
    annotated["b.tif"] = [*annotated["b.tif"], 8]
    assert propose(tables, predictions, annotated, strategy="margin")[0].label == 10
    # a diverse queue has distinct cells
    queue = propose(tables, predictions, annotated, k=5, diverse=True, feature_names=["area"])
    assert len({(p.image, p.label) for p in queue}) == 5


def test_annotation_column_matches_labels():
    col = annotation_column(np.array([3, 1, 2, 7]), {1: "a", 7: "b", 99: "a"}, ["a", "b"])
    assert [None if pd.isna(v) else v for v in col] == [None, "a", None, "b"]
    assert list(col.categories) == ["a", "b"]


def test_display_codes_and_paint():
    table = pd.DataFrame(
        {
            "label": [1, 2, 3],
            "pheno_class": pd.Categorical(["a", "b", "a"], categories=["a", "b"]),
            "pheno_annotation": pd.Categorical([None, "a", None], categories=["a", "b"]),
            "pheno_uncertainty": [0.0, 1.0, 0.5],
        }
    )
    assert cell_codes(table, ["a", "b"], "predictions").tolist() == [1, 3, 1]  # annotated a -> 1 + 2 + 0
    assert cell_codes(table, ["a", "b"], "annotations").tolist() == [0, 3, 0]
    assert cell_codes(table, ["a", "b"], "uncertainty").tolist() == [1, 255, 128]
    labels = np.array([[0, 1, 2], [3, 3, 5]], np.int32)  # 5 has no row (painted later)
    lut = label_lut(table["label"].to_numpy(), cell_codes(table, ["a", "b"], "predictions"))
    assert paint(labels, lut).tolist() == [[0, 1, 3], [1, 1, 0]]
    with pytest.raises(ValueError, match="display mode"):
        cell_codes(table, ["a", "b"], "rainbow")
    with pytest.raises(ValueError, match="integers"):
        paint(labels.astype(float), lut)


def test_value_codes_use_the_range():
    table = pd.DataFrame({"label": [1, 2, 3], "pheno_value": [0.0, 0.5, 2.0]})
    table["pheno_value_annotation"] = [np.nan, 1.0, np.nan]
    assert cell_codes(table, [], "value", value_range=(0.0, 1.0)).tolist() == [1, 255, 255]


def test_proposals_skip_cells_cut_by_the_border_and_excluded_ones():
    labels = np.zeros((40, 40), np.int32)
    labels[0:6, 10:16] = 1  # cut by the top border
    labels[15:21, 15:21] = 2
    labels[30:40, 30:36] = 3  # cut by the bottom border
    labels[25:30, 5:10] = 4
    table = compute_features(labels, {"image": labels.astype(np.float32)}, groups=("shape",))
    np.testing.assert_array_equal(np.sort(border_labels(table, labels.shape)), [1, 3])
    proba = {1: 0.5, 2: 0.8, 3: 0.5, 4: 0.9}  # the border cells are the most uncertain
    pred = pd.DataFrame(
        {
            "pheno_class": pd.Categorical(["x"] * 4),
            "pheno_proba_x": [proba[lab] for lab in table["label"]],
            "pheno_proba_y": [1 - proba[lab] for lab in table["label"]],
        }
    )
    tables, preds = {"a": table}, {"a": pred}
    avoid = {"a": border_labels(table, labels.shape)}
    assert [p.label for p in propose(tables, preds, {"a": []}, strategy="margin", k=4)][:2] in (
        [1, 3],
        [3, 1],
    )
    got = [p.label for p in propose(tables, preds, {"a": []}, avoid=avoid, strategy="margin", k=4)]
    assert got == [2, 4]  # never a half cell while whole ones are left
    # excluded (like annotated) cells are never proposed; border cells when nothing else is left
    assert [p.label for p in propose(tables, preds, {"a": [2, 4]}, avoid=avoid, k=1)] in ([1], [3])
    assert propose(tables, preds, {"a": [1, 2, 3, 4]}, avoid=avoid) == []
