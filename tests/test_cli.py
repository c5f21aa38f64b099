"""The headless command line on the built-in sample, folders and bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from napari_phenotyper.cli import main


def _write_images(folder, n=2):
    folder.mkdir()
    for i in range(n):
        img = np.full((96, 96), 10, np.uint16)
        for c in [(25, 25), (70, 60)][: i + 1]:
            img[disk(c, 9, shape=img.shape)] = 1000
        tifffile.imwrite(folder / f"img{i}.tif", img)
    return folder


def test_segment_sample_writes_labels_and_csv(tmp_path, capsys):
    assert (
        main(
            [
                "segment",
                "--sample",
                "nuclei",
                "--out",
                str(tmp_path),
                "--quiet",
                "--features",
                "shape,intensity",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT ") and "ap50=" in last
    ap50 = float(last.split("ap50=")[1].split()[0])
    assert ap50 >= 0.6  # the classical default on its own sample
    labels = tifffile.imread(tmp_path / "sample_nuclei_labels.tif")
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert list(cells.columns[:2]) == ["image", "label"]
    assert len(cells) == len(np.unique(labels)) - 1 > 100


def test_segment_folder_skips_bad_image(tmp_path, capsys):
    folder = _write_images(tmp_path / "in")
    (folder / "broken.tif").write_bytes(b"not a tiff")
    rc = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--diameter", "18", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "FAILED broken" in captured.err
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert cells.groupby("image").size().to_dict() == {"img0": 1, "img1": 2}
    assert "RESULT n_images=2 n_failed=1 n_cells=3" in captured.out
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.to_dict("list") == {"image": ["img0", "img1"], "n_cells": [1, 2]}
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(manifest["images"]) == {"img0", "img1"}
    assert manifest["images"]["img0"]["params"]["diameter"] == 18.0
    assert "broken" in manifest["failed"]


def test_same_file_name_in_two_folders_keeps_both(tmp_path, capsys):
    a = _write_images(tmp_path / "a", 1)
    b = _write_images(tmp_path / "b", 2)
    assert (
        main(["segment", str(a / "img0.tif"), str(b / "img0.tif"), "--out", str(tmp_path / "o"), "--quiet"])
        == 0
    )
    assert (tmp_path / "o" / "img0_labels.tif").exists() and (tmp_path / "o" / "img0_2_labels.tif").exists()
    assert set(pd.read_csv(tmp_path / "o" / "cells.csv")["image"]) == {"img0", "img0_2"}


def test_bad_arguments_are_clear(tmp_path, capsys):
    assert main(["segment", "--out", str(tmp_path)]) == 2
    assert "Give image files" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing*.tif"), "--out", str(tmp_path)]) == 2
    assert "No such file" in capsys.readouterr().err
    folder = _write_images(tmp_path / "in", 1)
    assert main(["segment", str(folder), "--out", str(tmp_path / "o"), "--param", "nonsense=1"]) == 2
    assert "Unknown parameter 'nonsense'" in capsys.readouterr().err
    assert main(["segment", str(folder), "--out", str(tmp_path / "o"), "--segmenter", "nope"]) == 2
    assert "Unknown segmenter" in capsys.readouterr().err


def test_evaluate_command(tmp_path, capsys):
    images = _write_images(tmp_path / "images")
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):
        m = np.zeros((96, 96), np.uint16)
        for k, c in enumerate([(25, 25), (70, 60)][: i + 1]):
            m[disk(c, 9, shape=m.shape)] = k + 1
        tifffile.imwrite(masks / f"img{i}.tif", m)
    assert (
        main(["evaluate", "--images", str(images), "--masks", str(masks), "--diameter", "18", "--quiet"]) == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ap50=1.0000") and last.endswith("n_images=2")


@pytest.mark.parametrize("argv", [["--version"], ["segment", "--help"]])
def test_help_and_version(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
