import numpy as np
import pytest

from napari_phenotyper.core.classify.transfer import transfer_annotations


def test_annotations_follow_relabelled_and_reshaped_cells():
    old = np.zeros((30, 30), np.uint32)
    old[0:10, 0:10] = 1
    old[0:10, 20:30] = 2
    old[20:30, 0:10] = 3
    new = np.zeros_like(old)
    new[0:10, 1:11] = 7  # cell 1 shifted by one pixel: IoU 90/110
    new[0:10, 20:30] = 4  # cell 2 relabelled
    new[20:30, 0:4] = 9  # cell 3 mostly erased: IoU 0.4
    res = transfer_annotations(old, new, {1: "mitosis", 2: "interphase", 3: "apoptosis"})
    assert res.annotations == {7: "mitosis", 4: "interphase"}
    assert res.moved == {1: 7, 2: 4} and res.n_kept == 2
    assert res.lost == {3: pytest.approx(0.4)}


def test_split_and_vanished_cells_are_lost():
    old = np.zeros((10, 20), np.int32)
    old[:, :10] = 5
    new = np.zeros_like(old)
    new[:, :4] = 1
    new[:, 4:10] = 2  # split: best IoU 0.6 -> kept on the larger part
    res = transfer_annotations(old, new, {5: "a", 8: "b"})  # 8 does not exist (any more)
    assert res.annotations == {2: "a"} and res.lost == {8: 0.0}
    res = transfer_annotations(old, np.zeros_like(old), {5: "a"})
    assert res.annotations == {} and res.lost == {5: 0.0}


def test_threshold_and_errors():
    old = np.zeros((10, 10), np.int32)
    old[:5] = 1
    new = np.zeros_like(old)
    new[:3] = 1  # IoU 0.6
    assert transfer_annotations(old, new, {1: "x"}, min_iou=0.7).lost == {1: pytest.approx(0.6)}
    assert transfer_annotations(old, new, {}).annotations == {}
    with pytest.raises(ValueError, match="same image"):
        transfer_annotations(old, new[:5], {1: "x"})
    with pytest.raises(ValueError, match="min_iou"):
        transfer_annotations(old, new, {1: "x"}, min_iou=0)


def test_many_cells_fast_enough():
    rng = np.random.default_rng(0)
    cells = np.arange(1, 100 * 100 + 1).reshape(100, 100)
    old = np.repeat(np.repeat(cells, 10, 0), 10, 1).astype(np.uint32)  # 10,000 square cells
    new = np.roll(old, 1, axis=1) + 50000  # all cells shifted and relabelled
    ann = {int(k): "c" for k in rng.choice(np.unique(old), 300, replace=False)}
    res = transfer_annotations(old, new, ann)
    assert res.n_kept == 300
    assert all(v == k + 50000 for k, v in res.moved.items())
