"""3-D features: against skimage.measure.regionprops in 3-D where it has the property, and
against analytic values (ball, spheroid) for the marching-cubes surface and sphericity."""

import numpy as np
import pandas as pd
import pytest
from skimage.feature import graycoprops
from skimage.measure import regionprops_table

from napari_phenotyper.core.features import INTENSITY_FEATURES, TEXTURE_FEATURES, compute_features
from napari_phenotyper.core.features3d import (
    SHAPE_FEATURES_3D,
    compute_features_3d,
    feature_columns_3d,
    iter_features_3d,
    texture_offsets_3d,
)
from napari_phenotyper.core.progress import run


def ellipsoid(semi_axes, spacing=(1.0, 1.0, 1.0), label=1):
    """A solid ellipsoid of physical semi-axes (z, y, x) sampled on voxels of ``spacing``."""
    sp, ax = np.asarray(spacing, float), np.asarray(semi_axes, float)
    n = (np.ceil(ax / sp) * 2 + 5).astype(int)
    g = np.indices(n).astype(float)
    c = (n - 1) / 2
    inside = sum(((g[i] - c[i]) * sp[i] / ax[i]) ** 2 for i in range(3)) <= 1
    return (inside * label).astype(np.int32)


@pytest.fixture(scope="module")
def cells():
    """Random touching blobs of different shapes, and two channels (one with NaNs)."""
    rng = np.random.default_rng(3)
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    shape = (24, 48, 52)
    blobs = ndi.gaussian_filter(rng.random(shape), (1.5, 3, 3)) > 0.5
    markers, _ = ndi.label(ndi.binary_erosion(blobs, iterations=2))
    labels = watershed(-ndi.distance_transform_edt(blobs), markers, mask=blobs).astype(np.int32)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < 30] = 0  # regionprops' convex hull fails on specks
    labels[labels == 3] = 0  # ids need not be consecutive
    a = rng.normal(100, 20, shape).astype(np.float32) + 50 * (labels > 0)
    b = rng.integers(0, 4000, shape).astype(np.uint16)
    return labels, {"a": a, "b": b}


SPACINGS = [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (3.0, 0.5, 0.5)]


@pytest.mark.parametrize("spacing", SPACINGS)
def test_shape_matches_regionprops_3d(cells, spacing):
    labels, chans = cells
    df = compute_features_3d(labels, chans, spacing=spacing)
    rp = regionprops_table(
        labels,
        spacing=spacing,
        properties=(
            "label",
            "area",
            "equivalent_diameter_area",
            "axis_major_length",
            "axis_minor_length",
            "solidity",
            "extent",
            "centroid",
            "bbox",
        ),
    )
    assert len(df) > 10
    np.testing.assert_array_equal(df["label"], rp["label"])
    for ours, theirs in [
        ("volume", "area"),
        ("equivalent_diameter", "equivalent_diameter_area"),
        ("major_axis_length", "axis_major_length"),
        ("minor_axis_length", "axis_minor_length"),
        ("solidity", "solidity"),
        ("extent", "extent"),
    ]:
        np.testing.assert_allclose(df[ours], rp[theirs], rtol=1e-9, atol=1e-9, err_msg=ours)
    for i, axis in enumerate("zyx"):  # centroids and boxes in voxels (regionprops: physical)
        np.testing.assert_allclose(df[f"centroid_{axis}"] * spacing[i], rp[f"centroid-{i}"], rtol=1e-12)
        np.testing.assert_array_equal(df[f"bbox_min_{axis}"], rp[f"bbox-{i}"])
        np.testing.assert_array_equal(df[f"bbox_max_{axis}"], rp[f"bbox-{i + 3}"])
    assert (df["major_axis_length"] >= df["intermediate_axis_length"]).all()
    assert (df["intermediate_axis_length"] >= df["minor_axis_length"]).all()


