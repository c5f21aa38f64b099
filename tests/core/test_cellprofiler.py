"""The CellProfiler-compatible feature set, column by column against cp_measure.

cp_measure is CellProfiler 4's measurement code as a library (a test-only dependency).
Every column must agree to rounding except where the docs say otherwise:

* ``AreaShape_Zernike_*``: CellProfiler counts a pixel on the enclosing circle or not
  depending on floating-point rounding of its ``r^2``; so a score may differ by at most
  those pixels' contributions, ``(pixels on the circle) / (pi radius^2)``;
* ``Neighbors_*ClosestObjectNumber_*``: cp_measure reports the object itself (its
  distance matrix keeps the diagonal); CellProfiler, and this package, the nearest
  other object: checked against the centroids here;
* ``Neighbors_*_Expanded`` but ``PercentTouching``: cp_measure's *Expand until adjacent*
  counts the original objects as neighbours and measures distances from the expanded
  objects' centroids; CellProfiler (and this package) uses the expanded objects for both
  sides and the objects' own centroids: checked by an independent computation here.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from skimage.io import imread
from skimage.segmentation import relabel_sequential

from napari_phenotyper.core.cellprofiler import (
    ALL_NEIGHBOR_METHODS,
    AREASHAPE_FEATURES,
    CP_GROUPS,
    INTENSITY_FEATURES,
    TEXTURE_FEATURES,
    cellprofiler_columns,
    compute_cellprofiler_features,
    iter_cellprofiler_features,
)
from napari_phenotyper.core.progress import Progress

cp_measure = pytest.importorskip("cp_measure", reason="cp_measure (test extra) compares the CellProfiler set")

#: Relative tolerance for every column but the two families above.
RTOL = 1e-9
ATOL = 1e-12


def _reference(labels: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """cp_measure's columns under our names (one channel called ``ch``)."""
    from cp_measure.core import measureobjectintensity, measureobjectsizeshape, measuretexture
    from cp_measure.multimask.measureobjectneighbors import measureobjectneighbors

    ref: dict[str, np.ndarray] = {}
    for fn in (
        partial(measureobjectsizeshape.get_sizeshape, calculate_advanced=False, new_features=False),
        measureobjectsizeshape.get_zernike,
        measureobjectsizeshape.get_feret,
    ):
        ref |= {f"AreaShape_{k}": np.asarray(v, float) for k, v in fn(labels, None).items()}
    for k, v in measureobjectintensity.get_intensity(labels, pixels, legacy=True).items():
        ref[f"{k}_ch"] = np.asarray(v, float)
    for k, v in measuretexture.get_texture(labels, pixels).items():
        name, scale, d, levels = k.rsplit("_", 3)
        ref[f"Texture_{name}_ch_{scale}_{d}_{levels}"] = np.asarray(v, float)
    ref |= measureobjectneighbors(labels, labels, distance_method="Adjacent")
    ref |= measureobjectneighbors(labels, labels, distance_method="Expand until adjacent")
    ref |= measureobjectneighbors(labels, labels, distance_method="Within a specified distance", distance=5)
    return {k: np.asarray(v, float) for k, v in ref.items()}


