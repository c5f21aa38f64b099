"""Tests of napari_phenotyper.core.features.

Exact expectations on synthetic images, agreement with ``skimage.measure.regionprops``
and ``skimage.feature.graycoprops``, and one real image from the shared data.

Tolerances: where our definition is the same computation in another order (sums,
moments, quantiles) we compare at ``rtol=1e-9``; the exceptions are stated where
they are used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage import draw
from skimage.data import binary_blobs
from skimage.feature import graycomatrix, graycoprops
from skimage.io import imread
from skimage.measure import label as cc_label
from skimage.measure import regionprops, regionprops_table

from napari_phenotyper.core import features as features_module
from napari_phenotyper.core.features import (
    DEFAULT_FEATURE_GROUPS,
    FEATURE_GROUPS,
    INTENSITY_FEATURES,
    SHAPE_FEATURES,
    TEXTURE_FEATURES,
    ZERNIKE_FEATURES,
    compute_features,
    feature_columns,
    iter_features,
)
from napari_phenotyper.core.progress import Progress, run

RTOL = 1e-9
ATOL = 1e-9

# our column -> regionprops_table column
RP_SHAPE = {
    "centroid_y": "centroid-0",
    "centroid_x": "centroid-1",
    "bbox_min_y": "bbox-0",
    "bbox_min_x": "bbox-1",
    "bbox_max_y": "bbox-2",
    "bbox_max_x": "bbox-3",
    "area": "area",
    "perimeter": "perimeter",
    "equivalent_diameter": "equivalent_diameter_area",
    "major_axis_length": "axis_major_length",
    "minor_axis_length": "axis_minor_length",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "extent": "extent",
    "euler_number": "euler_number",
}
RP_INTENSITY = {
    "mean_intensity": "intensity_mean",
    "std_intensity": "intensity_std",
    "min_intensity": "intensity_min",
    "max_intensity": "intensity_max",
    "median_intensity": "intensity_median",
    "q25_intensity": "q25",
    "q75_intensity": "q75",
}


def q25(mask, image):
    return np.quantile(image[mask], 0.25)


def q75(mask, image):
    return np.quantile(image[mask], 0.75)


def assert_matches_regionprops(labels, image=None, spacing=None):
    """Compare every shape (and intensity) column with regionprops_table."""
    props = ["label", "centroid", "bbox", "orientation", *RP_SHAPE.values()]
    props = list(dict.fromkeys(p.split("-")[0] for p in props))
    extra = ()
    if image is not None:
        props += ["intensity_mean", "intensity_std", "intensity_min", "intensity_max"]
        props += ["intensity_median", "centroid_weighted"]
        extra = (q25, q75)
    rp = regionprops_table(labels, image, properties=props, extra_properties=extra, spacing=spacing)
    channels = None if image is None else {"c": image}
    groups = ("shape",) if image is None else ("shape", "intensity")
    df = compute_features(labels, channels, groups=groups, spacing=spacing)
    np.testing.assert_array_equal(df["label"], rp["label"])
    for ours, theirs in RP_SHAPE.items():
        np.testing.assert_allclose(df[ours], rp[theirs], rtol=RTOL, atol=ATOL, err_msg=ours)
    # Orientation: objects whose second moment mu11 is zero have orientation +-pi/2,
    # and which sign comes out depends on rounding noise in regionprops' moments;
    # compare modulo pi.
    d = np.angle(np.exp(2j * (df["orientation"].to_numpy() - np.asarray(rp["orientation"]))))
    np.testing.assert_allclose(d, 0, atol=1e-7)
    if image is not None:
        for ours, theirs in RP_INTENSITY.items():
            np.testing.assert_allclose(df[f"{ours}_c"], rp[theirs], rtol=RTOL, atol=ATOL, err_msg=ours)
        # regionprops gets the weighted centroid from raw moments (large numbers that
        # cancel): agreement to ~1e-10 px, hence the absolute tolerance.
        md = np.hypot(
            rp["centroid_weighted-0"] - rp["centroid-0"], rp["centroid_weighted-1"] - rp["centroid-1"]
        )
        np.testing.assert_allclose(df["mass_displacement_c"], md, rtol=1e-6, atol=1e-8)
    return df


def blob_labels(seed, size=96, fraction=0.4):
    rng = np.random.default_rng(seed)
    lab = cc_label(binary_blobs(size, blob_size_fraction=0.08, volume_fraction=fraction, rng=seed))
    # scatter a few pixels of one id everywhere: many components, holes, touching cells
    lab[rng.random(lab.shape) < 0.01] = max(1, int(lab.max()) // 2)
    return lab


# ------------------------------------------------------------------------- columns
def test_feature_columns_order():
    cols = feature_columns(["dapi", "gfp"])
    assert cols[0] == "label"
    assert cols[1 : 1 + len(SHAPE_FEATURES)] == list(SHAPE_FEATURES)
    i = 1 + len(SHAPE_FEATURES)
    n_int = len(INTENSITY_FEATURES)
    assert cols[i : i + n_int] == [f"{f}_dapi" for f in INTENSITY_FEATURES]
    assert cols[i + n_int : i + 2 * n_int] == [f"{f}_gfp" for f in INTENSITY_FEATURES]
    j = i + 2 * n_int
    n_tex = len(TEXTURE_FEATURES)
    assert cols[j : j + 2 * n_tex] == [f"{f}_{c}" for c in ("dapi", "gfp") for f in TEXTURE_FEATURES]
    assert cols[-1] == "n_neighbors"
    assert "mean_intensity_dapi" in cols and "haralick_contrast_gfp" in cols
    # canonical order whatever the order of the groups given
    assert feature_columns(["a"], ("neighbors", "shape")) == ["label", *SHAPE_FEATURES, "n_neighbors"]
    assert feature_columns([], DEFAULT_FEATURE_GROUPS) == ["label", *SHAPE_FEATURES, "n_neighbors"]
    assert feature_columns([], FEATURE_GROUPS) == ["label", *SHAPE_FEATURES, *ZERNIKE_FEATURES, "n_neighbors"]
    assert feature_columns([]) == feature_columns([], DEFAULT_FEATURE_GROUPS)  # Zernike is opt-in


@pytest.mark.parametrize(
    "groups", [FEATURE_GROUPS, ("shape",), ("zernike",), ("intensity",), ("texture", "neighbors"), ()]
)
def test_columns_match_feature_columns(groups):
    lab = np.zeros((20, 20), np.uint16)
    lab[2:8, 3:9] = 4
    lab[10:15, 10:18] = 9
    img = np.arange(400, dtype=np.float32).reshape(20, 20)
    df = compute_features(lab, {"a": img, "b": img[::-1].copy()}, groups=groups)
    assert list(df.columns) == feature_columns(["a", "b"], groups)


def test_single_array_is_called_intensity():
    lab = np.zeros((10, 10), int)
    lab[2:6, 2:6] = 1
    df = compute_features(lab, np.ones((10, 10)))
    assert "mean_intensity_intensity" in df and "glcm_energy_intensity" in df


# ------------------------------------------------------------------ exact values
def test_rectangle_exact():
    h, w, y0, x0 = 7, 12, 3, 5
    lab = np.zeros((20, 25), np.int32)
    lab[y0 : y0 + h, x0 : x0 + w] = 2
    row = compute_features(lab, groups=("shape",)).iloc[0]
    assert row["label"] == 2
    assert row["area"] == h * w
    assert row["centroid_y"] == pytest.approx(y0 + (h - 1) / 2, abs=1e-12)
    assert row["centroid_x"] == pytest.approx(x0 + (w - 1) / 2, abs=1e-12)
    assert (row["bbox_min_y"], row["bbox_min_x"], row["bbox_max_y"], row["bbox_max_x"]) == (
        y0,
        x0,
        y0 + h,
        x0 + w,
    )
    # every border pixel has weight 1 in skimage's perimeter estimator
    assert row["perimeter"] == pytest.approx(2 * h + 2 * w - 4)
    assert row["circularity"] == pytest.approx(4 * np.pi * h * w / (2 * h + 2 * w - 4) ** 2)
    assert row["extent"] == 1.0 and row["solidity"] == 1.0 and row["euler_number"] == 1
    # second moments of a block of pixels: (n^2 - 1) / 12 along each axis
    assert row["major_axis_length"] == pytest.approx(4 * np.sqrt((w**2 - 1) / 12))
    assert row["minor_axis_length"] == pytest.approx(4 * np.sqrt((h**2 - 1) / 12))
    assert row["eccentricity"] == pytest.approx(np.sqrt(1 - (h**2 - 1) / (w**2 - 1)))
    assert abs(row["orientation"]) == pytest.approx(np.pi / 2)  # major axis along x
    assert row["equivalent_diameter"] == pytest.approx(np.sqrt(4 * h * w / np.pi))


def test_disk_exact_and_regionprops():
    lab = np.zeros((60, 60), np.uint8)
    rr, cc = draw.disk((30, 25), 12)
    lab[rr, cc] = 1
    df = assert_matches_regionprops(lab)
    row = df.iloc[0]
    assert row["area"] == rr.size
    assert row["centroid_y"] == pytest.approx(rr.mean()) and row["centroid_x"] == pytest.approx(cc.mean())
    assert row["euler_number"] == 1
    assert row["eccentricity"] < 0.05
    assert 0.85 < row["circularity"] < 1.15


def test_euler_number_ring_and_holes():
    lab = np.zeros((40, 80), np.uint8)
    rr, cc = draw.disk((20, 20), 15)
    lab[rr, cc] = 1
    rr, cc = draw.disk((20, 20), 6)
    lab[rr, cc] = 0  # a ring: one hole
    lab[5:35, 45:75] = 2
    lab[10:15, 50:55] = 0  # two holes
    lab[20:30, 60:70] = 0
    lab[0:3, 0:3] = 3  # two components, no hole
    lab[37:40, 77:80] = 3
    df = assert_matches_regionprops(lab)
    assert df["euler_number"].tolist() == [0, -1, 2]
    # a hole connected to the background only diagonally is still a hole (8-connected
    # foreground, 4-connected background)
    diag = np.zeros((5, 5), np.uint8)
    diag[1:4, 1:4] = 1
    diag[2, 2] = 0
    assert compute_features(diag, groups=("shape",))["euler_number"].tolist() == [0]


def test_neighbors_touching_objects():
    lab = np.zeros((12, 20), np.uint8)
    lab[1:5, 1:5] = 1
    lab[1:5, 5:9] = 2  # touches 1 along an edge
    lab[5:8, 9:12] = 3  # touches 2 at a corner only (8-connectivity)
    lab[1:4, 15:18] = 4  # isolated
    lab[5:9, 1:5] = 5  # touches 1 (edge) and 2 (diagonal at (5,4)-(4,5))
    df = compute_features(lab, groups=("neighbors",))
    assert df["label"].tolist() == [1, 2, 3, 4, 5]
    assert df["n_neighbors"].tolist() == [2, 3, 1, 0, 2]
    assert df["n_neighbors"].dtype == np.int64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbors_match_brute_force_on_dense_noise(seed):
    """Touching pairs are looked for from border pixels only: every distinct pair must still be found."""
    rng = np.random.default_rng(seed)
    lab = ((rng.random((30, 41)) < 0.8) * rng.integers(1, 40, (30, 41))).astype(np.int32)
    padded = np.pad(lab, 1)
    pairs: set[tuple[int, int]] = set()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = padded[1 + dy : 31 + dy, 1 + dx : 42 + dx]
            m = (lab != 0) & (nb != 0) & (nb != lab)
            pairs |= set(zip(lab[m].tolist(), nb[m].tolist(), strict=True))
    df = compute_features(lab, groups=("neighbors",))
    expected = [sum(1 for a, _ in pairs if a == i) for i in df["label"]]
    assert df["n_neighbors"].tolist() == expected
    assert sum(expected) > 100  # the case is dense


def test_weighted_centroid_sums_overflow_fallback_agrees():
    """The flat-index shortcut and the overflow-safe per-run sums give the same exact sums."""
    lab = blob_labels(2)
    img = np.random.default_rng(2).integers(0, 4096, lab.shape).astype(np.int32)
    scan = features_module._Scan(lab, perimeter=False, touching=False)
    runs = features_module._Runs(lab, scan.run_start, scan.run_end)
    chunk = runs.pixels(0, runs.n)
    v = img.ravel()[chunk.flat]
    fast = features_module._weighted_coordinate_sums(chunk, v, 4095, runs)
    safe = features_module._weighted_coordinate_sums(chunk, v, 1 << 62, runs)
    rows, cols = np.nonzero(lab)
    order = np.argsort(lab[rows, cols], kind="stable")
    rows, cols, vals = rows[order], cols[order], img[rows[order], cols[order]].astype(np.int64)
    ids = lab[rows, cols]
    expect_row = np.bincount(np.searchsorted(runs.ids, ids), vals * rows)
    for got in (fast, safe):
        assert got[0].tolist() == expect_row.astype(np.int64).tolist()
        assert (
            got[1].tolist()
            == np.bincount(np.searchsorted(runs.ids, ids), vals * cols).astype(np.int64).tolist()
        )


def test_non_contiguous_ids_give_same_values():
    lab = blob_labels(3, size=64)
    ids = np.unique(lab)[1:]
    new_ids = np.cumsum(np.random.default_rng(0).integers(1, 1000, ids.size)) + 10**9
    lut = np.zeros(lab.max() + 1, np.int64)
    lut[ids] = new_ids
    img = np.random.default_rng(1).random(lab.shape)
    a = compute_features(lab, img)
    b = compute_features(lut[lab], img)
    assert b["label"].tolist() == new_ids.tolist()
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"))


# -------------------------------------------------------------- regionprops agreement
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_regionprops_synthetic(seed):
    lab = blob_labels(seed)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 4000, lab.shape).astype(np.uint16) if seed % 2 else rng.normal(size=lab.shape)
    assert_matches_regionprops(lab, img)


def test_matches_regionprops_dense_noise_labels():
    """Many tiny, fragmented, touching objects: single pixels, lines, diagonal chains."""
    rng = np.random.default_rng(7)
    lab = ((rng.random((40, 50)) < 0.7) * rng.integers(1, 25, (40, 50))).astype(np.int64)
    img = rng.integers(0, 255, lab.shape).astype(np.uint8)
    assert_matches_regionprops(lab, img)


def test_matches_regionprops_with_spacing():
    lab = blob_labels(4, size=64)
    img = np.random.default_rng(4).random(lab.shape)
    assert_matches_regionprops(lab, img, spacing=(0.25, 0.25))


def test_streaming_paths_agree(monkeypatch):
    """Tiny bands, chunks and histograms take other code paths; same results."""
    lab = blob_labels(5)
    rng = np.random.default_rng(5)
    chans = {"u16": rng.integers(0, 3000, lab.shape).astype(np.uint16), "f": rng.random(lab.shape)}
    ref = compute_features(lab, chans, texture_distances=(1, 2))
    monkeypatch.setattr(features_module, "_BAND_PIXELS", 150)
    monkeypatch.setattr(features_module, "_CHUNK_PIXELS", 200)
    monkeypatch.setattr(features_module, "_MAX_HIST_BINS", 64)
    out = compute_features(lab, chans, texture_distances=(1, 2))
    pd.testing.assert_frame_equal(ref, out, rtol=1e-12, atol=1e-12)


def test_matches_regionprops_real_image(shared_data):
    root = shared_data / "coelho2009_nuclei"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    img = imread(root / "images" / "gnf" / "dna-0.png")
    img = np.ascontiguousarray(img[..., 0] if img.ndim == 3 else img)
    lab = imread(root / "labels" / "gnf" / "dna-0.png")
    df = assert_matches_regionprops(lab, img)
    assert len(df) == len(np.unique(lab)) - 1
    # solidity uses the exact convex image of regionprops
    ref = [r.area / r.image_convex.sum() for r in regionprops(lab)]
    np.testing.assert_allclose(df["solidity"], ref, rtol=1e-12)


# ---------------------------------------------------------------------- intensity
def test_intensity_exact_values():
    lab = np.zeros((6, 8), np.uint8)
    lab[1:3, 1:5] = 7  # 8 pixels
    img = np.zeros((6, 8), np.uint16)
    img[1:3, 1:5] = np.arange(1, 9).reshape(2, 4)
    row = compute_features(lab, {"dna": img}, groups=("intensity",)).iloc[0]
    v = np.arange(1, 9, dtype=float)
    assert row["mean_intensity_dna"] == v.mean()
    assert row["std_intensity_dna"] == pytest.approx(v.std())
    assert (row["min_intensity_dna"], row["max_intensity_dna"]) == (1, 8)
    assert row["median_intensity_dna"] == 4.5
    assert row["q25_intensity_dna"] == np.quantile(v, 0.25)
    assert row["q75_intensity_dna"] == np.quantile(v, 0.75)
    assert row["integrated_intensity_dna"] == 36
    # weighted centroid: rows (1, 2) weighted 10 and 26; columns 1..4 weighted 6, 8, 10, 12
    wy, wx = (10 * 1 + 26 * 2) / 36, (6 * 1 + 8 * 2 + 10 * 3 + 12 * 4) / 36
    assert row["mass_displacement_dna"] == pytest.approx(np.hypot(wy - 1.5, wx - 2.5))


def test_nan_pixels_make_that_cell_nan():
    lab = np.zeros((10, 10), np.uint8)
    lab[1:4, 1:4] = 1
    lab[5:9, 5:9] = 2
    img = np.ones((10, 10))
    img[2, 2] = np.nan
    df = compute_features(lab, img, groups=("intensity",))
    assert df.filter(like="_intensity").iloc[0].isna().all()
    assert df.filter(like="_intensity").iloc[1].notna().all()


def test_boolean_intensity_image():
    lab = np.zeros((10, 10), np.uint8)
    lab[2:6, 2:6] = 1
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:6] = True
    df = compute_features(lab, mask, groups=("intensity", "texture"), texture_levels=2)
    assert df["mean_intensity_intensity"][0] == 0.5
    assert df["median_intensity_intensity"][0] == 0.5
    assert df["haralick_contrast_intensity"].notna().all()


def test_channel_order_follows_mapping():
    lab = np.zeros((10, 10), np.uint8)
    lab[2:6, 2:6] = 1
    df = compute_features(lab, {"z": np.ones((10, 10)), "a": np.zeros((10, 10))}, groups=("intensity",))
    assert list(df.columns).index("mean_intensity_z") < list(df.columns).index("mean_intensity_a")
    assert df["mean_intensity_z"][0] == 1 and df["mean_intensity_a"][0] == 0


# ------------------------------------------------------------------------ texture
def _quantised(img, levels):
    return np.clip(np.floor((img - img.min()) / (img.max() - img.min()) * levels), 0, levels - 1).astype(
        np.uint8
    )


def test_texture_matches_graycoprops_on_filled_rectangle():
    rng = np.random.default_rng(0)
    levels = 16
    img = rng.integers(0, 1000, (30, 40)).astype(np.uint16)
    lab = np.zeros(img.shape, np.uint8)
    lab[5:25, 8:33] = 3  # the whole crop belongs to the cell: masking does not matter
    df = compute_features(lab, img, groups=("texture",), texture_levels=levels)
    q = _quantised(img.astype(float), levels)[5:25, 8:33]
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = graycomatrix(q, [1], angles, levels=levels, symmetric=True, normed=True)
    for name in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM", "entropy"):
        expected = graycoprops(glcm, name).mean()
        prefix = "glcm" if name in ("dissimilarity", "energy") else "haralick"
        assert df[f"{prefix}_{name.lower()}_intensity"][0] == pytest.approx(expected, rel=1e-10), name


def _naive_haralick(lab, q, label, offsets, levels):
    """Per-cell GLCM with explicit loops over the cell's pixels (reference)."""
    feats = []
    ys, xs = np.nonzero(lab == label)
    for dy, dx in offsets:
        glcm = np.zeros((levels, levels))
        for y, x in zip(ys, xs, strict=True):
            y2, x2 = y + dy, x + dx
            if 0 <= y2 < lab.shape[0] and 0 <= x2 < lab.shape[1] and lab[y2, x2] == label:
                glcm[q[y, x], q[y2, x2]] += 1
                glcm[q[y2, x2], q[y, x]] += 1
        if glcm.sum():
            g = glcm[:, :, None, None]
            feats.append(
                [graycoprops(g, p)[0, 0] for p in ("contrast", "homogeneity", "correlation", "entropy")]
            )
    return np.mean(feats, axis=0) if feats else np.full(4, np.nan)


