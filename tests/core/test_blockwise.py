"""Block-wise segmentation: stitching across block borders and corners, features, progress, cancel."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from napari_phenotyper.core.blockwise import BlockGrid, default_overlap, iter_segment_blockwise
from napari_phenotyper.core.evaluate import average_precision
from napari_phenotyper.core.features import compute_features
from napari_phenotyper.core.pipeline import MeasureParams, iter_measure
from napari_phenotyper.core.progress import Progress, run
from napari_phenotyper.core.segment.base import SegmentationError
from napari_phenotyper.core.segment.classical import ClassicalParams, estimate_diameter, segment_plane
from napari_phenotyper.core.synthetic import NucleiField

B = 128  # block side in these tests


# ----------------------------------------------------------------------------- helpers
@dataclasses.dataclass(frozen=True)
class ThresholdParams:
    level: float = 500.0
    diameter: float = 20.0
    shift: int = 0  # > 0: every object moved this far towards the block's centre (a biased segmenter)


class ThresholdSegmenter:
    """A purely local segmenter (threshold + connected components): its block-wise result must
    equal its whole-image one exactly."""

    name: ClassVar[str] = "threshold"
    display_name: ClassVar[str] = "Threshold"
    params_type: ClassVar[type] = ThresholdParams
    spatial_ndim: ClassVar[int] = 2

    def segment(self, image: np.ndarray, params: ThresholdParams) -> Generator[Progress, None, np.ndarray]:
        yield Progress(0, 1, "thresholding")
        lab, _ = ndi.label(np.asarray(image) > params.level)
        if params.shift and lab.max():
            cy, cx = ndi.center_of_mass(lab > 0)
            dy = int(np.sign(image.shape[0] / 2 - cy)) * params.shift
            dx = int(np.sign(image.shape[1] / 2 - cx)) * params.shift
            lab = np.roll(lab, (dy, dx), axis=(0, 1))
        yield Progress(1, 1, "done")
        return lab.astype(np.uint32)

    def device(self, params: ThresholdParams) -> str:
        return "CPU"


def border_disks(shape=(3 * B + 40, 3 * B + 17), radius=9, seed=0):
    """Disks centred exactly on block borders and corners (and a few inside blocks), with noise."""
    rng = np.random.default_rng(seed)
    centres = []
    for y in range(B, shape[0] - radius, B):  # every corner between four blocks
        for x in range(B, shape[1] - radius, B):
            centres.append((y, x))
    for y in range(B, shape[0] - radius, B):  # on horizontal borders, off the corners
        centres += [(y, x) for x in (40, B + 60, 2 * B + 30) if x < shape[1] - radius]
    for x in range(B, shape[1] - radius, B):  # on vertical borders (and straddling by half a pixel)
        centres += [(y + 0.5, x - 0.5) for y in (50, B + 70, 2 * B + 90) if y < shape[0] - radius]
    centres += [(60, 60), (2 * B + 64, B + 64), (shape[0] - 12, shape[1] - 12)]  # inside; at the image corner
    truth = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        truth[disk((cy, cx), radius, shape=shape)] = k
    image = (100 + rng.normal(0, 10, shape) + 1000 * (truth > 0)).astype(np.float32)
    return image, truth


def match(a: np.ndarray, b: np.ndarray) -> dict[int, tuple[int, float]]:
    """Each object of ``a`` -> (number of objects of ``b`` it overlaps, best IoU)."""
    out = {}
    for k, sl in enumerate(ndi.find_objects(a), 1):
        if sl is None:
            continue
        ma = a[sl] == k
        ids, counts = np.unique(b[sl][ma], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if not len(ids):
            out[k] = (0, 0.0)
            continue
        best = ids[np.argmax(counts)]
        union = ma.sum() + (b == best).sum() - counts.max()
        out[k] = (len(ids), counts.max() / union)
    return out


def relabel_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same objects, ids aside."""
    if ((a > 0) != (b > 0)).any():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


