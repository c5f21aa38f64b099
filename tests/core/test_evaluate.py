"""Matched-instance AP against hand-computed cases (StarDist / DSB 2018 definition)."""

import numpy as np
import pytest
import tifffile

from napari_phenotyper.core.evaluate import (
    AP_THRESHOLDS,
    average_precision,
    iou_matrix,
    iter_evaluate_folder,
    match_masks,
    match_stats,
    summarize,
)
from napari_phenotyper.core.progress import run


def squares(*boxes, shape=(40, 40), ids=None):
    lab = np.zeros(shape, np.int32)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        lab[y0:y1, x0:x1] = ids[k] if ids else k + 1
    return lab


GT = squares((0, 0, 10, 10), (0, 20, 10, 30), (20, 0, 30, 10))


def test_perfect_match_with_other_ids():
    pred = squares((0, 0, 10, 10), (0, 20, 10, 30), (20, 0, 30, 10), ids=[7, 3, 99])
    ap = average_precision(GT, pred)
    assert ap["ap50"] == 1.0 and ap["ap50_95"] == 1.0 and ap["n_true"] == ap["n_pred"] == 3
    s = match_stats(GT, pred, (0.9,))[0.9]
    assert (s.tp, s.fp, s.fn, s.mean_matched_iou) == (3, 0, 0, 1.0)


def test_one_missed_object():
    pred = squares((0, 0, 10, 10), (0, 20, 10, 30))
    s = match_stats(GT, pred, (0.5,))[0.5]
    assert (s.tp, s.fp, s.fn) == (2, 0, 1)
    assert s.ap == pytest.approx(2 / 3) and s.precision == 1.0 and s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(0.8)


def test_split_object():
    # GT square 0 split in two halves: each half has IoU 0.5 with it -> one match at 0.5 at most
    pred = squares((0, 0, 10, 5), (0, 5, 10, 10), (0, 20, 10, 30), (20, 0, 30, 10))
    s50 = match_stats(GT, pred, (0.5,))[0.5]
    assert (s50.tp, s50.fp, s50.fn) == (3, 1, 0)  # IoU exactly 0.5 counts (>=)
    s55 = match_stats(GT, pred, (0.55,))[0.55]
    assert (s55.tp, s55.fp, s55.fn) == (2, 2, 1)
    assert s55.ap == pytest.approx(2 / 5)


def test_merged_objects():
    gt = squares((0, 0, 10, 10), (0, 10, 10, 20))  # two touching squares
    pred = squares((0, 0, 10, 20))  # predicted as one
    s = match_stats(gt, pred, (0.5,))[0.5]
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)  # IoU 0.5 with either: one match
    s = match_stats(gt, pred, (0.6,))[0.6]
    assert (s.tp, s.fp, s.fn) == (0, 1, 2) and s.ap == 0.0


def test_shifted_object_iou_and_threshold_curve():
    gt = squares((0, 0, 10, 10))
    pred = squares((0, 2, 10, 12))  # overlap 80 px, union 120 px
    iou = iou_matrix(gt, pred)
    assert iou.shape == (1, 1) and iou[0, 0] == pytest.approx(80 / 120)
    ap = average_precision(gt, pred)
    expected = [1.0 if t <= 80 / 120 else 0.0 for t in AP_THRESHOLDS]  # 0.5, 0.55, 0.6, 0.65 match
    assert ap["ap50_95"] == pytest.approx(np.mean(expected)) == pytest.approx(0.4)
    assert match_stats(gt, pred, (0.65,))[0.65].mean_matched_iou == pytest.approx(2 / 3)


