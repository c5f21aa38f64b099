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
    profile_features,
    profile_row,
    profiles,
    readout_columns,
    z_prime,
    zscore_to_controls,
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


# ------------------------------------------------------------- per-image/per-well profiles
def _plate_cells():
    """Two wells of two images each; hand-made numbers."""
    return pd.DataFrame(
        {
            "plate": ["P1"] * 6,
            "well": ["A01", "A01", "A01", "B01", "B01", "B01"],
            "site": ["1", "1", "2", "1", "2", "2"],
            "image": ["a1", "a1", "a2", "b1", "b2", "b2"],
            "label": [1, 2, 1, 1, 1, 2],
            "treatment": ["dmso", "dmso", "dmso", "drug", "drug", "drug"],
            "concentration": [0.0, 0.0, 0.0, 2.5, 2.5, 2.5],
            "centroid_y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "area": [10.0, 20.0, 60.0, 100.0, np.inf, 300.0],
            "mean_intensity_image": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "pheno_annotation": [None, "big", None, None, None, None],
            "pheno_class": ["small", "small", "big", "big", "small", "big"],
            "pheno_uncertainty": [0.0, 0.5, 0.25, 0.25, 1.0, 0.0],
        }
    )


def test_profile_features_skip_ids_and_annotations():
    t = _plate_cells()
    assert profile_features(t) == ["concentration", "area", "mean_intensity_image"]
    assert profile_features(t, exclude=["concentration"]) == ["area", "mean_intensity_image"]


def test_profile_row_exact_numbers():
    t = _plate_cells()
    row = profile_row(t[t["well"] == "A01"], ["area", "mean_intensity_image"], ["small", "big", "dead"])
    assert list(row) == [
        "n_cells",
        "n_annotated",
        "n_small",
        "n_big",
        "n_dead",
        "fraction_small",
        "fraction_big",
        "fraction_dead",
        "mean_uncertainty",
        "mean_area",
        "mean_mean_intensity_image",
        "median_area",
        "median_mean_intensity_image",
        "mean_area__small",
        "mean_mean_intensity_image__small",
        "mean_area__big",
        "mean_mean_intensity_image__big",
        "mean_area__dead",
        "mean_mean_intensity_image__dead",
    ]
    assert row["n_cells"] == 3 and row["n_annotated"] == 1
    # cell 2 is annotated big over its small prediction: small = {10}, big = {20, 60}
    assert (row["n_small"], row["n_big"], row["n_dead"]) == (1, 2, 0)
    assert row["fraction_small"] == pytest.approx(1 / 3) and row["fraction_big"] == pytest.approx(2 / 3)
    assert row["fraction_dead"] == 0.0
    assert row["mean_uncertainty"] == pytest.approx(0.25)
    assert row["mean_area"] == pytest.approx(30.0) and row["median_area"] == 20.0
    assert row["mean_area__small"] == 10.0 and row["mean_area__big"] == 40.0
    assert np.isnan(row["mean_area__dead"])


def test_profile_row_skips_non_finite_and_handles_empty_groups():
    t = _plate_cells()
    row = profile_row(t[t["well"] == "B01"], ["area"], ["small", "big"])
    # inf is skipped: mean and median of 100 and 300
    assert row["mean_area"] == 200.0 and row["median_area"] == 200.0
    assert row["mean_area__small"] != row["mean_area__small"]  # its one cell has inf area: NaN
    empty = profile_row(t.iloc[:0], ["area", "missing_column"], ["small", "big"])
    assert empty["n_cells"] == 0 and empty["n_small"] == 0 and np.isnan(empty["fraction_small"])
    assert np.isnan(empty["mean_area"]) and np.isnan(empty["median_missing_column"])
    bare = profile_row(pd.DataFrame({"label": [1, 2], "area": [1.0, 3.0]}))
    assert bare == {"n_cells": 2, "mean_area": 2.0, "median_area": 2.0}
    with pytest.raises(ValueError, match="made twice"):
        profile_row(
            pd.DataFrame({"label": [1], "uncertainty": [1.0], "pheno_uncertainty": [0.1]}), ["uncertainty"]
        )


def test_profiles_per_image_and_per_well():
    t = _plate_cells()
    per_image = profiles(t, by=["image"], features=["area"], annotations=["well", "treatment"])
    assert per_image["image"].tolist() == ["a1", "a2", "b1", "b2"]
    assert per_image["well"].tolist() == ["A01", "A01", "B01", "B01"]
    assert per_image["n_cells"].tolist() == [2, 1, 1, 2]
    np.testing.assert_allclose(per_image["mean_area"], [15.0, 60.0, 100.0, 300.0])
    np.testing.assert_allclose(per_image["fraction_big"], [0.5, 1.0, 1.0, 0.5])

    per_well = profiles(t, by=["plate", "well"], annotations=["treatment", "concentration"])
    assert list(per_well.columns[:5]) == ["plate", "well", "treatment", "concentration", "n_cells"]
    assert per_well[["well", "treatment", "concentration"]].values.tolist() == [
        ["A01", "dmso", 0.0],
        ["B01", "drug", 2.5],
    ]
    np.testing.assert_allclose(per_well["median_area"], [20.0, 200.0])
    np.testing.assert_allclose(per_well["mean_mean_intensity_image"], [2.0, 5.0])
    np.testing.assert_allclose(per_well["mean_mean_intensity_image__big"], [2.5, 5.0])
    assert "mean_concentration" not in per_well  # an annotation, not a feature
    # a categorical image column keeps an image without cells
    t["image"] = pd.Categorical(t["image"], categories=["a1", "a2", "none", "b1", "b2"])
    assert profiles(t, features=["area"])["n_cells"].tolist() == [2, 1, 0, 1, 2]