def test_intensity_matches_regionprops_and_numpy(cells):
    labels, chans = cells
    df = compute_features_3d(labels, chans, spacing=(2, 1, 1))
    for name, img in chans.items():
        rp = regionprops_table(
            labels,
            img,
            properties=("label", "intensity_mean", "intensity_max", "intensity_min", "intensity_std"),
        )
        np.testing.assert_allclose(df[f"mean_intensity_{name}"], rp["intensity_mean"], rtol=1e-9)
        np.testing.assert_allclose(df[f"max_intensity_{name}"], rp["intensity_max"])
        np.testing.assert_allclose(df[f"min_intensity_{name}"], rp["intensity_min"])
        np.testing.assert_allclose(df[f"std_intensity_{name}"], rp["intensity_std"], rtol=1e-9)
        for row in df.itertuples():
            v = img[labels == row.label].astype(np.float64)
            q25, med, q75 = np.quantile(v, (0.25, 0.5, 0.75))
            assert getattr(row, f"median_intensity_{name}") == pytest.approx(med)
            assert getattr(row, f"q25_intensity_{name}") == pytest.approx(q25)
            assert getattr(row, f"q75_intensity_{name}") == pytest.approx(q75)
            assert getattr(row, f"integrated_intensity_{name}") == pytest.approx(v.sum())
            zz, yy, xx = np.nonzero(labels == row.label)
            w = np.array([(c * v).sum() / v.sum() - c.mean() for c in (zz, yy, xx)]) * (2, 1, 1)
            assert getattr(row, f"mass_displacement_{name}") == pytest.approx(np.hypot.reduce(w), abs=1e-9)