def test_empty_cases_and_shape_mismatch():
    empty = np.zeros((40, 40), np.int32)
    assert average_precision(empty, empty)["ap50"] == 1.0
    assert average_precision(GT, empty)["ap50"] == 0.0
    assert average_precision(empty, GT)["ap50"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        average_precision(GT, np.zeros((10, 10), np.int32))


def test_optimal_not_greedy_matching():
    # pred A overlaps gt 1 (IoU .6) and gt 2 (IoU .55); pred B only gt 1 (IoU .7)
    # greedy by pred order could match A-1 and leave B and 2 unmatched; optimal gives 2 TP at 0.5.
    gt = np.zeros((1, 100), np.int32)
    gt[0, 0:50] = 1
    gt[0, 50:100] = 2
    pred = np.zeros((1, 100), np.int32)
    pred[0, 0:35] = 2  # B: IoU 35/50 = .7 with gt 1
    pred[0, 40:80] = 1  # A: IoU 30/60 = .5 with gt 2, 10/80 with gt 1
    s = match_stats(gt, pred, (0.5,))[0.5]
    assert s.tp == 2 and s.ap == 1.0


def test_folder_evaluation_matches_by_stem(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        img = np.full((64, 64), 10, np.uint16)
        img[10:30, 10:30] = 1000
        tifffile.imwrite(images / f"{name}.tif", img)
        mask = np.zeros((64, 64), np.uint16)
        mask[10:30, 10:30] = 5
        tifffile.imwrite(masks / (f"{name}_mask.tif" if name == "b" else f"{name}.tif"), mask)
    tifffile.imwrite(images / "lonely.tif", np.zeros((64, 64), np.uint16))
    pairs, lone_i, lone_m = match_masks(images, masks)
    assert [(i.name, m.name) for i, m in pairs] == [("a.tif", "a.tif"), ("b.tif", "b_mask.tif")]
    assert [p.name for p in lone_i] == ["lonely.tif"] and lone_m == []
    with pytest.warns(UserWarning, match="1 image\\(s\\) without a mask"):
        df = run(iter_evaluate_folder(images, masks, diameter=20.0))
    assert list(df["image"]) == ["a.tif", "b.tif"]
    assert df["ap50"].tolist() == [1.0, 1.0]
    assert summarize(df) == {"ap50": 1.0, "ap50_95": pytest.approx(df["ap50_95"].mean()), "n_images": 2}


def test_folder_without_pairs_is_a_clear_error(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    tifffile.imwrite(tmp_path / "i" / "x.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="has a mask"):
        run(iter_evaluate_folder(tmp_path / "i", tmp_path / "m"))


def test_kaggle_rule_counts_only_iou_strictly_above_the_threshold():
    """Issue 17: StarDist matches at IoU >= t, the DSB 2018 Kaggle metric at IoU > t."""
    gt = squares((0, 0, 10, 10), (20, 20, 30, 30))
    # object 1: 50 of 100 pixels, IoU exactly 0.5; object 2: IoU 0.81 (a 9x9 inside 10x10)
    pred = squares((0, 0, 10, 5), (20, 20, 29, 29))
    np.testing.assert_allclose(sorted(iou_matrix(gt, pred).max(axis=1)), [0.5, 0.81])
    ours = average_precision(gt, pred)
    kaggle = average_precision(gt, pred, rule="kaggle")
    assert ours["ap50"] == 1.0  # 2 TP
    assert kaggle["ap50"] == pytest.approx(1 / 3)  # 1 TP, 1 FP, 1 FN
    # above 0.5 the rules agree but at a threshold hit exactly (0.8 < 0.81: both match)
    for t in AP_THRESHOLDS[1:]:
        assert ours["per_threshold"][t].tp == kaggle["per_threshold"][t].tp
    tie = squares((0, 0, 10, 10))
    assert match_stats(tie, squares((0, 0, 10, 8)), 0.8)[0.8].tp == 1
    assert match_stats(tie, squares((0, 0, 10, 8)), 0.8, rule="kaggle")[0.8].tp == 0
    # below 0.5 the assignment path honours the rule too
    assert match_stats(tie, squares((0, 0, 10, 3)), 0.3)[0.3].tp == 1
    assert match_stats(tie, squares((0, 0, 10, 3)), 0.3, rule="kaggle")[0.3].tp == 0
    with pytest.raises(ValueError, match="Unknown IoU rule"):
        average_precision(gt, pred, rule="dsb")