# ----------------------------------------------------------------------------- stitching
def test_local_segmenter_block_wise_equals_whole_image():
    image, truth = border_disks()
    seg = ThresholdSegmenter()
    res = run(iter_segment_blockwise(image, seg, ThresholdParams(), block_size=B, overlap=24, features=False))
    whole = run(seg.segment(image, ThresholdParams()))
    assert res.n_objects == whole.max() == truth.max()
    assert relabel_equal(res.labels, whole)
    assert relabel_equal(res.labels, truth)
    assert sorted(np.unique(res.labels))[1:] == list(range(1, res.n_objects + 1))  # ids 1..n
    bw = res.provenance["blockwise"]
    assert bw["grid"] == [4, 4]
    assert bw["oversized"] == bw["duplicates"] == bw["rescued"] == bw["conflict_pixels"] == 0


def test_classical_on_objects_across_borders_and_corners():
    image, truth = border_disks()
    params = ClassicalParams(diameter=18)
    res = run(iter_segment_blockwise(image, "classical", params, block_size=B, features=False))
    whole = segment_plane(image, params)
    assert res.n_objects == whole.max() == truth.max()
    for k, (n_overlapping, iou) in match(truth, res.labels).items():  # none split, none lost
        assert n_overlapping == 1, k
        assert iou > 0.8, k  # the classical threshold leaves out a disk's dim rim pixels
    for k, (n_overlapping, _) in match(res.labels, truth).items():  # none duplicated or spurious
        assert n_overlapping == 1, k
    vs_whole = match(whole, res.labels)  # the same objects as the whole-image run
    assert all(n == 1 for n, _ in vs_whole.values())
    assert min(iou for _, iou in vs_whole.values()) > 0.95


def test_synthetic_field_block_wise_matches_whole_image():
    field = NucleiField((520, 610), seed=4, offset=(3.0, 7.0))
    image, truth = field.render(0, 520, 0, 610), field.render(0, 520, 0, 610, labels=True)
    params = ClassicalParams(diameter=field.diameter)
    res = run(iter_segment_blockwise(image, "classical", params, block_size=B, features=False))
    whole = segment_plane(image, params)
    ap = average_precision(whole, np.asarray(res.labels))
    assert res.n_objects == whole.max()
    assert ap["ap50"] == 1.0
    assert ap["per_threshold"][0.5].mean_matched_iou > 0.98
    # all but slivers of nuclei cut by the image's edge (smaller than the segmenter's min_size)
    assert average_precision(truth, np.asarray(res.labels))["ap50"] > 0.98


def test_an_object_two_blocks_both_keep_is_written_once():
    # One disk straddling the border x = B; the biased segmenter moves it towards each
    # block's centre, so both blocks find its centroid in their own core.
    image = np.zeros((B, 2 * B), np.float32)
    image[disk((64, B - 0.5), 8, shape=image.shape)] = 1000
    seg = ThresholdSegmenter()
    params = ThresholdParams(shift=2)
    res = run(iter_segment_blockwise(image, seg, params, block_size=B, overlap=32))
    assert res.n_objects == 1
    assert res.provenance["blockwise"]["duplicates"] == 1
    assert np.unique(res.labels).tolist() == [0, 1]
    assert len(res.features) == 1


def test_an_object_each_block_puts_in_the_other_is_not_lost():
    # The biased segmenter now moves the straddling disk away from each block's centre:
    # block 0 sees its centroid in block 1's core and block 1 in block 0's. Block 1 rescues it.
    image = np.zeros((B, 2 * B), np.float32)
    image[disk((64, B - 0.5), 8, shape=image.shape)] = 1000
    res = run(
        iter_segment_blockwise(
            image, ThresholdSegmenter(), ThresholdParams(shift=-2), block_size=B, overlap=32
        )
    )
    assert res.n_objects == 1
    bw = res.provenance["blockwise"]
    assert (bw["rescued"], bw["duplicates"]) == (1, 0)
    assert len(res.features) == 1