def test_texture_masked_pairs_only():
    """Pixels outside the cell (background or another cell) never contribute pairs."""
    lab = blob_labels(6, size=40, fraction=0.5)
    rng = np.random.default_rng(6)
    img = rng.random(lab.shape)
    levels = 8
    df = compute_features(
        lab, {"c": img}, groups=("texture",), texture_levels=levels, texture_distances=(1, 2)
    )
    q = _quantised(img, levels)
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1), (0, 2), (2, 2), (2, 0), (2, -2)]
    for i, label in enumerate(df["label"]):
        expected = _naive_haralick(lab, q, label, offsets, levels)
        got = df.loc[i, [f"haralick_{n}_c" for n in ("contrast", "homogeneity", "correlation", "entropy")]]
        np.testing.assert_allclose(got.to_numpy(float), expected, rtol=1e-9, atol=1e-12, err_msg=str(label))


def test_texture_skips_non_finite_pixels():
    lab = np.zeros((12, 12), np.uint8)
    lab[1:11, 1:11] = 1
    img = np.random.default_rng(9).random((12, 12))
    img[0, 0] = 5.0  # outside the cell but sets the global range
    img[4, 4] = img[7, 2] = np.nan
    df = compute_features(lab, img, groups=("texture",), texture_levels=8)
    finite = np.where(np.isfinite(img), img, 0.0)
    q = np.clip(np.floor(finite / 5.0 * 8), 0, 7).astype(int)
    masked = np.where(np.isfinite(img), lab, 0)  # a NaN pixel takes part in no pair
    expected = _naive_haralick(masked, q, 1, [(0, 1), (1, 1), (1, 0), (1, -1)], 8)
    got = df[[f"haralick_{n}_intensity" for n in ("contrast", "homogeneity", "correlation", "entropy")]]
    np.testing.assert_allclose(got.iloc[0].to_numpy(float), expected, rtol=1e-9)


