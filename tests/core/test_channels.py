"""Channel names of feature columns and mapping a saved classifier's channels onto new cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_phenotyper.core.batch import _load_model
from napari_phenotyper.core.channels import (
    ChannelMismatch,
    channel_of_column,
    channels_of,
    default_channel_names,
    rename_table_channels,
    resolve_channel_mapping,
    suggest_channel_mapping,
)
from napari_phenotyper.core.classify.model import ClassifierSettings, feature_columns_for, predict
from napari_phenotyper.core.features import compute_features, feature_columns
from napari_phenotyper.core.pipeline_spec import FileRef, PipelineSpec
from napari_phenotyper.io.classifier_io import load_classifier, save_classifier


def test_columns_name_their_channel():
    assert channel_of_column("mean_intensity_gfp") == "gfp"
    assert channel_of_column("haralick_asm_tubulin_P0037_T00001") == "tubulin_P0037_T00001"
    assert channel_of_column("q25_intensity_ch1") == "ch1"
    assert channel_of_column("mass_displacement_image") == "image"
    assert channel_of_column("area") is None and channel_of_column("n_neighbors") is None
    cols = feature_columns(["dapi", "gfp"])
    assert channels_of(cols) == ["dapi", "gfp"]


def test_default_names_are_short_and_do_not_depend_on_layer_names():
    frame1 = default_channel_names(
        ["tubulin_P0037_T00001", "dapi_P0037_T00001"], segmented="dapi_P0037_T00001"
    )
    frame2 = default_channel_names(
        ["tubulin_P0037_T00002", "dapi_P0037_T00002"], segmented="dapi_P0037_T00002"
    )
    assert frame1 == frame2 == ["ch0", "image"]
    assert default_channel_names(["a", "b"], known={"b": "GFP stain"}) == ["ch0", "GFP_stain"]
    assert default_channel_names(["a", "b"], known={"a": "x", "b": "x"}) == ["x", "x_2"]


def test_suggestion_pairs_same_names_case_and_one_left_on_each_side():
    m, rest = suggest_channel_mapping(["image", "GFP"], ["gfp", "image"])
    assert dict(m) == {"image": "image", "GFP": "gfp"} and rest == []
    m, rest = suggest_channel_mapping(["tubulin_frame1"], ["image"])
    assert dict(m) == {"tubulin_frame1": "image"} and rest == []
    assert m.describe() == "tubulin_frame1 <- image"
    m, rest = suggest_channel_mapping(["gfp", "dapi"], ["ch0", "ch1"])
    assert dict(m) == {} and rest == ["gfp", "dapi"]  # two unknowns are never guessed


def test_resolve_asks_for_what_it_cannot_pair_and_checks_what_it_is_given():
    feats = feature_columns(["gfp", "dapi", "image"])
    cols = feature_columns(["ch0", "ch1", "image"])
    with pytest.raises(ChannelMismatch) as info:
        resolve_channel_mapping(feats, cols)
    err = info.value
    assert err.needed == ["gfp", "dapi", "image"] and err.available == ["ch0", "ch1", "image"]
    assert dict(err.suggested) == {"image": "image"} and err.unresolved == ["gfp", "dapi"]
    assert "'gfp'" in str(err) and "channel_map" in str(err)
    # one given, the other is the only one left
    m = resolve_channel_mapping(feats, cols, {"gfp": "ch1"})
    assert dict(m) == {"gfp": "ch1", "dapi": "ch0", "image": "image"}
    with pytest.raises(ValueError, match="no channel 'ch7'"):
        resolve_channel_mapping(feats, cols, {"gfp": "ch7", "dapi": "ch0"})
    with pytest.raises(ValueError, match="'ch0' is mapped to two"):
        resolve_channel_mapping(feats, cols, {"gfp": "ch0", "dapi": "ch0"})


def _two_channel_cells(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros((120, 160), np.int32)
    kinds = {}
    lab = 0
    for r in range(4):
        for c in range(5):
            lab += 1
            labels[r * 30 + 5 : r * 30 + 25, c * 32 + 5 : c * 32 + 27] = lab
            kinds[lab] = "bright" if (lab + seed) % 2 else "dim"
    a = rng.normal(100, 5, labels.shape)
    b = rng.normal(50, 5, labels.shape)
    for lab, kind in kinds.items():
        a[labels == lab] += 400 if kind == "bright" else 0
    return labels, a, b, kinds


def test_a_saved_classifier_applies_to_cells_whose_channels_are_named_otherwise(tmp_path):
    labels, a, b, kinds = _two_channel_cells(0)
    t1 = compute_features(labels, {"gfp": a, "dapi": b})
    y = [kinds[int(lab)] for lab in t1["label"]]
    settings = ClassifierSettings(seed=0, trees=30)
    path = save_classifier(tmp_path / "c.phenotyper.zip", t1, y, feature_columns_for(t1), settings)
    labels2, a2, b2, kinds2 = _two_channel_cells(1)
    t2 = compute_features(labels2, {"ch0": a2, "ch1": b2})
    loaded = load_classifier(path)
    assert loaded.channels == ["gfp", "dapi"]
    with pytest.raises(ChannelMismatch):
        loaded.for_columns(t2.columns)
    mapped = loaded.for_columns(t2.columns, {"gfp": "ch0", "dapi": "ch1"})
    assert mapped.channels == ["ch0", "ch1"] and mapped.metadata["channel_map"] == {
        "gfp": "ch0",
        "dapi": "ch1",
    }
    pred = predict(mapped.train(), t2)["pheno_class"]
    assert (pred.to_numpy() == np.array([kinds2[int(lab)] for lab in t2["label"]])).all()
    # the same as the original model on the table renamed the other way
    back = rename_table_channels(t2, {"ch0": "gfp", "ch1": "dapi"})
    pd.testing.assert_frame_equal(predict(loaded.train(), back), predict(mapped.train(), t2))
    # swapped channels give other answers: the mapping really is applied
    swapped = predict(loaded.for_columns(t2.columns, {"gfp": "ch1", "dapi": "ch0"}).train(), t2)[
        "pheno_class"
    ]
    assert (swapped.to_numpy() != pred.to_numpy()).any()


def test_batch_pairs_a_one_channel_classifier_with_the_segmented_image(tmp_path):
    labels, a, _, kinds = _two_channel_cells(0)
    t1 = compute_features(labels, {"tubulin_P0037_T00001_Cgfp": a})
    y = [kinds[int(lab)] for lab in t1["label"]]
    one = save_classifier(
        tmp_path / "one.phenotyper.zip", t1, y, feature_columns_for(t1), ClassifierSettings()
    )
    model, classes, info = _load_model(PipelineSpec(classifier=FileRef(str(one))))
    assert classes == ("bright", "dim")
    assert info["channel_map"] == {"tubulin_P0037_T00001_Cgfp": "image"}
    assert "mean_intensity_image" in model.feature_names
    t2 = compute_features(labels, {"gfp": a, "dapi": a})
    two = save_classifier(
        tmp_path / "two.phenotyper.zip", t2, y, feature_columns_for(t2), ClassifierSettings()
    )
    with pytest.raises(
        ValueError, match=r"uses channels 'gfp', 'dapi', but a batch run measures one channel"
    ):
        _load_model(PipelineSpec(classifier=FileRef(str(two))))


def test_cellprofiler_columns_name_their_channel_and_classifiers_map_them(tmp_path):
    """Intensity_*, Location_* and Texture_*_<ch>_3_00_256 name a channel: a classifier
    trained on CellProfiler-set cells measured as "gfp" applies to a batch's "image"."""
    from napari_phenotyper.core.cellprofiler import compute_cellprofiler_features

    assert channel_of_column("Intensity_MeanIntensityEdge_dna") == "dna"
    assert channel_of_column("Location_CenterMassIntensity_X_my_gfp") == "my_gfp"
    assert channel_of_column("Texture_InfoMeas2_dna_3_01_256") == "dna"
    assert (
        channel_of_column("AreaShape_Area") is None
        and channel_of_column("Neighbors_PercentTouching_5") is None
    )
    labels, a, _, kinds = _two_channel_cells(0)
    t1 = compute_cellprofiler_features(labels, {"gfp": a}, groups=("shape", "intensity", "texture"))
    y = [kinds[int(lab)] for lab in t1["label"]]
    path = save_classifier(
        tmp_path / "cp.phenotyper.zip", t1, y, feature_columns_for(t1), ClassifierSettings()
    )
    assert load_classifier(path).channels == ["gfp"]
    model, classes, info = _load_model(
        PipelineSpec(classifier=FileRef(str(path)), feature_set="cellprofiler")
    )
    assert info["channel_map"] == {"gfp": "image"} and classes == ("bright", "dim")
    assert "Texture_Contrast_image_3_00_256" in model.feature_names
    t2 = compute_cellprofiler_features(labels, {"image": a}, groups=("shape", "intensity", "texture"))
    pred = predict(model, t2)["pheno_class"]
    assert (pred.to_numpy() == np.array(y)).mean() >= 0.9