def _compare(table: pd.DataFrame, ref: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Assert every column agrees; return the largest relative difference per column."""
    from centrosome.zernike import minimum_enclosing_circle

    centres, radius = minimum_enclosing_circle(labels, np.arange(1, len(table) + 1))
    # pixels on each object's enclosing circle: CellProfiler may count them or not
    rr, cc = np.nonzero(labels)
    k = labels[rr, cc] - 1
    r2 = ((rr - centres[k, 0]) ** 2 + (cc - centres[k, 1]) ** 2) / radius[k] ** 2
    on_circle = np.bincount(k, np.abs(r2 - 1) < 1e-9, minlength=len(table))
    worst: dict[str, float] = {}
    for col in table.columns:
        if col == "label" or "ClosestObjectNumber" in col:
            continue
        if col.endswith("_Expanded") and "PercentTouching" not in col:
            continue  # cp_measure's Expand differs from CellProfiler's: checked in _check_expanded
        assert col in ref, f"{col} has no cp_measure counterpart"
        a = table[col].to_numpy(float)
        b = ref[col]
        assert a.shape == b.shape, col
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=col)
        ok = ~np.isnan(a)
        if "_Zernike_" in col:
            bound = (on_circle + 1e-6) / (np.pi * radius**2)
            assert (np.abs(a - b)[ok] <= bound[ok]).all(), (col, float(np.max(np.abs(a - b)[ok] / bound[ok])))
        else:
            np.testing.assert_allclose(a[ok], b[ok], rtol=RTOL, atol=ATOL, err_msg=col)
        worst[col] = float(np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-12), initial=0.0))
    return worst


def _closest_numbers(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label ids of the nearest and second-nearest other object, by centroid."""
    from scipy import ndimage as ndi

    c = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids))
    d = np.hypot(c[:, None, 0] - c[None, :, 0], c[:, None, 1] - c[None, :, 1])
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    return ids[order[:, 0]], ids[order[:, 1]]


def _check_expanded(labels: np.ndarray, table: pd.DataFrame) -> None:
    """*Expand until adjacent* as CellProfiler's MeasureObjectNeighbors does it: the objects
    grown into the background until they meet, neighbours = other expanded objects within a
    3x3 cross of the expanded object; the closest objects by the objects' own centroids
    (cp_measure 0.3 takes the expanded objects' centroids and counts the original objects
    as neighbours, which CellProfiler does not). PercentTouching is compared with cp_measure."""
    from scipy import ndimage as ndi

    iy, ix = ndi.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    grown = labels[iy, ix]
    cross = ndi.generate_binary_structure(2, 1)
    counts = []
    for k in table["label"]:
        near = np.unique(grown[ndi.binary_dilation(grown == k, cross)])
        counts.append(len(set(near.tolist()) - {0, int(k)}))
    np.testing.assert_array_equal(table["Neighbors_NumberOfNeighbors_Expanded"], counts)
    for f in (
        "FirstClosestObjectNumber",
        "FirstClosestDistance",
        "SecondClosestDistance",
        "AngleBetweenNeighbors",
    ):
        np.testing.assert_array_equal(table[f"Neighbors_{f}_Expanded"], table[f"Neighbors_{f}_Adjacent"])


def _check_image(labels: np.ndarray, image: np.ndarray) -> dict[str, float]:
    labels = relabel_sequential(labels.astype(np.int32))[0]  # cp_measure wants 1..N
    table = compute_cellprofiler_features(labels, {"ch": image}, neighbor_methods=ALL_NEIGHBOR_METHODS)
    assert list(table.columns) == cellprofiler_columns(["ch"], neighbor_methods=ALL_NEIGHBOR_METHODS)
    pixels = image.astype(np.float64) / np.iinfo(image.dtype).max
    worst = _compare(table, _reference(labels, pixels), labels)
    _check_expanded(labels, table)
    first, second = _closest_numbers(labels, table["label"].to_numpy())
    for suffix in ("Adjacent", "5"):
        np.testing.assert_array_equal(table[f"Neighbors_FirstClosestObjectNumber_{suffix}"], first)
        np.testing.assert_array_equal(table[f"Neighbors_SecondClosestObjectNumber_{suffix}"], second)
    return worst


def _coelho(shared_data, name="gnf/dna-0"):
    root = shared_data / "coelho2009_nuclei"
    image = imread(root / "images" / f"{name}.png")
    image = image[..., 0] if image.ndim == 3 else image
    return imread(root / "labels" / f"{name}.png"), np.ascontiguousarray(image)