def test_nan_voxels_make_order_statistics_nan():
    labels = np.zeros((4, 6, 6), np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[1:3, 3:5, 3:5] = 2
    img = np.ones(labels.shape)
    img[1, 1, 1] = np.nan
    df = compute_features_3d(labels, img, groups=("intensity",))
    assert np.isnan(df["median_intensity_intensity"][0]) and np.isnan(df["mean_intensity_intensity"][0])
    assert df["median_intensity_intensity"][1] == 1.0


@pytest.mark.parametrize(
    ("semi_axes", "spacing"),
    [((10, 10, 10), (1, 1, 1)), ((10, 10, 10), (2, 1, 1)), ((15, 15, 15), (1, 1, 1))],
)
def test_ball_surface_and_sphericity_are_analytic(semi_axes, spacing):
    r = semi_axes[0]
    row = compute_features_3d(ellipsoid(semi_axes, spacing), spacing=spacing).iloc[0]
    assert row["volume"] == pytest.approx(4 / 3 * np.pi * r**3, rel=0.03)
    assert row["equivalent_diameter"] == pytest.approx(2 * r, rel=0.01)
    assert row["surface_area"] == pytest.approx(4 * np.pi * r**2, rel=0.02)
    assert 0.96 <= row["sphericity"] <= 1.0
    for axis in ("major", "intermediate", "minor"):
        assert row[f"{axis}_axis_length"] == pytest.approx(2 * r, rel=0.02)


@pytest.mark.parametrize("spacing", [(1, 1, 1), (2, 1, 1)])
def test_prolate_spheroid_surface_sphericity_and_axes(spacing):
    a, b = 16.0, 8.0  # semi-axes: a along z, b in the plane
    row = compute_features_3d(ellipsoid((a, b, b), spacing), spacing=spacing).iloc[0]
    e = np.sqrt(1 - b**2 / a**2)
    area = 2 * np.pi * b**2 * (1 + a / (b * e) * np.arcsin(e))
    sphericity = np.cbrt(np.pi) * np.cbrt(6 * 4 / 3 * np.pi * a * b * b) ** 2 / area
    assert row["surface_area"] == pytest.approx(area, rel=0.03)
    assert row["sphericity"] == pytest.approx(sphericity, rel=0.05)
    assert row["major_axis_length"] == pytest.approx(2 * a, rel=0.02)
    assert row["intermediate_axis_length"] == pytest.approx(2 * b, rel=0.02)
    assert row["minor_axis_length"] == pytest.approx(2 * b, rel=0.03)


def test_binary_mask_surface_would_be_too_large():
    """Why the mask is smoothed: the staircase mesh of the binary ball is ~9 % too large."""
    from skimage.measure import marching_cubes, mesh_surface_area

    ball = ellipsoid((10, 10, 10))
    verts, faces, _, _ = marching_cubes(np.pad(ball, 1).astype(float), 0.5)
    assert mesh_surface_area(verts, faces) > 1.05 * 4 * np.pi * 100


def test_neighbours_in_26_connectivity():
    labels = np.zeros((5, 5, 9), np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[3:5, 3:5, 3:5] = 2  # touches 1 only at a corner (26-connectivity)
    labels[1:3, 1:3, 3:5] = 3  # face contact with 1
    labels[0, 0, 7:9] = 4  # alone
    df = compute_features_3d(labels, groups=("neighbors",))
    assert dict(zip(df["label"], df["n_neighbors"], strict=True)) == {1: 2, 2: 2, 3: 2, 4: 0}


def test_texture_matches_graycoprops_of_the_3d_cooccurrence(cells):
    labels, chans = cells
    levels = 8
    img = chans["b"]
    df = compute_features_3d(labels, {"b": img}, groups=("texture",), texture_levels=levels)
    q = np.clip(
        (img.astype(np.int64) - int(img.min())) * levels // (int(img.max()) - int(img.min())), 0, levels - 1
    )
    offsets = texture_offsets_3d([1])
    assert len(offsets) == 13 and len(set(offsets)) == 13
    for row in list(df.itertuples())[:4]:
        lab = row.label
        feats = {f: [] for f in TEXTURE_FEATURES}
        for off in offsets:
            P = np.zeros((levels, levels))
            for z, y, x in zip(*np.nonzero(labels == lab), strict=True):
                z2, y2, x2 = z + off[0], y + off[1], x + off[2]
                inside = 0 <= z2 < labels.shape[0] and 0 <= y2 < labels.shape[1] and 0 <= x2 < labels.shape[2]
                if inside and labels[z2, y2, x2] == lab:
                    P[q[z, y, x], q[z2, y2, x2]] += 1
            P = P + P.T
            if P.sum() == 0:
                continue
            P4 = (P / P.sum())[:, :, None, None]
            for f, prop in [
                ("haralick_contrast", "contrast"),
                ("glcm_dissimilarity", "dissimilarity"),
                ("haralick_homogeneity", "homogeneity"),
                ("glcm_energy", "energy"),
                ("haralick_correlation", "correlation"),
                ("haralick_asm", "ASM"),
                ("haralick_entropy", "entropy"),
            ]:
                feats[f].append(float(graycoprops(P4, prop)[0, 0]))
        for f in TEXTURE_FEATURES:
            assert getattr(row, f"{f}_b") == pytest.approx(np.mean(feats[f]), rel=1e-9, abs=1e-12), f


def test_columns_dtypes_progress_and_empty(cells):
    labels, chans = cells
    seen = []
    df = run(iter_features_3d(labels, chans), seen.append)
    assert list(df.columns) == feature_columns_3d(["a", "b"])
    assert list(df.columns[: 1 + len(SHAPE_FEATURES_3D)]) == ["label", *SHAPE_FEATURES_3D]
    assert df["label"].dtype == np.int64 and df["n_neighbors"].dtype == np.int64
    assert seen[-1].step == seen[-1].total
    assert {f"{f}_a" for f in INTENSITY_FEATURES} <= set(df.columns)
    empty = compute_features_3d(np.zeros((3, 4, 4), np.int32), chans and None)
    assert len(empty) == 0 and list(empty.columns) == feature_columns_3d([])
    pd.testing.assert_series_equal(
        empty.dtypes, compute_features_3d(labels).dtypes, check_names=False, check_index=True
    )


def test_compute_features_dispatches_3d_labels(cells):
    labels, chans = cells
    pd.testing.assert_frame_equal(compute_features(labels, chans), compute_features_3d(labels, chans))


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.zeros((4, 4), int), {}, "3-D"),
        (np.zeros((2, 4, 4), float), {}, "integer"),
        (-np.ones((2, 4, 4), int), {}, "non-negative"),
        (np.zeros((2, 4, 4), int), {"intensities": np.zeros((2, 4, 5))}, "shape"),
        (np.zeros((2, 4, 4), int), {"groups": ("zernike",)}, "2-D only"),
        (np.zeros((2, 4, 4), int), {"groups": ("colour",)}, "Unknown"),
        (np.zeros((2, 4, 4), int), {"spacing": (1, 1)}, "spacing"),
        (np.zeros((2, 4, 4), int), {"texture_levels": 1}, "texture_levels"),
        (np.zeros((2, 4, 4), int), {"texture_distances": (0,)}, "texture_distances"),
    ],
)
def test_bad_input_raises(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_features_3d(labels, **kwargs)


def test_specks_and_flat_cells_are_measured():
    labels = np.zeros((3, 8, 8), np.int32)
    labels[1, 1, 1] = 1  # one voxel
    labels[1, 3:7, 3:7] = 2  # one plane thick
    df = compute_features_3d(labels)
    assert df["volume"].tolist() == [1.0, 16.0]
    assert df["solidity"].tolist() == [1.0, 1.0]
    assert np.isfinite(df["surface_area"]).all() and (df["sphericity"] <= 1.0).all()
