"""Per-image summaries of per-cell phenotype tables: exact counts and proportions."""

import numpy as np
import pandas as pd
import pytest

from napari_phenotyper.core.profiles import (
    class_summary,
    classes_of,
    combine_tables,
    effective_class,
    has_phenotype_columns,
    phenotype_columns,
)


def _cells():
    """Two images; class 'dead' has no cell; cell 3 is annotated against its prediction."""
    return pd.DataFrame(
        {
            "image": ["a", "a", "a", "b", "b"],
            "label": [1, 2, 3, 1, 2],
            "area": [10.0, 11.0, 12.0, 13.0, 14.0],
            "pheno_annotation": [None, None, "mitotic", None, "interphase"],
            "pheno_class": pd.Categorical(
                ["interphase", "interphase", "interphase", "mitotic", "interphase"],
                categories=["interphase", "mitotic", "dead"],
            ),
            "pheno_uncertainty": [0.1, 0.2, 0.6, 0.4, 0.0],
        }
    )


def test_counts_fractions_and_empty_class():
    s = class_summary(_cells())
    assert list(s.columns) == [
        "image",
        "n_cells",
        "n_annotated",
        "n_interphase",
        "n_mitotic",
        "n_dead",
        "fraction_interphase",
        "fraction_mitotic",
        "fraction_dead",
        "mean_uncertainty",
    ]
    assert s["image"].tolist() == ["a", "b"]
    assert s["n_cells"].tolist() == [3, 2]
    assert s["n_annotated"].tolist() == [1, 1]
    # image a: 2 predicted interphase + 1 annotated mitotic (overrides its interphase prediction)
    assert s["n_interphase"].tolist() == [2, 1]
    assert s["n_mitotic"].tolist() == [1, 1]
    assert s["n_dead"].tolist() == [0, 0]
    np.testing.assert_allclose(s["fraction_interphase"], [2 / 3, 0.5])
    np.testing.assert_allclose(s["fraction_mitotic"], [1 / 3, 0.5])
    np.testing.assert_allclose(s["fraction_dead"], [0.0, 0.0])
    np.testing.assert_allclose(s["mean_uncertainty"], [0.3, 0.2])


def test_annotation_wins_over_prediction():
    t = _cells()
    assert effective_class(t).tolist() == ["interphase", "interphase", "mitotic", "mitotic", "interphase"]
    only_predicted = class_summary(t.drop(columns="pheno_annotation"))
    assert only_predicted["n_mitotic"].tolist() == [0, 1]
    assert only_predicted["n_annotated"].tolist() == [0, 0]


def test_annotation_only_classes_and_no_prediction_yet():
    t = pd.DataFrame({"label": [1, 2, 3, 4], "pheno_annotation": ["b", None, "a", "b"]})
    s = class_summary(t)
    assert s["image"].tolist() == [""]  # no image column: one row
    assert classes_of(t) == ["a", "b"]
    assert s[["n_cells", "n_annotated", "n_a", "n_b"]].iloc[0].tolist() == [4, 3, 1, 2]
    # proportions among the cells that have a class
    np.testing.assert_allclose(s[["fraction_a", "fraction_b"]].iloc[0], [1 / 3, 2 / 3])
    # an annotation class the classifier does not know comes after the categories
    t["pheno_class"] = pd.Categorical(["x", "x", "x", "x"], categories=["x", "b"])
    assert classes_of(t) == ["x", "b", "a"]
    assert class_summary(t)[["n_x", "n_b", "n_a"]].iloc[0].tolist() == [1, 2, 1]


def test_class_from_csv_text_uses_proba_columns():
    # read back from a CSV without categoricals: proba columns still name every class
    t = pd.DataFrame(
        {
            "label": [1, 2],
            "pheno_class": ["b", "b"],
            "pheno_proba_c": [0.1, 0.2],
            "pheno_proba_b": [0.9, 0.8],
            "pheno_annotation": ["", np.nan],  # empty text counts as missing
        }
    )
    s = class_summary(t)
    assert list(s.columns) == ["image", "n_cells", "n_annotated", "n_c", "n_b", "fraction_c", "fraction_b"]
    assert s[["n_annotated", "n_c", "n_b"]].iloc[0].tolist() == [0, 0, 2]


