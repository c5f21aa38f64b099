"""The command line on 3-D stacks: --dims / --spacing, the 3-D sample, 3-D tables."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_phenotyper.cli import main
from napari_phenotyper.core.pipeline import with_dimensions
from napari_phenotyper.core.segment.cellpose import CellposeParams
from napari_phenotyper.core.segment.classical import ClassicalParams
from volumes import balls


def test_segment_3d_sample_in_3d_with_ground_truth(tmp_path, capsys):
    pytest.importorskip("stardist.data")
    assert main(["segment", "--sample", "nuclei3d", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    result = next(line for line in out.splitlines() if line.startswith("RESULT"))
    ap50 = float(result.split("ap50=")[1].split()[0])
    assert ap50 >= 0.69  # the floor of tests/core/test_classical3d.py
    labels = tifffile.imread(tmp_path / "sample_nuclei3d_labels.tif")
    assert labels.shape == (31, 61, 57)
    table = pd.read_csv(tmp_path / "cells.csv")
    assert {"centroid_z", "volume", "sphericity", "n_neighbors"} <= set(table.columns)
    assert len(table) == len(np.unique(labels)) - 1
    run = json.loads((tmp_path / "run.json").read_text())
    prov = run["images"]["sample_nuclei3d"]
    assert prov["spatial_ndim"] == 3 and prov["voxel_spacing"] == [2.0, 1.0, 1.0]
    assert prov["params"]["mode"] == "3d"


def test_spacing_makes_a_tiff_stack_a_volume_and_dims_switches_back(tmp_path, capsys):
    img, _ = balls(touching=False)
    tifffile.imwrite(tmp_path / "stack.tif", img)
    out3 = tmp_path / "out3"
    assert (
        main(["segment", str(tmp_path / "stack.tif"), "--out", str(out3), "--spacing", "2,1,1", "--quiet"])
        == 0
    )
    t3 = pd.read_csv(out3 / "cells.csv")
    assert len(t3) == 3 and "volume" in t3.columns
    out2 = tmp_path / "out2"
    assert (
        main(["segment", str(tmp_path / "stack.tif"), "--out", str(out2), "--quiet", "--diameter", "16"]) == 0
    )
    t2 = pd.read_csv(out2 / "cells.csv")  # default: plane by plane, as before
    assert "axis0" in t2.columns and "volume" not in t2.columns and len(t2) > 3
    out4 = tmp_path / "out4"
    args = ["segment", str(tmp_path / "stack.tif"), "--out", str(out4), "--quiet", "--dims", "3d"]
    assert main([*args, "--param", "spacing=2,1,1"]) == 0
    assert len(pd.read_csv(out4 / "cells.csv")) == 3


def test_bad_spacing_is_a_clear_error(tmp_path, capsys):
    img, _ = balls(touching=False)
    tifffile.imwrite(tmp_path / "stack.tif", img)
    code = main(["segment", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "o"), "--spacing", "2,1"])
    assert code != 0
    assert "spacing" in capsys.readouterr().err


def test_with_dimensions_maps_one_switch_onto_each_backend():
    p = with_dimensions(ClassicalParams(), "3d", (3.0, 0.5, 0.5))
    assert p.mode == "3d" and p.spacing == (3.0, 0.5, 0.5)
    assert with_dimensions(p, "2d-per-plane").mode == "2d-per-plane"
    c = with_dimensions(CellposeParams(), "3d", (2.0, 1.0, 1.0))
    assert c.do_3D and c.anisotropy == 2.0
    stitched = with_dimensions(CellposeParams(stitch_threshold=0.4), "3d")
    assert not stitched.do_3D and stitched.stitch_threshold == 0.4  # its 2-D-then-stitch mode is kept
    flat = with_dimensions(c, "2d-per-plane")
    assert not flat.do_3D and flat.stitch_threshold == 0.0
    with pytest.raises(ValueError, match="dimensions"):
        with_dimensions(ClassicalParams(), "4d")


def test_stardist_and_cellpose_say_when_they_segment_volumes(tmp_path):
    """The pipeline measures in 3-D what a 3-D StarDist model or Cellpose's do_3D segments
    (read from the model folder's config.json: nothing loaded, no TensorFlow)."""
    from napari_phenotyper.core.pipeline import spatial_ndim_of
    from napari_phenotyper.core.segment.stardist import StarDistParams, StarDistSegmenter

    folder = tmp_path / "my3d"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"n_dim": 3, "axes": "ZYXC", "n_channel_in": 1}))
    (folder / "weights_best.h5").write_bytes(b"")
    seg = StarDistSegmenter()
    assert spatial_ndim_of(seg, StarDistParams(model=str(folder))) == 3
    assert spatial_ndim_of(seg, StarDistParams(model="2D_versatile_fluo")) == 2
    assert spatial_ndim_of(seg, StarDistParams(model="3D_demo")) == 3
    from napari_phenotyper.core.segment.cellpose import CellposeSegmenter

    assert spatial_ndim_of(CellposeSegmenter(), CellposeParams(do_3D=True)) == 3
    assert spatial_ndim_of(CellposeSegmenter(), CellposeParams(stitch_threshold=0.3)) == 3
    assert spatial_ndim_of(CellposeSegmenter(), CellposeParams()) == 2


def test_pipeline_file_keeps_the_voxel_size_and_batch_runs_in_3d(tmp_path, capsys):
    img, _ = balls(touching=False)
    tifffile.imwrite(tmp_path / "stack.tif", img)
    spec = tmp_path / "p.json"
    assert main(["pipeline", str(spec), "--spacing", "2,1,1", "--diameter", "16"]) == 0
    assert json.loads(spec.read_text())["segmenter"]["params"]["spacing"] == [2.0, 1.0, 1.0]
    out = tmp_path / "out"
    assert main(["batch", str(spec), str(tmp_path / "stack.tif"), "--out", str(out), "--quiet"]) == 0
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == 3 and "volume" in cells.columns
