"""2D embeddings (PCA, optional UMAP) and the pure data helpers behind the plot dock."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as MplPath

from napari_phenotyper.core.embedding import (
    Embedding,
    EmbeddingSettings,
    available_embeddings,
    embed,
    feature_fingerprint,
    histogram_by_class,
    iter_embedding,
    label_edges,
    learning_curve,
    nearest_point,
    points_in_box,
    points_in_polygon,
    quantize,
    selection_image,
    split_by_code,
    standardized_matrix,
    umap_available,
)
from napari_phenotyper.core.progress import Progress, run


def _table(n=200, seed=0):
    """Two clusters of cells in 5 features, plus columns that are not features."""
    rng = np.random.default_rng(seed)
    group = np.arange(n) % 2
    feats = rng.normal(size=(n, 5)) + 6.0 * group[:, None] * np.array([1, 1, 0, 0, 0])
    df = pd.DataFrame(
        feats, columns=["area", "perimeter", "mean_intensity_image", "eccentricity", "solidity"]
    )
    df.insert(0, "label", np.arange(1, n + 1))
    df["centroid_y"] = rng.uniform(0, 1000, n)  # position: never a feature
    df["pheno_uncertainty"] = rng.uniform(0, 1, n)  # phenotype column: never a feature
    df["pheno_class"] = pd.Categorical(np.where(group == 1, "big", "small"))
    return df, group


def test_pca_is_sklearn_pca_of_standardised_features():
    from sklearn.decomposition import PCA

    df, _ = _table()
    coords = embed(df)
    assert coords.shape == (len(df), 2)
    cols = ["area", "perimeter", "mean_intensity_image", "eccentricity", "solidity"]
    X = df[cols].to_numpy()
    Z = (X - X.mean(0)) / X.std(0)
    ref = PCA(2).fit_transform(Z)
    for k in range(2):  # up to the sign of each axis
        assert abs(np.corrcoef(coords[:, k], ref[:, k])[0, 1]) > 0.9999
    # the centroid and phenotype columns do not take part
    emb = run(iter_embedding(df))
    assert emb.columns == tuple(cols)
    assert emb.method == "pca" and 0 < emb.explained[1] <= emb.explained[0] < 1


def test_pca_separates_clusters_and_is_deterministic():
    df, group = _table()
    a, b = embed(df), embed(df)
    np.testing.assert_array_equal(a, b)
    # the first axis splits the two clusters: every cell on its cluster's side
    mid = (a[group == 0, 0].mean() + a[group == 1, 0].mean()) / 2
    side = a[:, 0] > mid
    assert (side == (group == 1)).all() or (side == (group == 0)).all()


def test_missing_infinite_constant_and_empty_columns():
    df, _ = _table(50)
    df.loc[3, "area"] = np.nan
    df.loc[4, "perimeter"] = np.inf
    df["constant"] = 7.0
    df["empty"] = np.nan
    before = df.copy()
    X, names = standardized_matrix(df)
    assert "constant" not in names and "empty" not in names
    assert np.isfinite(X).all()
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(X.std(0), 1, atol=1e-12)
    # a missing value takes its column's median (standardised)
    area = df["area"].drop(index=3)
    med = (area.median() - df["area"].fillna(area.median()).mean()) / df["area"].fillna(area.median()).std(
        ddof=0
    )
    assert X[3, names.index("area")] == pytest.approx(med)
    coords = embed(df)
    assert np.isfinite(coords).all()
    pd.testing.assert_frame_equal(df, before)  # the table is never modified


def test_degenerate_tables():
    df, _ = _table(10)
    assert embed(df.iloc[:0]).shape == (0, 2)
    np.testing.assert_array_equal(embed(df.iloc[:1]), np.zeros((1, 2)))
    one = embed(df[["label", "area"]])
    assert one.shape == (10, 2) and (one[:, 1] == 0).all() and one[:, 0].std() > 0
    with pytest.raises(ValueError, match="no numeric feature columns"):
        embed(df[["label", "centroid_y", "pheno_class"]])
    with pytest.raises(ValueError, match="no column"):
        embed(df, columns=["nope"])
    cols = embed(df, columns=["area", "solidity"])
    assert cols.shape == (10, 2)


def test_progress_generator_yields_records():
    df, _ = _table(20)
    gen = iter_embedding(df, EmbeddingSettings())
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert steps and all(isinstance(p, Progress) for p in steps)
    assert isinstance(result, Embedding) and result.coords.shape == (20, 2)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="Unknown embedding"):
        EmbeddingSettings(method="tsne")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_neighbors"):
        EmbeddingSettings(method="umap", n_neighbors=1)


def _fake_umap(monkeypatch, calls):
    """A stand-in ``umap`` module (the real one is optional and not installed here)."""

    class UMAP:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, X):
            return X[:, :2] * 2.0

    mod = types.ModuleType("umap")
    mod.__spec__ = importlib.machinery.ModuleSpec("umap", None)
    mod.UMAP = UMAP
    monkeypatch.setitem(sys.modules, "umap", mod)


def test_umap_when_installed(monkeypatch):
    calls = []
    _fake_umap(monkeypatch, calls)
    assert umap_available() and available_embeddings() == ["pca", "umap"]
    df, _ = _table(60)
    emb = run(iter_embedding(df, EmbeddingSettings(method="umap", seed=3, n_neighbors=10)))
    assert emb.coords.shape == (60, 2) and emb.method == "umap" and emb.explained is None
    assert calls == [{"n_components": 2, "n_neighbors": 10, "min_dist": 0.1, "random_state": 3, "n_jobs": 1}]


def test_umap_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr("napari_phenotyper.core.embedding.umap_available", lambda: False)
    df, _ = _table(20)
    with pytest.raises(ImportError, match="pip install umap-learn"):
        embed(df, "umap")


def test_fingerprint_follows_features_not_phenotypes():
    df, _ = _table(30)
    fp = feature_fingerprint(df)
    other = df.copy()
    other["pheno_uncertainty"] = 0.5
    other["pheno_class"] = "small"
    assert feature_fingerprint(other) == fp  # a retrain does not invalidate the embedding
    other.loc[5, "area"] += 1
    assert feature_fingerprint(other) != fp
    relabelled = df.assign(label=df["label"] + 100)
    assert feature_fingerprint(relabelled) != fp


def test_histogram_by_class():
    values = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 8, np.nan, 9, np.inf])
    classes = pd.Series(["a", "a", "b", "b", None, "a", "b", "c", None, "a", "b", "a"])
    h = histogram_by_class(values, classes, bins=3, order=["b", "a", "z"])
    assert list(h.counts) == ["b", "a", "z", "c", "no class"]
    np.testing.assert_allclose(h.edges, [0, 3, 6, 9])
    np.testing.assert_array_equal(h.counts["a"], [2, 1, 0])  # 0, 1 | 5 (nan, inf dropped)
    np.testing.assert_array_equal(h.counts["b"], [1, 1, 2])  # 2 | 3 | 6, 9
    np.testing.assert_array_equal(h.counts["z"], [0, 0, 0])
    assert h.n == {"b": 4, "a": 3, "z": 0, "c": 1, "no class": 2}
    dens = histogram_by_class(values, classes, bins=3, density=True, none_name=None)
    assert "no class" not in dens.counts
    for name, c in dens.counts.items():
        assert (c * np.diff(dens.edges)).sum() == pytest.approx(1.0), name
    everyone = histogram_by_class(values, None, bins=4, value_range=(0, 10))
    assert list(everyone.counts) == ["all cells"] and everyone.counts["all cells"].sum() == 10
    flat = histogram_by_class([2.0, 2.0], ["a", "a"], bins=2)
    assert flat.edges[0] < 2 < flat.edges[-1]
    with pytest.raises(ValueError, match="3 values but 2 classes"):
        histogram_by_class([1, 2, 3], ["a", "b"])


def test_learning_curve_keeps_the_latest_record_per_count():
    class Rec:
        n_annotations, accuracy = 12, 0.9

    records = [(4, 0.5), (6, 0.55), (4, 0.6), {"n_annotations": 8, "accuracy": 0.8}, Rec(), (10, np.nan)]
    n, acc = learning_curve(records)
    np.testing.assert_array_equal(n, [4, 6, 8, 12])
    np.testing.assert_allclose(acc, [0.6, 0.55, 0.8, 0.9])
    n, acc = learning_curve([])
    assert n.shape == acc.shape == (0,)


def test_points_in_polygon_matches_matplotlib():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-2, 2, size=(20_000, 2))
    angles = np.linspace(0, 2 * np.pi, 11)[:-1]
    radii = np.where(np.arange(10) % 2 == 0, 1.5, 0.5)  # a concave star
    star = np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])
    ours = points_in_polygon(xy, star)
    ref = MplPath(star).contains_points(xy)
    assert ours.sum() > 1000
    assert (ours != ref).sum() <= 2  # points exactly on an edge may differ
    xy[0] = np.nan
    assert not points_in_polygon(xy, star)[0]
    assert not points_in_polygon(xy, star[:2]).any()  # not a polygon


def test_box_nearest_quantize_split():
    xy = np.array([[0, 0], [1, 1], [2, 2], [np.nan, 1]], dtype=float)
    np.testing.assert_array_equal(points_in_box(xy, 2, 2, 0.5, 0.5), [False, True, True, False])
    assert nearest_point(xy, (1.1, 0.9), radius=0.5) == 1
    assert nearest_point(xy, (5, 5), radius=0.5) is None
    assert nearest_point(np.empty((0, 2)), (0, 0), 1) is None
    q = quantize([0.0, 0.5, 1.0, np.nan, 2.0, -1.0], 4, 0.0, 1.0)
    np.testing.assert_array_equal(q, [0, 2, 3, -1, 3, 0])
    assert (quantize([3.0, 3.0], 8) == 4).all()
    assert (quantize([np.nan], 8) == -1).all()
    rows = split_by_code(np.array([2, 0, -1, 2, 1, 0]), 3)
    assert [r.tolist() for r in rows] == [[1, 5], [4], [0, 3]]


def test_selection_image_tints_and_outlines_selected_cells():
    labels = np.zeros((3, 12, 12), np.int32)  # a stack: outlines in the last two axes
    labels[:, 1:5, 1:5] = 1
    labels[:, 1:5, 5:9] = 2  # touches cell 1
    labels[:, 7:11, 2:10] = 3
    img = selection_image(labels, [1, 3, 99])
    assert img.dtype == np.uint8 and img.shape == labels.shape
    np.testing.assert_array_equal(img > 0, np.isin(labels, [1, 3]))
    plane = img[1]
    assert (plane[2:4, 2:4] == 1).all()  # inside
    assert (plane[1, 1:5] == 2).all() and (plane[1:5, 4] == 2).all()  # border, also against cell 2
    assert (plane[labels[1] == 2] == 0).all()
    edges = label_edges(labels)
    np.testing.assert_array_equal(selection_image(labels, [1, 3], edges=edges), img)
    assert edges[1, 1, 1:9].all() and not edges[1, 2, 2]
    out = np.full(labels.shape, 7, np.uint8)
    assert selection_image(labels, [], out=out) is out and not out.any()
    with pytest.raises(ValueError, match="integers"):
        selection_image(labels.astype(float), [1])
