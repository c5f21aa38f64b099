import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_phenotyper.io.atomic import atomic_write_text, atomic_write_with
from napari_phenotyper.io.export import read_table_csv, table_for_export, write_labels_tiff, write_table_csv


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