def test_texture_small_cells():
    lab = np.zeros((8, 8), np.uint8)
    lab[1, 1] = 1  # a single pixel: no pairs at all
    lab[4, 1:6] = 2  # a horizontal line: pairs only at 0 degrees
    img = np.arange(64, dtype=float).reshape(8, 8)
    df = compute_features(lab, img, groups=("texture",), texture_levels=64)
    assert df.filter(regex="^(haralick|glcm)_").iloc[0].isna().all()
    q = _quantised(img, 64)[4:5, 1:6]
    glcm = graycomatrix(q, [1], [0], levels=64, symmetric=True, normed=True)
    assert df["haralick_contrast_intensity"][1] == pytest.approx(graycoprops(glcm, "contrast")[0, 0])


# ------------------------------------------------------------------ empty / errors
def test_empty_labels_same_columns_and_dtypes():
    img = np.random.default_rng(0).random((16, 16))
    full_lab = np.zeros((16, 16), np.int32)
    full_lab[3:9, 3:9] = 5
    full = compute_features(full_lab, {"a": img, "b": img})
    for empty_lab in (np.zeros((16, 16), np.int32), np.zeros((0, 16), np.uint8)):
        chans = {"a": np.zeros(empty_lab.shape), "b": np.zeros(empty_lab.shape)}
        empty = compute_features(empty_lab, chans)
        assert len(empty) == 0
        assert list(empty.columns) == list(full.columns)
        pd.testing.assert_series_equal(empty.dtypes, full.dtypes)
    assert full["label"].dtype == np.int64 and full["euler_number"].dtype == np.int64


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.zeros((4, 4), float), {}, "integer dtype"),
        (np.zeros((4, 4), bool), {}, "integer dtype"),
        (-np.ones((4, 4), int), {}, "non-negative"),
        (np.zeros((2, 2, 4, 4), int), {}, "2D"),  # 3-D labels get the 3-D features
        (np.zeros(4, int), {}, "2D"),
        (np.full((4, 4), 2**63, np.uint64), {}, "int64"),
        (np.zeros((4, 4), int), {"intensities": np.zeros((4, 5))}, "shape"),
        (np.zeros((4, 4), int), {"intensities": np.zeros((4, 4, 3))}, "shape"),
        (np.zeros((4, 4), int), {"intensities": {1: np.zeros((4, 4))}}, "names"),
        (np.zeros((4, 4), int), {"intensities": np.zeros((4, 4), complex)}, "real-valued"),
        (np.zeros((4, 4), int), {"groups": ("shape", "colour")}, "Unknown feature group"),
        (np.zeros((4, 4), int), {"texture_levels": 1}, "texture_levels"),
        (np.zeros((4, 4), int), {"texture_levels": 8.5}, "texture_levels"),
        (np.zeros((4, 4), int), {"texture_distances": (0,)}, "texture_distances"),
        (np.zeros((4, 4), int), {"texture_distances": (1.5,)}, "texture_distances"),
        (np.zeros((4, 4), int), {"spacing": (1, -1)}, "spacing"),
        (np.zeros((4, 4), int), {"spacing": (1, 2)}, "isotropic"),
    ],
)
def test_bad_input_raises(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_features(labels, **kwargs)


def test_anisotropic_spacing_without_shape_is_fine():
    lab = np.zeros((10, 10), int)
    lab[2:6, 2:8] = 1
    img = np.random.default_rng(0).random((10, 10))
    df = compute_features(lab, img, groups=("intensity",), spacing=(2.0, 0.5))
    rp = regionprops(lab, img, spacing=(2.0, 0.5))[0]
    expected = np.hypot(*(np.subtract(rp.centroid_weighted, rp.centroid)))
    assert df["mass_displacement_intensity"][0] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------ progress
def test_generator_yields_progress_and_returns_table():
    lab = blob_labels(8, size=64)
    img = np.random.default_rng(8).random(lab.shape)
    gen = iter_features(lab, img)
    records = []
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            df = stop.value
            break
    assert records and all(isinstance(p, Progress) for p in records)
    steps = [p.step for p in records]
    assert steps == sorted(steps) and steps[-1] == records[-1].total
    pd.testing.assert_frame_equal(df, run(iter_features(lab, img)))
    pd.testing.assert_frame_equal(df, compute_features(lab, img))


# -------------------------------------------------------------- texture: bin edges
def test_texture_grey_levels_on_bin_edges_follow_the_documented_rule():
    """Issue 17: 49 of 0..98 at 32 levels is level floor(49 / 98 * 32) = 16; pre-dividing
    (49 * (32 / 98) = 15.999...) put it at 15 and gave contrast 128 instead of 112.5."""
    img = np.array([[0, 0, 0], [49, 98, 98]], np.uint8)
    lab = np.array([[0, 0, 0], [1, 1, 1]], np.int32)
    for image in (img, img.astype(np.uint16), img.astype(np.int32), img.astype(np.float32)):
        df = compute_features(lab, {"image": image}, groups=("texture",), texture_levels=32)
        q = np.array([[16, 31, 31]], np.uint8)  # the documented quantisation, by hand
        glcm = graycomatrix(q, [1], [0], levels=32, symmetric=True, normed=True)
        assert graycoprops(glcm, "contrast")[0, 0] == 112.5
        assert df["haralick_contrast_image"][0] == 112.5, image.dtype


def test_integer_images_are_quantised_exactly():
    """Every value of every uint16 range up to 5,000 (min 0, 32 levels) lands on
    (v * 32) // max, in exact integer arithmetic; before, 1.6-7.5 % of maxima had values
    one level low."""
    from napari_phenotyper.core.features import _Quantiser

    for top in range(1, 5001):
        image = np.array([0, top], np.uint16)
        got = _Quantiser(image, 32)(np.arange(top + 1, dtype=np.uint16))[0]
        expected = np.minimum(np.arange(top + 1, dtype=np.int64) * 32 // top, 31)
        np.testing.assert_array_equal(got, expected, err_msg=str(top))
    # a range the lookup table does not cover (int32, negative minimum) is exact too
    image = np.array([-70_001, 1_000_000], np.int32)
    values = np.array([-70_001, -70_000, 463_000, 999_999, 1_000_000], np.int32)
    got = _Quantiser(image, 32)(values)[0]
    span = 1_000_000 + 70_001
    assert got.tolist() == [min(int(v + 70_001) * 32 // span, 31) for v in values]


def test_texture_matches_graycoprops_on_a_real_image(shared_data):
    """Per cell, against graycoprops on each cell's own co-occurrence matrix (pairs inside
    the cell only), with the documented quantisation computed in integers."""
    root = shared_data / "dsb2018_dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    name = sorted(p.name for p in (root / "images").iterdir())[0]
    img = imread(root / "images" / name)
    img = np.ascontiguousarray(img[..., 0] if img.ndim == 3 else img)
    lab = imread(root / "masks" / (Path(name).stem + ".tif"))
    assert img.dtype.kind == "u" and lab.max() > 5
    levels = 32
    df = compute_features(lab, {"image": img}, groups=("texture",), texture_levels=levels)
    lo, hi = int(img.min()), int(img.max())
    q = np.minimum((img.astype(np.int64) - lo) * levels // (hi - lo), levels - 1)
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1)]
    for i, label in enumerate(df["label"][:12]):
        expected = _naive_haralick(lab, q, label, offsets, levels)
        got = df.loc[
            i, [f"haralick_{n}_image" for n in ("contrast", "homogeneity", "correlation", "entropy")]
        ]
        np.testing.assert_allclose(got.to_numpy(float), expected, rtol=1e-9, atol=1e-12, err_msg=str(label))


def test_zernike_matches_a_direct_sum_over_the_pixels(shared_data):
    """zernike_<n>_<m>: |sum of R_nm(rho) exp(i m theta)| / (pi r^2) over every pixel, in the
    minimum enclosing circle (centrosome's, CellProfiler's), by the textbook formula."""
    from math import factorial

    zernike = pytest.importorskip("centrosome.zernike", reason="centrosome (via cp_measure, a test extra)")
    root = shared_data / "coelho2009_nuclei"
    labels = imread(root / "labels" / "ic100" / "dna-3.png").astype(np.int32)
    ids = np.unique(labels[labels > 0])
    df = compute_features(labels, groups=("zernike",))
    assert list(df.columns) == ["label", *ZERNIKE_FEATURES]
    centres, radii = zernike.minimum_enclosing_circle(labels, ids)
    for k in range(0, len(ids), 5):
        rr, cc = np.nonzero(labels == ids[k])
        v = (rr - centres[k, 0]) / radii[k]
        u = (cc - centres[k, 1]) / radii[k]
        rho, theta = np.hypot(u, v), np.arctan2(u, v)
        for n in range(10):
            for m in range(n % 2, n + 1, 2):
                radial = sum(
                    (-1) ** s
                    * factorial(n - s)
                    / (factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s))
                    * rho ** (n - 2 * s)
                    for s in range((n - m) // 2 + 1)
                )
                expected = abs(np.sum(radial * np.exp(1j * m * theta))) / (np.pi * radii[k] ** 2)
                assert df[f"zernike_{n}_{m}"][k] == pytest.approx(expected, rel=1e-9, abs=1e-12), (k, n, m)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, bool])
def test_small_integer_intensities_match_numpy_exactly(dtype):
    """Small-integer images take the histogram path: sums, an exact variance (a bright,
    flat uint16 cell would lose digits to cancellation otherwise), quantiles, mass displacement."""
    rng = np.random.default_rng(5)
    lab = np.zeros((60, 70), np.int32)
    lab[3:30, 4:40] = 1
    lab[32:58, 10:66] = 2
    lab[5:25, 45:68] = 7
    info = np.iinfo(dtype) if dtype is not bool else None
    if dtype is bool:
        img = rng.random(lab.shape) > 0.5
    elif dtype == np.uint16:
        img = (60000 + rng.integers(0, 3, lab.shape)).astype(dtype)  # mean 60001, std ~0.8
    else:
        img = rng.integers(max(info.min, -500), min(info.max, 500), lab.shape).astype(dtype)
    df = compute_features(lab, {"c": img}, groups=("intensity",))
    rows, cols = np.indices(lab.shape)
    for i, k in enumerate((1, 2, 7)):
        m = lab == k
        v = img[m].astype(np.float64)
        assert df["mean_intensity_c"][i] == pytest.approx(v.mean(), rel=1e-14)
        assert df["std_intensity_c"][i] == pytest.approx(v.std(), rel=1e-12)
        assert df["integrated_intensity_c"][i] == v.sum()
        for name, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75)):
            assert df[f"{name}_intensity_c"][i] == pytest.approx(np.quantile(v, q), rel=1e-14)
        wy = (rows[m] * v).sum() / v.sum() - rows[m].mean()
        wx = (cols[m] * v).sum() / v.sum() - cols[m].mean()
        assert df["mass_displacement_c"][i] == pytest.approx(np.hypot(wy, wx), rel=1e-9, abs=1e-12)