def test_matches_cp_measure_on_coelho_nuclei(shared_data):
    labels, image = _coelho(shared_data)
    worst = _check_image(labels, image)
    # all but label, the 6 object numbers and 4 more Expanded columns (checked apart)
    assert len(worst) == len(cellprofiler_columns(["ch"], neighbor_methods=ALL_NEIGHBOR_METHODS)) - 11


def test_matches_cp_measure_on_touching_nuclei_in_uint16(shared_data):
    """A DSB 2018 image with 329 nuclei, many touching (neighbours, edges, percent
    touching), its pixels as uint16 (divided by 65535, as CellProfiler loads them)."""
    root = shared_data / "dsb2018_dev"
    stem = "432f367a4c5b5674de2e2977744d10289a064e5704b21af6607b4975be47c580"
    labels = imread(root / "masks" / f"{stem}.tif")
    rgb = imread(root / "images" / f"{stem}.png")
    image = (rgb[..., :3].mean(axis=2) * 257).astype(np.uint16)
    assert labels.max() > 300
    _check_image(labels, image)


def test_non_contiguous_ids_give_the_same_values_and_report_label_ids(shared_data):
    labels, image = _coelho(shared_data, "ic100/dna-0")
    labels = relabel_sequential(labels.astype(np.int32))[0]
    sparse = np.where(labels > 0, labels * 7 + 100, 0)
    a = compute_cellprofiler_features(labels, {"ch": image})
    b = compute_cellprofiler_features(sparse, {"ch": image})
    np.testing.assert_array_equal(b["label"], a["label"] * 7 + 100)
    for col in a.columns:
        if col == "label":
            continue
        if "ClosestObjectNumber" in col:
            np.testing.assert_array_equal(b[col], a[col] * 7 + 100)
        else:
            np.testing.assert_allclose(b[col], a[col], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=col)


def test_non_finite_pixels_are_left_out():
    labels = np.zeros((40, 40), np.int32)
    labels[5:20, 5:20] = 1
    labels[22:38, 10:30] = 2
    rng = np.random.default_rng(0)
    image = rng.random((40, 40))
    holed = image.copy()
    holed[10, 10] = np.nan
    holed[30, 20] = np.inf
    cut = labels.copy()
    cut[10, 10] = cut[30, 20] = 0
    got = compute_cellprofiler_features(labels, {"ch": holed}, groups=("intensity",))
    want = compute_cellprofiler_features(cut, {"ch": image}, groups=("intensity",))
    for f in (
        "IntegratedIntensity",
        "MeanIntensity",
        "StdIntensity",
        "MinIntensity",
        "MaxIntensity",
        "MedianIntensity",
        "MADIntensity",
        "LowerQuartileIntensity",
        "UpperQuartileIntensity",
        "MassDisplacement",
    ):
        np.testing.assert_allclose(got[f"Intensity_{f}_ch"], want[f"Intensity_{f}_ch"], rtol=1e-12, err_msg=f)
    tex = compute_cellprofiler_features(labels, {"ch": holed}, groups=("texture",))
    assert np.isfinite(tex.filter(like="Texture_").to_numpy()).all()


def test_cellprofiler_quartiles_and_edges_by_hand():
    """A 3 x 4 object of values 1..12 (uint8): CellProfiler's n*q quantile rule and the
    inner boundary (4-neighbours of another value inside the image)."""
    labels = np.zeros((5, 6), np.int32)
    labels[1:4, 1:5] = 1
    image = np.zeros((5, 6), np.uint8)
    image[1:4, 1:5] = np.arange(1, 13).reshape(3, 4)
    t = compute_cellprofiler_features(labels, {"ch": image}, groups=("intensity",))
    v = np.arange(1, 13) / 255.0
    # n = 12: q1 at position 3 (value 4), median at 6 (value 7), q3 at 9 (value 10)
    assert t["Intensity_LowerQuartileIntensity_ch"][0] == pytest.approx(4 / 255)
    assert t["Intensity_MedianIntensity_ch"][0] == pytest.approx(7 / 255)
    assert t["Intensity_UpperQuartileIntensity_ch"][0] == pytest.approx(10 / 255)
    assert t["Intensity_IntegratedIntensity_ch"][0] == pytest.approx(v.sum())
    edge = np.array([1, 2, 3, 4, 5, 8, 9, 10, 11, 12]) / 255.0  # all but the two inner pixels 6, 7
    assert t["Intensity_IntegratedIntensityEdge_ch"][0] == pytest.approx(edge.sum())
    assert t["Intensity_MinIntensityEdge_ch"][0] == pytest.approx(1 / 255)
    assert t["Location_MaxIntensity_X_ch"][0] == 4 and t["Location_MaxIntensity_Y_ch"][0] == 3