def test_objects_larger_than_the_overlap_are_reported():
    image = np.zeros((2 * B, 2 * B), np.float32)
    image[disk((B, B - 10), 30, shape=image.shape)] = 1000  # 60 px across, overlap 16
    res = run(
        iter_segment_blockwise(image, ThresholdSegmenter(), ThresholdParams(), block_size=B, overlap=16)
    )
    assert res.provenance["blockwise"]["oversized"] >= 1
    assert res.n_objects >= 1


def test_default_overlap_and_grid_checks():
    assert default_overlap(ClassicalParams(diameter=30)) == 60
    assert default_overlap(ClassicalParams(diameter=5)) == 16
    assert default_overlap(object()) == 64
    grid = BlockGrid((300, 130), 128, 20)
    assert (grid.rows, grid.cols, len(grid)) == (3, 2, 6)
    assert grid.core(2, 1) == (256, 300, 128, 130)
    assert grid.crop(1, 0) == (108, 276, 0, 130)
    with pytest.raises(ValueError, match="half the block size"):
        BlockGrid((300, 300), 64, 40)
    with pytest.raises(SegmentationError, match="2-D"):
        run(iter_segment_blockwise(np.zeros((2, 3, 64, 64)), "classical"))
    with pytest.raises(ValueError, match="shape"):
        run(iter_segment_blockwise(np.zeros((64, 64)), "classical", labels_out=np.zeros((64, 65), np.uint32)))


def test_image_smaller_than_one_block_equals_whole_image():
    image, _ = border_disks((100, 90))
    params = ClassicalParams(diameter=18)
    res = run(iter_segment_blockwise(image, "classical", params, block_size=B))
    assert relabel_equal(np.asarray(res.labels), segment_plane(image, params))


def test_channel_axis_selects_the_channel():
    image, _ = border_disks()
    stack = np.stack([np.zeros_like(image), image, image[::-1]])  # (C, Y, X)
    seg, params = ThresholdSegmenter(), ThresholdParams()
    one = run(
        iter_segment_blockwise(stack, seg, params, block_size=B, channel_axis=0, channel=1, features=False)
    )
    ref = run(iter_segment_blockwise(image, seg, params, block_size=B, features=False))
    assert np.array_equal(one.labels, ref.labels)


# ----------------------------------------------------------------------------- real data
def test_real_image_block_wise_nearly_equals_whole_image(shared_data):
    import tifffile

    # 512 x 512, nuclei about 23 px across: four blocks whose borders cross the middle.
    # Each block gets its own threshold (as tiles processed one by one), so the result is
    # close to, not identical with, the whole-image run.
    image = tifffile.imread(shared_data / "stardist_sample" / "img2d.tif")
    params = ClassicalParams(diameter=estimate_diameter(image))
    res = run(iter_segment_blockwise(image, "classical", params, block_size=256, features=False))
    whole = segment_plane(image, params)
    ap = average_precision(whole, np.asarray(res.labels))
    assert abs(res.n_objects - int(whole.max())) <= 0.03 * whole.max()
    assert ap["ap50"] >= 0.95
    assert ap["per_threshold"][0.5].mean_matched_iou >= 0.9
    assert res.provenance["blockwise"]["oversized"] == res.provenance["blockwise"]["duplicates"] == 0
    truth = tifffile.imread(shared_data / "stardist_sample" / "mask2d.tif")
    ap_bw = average_precision(truth, np.asarray(res.labels))["ap50"]
    ap_whole = average_precision(truth, whole)["ap50"]
    assert ap_bw >= ap_whole - 0.05  # about as accurate as the whole-image run


# ----------------------------------------------------------------------------- features
def test_features_of_stitched_cells_equal_whole_image_features():
    field = NucleiField((400, 420), seed=9, spacing=26, radius=(6.0, 10.0), jitter=2.0)
    image = field.render(0, 400, 0, 420)
    res = run(iter_segment_blockwise(image, "classical", ClassicalParams(diameter=16), block_size=B))
    labels = np.asarray(res.labels)
    whole = compute_features(labels, {"image": image})
    block = res.features.sort_values("label").reset_index(drop=True)
    assert list(block.columns) == list(whole.columns)
    assert block["label"].tolist() == whole["label"].tolist() == list(range(1, res.n_objects + 1))
    pd.testing.assert_frame_equal(block, whole, check_exact=False, rtol=1e-9, atol=1e-9)


