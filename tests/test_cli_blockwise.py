"""The segment command on OME-Zarr images, block by block (docs/large-images.md)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_phenotyper.cli import main
from napari_phenotyper.core.synthetic import NucleiField
from napari_phenotyper.io.ome_zarr import create_ome_zarr, open_ome_zarr, write_ome_zarr

pytest.importorskip("zarr")

FIELD = NucleiField((600, 700), seed=5)


@pytest.fixture(scope="module")
def image():
    return FIELD.render(0, 600, 0, 700)


def _write(path, image):
    return write_ome_zarr(
        path, image.shape, image.dtype, lambda y0, y1, x0, x1: image[y0:y1, x0:x1], chunks=256
    )


def test_ome_zarr_block_wise_from_the_command_line(tmp_path, capsys, image):
    src = _write(tmp_path / "in" / "slide.ome.zarr", image)
    tifffile.imwrite(tmp_path / "in" / "same.tif", image)
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(tmp_path / "in"),
            "--out",
            str(out),
            "--block-size",
            "256",
            "--diameter",
            "19",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "slide: " in captured.out and "block-wise: 9 blocks of 256 px, overlap 38 px" in captured.out
    # the TIFF of the same image, also larger than one block, goes block-wise too
    assert sorted(p.name for p in out.iterdir()) == [
        "cells.csv",
        "run.json",
        "same_labels.zarr",
        "slide_labels.zarr",
        "summary.csv",
    ]
    labels = open_ome_zarr(out / "slide_labels.zarr").data[:]
    cells = pd.read_csv(out / "cells.csv", dtype={"image": str})
    assert list(cells.columns[:2]) == ["image", "label"]
    slide = cells[cells["image"] == "slide"]
    assert sorted(slide["label"]) == list(range(1, labels.max() + 1)) == sorted(np.unique(labels)[1:])
    assert len(slide) >= 0.97 * (len(np.unique(FIELD.render(0, 600, 0, 700, labels=True))) - 1)
    summary = pd.read_csv(out / "summary.csv", dtype={"image": str})
    assert summary.set_index("image")["n_cells"].to_dict() == cells.groupby("image").size().to_dict()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["images"]["slide"]["blockwise"]["n_blocks"] == 9
    assert manifest["images"]["slide"]["source"] == "ome-zarr"
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("RESULT n_images=2 n_failed=0") and f"n_cells={len(cells)}" in last
    assert src.exists()  # the input is left alone


def test_small_ome_zarr_is_segmented_in_memory(tmp_path, capsys, image):
    _write(tmp_path / "small.zarr", image)
    rc = main(
        ["segment", str(tmp_path / "small.zarr"), "--out", str(tmp_path / "o"), "--diameter", "19", "--quiet"]
    )
    assert rc == 0
    assert (tmp_path / "o" / "small_labels.tif").exists()
    whole = tifffile.imread(tmp_path / "o" / "small_labels.tif")
    rc = main(
        [
            "segment",
            str(tmp_path / "small.zarr"),
            "--out",
            str(tmp_path / "b"),
            "--block-size",
            "256",
            "--diameter",
            "19",
            "--quiet",
            "--no-labels",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cells.csv", "run.json", "summary.csv"]
    n_blockwise = len(pd.read_csv(tmp_path / "b" / "cells.csv"))
    assert abs(n_blockwise - int(whole.max())) <= 0.02 * whole.max()


def test_channel_of_a_multichannel_ome_zarr(tmp_path, capsys, image):
    arr = create_ome_zarr(tmp_path / "mc.zarr", (2, *image.shape), image.dtype, chunks=(1, 256, 256))
    arr[1] = image
    out = tmp_path / "o"
    rc = main(
        [
            "segment",
            str(tmp_path / "mc.zarr"),
            "--channel",
            "1",
            "--out",
            str(out),
            "--block-size",
            "256",
            "--diameter",
            "19",
            "--quiet",
            "--features",
            "shape",
        ]
    )
    assert rc == 0
    n1 = len(pd.read_csv(out / "cells.csv"))
    assert n1 > 300
    rc = main(
        [
            "segment",
            str(tmp_path / "mc.zarr"),
            "--channel",
            "0",
            "--out",
            str(tmp_path / "o0"),
            "--block-size",
            "256",
            "--diameter",
            "19",
            "--quiet",
            "--features",
            "shape",
        ]
    )
    assert rc == 0  # an empty channel: an image without cells
    assert "RESULT n_images=1 n_failed=0 n_cells=0" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "o0" / "cells.csv")) == 0


def test_bad_block_options(tmp_path, capsys, image):
    _write(tmp_path / "x.zarr", image)
    assert main(["segment", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "o"), "--block-size", "8"]) == 2
    assert "--block-size" in capsys.readouterr().err
    rc = main(
        [
            "segment",
            str(tmp_path / "x.zarr"),
            "--out",
            str(tmp_path / "o"),
            "--block-size",
            "64",
            "--overlap",
            "50",
            "--quiet",
        ]
    )
    assert rc == 1
    assert "half the block size" in capsys.readouterr().err