def test_empty_labels_and_columns():
    t = compute_cellprofiler_features(np.zeros((8, 8), np.int32), {"dna": np.zeros((8, 8))})
    assert len(t) == 0 and list(t.columns) == cellprofiler_columns(["dna"])
    cols = cellprofiler_columns(["dna"])
    assert cols[1 : 1 + len(AREASHAPE_FEATURES)] == [f"AreaShape_{f}" for f in AREASHAPE_FEATURES]
    assert "AreaShape_Zernike_9_9" in cols and "Intensity_MADIntensity_dna" in cols
    assert "Texture_InfoMeas2_dna_3_03_256" in cols and "Neighbors_PercentTouching_Adjacent" in cols
    assert "Neighbors_AngleBetweenNeighbors_5" in cols
    assert len([c for c in cols if c.startswith("Texture_")]) == 4 * len(TEXTURE_FEATURES)
    assert len([c for c in cols if c.startswith("Intensity_")]) == len(INTENSITY_FEATURES)


def test_bad_input_is_refused_with_a_message():
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:5] = 1
    with pytest.raises(ValueError, match="Unknown feature group"):
        compute_cellprofiler_features(lab, groups=("colour",))
    with pytest.raises(ValueError, match="texture_levels"):
        compute_cellprofiler_features(lab, np.ones((8, 8)), texture_levels=300)
    with pytest.raises(ValueError, match="shape"):
        compute_cellprofiler_features(lab, np.ones((9, 8)))
    with pytest.raises(ValueError, match="neighbour method"):
        compute_cellprofiler_features(lab, neighbor_methods=("voronoi",))
    # the default methods: adjacent and within 5 px (Expand until adjacent when asked for)
    cols = cellprofiler_columns([], ("neighbors",))
    assert "Neighbors_NumberOfNeighbors_Adjacent" in cols and "Neighbors_NumberOfNeighbors_5" in cols
    assert not any(c.endswith("_Expanded") for c in cols)


def test_progress_is_reported_and_groups_give_their_columns_only():
    lab = np.zeros((30, 30), np.int32)
    lab[3:12, 3:12] = 1
    lab[15:28, 4:20] = 2
    gen = iter_cellprofiler_features(lab, {"a": np.ones((30, 30)), "b": np.ones((30, 30))})
    records = []
    try:
        while True:
            records.append(next(gen))
    except StopIteration as stop:
        table = stop.value
    assert all(isinstance(r, Progress) for r in records) and records[-1].step == records[-1].total
    assert [r.step for r in records] == sorted(r.step for r in records)
    assert len(table) == 2
    for group in CP_GROUPS:
        t = compute_cellprofiler_features(lab, {"a": np.ones((30, 30))}, groups=(group,))
        assert list(t.columns) == cellprofiler_columns(["a"], (group,))


