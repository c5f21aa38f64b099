"""Batch runs over OME-Zarr stores: one image each, block-wise above the size limit, resumable."""

import json

import numpy as np
import pytest
import tifffile

from napari_phenotyper.core import blockwise
from napari_phenotyper.core.batch import BatchOptions, BatchRequest, expand_inputs, iter_run_batch
from napari_phenotyper.core.pipeline_spec import PipelineSpec
from napari_phenotyper.core.progress import run
from napari_phenotyper.core.synthetic import NucleiField
from napari_phenotyper.io.ome_zarr import open_ome_zarr, write_ome_zarr
from napari_phenotyper.io.tables import parquet_available, read_table

pytestmark = pytest.mark.skipif(not parquet_available(), reason="pyarrow is not installed")

SIZE = 640
SPEC = PipelineSpec(params={"diameter": 19.0}, feature_groups=("shape", "intensity"))


def _field() -> NucleiField:
    return NucleiField((SIZE, SIZE), seed=5)


def _inputs(tmp_path):
    """The same nuclei field as an OME-Zarr store and as a TIFF, in two folders."""
    field = _field()
    zdir, tdir = tmp_path / "zarr_in", tmp_path / "tif_in"
    zdir.mkdir()
    tdir.mkdir()
    write_ome_zarr(zdir / "P1_A01_s1.ome.zarr", (SIZE, SIZE), np.uint16, field.render, chunks=128)
    tifffile.imwrite(tdir / "P1_A01_s1.tif", field.render(0, SIZE, 0, SIZE))
    return zdir, tdir


def _batch(folder, out, labels=True):
    options = BatchOptions(str(out), labels=labels)
    return run(iter_run_batch(BatchRequest(inputs=(str(folder),), pipeline=SPEC, options=options)))


@pytest.fixture
def small_blocks(monkeypatch):
    """Block-wise above 300 x 300 pixels, in blocks of 256: the 640 px store takes 9 blocks."""
    monkeypatch.setattr(blockwise, "BLOCKWISE_ABOVE", 300 * 300)
    monkeypatch.setattr(blockwise, "DEFAULT_BLOCK_SIZE", 256)


def test_expand_inputs_takes_a_zarr_store_as_one_image(tmp_path):
    zdir, tdir = _inputs(tmp_path)
    (zdir / "notes.txt").write_text("not an image")
    store = zdir / "P1_A01_s1.ome.zarr"
    assert expand_inputs([zdir]) == [store]
    assert expand_inputs([store]) == [store]
    assert expand_inputs([str(zdir / "*.zarr")]) == [store]
    assert expand_inputs([zdir, tdir]) == [store, tdir / "P1_A01_s1.tif"]


def test_batch_segments_a_large_zarr_block_wise_like_the_whole_image(tmp_path, small_blocks):
    zdir, tdir = _inputs(tmp_path)
    assert _batch(tdir, tmp_path / "out_tif").counts["processed"] == 1
    blocks = _batch(zdir, tmp_path / "out_zarr")
    assert blocks.counts["processed"] == 1 and blocks.counts["failed"] == 0
    rec = json.loads((tmp_path / "out_zarr" / "parts" / "P1_A01_s1.json").read_text())
    assert rec["status"] == "done", rec["error"]
    assert rec["blockwise"]["n_blocks"] == 9 and rec["shape"] == [SIZE, SIZE]
    # the labels are an OME-Zarr label image next to the other outputs
    assert rec["labels"] == "labels/P1_A01_s1_labels.zarr"
    labels = np.asarray(open_ome_zarr(tmp_path / "out_zarr" / rec["labels"]).data)
    assert labels.shape == (SIZE, SIZE) and labels.max() == rec["n_cells"]
    # the same cells as the whole-image run of the same segmenter (stitched, not cut)
    a = read_table(tmp_path / "out_tif" / "parts" / "P1_A01_s1.cells.parquet")
    b = read_table(tmp_path / "out_zarr" / rec["part"])
    assert abs(len(a) - len(b)) <= 2 and len(b) > 300
    assert np.median(b["area"]) == pytest.approx(np.median(a["area"]), rel=0.02)
    assert b["mean_intensity_image"].mean() == pytest.approx(a["mean_intensity_image"].mean(), rel=0.01)


def test_zarr_batch_resumes_and_notices_a_rewritten_chunk(tmp_path, small_blocks):
    zdir, _ = _inputs(tmp_path)
    out = tmp_path / "out"
    assert _batch(zdir, out, labels=False).counts["processed"] == 1
    assert not any(p.name.startswith(".") for p in out.iterdir())  # the scratch labels are gone
    assert _batch(zdir, out, labels=False).counts["skipped"] == 1
    store = zdir / "P1_A01_s1.ome.zarr"
    import zarr

    arr = zarr.open_array(store / "0", mode="r+")
    arr[0:128, 0:128] = 0  # one chunk rewritten: the folder's own time does not change
    assert _batch(zdir, out, labels=False).counts["processed"] == 1


def test_small_zarr_is_read_whole(tmp_path):
    zdir, _ = _inputs(tmp_path)  # 640 x 640: below the default block-wise limit
    out = tmp_path / "out"
    assert _batch(zdir, out).counts["processed"] == 1
    rec = json.loads((out / "parts" / "P1_A01_s1.json").read_text())
    assert rec["blockwise"] is None and rec["labels"] == "labels/P1_A01_s1_labels.tif"
    assert tifffile.imread(out / rec["labels"]).max() == rec["n_cells"] > 300