def test_regression_columns():
    t = pd.DataFrame(
        {
            "image": ["p", "p", "p", "q"],
            "label": [1, 2, 3, 1],
            "pheno_value_annotation": [np.nan, 10.0, np.nan, np.nan],
            "pheno_value": [1.0, 2.0, 4.0, np.nan],
            "pheno_value_spread": [0.1, 0.1, 0.1, 0.1],
        }
    )
    s = class_summary(t)
    assert list(s.columns) == ["image", "n_cells", "n_annotated", "mean_value", "median_value"]
    assert s["n_annotated"].tolist() == [1, 0]
    # the annotated value (10) replaces the prediction (2): values 1, 10, 4
    np.testing.assert_allclose(s["mean_value"], [5.0, np.nan])
    np.testing.assert_allclose(s["median_value"], [4.0, np.nan])


def test_no_phenotype_columns():
    t = pd.DataFrame({"image": ["x", "y", "x"], "label": [1, 1, 2], "area": [1.0, 2.0, 3.0]})
    assert not has_phenotype_columns(t)
    s = class_summary(t)
    assert list(s.columns) == ["image", "n_cells"]
    assert s.values.tolist() == [["x", 2], ["y", 1]]
    empty = class_summary(pd.DataFrame({"label": []}))
    assert empty.values.tolist() == [["", 0]]


def test_categorical_image_column_keeps_images_without_cells():
    t = _cells()
    t["image"] = pd.Categorical(t["image"], categories=["b", "empty", "a"])
    s = class_summary(t)
    assert s["image"].tolist() == ["b", "empty", "a"]
    assert s["n_cells"].tolist() == [2, 0, 3]
    assert s.loc[1, "n_mitotic"] == 0 and np.isnan(s.loc[1, "fraction_mitotic"])


def test_clashing_class_name_is_a_clear_error():
    t = pd.DataFrame({"label": [1], "pheno_class": pd.Categorical(["cells"])})
    with pytest.raises(ValueError, match="n_cells"):
        class_summary(t)


def test_phenotype_column_order():
    cols = ["area", "pheno_uncertainty", "pheno_proba_b", "pheno_x", "pheno_class", "pheno_proba_a", "label"]
    cols += ["pheno_value", "pheno_value_spread", "pheno_value_annotation", "pheno_annotation"]
    assert phenotype_columns(cols) == [
        "pheno_annotation",
        "pheno_class",
        "pheno_proba_b",
        "pheno_proba_a",
        "pheno_uncertainty",
        "pheno_value_annotation",
        "pheno_value",
        "pheno_value_spread",
        "pheno_x",
    ]


def test_combine_tables_unifies_categories():
    t = _cells()
    a = t[t["image"] == "a"].drop(columns="image")
    b = t[t["image"] == "b"].assign(pheno_class=pd.Categorical(["new", "new"]))
    combined = combine_tables({"a": a, "none": a.iloc[:0], "b": b})
    assert combined["image"].cat.categories.tolist() == ["a", "none", "b"]
    assert combined["pheno_class"].cat.categories.tolist() == ["interphase", "mitotic", "dead", "new"]
    assert combined["pheno_class"].tolist() == ["interphase"] * 3 + ["new"] * 2
    s = class_summary(combined)
    assert s["image"].tolist() == ["a", "none", "b"]
    assert s["n_cells"].tolist() == [3, 0, 2]
    assert s["n_new"].tolist() == [0, 0, 1]  # cell b/2 is annotated interphase
    with pytest.raises(ValueError, match="same image name"):
        combine_tables({1: a, "1": a})
