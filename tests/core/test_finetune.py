"""Fine-tuning: pair checks, versions, and real StarDist / Cellpose fine-tuning runs.

StarDist runs in an engine process (TensorFlow never loads in the test process, which
the napari tests share); it starts from the small test model of ``test_stardist`` (cached
across sessions). Cellpose runs in-process from the small cellpose 3 test model of
``test_cellpose``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_stardist import TEST_MODEL, sd_split, stardist_test_model  # noqa: F401 - fixtures

from napari_phenotyper.core.finetune import (
    FinetuneRequest,
    check_training_pairs,
    default_settings,
    iter_finetune,
    load_training_folder,
    next_version_name,
    split_indices,
)
from napari_phenotyper.core.progress import TrainProgress, run

HAVE_STARDIST = all(importlib.util.find_spec(m) is not None for m in ("stardist", "tensorflow"))
FINETUNE = "napari_phenotyper.core.finetune.run:iter_finetune"


def _blobs(shape: tuple[int, int] = (96, 96), n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic image of bright discs and its label image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(10, 2, shape).astype(np.float32)
    lab = np.zeros(shape, np.int32)
    for i in range(n):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        lab[disc & (lab == 0)] = i + 1
        img[disc] += 100
    return img, lab


# --------------------------------------------------------------------------- checks


def test_pairs_are_checked_with_the_image_named():
    img, lab = _blobs()
    data = check_training_pairs([img], [lab], ["cells.tif"])
    assert data.names == ("cells.tif",) and data.masks[0].dtype == np.int32
    assert data.n_objects == len(np.unique(lab)) - 1

    cases: list[tuple[Any, Any, str]] = [
        (img, np.zeros_like(lab), "'cells.tif' has no objects"),
        (img, (lab == 1).astype(np.int32), "'cells.tif' has a single object"),
        (img, lab[:50], r"has shape \(50, 96\) but the image is \(96, 96\)"),
        (img, lab.astype(np.float32) + 0.5, "non-integer values"),
        (img, lab > 0, "binary mask"),
        (img, -lab, "negative labels"),
        (np.stack([img] * 3), lab, "channels must be the last axis"),
        (np.zeros((2, 2, 96, 96)), lab, "a 2-D"),
        (img.astype(str), lab, "pixels must be numbers"),
    ]
    for x, y, message in cases:
        with pytest.raises(ValueError, match=message):
            check_training_pairs([x], [y], ["cells.tif"])
    # float masks holding whole numbers are fine
    assert check_training_pairs([img], [lab.astype(np.float64)], ["a"]).masks[0].dtype == np.int32
    with pytest.raises(ValueError, match=r"'cells\.tif' is 96 x 96 pixels, smaller than the 128 x 128"):
        check_training_pairs([img], [lab], ["cells.tif"], min_side=128)
    with pytest.raises(ValueError, match="No training images"):
        check_training_pairs([], [])
    with pytest.raises(ValueError, match="2 training images but 1 masks"):
        check_training_pairs([img, img], [lab])
    with pytest.raises(ValueError, match="single-channel"):
        check_training_pairs([np.dstack([img, img])], [lab], max_channels=1)


def test_training_folder(tmp_path):
    import tifffile

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        img, lab = _blobs(seed=i)
        tifffile.imwrite(tmp_path / "img" / f"a{i}.tif", img)
        tifffile.imwrite(tmp_path / "lab" / f"a{i}_mask.tif", lab)
    data = load_training_folder(tmp_path / "img", tmp_path / "lab")
    assert data.names == ("a0.tif", "a1.tif") and len(data) == 2
    np.testing.assert_array_equal(data.masks[1], _blobs(seed=1)[1])
    tifffile.imwrite(tmp_path / "img" / "b.tif", _blobs()[0])
    with pytest.raises(ValueError, match=r"No mask found for 1 training image.*b\.tif"):
        load_training_folder(tmp_path / "img", tmp_path / "lab")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_training_folder(tmp_path / "nope", tmp_path / "lab")


def test_versions_and_split(tmp_path):
    assert next_version_name(tmp_path, "nuclei-ft") == "nuclei-ft"
    (tmp_path / "nuclei-ft").mkdir()
    assert next_version_name(tmp_path, "nuclei-ft") == "nuclei-ft-v2"
    (tmp_path / "nuclei-ft-v2").mkdir()
    assert next_version_name(tmp_path, "nuclei-ft") == "nuclei-ft-v3"
    assert next_version_name(tmp_path, "nuclei-ft-v2") == "nuclei-ft-v3"
    train, test = split_indices(10, 3, seed=1)
    assert (train, test) == split_indices(10, 3, seed=1)
    assert len(train) == 3 and sorted(train + test) == list(range(10))
    with pytest.raises(ValueError, match="n_train"):
        split_indices(3, 3)


def test_request_is_checked_before_any_work(tmp_path):
    img, lab = _blobs()
    base = {
        "backend": "stardist",
        "base_model": "x",
        "images": (img,),
        "masks": (lab,),
        "out_dir": str(tmp_path),
    }
    for change, message in (
        ({"backend": "unet"}, "Unknown backend"),
        ({"name": "../evil"}, "Model name"),
        ({"epochs": 0}, "epochs must be a whole number"),
        ({"learning_rate": -1.0}, "learning_rate must be a positive"),
        ({"patch_size": 100}, "multiple of 16"),
        ({"patch_size": 128}, "smaller than the 128 x 128 training patch"),
        ({"masks": (np.zeros_like(lab),)}, "has no objects"),
    ):
        with pytest.raises(ValueError, match=message):
            next(iter_finetune(FinetuneRequest(**{**base, **change})))
    assert list(tmp_path.iterdir()) == []
    assert default_settings("stardist")["epochs"] * default_settings("stardist")["steps_per_epoch"] == 500


# --------------------------------------------------------------------------- StarDist, in an engine


def _crops(
    items: list[tuple[str, np.ndarray, np.ndarray]], n: int = 3
) -> list[tuple[np.ndarray, np.ndarray]]:
    """128 x 128 top-left crops of the first ``n`` images whose crop holds at least 5 objects."""
    out = []
    for _, x, y in items:
        cx, cy = x[:128, :128], y[:128, :128]
        if len(np.unique(cy)) > 5:
            out.append((cx, cy))
        if len(out) == n:
            return out
    raise AssertionError("not enough images with objects in their corner")


def _crop_pairs(split: Any) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Two training crops and one validation crop of held-out DSB images (small: fast epochs)."""
    (x0, y0), (x1, y1), (x2, y2) = _crops(split.test)
    return [x0, x1], [y0, y1], x2, y2


