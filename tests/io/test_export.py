import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_phenotyper.io.atomic import atomic_write_text, atomic_write_with
from napari_phenotyper.io.export import (
    read_table_csv,
    summary_path,
    table_for_export,
    write_labels_tiff,
    write_summary_csv,
    write_table_csv,
)


def _table():
    return pd.DataFrame(
        {"label": [1, 2, 5], "area": [10.0, 20.5, 3.25], "mean_intensity_dapi": [0.1, np.nan, 1e-7]}
    )


def test_csv_round_trip(tmp_path):
    path = write_table_csv(_table(), tmp_path / "cells.csv", image_name="img 1")
    back = read_table_csv(path)
    assert list(back.columns) == ["image", "label", "area", "mean_intensity_dapi"]
    assert (back["image"] == "img 1").all()
    assert back["label"].tolist() == [1, 2, 5]
    np.testing.assert_allclose(back["area"], [10.0, 20.5, 3.25])
    assert np.isnan(back["mean_intensity_dapi"][1]) and back["mean_intensity_dapi"][2] == pytest.approx(1e-7)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_label_moves_first_and_image_before_it():
    df = _table()[["area", "label"]].assign(image="x")
    assert list(table_for_export(df).columns) == ["image", "label", "area"]
    with pytest.raises(ValueError, match="no 'label' column"):
        table_for_export(df.drop(columns="label"))


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.csv"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_table_csv(_table(), tmp_path / "nope" / "cells.csv")


def test_labels_tiff(tmp_path):
    labels = np.zeros((20, 30), np.uint32)
    labels[2:5, 3:9] = 7
    labels[10:12, 10:12] = 70000
    write_labels_tiff(labels, tmp_path / "a.tif")
    back = tifffile.imread(tmp_path / "a.tif")
    assert back.dtype == np.uint32 and np.array_equal(back, labels)
    write_labels_tiff(labels % 60000, tmp_path / "b.tif")
    assert tifffile.imread(tmp_path / "b.tif").dtype == np.uint16


def _phenotyped():
    """A table as it sits in a labels layer after classification (columns out of order)."""
    return pd.DataFrame(
        {
            "area": [10.0, 20.0, 30.0],
            "pheno_uncertainty": [0.5, 0.25, 0.0],
            "pheno_proba_dead": [0.0, 0.0, 0.0],
            "label": [1, 2, 5],
            "pheno_class": pd.Categorical(["live", None, "mitotic"], categories=["live", "mitotic", "dead"]),
            "pheno_proba_live": [0.75, 0.5, 0.0],
            "pheno_proba_mitotic": [0.25, 0.5, 1.0],
            "pheno_annotation": pd.Categorical([None, "mitotic", None], categories=["live", "mitotic"]),
            "index": [1, 2, 5],  # napari's helper column
        }
    )


def test_phenotype_columns_come_first_as_strings():
    out = table_for_export(_phenotyped(), image_name="img")
    assert list(out.columns) == [
        "image",
        "label",
        "pheno_annotation",
        "pheno_class",
        "pheno_proba_dead",
        "pheno_proba_live",
        "pheno_proba_mitotic",
        "pheno_uncertainty",
        "area",
    ]
    assert out["pheno_class"].tolist() == ["live", "", "mitotic"]
    assert out["pheno_annotation"].tolist() == ["", "mitotic", ""]
    assert not isinstance(out["pheno_class"].dtype, pd.CategoricalDtype)
    regression = pd.DataFrame(
        {"f": [1.0], "pheno_value_spread": [0.1], "pheno_value": [2.0], "label": [1]}
    ).assign(pheno_value_annotation=[np.nan])
    assert list(table_for_export(regression).columns) == [
        "label",
        "pheno_value_annotation",
        "pheno_value",
        "pheno_value_spread",
        "f",
    ]


def test_phenotype_round_trip(tmp_path):
    path = write_table_csv(_phenotyped(), tmp_path / "cells.csv", image_name="007")
    text = path.read_text().splitlines()
    assert text[0].startswith("image,label,pheno_annotation,pheno_class,pheno_proba_dead,")
    assert text[2].startswith("007,2,mitotic,,")  # missing class: empty field
    back = read_table_csv(path)
    assert back["image"].tolist() == ["007"] * 3  # text stays text
    assert back["pheno_class"].cat.categories.tolist() == ["dead", "live", "mitotic"]  # empty class kept
    assert back["pheno_class"].tolist()[::2] == ["live", "mitotic"] and pd.isna(back["pheno_class"][1])
    assert back["pheno_annotation"].isna().tolist() == [True, False, True]
    np.testing.assert_allclose(back["pheno_proba_live"], [0.75, 0.5, 0.0])
    assert back["label"].tolist() == [1, 2, 5] and "index" not in back.columns


def test_summary_csv_from_one_table_and_from_a_mapping(tmp_path):
    assert summary_path(tmp_path / "x_cells.csv") == tmp_path / "x_cells_summary.csv"
    t = _phenotyped()
    path = write_summary_csv(t.assign(image=["p", "q", "p"]), tmp_path / "s1.csv")
    s = pd.read_csv(path, dtype={"image": str})
    assert s["image"].tolist() == ["p", "q"]
    assert s["n_cells"].tolist() == [2, 1]
    assert s["n_mitotic"].tolist() == [1, 1]  # q's cell is annotated mitotic (no prediction)
    assert s["n_dead"].tolist() == [0, 0]
    np.testing.assert_allclose(s["fraction_live"], [0.5, 0.0])

    path = write_summary_csv({"b": t, "empty": t.iloc[:0], "a": t.iloc[:1]}, tmp_path / "s2.csv")
    s = pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert s["image"].tolist() == ["b", "empty", "a"]
    assert s["n_cells"].tolist() == [3, 0, 1]
    assert s["n_live"].tolist() == [1, 0, 1] and s["n_mitotic"].tolist() == [2, 0, 0]
    assert np.isnan(s["fraction_live"][1])
    np.testing.assert_allclose(s["mean_uncertainty"], [0.25, np.nan, 0.5])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    plain = write_summary_csv({"x": _table()}, tmp_path / "s3.csv")
    assert plain.read_text().splitlines() == ["image,n_cells", "x,3"]