def _wells():
    """Six wells: 3 negative, 2 positive controls, 1 sample; two readouts. Hand-computed below."""
    return pd.DataFrame(
        {
            "plate": ["P1"] * 6,
            "well": ["A01", "A02", "A03", "B01", "B02", "C01"],
            "treatment": ["dmso", "dmso", "dmso", "toxin", "toxin", "drug"],
            "concentration": [0.0, 0.0, 0.0, 1.0, 1.0, 5.0],
            "control": ["negative", "negative", "negative", "positive", "positive", ""],
            "n_images": [2, 2, 2, 2, 2, 2],
            "n_cells": [100, 110, 120, 40, 50, 70],
            "fraction_dead": [0.1, 0.2, 0.3, 0.9, 0.9, 0.5],
        }
    )


def test_zscores_against_negative_controls():
    w = _wells()
    assert readout_columns(w, exclude=["concentration"]) == ["n_cells", "fraction_dead"]
    z = zscore_to_controls(w, ["n_cells", "fraction_dead"])
    # negatives: n_cells 100, 110, 120 -> mean 110, sd 10; fraction 0.1..0.3 -> mean 0.2, sd 0.1
    np.testing.assert_allclose(z["n_cells"], [-1.0, 0.0, 1.0, -7.0, -6.0, -4.0])
    np.testing.assert_allclose(z["fraction_dead"], [-1.0, 0.0, 1.0, 7.0, 7.0, 3.0], atol=1e-12)
    assert z["treatment"].tolist() == w["treatment"].tolist() and z["n_images"].tolist() == [2] * 6
    # per plate: a plate without negative controls (or with one) gets NaN
    two = pd.concat([w, w.assign(plate="P2", control=["negative", "", "", "", "", ""])], ignore_index=True)
    z2 = zscore_to_controls(two, ["n_cells"])
    np.testing.assert_allclose(z2["n_cells"][:6], [-1.0, 0.0, 1.0, -7.0, -6.0, -4.0])
    assert z2["n_cells"][6:].isna().all()
    # constant negatives: sd 0 -> NaN rather than inf
    flat = w.assign(n_cells=[5, 5, 5, 1, 2, 3])
    assert zscore_to_controls(flat, ["n_cells"])["n_cells"].isna().all()
    with pytest.raises(ValueError, match="No negative control wells"):
        zscore_to_controls(w.assign(control=""), ["n_cells"])
    with pytest.raises(ValueError, match="no 'control' column"):
        zscore_to_controls(w.drop(columns="control"))


def test_z_prime_exact():
    w = _wells()
    zp = z_prime(w, ["n_cells", "fraction_dead"]).set_index("readout")
    # n_cells: neg mean 110 sd 10; pos mean 45 sd sqrt(50) -> 1 - 3 (10 + 7.0711) / 65
    assert zp.loc["n_cells", "z_prime"] == pytest.approx(1 - 3 * (10 + np.sqrt(50)) / 65)
    assert zp.loc["n_cells", ["n_negative", "n_positive"]].tolist() == [3, 2]
    assert zp.loc["n_cells", "mean_positive"] == 45.0 and zp.loc["n_cells", "sd_negative"] == 10.0
    # fraction_dead: pos sd 0 -> 1 - 3 * 0.1 / 0.7
    assert zp.loc["fraction_dead", "z_prime"] == pytest.approx(1 - 0.3 / 0.7)
    assert list(zp.reset_index().columns) == [
        "readout",
        "n_negative",
        "n_positive",
        "mean_negative",
        "sd_negative",
        "mean_positive",
        "sd_positive",
        "z_prime",
    ]
    # per plate, and NaN with a single positive control or equal means
    two = pd.concat([w, w.assign(plate="P2", control=["negative", "negative", "", "positive", "", ""])])
    per_plate = z_prime(two, ["n_cells"], by=["plate"])
    assert per_plate["plate"].tolist() == ["P1", "P2"]
    assert per_plate["z_prime"][0] == pytest.approx(1 - 3 * (10 + np.sqrt(50)) / 65)
    assert np.isnan(per_plate["z_prime"][1])
    same = w.assign(n_cells=[1, 2, 3, 1, 3, 0])
    assert np.isnan(z_prime(same, ["n_cells"])["z_prime"][0])