@pytest.fixture(scope="module")
def ft_engine(stardist_test_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:  # noqa: F811
    import shutil

    from napari_phenotyper.core.engine import EngineProcess

    models = tmp_path_factory.mktemp("ft-models")
    shutil.copytree(stardist_test_model.path, models / "stardist" / TEST_MODEL)
    engine = EngineProcess(start_timeout=180)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
        mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras")))
        mp.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
        mp.setenv("OMP_NUM_THREADS", "2")
        engine.start()
    yield engine, models
    engine.shutdown()


@pytest.mark.skipif(not HAVE_STARDIST, reason="stardist and tensorflow are not installed")
@pytest.mark.timeout(900)
def test_stardist_finetune_versions_history_and_metadata(ft_engine, sd_split):  # noqa: F811
    engine, models = ft_engine
    xs, ys, xv, yv = _crop_pairs(sd_split)
    req = FinetuneRequest(
        backend="stardist",
        base_model=TEST_MODEL,
        images=tuple(xs),
        masks=tuple(ys),
        image_names=("a", "b"),
        val_images=(xv,),
        val_masks=(yv,),
        name="dsb-ft",
        epochs=2,
        steps_per_epoch=2,
        patch_size=64,
        batch_size=2,
    )
    records: list[Any] = []
    first = run(engine.run(FINETUNE, req), records.append)
    epochs = [r for r in records if isinstance(r, TrainProgress)]
    assert [r.epoch for r in epochs] == [0, 1, 2]
    assert 0.0 <= epochs[0].metrics["val_ap50"] <= 1.0  # the base model, before any training
    assert all("loss" in r.metrics and r.seconds_per_step > 0 for r in epochs[1:])
    assert first.name == "dsb-ft" and Path(first.path) == models / "stardist" / "dsb-ft"
    assert len(first.history["val_ap50"]) == 2 and first.val_ap50_best == max(first.history["val_ap50"])
    meta = json.loads((Path(first.path) / "model.json").read_text())
    assert meta["base_model"] == TEST_MODEL and meta["validation"]["best_epoch"] in (1, 2)
    assert meta["finetune"]["image_names"] == ["a", "b"]
    assert meta["finetune"]["settings"]["patch_size"] == 64
    assert meta["finetune"]["val_ap50_before"] == pytest.approx(epochs[0].metrics["val_ap50"])
    assert {i["split"] for i in meta["training"]["images"]} == {"train", "validation"}
    assert (Path(first.path) / "thresholds.json").is_file()

    # the same name again: a new version; the first one is untouched
    stamp = (Path(first.path) / "weights_best.h5").stat().st_mtime_ns
    second = run(engine.run(FINETUNE, req))
    assert second.name == "dsb-ft-v2"
    assert (Path(first.path) / "weights_best.h5").stat().st_mtime_ns == stamp

    # the new model segments through the plugin's segmenter, by name
    from napari_phenotyper.core.segment.stardist import StarDistParams

    labels = run(
        engine.run("napari_phenotyper.core.segment.stardist:segment_job", xv, StarDistParams(model="dsb-ft"))
    )
    assert labels.shape == xv.shape and labels.max() > 0


@pytest.mark.skipif(not HAVE_STARDIST, reason="stardist and tensorflow are not installed")
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.timeout(900)
def test_stardist_cancel_keeps_the_best_only_when_asked(ft_engine, sd_split, keep):  # noqa: F811
    engine, models = ft_engine
    xs, ys, xv, yv = _crop_pairs(sd_split)
    name = f"cancel-{keep}"
    req = FinetuneRequest(
        backend="stardist",
        base_model=TEST_MODEL,
        images=tuple(xs),
        masks=tuple(ys),
        val_images=(xv,),
        val_masks=(yv,),
        name=name,
        epochs=200,
        steps_per_epoch=2,
        patch_size=64,
        batch_size=2,
        keep_on_cancel=keep,
    )
    job = engine.job(FINETUNE, req)
    from napari_phenotyper.core.engine import EngineCancelled

    def cancel_after_first_epoch() -> None:
        for record in job.steps():
            if isinstance(record, TrainProgress) and record.epoch >= 1:
                job.cancel()

    with pytest.raises(EngineCancelled):
        cancel_after_first_epoch()
    folder = models / "stardist" / name
    assert folder.exists() == keep
    leftovers = [p.name for p in (models / "stardist").iterdir() if p.name.startswith(f".{name}")]
    assert leftovers == []
    if keep:
        meta = json.loads((folder / "model.json").read_text())
        assert meta["cancelled"] is True and meta["training"]["epochs_run"] >= 1
        assert (folder / "weights_best.h5").is_file() and (folder / "thresholds.json").is_file()
    # the engine is still usable (or restarted) afterwards
    assert run(engine.run("napari_phenotyper.core.engine._selftest:count", 2)) == 2


@pytest.mark.skipif(not HAVE_STARDIST, reason="stardist and tensorflow are not installed")
@pytest.mark.timeout(900)
def test_cli_finetune_then_evaluate(ft_engine, sd_split, tmp_path):  # noqa: F811
    import tifffile

    _, models = ft_engine
    xs, ys, xv, yv = _crop_pairs(sd_split)
    for sub in ("img", "lab", "vimg", "vlab"):
        (tmp_path / sub).mkdir()
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        tifffile.imwrite(tmp_path / "img" / f"c{i}.tif", x)
        tifffile.imwrite(tmp_path / "lab" / f"c{i}.tif", y)
    tifffile.imwrite(tmp_path / "vimg" / "v.tif", xv)
    tifffile.imwrite(tmp_path / "vlab" / "v.tif", yv)
    env = {**os.environ, "NAPARI_PHENOTYPER_MODELS": str(models), "NAPARI_PHENOTYPER_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "napari_phenotyper.cli"]
    args = ["finetune", "--backend", "stardist", "--base", TEST_MODEL, "--images", str(tmp_path / "img")]
    args += ["--masks", str(tmp_path / "lab"), "--val-images", str(tmp_path / "vimg")]
    args += ["--val-masks", str(tmp_path / "vlab"), "--epochs", "1", "--steps-per-epoch", "2"]
    args += ["--patch-size", "64", "--name", "cli-ft", "--quiet"]
    out = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT backend=stardist name=cli-ft train_s=") and "val_ap50_best=" in last
    ev = ["evaluate", "--segmenter", "stardist", "--model", "cli-ft", "--images", str(tmp_path / "vimg")]
    ev += ["--masks", str(tmp_path / "vlab")]
    out = subprocess.run(cmd + ev, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("RESULT ap50=")
    # a clear error for an empty mask, naming the file
    tifffile.imwrite(tmp_path / "lab" / "c1.tif", np.zeros_like(ys[1]))
    out = subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2 and "'c1.tif' has no objects" in out.stderr


# --------------------------------------------------------------------------- Cellpose 3, in-process

from test_cellpose import V3, _split, one_torch_thread, trained_models_dir  # noqa: E402, F401 - fixtures


@pytest.mark.skipif(not V3, reason="fine-tunes the cellpose 3 test model")
@pytest.mark.timeout(900)
@pytest.mark.filterwarnings("ignore::UserWarning:(torch|cellpose)\\b")
@pytest.mark.filterwarnings("ignore::FutureWarning:(torch|cellpose)\\b")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:(torch|cellpose)\\b")
@pytest.mark.filterwarnings("ignore:.*Sparse invariant checks.*:UserWarning")
def test_cellpose_finetune_scores_every_epoch_and_keeps_the_best(
    trained_models_dir,  # noqa: F811
    shared_data,
    tmp_path,
    monkeypatch,
):
    import shutil

    from napari_phenotyper.core.finetune.run import score_model
    from napari_phenotyper.core.segment.cellpose import CellposeParams, CellposeSegmenter

    models = tmp_path / "models"
    shutil.copytree(trained_models_dir / "cellpose", models / "cellpose")
    monkeypatch.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
    monkeypatch.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cp"))
    _, test = _split(shared_data)
    crop = (slice(0, 128), slice(0, 128))
    # The test models are trained on the machine that runs the tests, so they differ from one
    # machine to the next. Validate on the crop the base model segments best and check first
    # that it does find the cells there: fine-tuning a base model that sees nothing proves nothing.
    crops = _crops(test, n=4)
    base_ap = [run(score_model("cellpose", "test_nuclei", [x[crop]], [y[crop]])) for x, y in crops]
    best = int(np.argmax(base_ap))
    assert base_ap[best] >= 0.5, f"the base test model segments none of the crops well: AP@0.5 {base_ap}"
    (xv, yv) = crops.pop(best)
    (x0, y0), (x1, y1) = crops[:2]
    req = FinetuneRequest(
        backend="cellpose",
        base_model="test_nuclei",
        images=(x0[crop], x1[crop]),
        masks=(y0[crop], y1[crop]),
        val_images=(xv[crop],),
        val_masks=(yv[crop],),
        epochs=3,
        batch_size=2,
        patch_size=64,
        device="cpu",
    )
    records: list[Any] = []
    result = run(iter_finetune(req), records.append)
    epochs = [r for r in records if isinstance(r, TrainProgress)]
    assert [r.epoch for r in epochs] == [0, 1, 2, 3]
    assert all("val_ap50" in r.metrics for r in epochs)
    assert all(r.metrics["loss"] > 0 for r in epochs[1:])
    assert result.name == "test_nuclei-ft" and result.history["val_ap50"] == [
        r.metrics["val_ap50"] for r in epochs[1:]
    ]
    meta = json.loads((models / "cellpose" / "test_nuclei-ft" / "model.json").read_text())
    assert meta["validation"]["best_ap50"] == max(result.history["val_ap50"])
    assert meta["finetune"]["settings"]["patch_size"] == 64 and meta["base_model"] == "test_nuclei"
    assert epochs[0].metrics["val_ap50"] == pytest.approx(base_ap[best])
    # three short epochs (cellpose warms its learning rate up) keep what the base model could do
    labels = run(CellposeSegmenter().segment(xv[crop], CellposeParams(model=result.name, device="cpu")))
    assert labels.shape == (128, 128) and labels.max() > 0

    # cancelled after the first epoch, keeping the best so far, under the next version's name
    gen = iter_finetune(FinetuneRequest(**{**req.__dict__, "epochs": 50, "keep_on_cancel": True}))
    for record in gen:
        if isinstance(record, TrainProgress) and record.epoch >= 1:
            break
    gen.close()
    kept = models / "cellpose" / "test_nuclei-ft-v2"
    meta = json.loads((kept / "model.json").read_text())
    assert meta["cancelled"] is True and (kept / "weights.pth").is_file()
    assert not list((models / "cellpose").glob(".*training"))


@pytest.mark.parametrize("error", ["ResourceExhaustedError", "OutOfMemoryError", "RuntimeError"])
def test_out_of_memory_says_what_to_change(tmp_path, monkeypatch, error):
    from napari_phenotyper.core.finetune import run as ft_run

    def oom(*_args: Any, **_kwargs: Any) -> Any:
        if error == "RuntimeError":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
        raise type(error, (Exception,), {})("OOM when allocating tensor")
        yield  # pragma: no cover - a generator, like the real trainers

    monkeypatch.setattr(ft_run, "_train_stardist", oom)
    img, lab = _blobs()
    req = FinetuneRequest(
        backend="stardist", base_model=None, images=(img,), masks=(lab,), out_dir=str(tmp_path), batch_size=4
    )
    with pytest.raises(MemoryError, match=r"smaller batch size \(now 4\) or patch size \(now 96\)"):
        run(iter_finetune(req))
    assert list(tmp_path.iterdir()) == []