def test_pipeline_and_classifier_use_the_cellprofiler_set(shared_data):
    from napari_phenotyper.core.classify.model import _group_of, feature_columns_for
    from napari_phenotyper.core.pipeline import MeasureParams, iter_measure
    from napari_phenotyper.core.progress import run

    labels, image = _coelho(shared_data)
    table = run(iter_measure(labels, {"dna": image}, MeasureParams(feature_set="cellprofiler")))
    # the viewer's position columns come first, then CellProfiler's
    assert list(table.columns[:7]) == [
        "label",
        "centroid_y",
        "centroid_x",
        "bbox_min_y",
        "bbox_min_x",
        "bbox_max_y",
        "bbox_max_x",
    ]
    np.testing.assert_allclose(table["centroid_x"], table["AreaShape_Center_X"])
    assert (
        "Texture_Contrast_dna_3_00_256" in table and "AreaShape_Zernike_0_0" not in table
    )  # zernike is opt-in
    feats = feature_columns_for(table)
    assert "AreaShape_Area" in feats and "Intensity_MeanIntensity_dna" in feats
    for position in (
        "AreaShape_Center_X",
        "AreaShape_BoundingBoxMinimum_Y",
        "Location_MaxIntensity_X_dna",
        "Neighbors_FirstClosestObjectNumber_5",
        "centroid_y",
    ):
        assert position not in feats
    assert _group_of("Texture_Contrast_dna_3_00_256") == "texture"
    assert _group_of("Intensity_MeanIntensity_dna") == "intensity"
    assert _group_of("Neighbors_PercentTouching_Adjacent") == "neighbors"
    assert _group_of("AreaShape_Zernike_2_0") == "shape"


def test_per_cell_loops_report_progress_on_many_cells(monkeypatch):
    """The distance transforms and enclosing circles go cell by cell: they report progress
    (and so can be cancelled) every few thousand cells, in both sets."""
    from napari_phenotyper.core import geometry
    from napari_phenotyper.core.features import iter_features

    monkeypatch.setattr(geometry, "EVERY", 10)
    lab = np.zeros((60, 60), np.int32)
    for k in range(36):
        r, c = divmod(k, 6)
        lab[r * 10 + 2 : r * 10 + 8, c * 10 + 2 : c * 10 + 8] = k + 1
    for gen in (
        iter_cellprofiler_features(lab, groups=("shape", "zernike")),
        iter_features(lab, groups=("zernike",)),
    ):
        messages = []
        table = None
        while table is None:
            try:
                messages.append(next(gen).message)
            except StopIteration as stop:
                table = stop.value
        assert len(table) == 36
        assert any("30/36 objects" in m for m in messages), messages


@pytest.mark.parametrize("top", [40, 20000])
def test_radii_medians_are_numpys(top):
    """MedianRadius per label from the squared distances equals ``np.median`` of the
    distances, bit for bit, by the histogram and (large distances) by sorting; and the
    radii of touching, multi-part labels equal one distance transform per label."""
    from scipy.ndimage import distance_transform_edt

    from napari_phenotyper.core import cellprofiler as cp

    rng = np.random.default_rng(top)
    counts = rng.integers(1, 60, 300)
    d2 = rng.integers(1, top, int(counts.sum()))
    got = cp._median_of_squares(d2, counts)
    starts = np.cumsum(counts) - counts
    want = [np.median(np.sqrt(d2[s : s + c].astype(float))) for s, c in zip(starts, counts, strict=True)]
    np.testing.assert_array_equal(got, want)
    lab = np.zeros((90, 100), np.int32)
    for k in range(1, 80):
        y, x = rng.integers(0, 90), rng.integers(0, 100)
        lab[y : y + rng.integers(1, 25), x : x + rng.integers(1, 25)] = k
    lab = relabel_sequential(lab)[0]
    table = compute_cellprofiler_features(lab, groups=("shape",))
    for i, k in enumerate(table["label"]):
        ys, xs = np.nonzero(lab == k)
        mask = np.pad(lab[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == k, 1)
        inside = distance_transform_edt(mask)[mask]
        assert table["AreaShape_MaximumRadius"][i] == inside.max()
        assert table["AreaShape_MeanRadius"][i] == inside.mean()
        assert table["AreaShape_MedianRadius"][i] == np.median(inside)
