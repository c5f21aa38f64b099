import numpy as np
import pytest
from skimage.draw import disk

from napari_phenotyper.core.pipeline import (
    MeasureParams,
    iter_measure,
    iter_segment_and_measure,
    select_channel,
)
from napari_phenotyper.core.progress import run
from napari_phenotyper.core.segment import SegmentationError
from napari_phenotyper.core.segment.classical import ClassicalParams


def nuclei(shape=(128, 128), centres=((30, 30), (30, 90), (90, 60)), r=10, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 5, shape)
    for c in centres:
        img[disk(c, r, shape=shape)] += 400
    return img.astype(np.float32)


def test_segment_and_measure_2d():
    seen = []
    res = run(iter_segment_and_measure(nuclei(), "classical", ClassicalParams(diameter=20)), seen.append)
    assert res.labels.dtype == np.uint32 and res.labels.max() == 3
    assert list(res.features["label"]) == [1, 2, 3]
    assert res.features.columns[0] == "label"
    np.testing.assert_allclose(res.features["area"], np.pi * 10**2, rtol=0.15)
    assert "mean_intensity_image" in res.features.columns
    prov = res.provenance
    assert prov["backend"] == "classical" and prov["device"] == "CPU" and prov["n_cells"] == 3
    assert prov["params"]["diameter"] == 20
    assert "numpy" in prov["versions"]
    fr = [p.fraction for p in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0


def test_stack_is_segmented_and_measured_plane_by_plane():
    stack = np.stack([nuclei(seed=1), nuclei(centres=((60, 60),), seed=2)])
    res = run(iter_segment_and_measure(stack, "classical", ClassicalParams(diameter=20)))
    assert res.labels.shape == stack.shape
    assert len(np.unique(res.labels[0])) - 1 == 3 and len(np.unique(res.labels[1])) - 1 == 1
    # ids unique over the stack; the table says which plane each cell is in
    assert res.features["label"].is_unique and len(res.features) == 4
    assert list(res.features.columns[:2]) == ["label", "axis0"]
    assert res.features.groupby("axis0").size().to_dict() == {0: 3, 1: 1}


def test_measure_named_channels_and_shape_mismatch():
    labels = np.zeros((20, 20), np.uint32)
    labels[5:10, 5:10] = 1
    df = run(
        iter_measure(
            labels,
            {"dapi": np.ones((20, 20)), "gfp": np.full((20, 20), 3.0)},
            MeasureParams(groups=("intensity",)),
        )
    )
    assert df.loc[0, "mean_intensity_dapi"] == 1.0 and df.loc[0, "mean_intensity_gfp"] == 3.0
    with pytest.raises(ValueError, match="same size"):
        run(iter_measure(labels, {"dapi": np.ones((10, 10))}))


def test_measure_params_validation():
    with pytest.raises(ValueError, match="Unknown feature group"):
        MeasureParams(groups=("shape", "colour"))


def test_select_channel():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 200
    assert select_channel(rgb, -1, 1).max() == 200
    lum = select_channel(rgb, -1, None)
    assert lum.shape == (4, 5) and lum.max() == pytest.approx(0.7154 * 200, rel=1e-4)
    with pytest.raises(SegmentationError, match="has 3 channels"):
        select_channel(rgb, -1, 3)


def test_unknown_segmenter_is_a_clear_error():
    with pytest.raises(KeyError, match="choose one of classical"):
        run(iter_segment_and_measure(nuclei(), "no-such-thing"))


def test_empty_stack_has_typed_columns():
    labels = np.zeros((0, 8, 8), np.uint32)
    df = run(iter_measure(labels, {"dapi": np.zeros((0, 8, 8))}))
    assert len(df) == 0 and list(df.columns[:2]) == ["label", "axis0"]
    assert df["label"].dtype == np.int64 and df["area"].dtype == np.float64


def test_channel_names_are_column_safe():
    labels = np.zeros((8, 8), np.uint32)
    labels[2:5, 2:5] = 1
    df = run(iter_measure(labels, {"DAPI (405 nm)": np.ones((8, 8))}, MeasureParams(groups=("intensity",))))
    assert "mean_intensity_DAPI_405_nm" in df.columns
    with pytest.raises(ValueError, match="both named 'a_b'"):
        run(iter_measure(labels, {"a b": np.ones((8, 8)), "a-b": np.ones((8, 8))}))