def test_touching_neighbours_across_a_border_are_counted():
    image = np.zeros((B, 2 * B), np.float32)
    image[50:70, B - 12 : B] = 1000  # two squares touching along the border x = B
    image[50:70, B : B + 12] = 2000

    class TwoLevel(ThresholdSegmenter):
        def segment(self, image, params):
            yield Progress(0, 1)
            return np.digitize(image, [500, 1500]).astype(np.uint32)

    res = run(iter_segment_blockwise(image, TwoLevel(), ThresholdParams(), block_size=B, overlap=24))
    assert res.n_objects == 2
    assert res.features["n_neighbors"].tolist() == [1, 1]


def test_cellprofiler_positions_are_in_image_coordinates():
    image, _ = border_disks()
    measure = MeasureParams(groups=("shape", "intensity"), feature_set="cellprofiler")
    res = run(
        iter_segment_blockwise(image, ThresholdSegmenter(), ThresholdParams(), block_size=B, measure=measure)
    )
    whole = run(iter_measure(np.asarray(res.labels), {"image": image}, measure))
    block = res.features.sort_values("label").reset_index(drop=True)
    pd.testing.assert_frame_equal(block, whole, check_exact=False, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- outputs
def test_zarr_labels_and_streamed_table(tmp_path):
    image, truth = border_disks()
    seg, params = ThresholdSegmenter(), ThresholdParams()
    mem = run(iter_segment_blockwise(image, seg, params, block_size=B))
    res = run(
        iter_segment_blockwise(
            image,
            seg,
            params,
            block_size=B,
            labels_out=tmp_path / "labels.zarr",
            table_out=tmp_path / "cells.parquet",
            image_name="img",
        )
    )
    assert res.features is None and res.table_path == tmp_path / "cells.parquet"
    assert np.array_equal(np.asarray(res.labels[:]), mem.labels)
    table = pd.read_parquet(res.table_path)
    assert list(table.columns[:2]) == ["image", "label"] and set(table["image"]) == {"img"}
    pd.testing.assert_frame_equal(table.drop(columns="image"), mem.features, check_dtype=False)
    from napari_phenotyper.io.ome_zarr import open_ome_zarr

    omz = open_ome_zarr(tmp_path / "labels.zarr")
    assert omz.axes == "yx" and omz.shape == image.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.parquet", "labels.zarr"]  # no temporaries
    # CSV too, and an array to write into
    out = np.zeros(image.shape, np.uint32)
    run(
        iter_segment_blockwise(image, seg, params, block_size=B, labels_out=out, table_out=tmp_path / "c.csv")
    )
    assert np.array_equal(out, mem.labels)
    assert len(pd.read_csv(tmp_path / "c.csv")) == mem.n_objects


def test_progress_per_block_and_cancel_leaves_nothing(tmp_path):
    image, _ = border_disks()
    records = []
    run(
        iter_segment_blockwise(image, "classical", ClassicalParams(diameter=18), block_size=B), records.append
    )
    blocks = {r.message.split(":")[0] for r in records if r.message.startswith("Block ")}
    assert blocks == {f"Block {i}/16" for i in range(1, 17)}
    assert records[-1].fraction == 1.0
    assert all(0 <= r.step <= r.total for r in records)
    assert any(r.message.startswith("Reading the image") for r in records)  # the texture range pass

    gen = iter_segment_blockwise(
        image,
        "classical",
        ClassicalParams(diameter=18),
        block_size=B,
        labels_out=tmp_path / "labels.zarr",
        table_out=tmp_path / "cells.csv",
    )
    for p in gen:
        if p.message.startswith("Block 3/"):
            break
    gen.close()  # what a cancelled worker does
    assert list(tmp_path.iterdir()) == []
