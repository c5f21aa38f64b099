"""Click through the "Fine-tune" dock as a biologist would, with a real engine process.

A StarDist model is fine-tuned for a few steps from the small test model that
``tests/core/test_stardist.py`` trains and caches (``pheno_test_stardist``), copied into a
temporary models folder (``NAPARI_PHENOTYPER_MODELS``), offline
(``NAPARI_PHENOTYPER_OFFLINE=1``), with an empty Keras cache. TensorFlow runs only in the
engine process (``tests/napari/conftest.py`` checks that it never loads here). The
images are 256 x 256 crops of StarDist's nuclei sample (it ships inside the ``stardist``
wheel). Without stardist / TensorFlow, or without a cached test model (run
``tests/core/test_stardist.py`` once), the tests that train skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from magicgui.widgets import Container
from qtpy.QtCore import Qt

from napari_phenotyper._napari.finetune_widget import FinetuneWidget
from napari_phenotyper._napari.layers import META_KEY, find_result_layer, upsert_labels
from napari_phenotyper.core.engine import EngineProcess

HAVE_STARDIST = all(importlib.util.find_spec(m) is not None for m in ("stardist", "tensorflow"))
pytestmark = [
    pytest.mark.skipif(not HAVE_STARDIST, reason="stardist and tensorflow are not installed"),
    # the first engine start (TensorFlow imported there) lands on the first training test
    pytest.mark.timeout(900),
]

MODEL = "pheno_test_stardist"
TRAIN_TIMEOUT_MS = 300_000


def _cache_root() -> Path:
    """Where the core tests cache their trained models (``$NAPARI_PHENOTYPER_TEST_CACHE`` overrides)."""
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_CACHE", "")
    return Path(env).expanduser() if env.strip() else Path.home() / ".cache" / "napari-phenotyper-tests"


def _cached_model() -> Path | None:
    """The newest cached StarDist test model (a folder with a ``model.json``)."""
    found = [p for p in _cache_root().glob(f"stardist-*/{MODEL}") if (p / "model.json").is_file()]
    return max(found, key=lambda p: (p / "model.json").stat().st_mtime) if found else None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder holding the test model (if cached), offline, an empty Keras cache (module-wide).

    The engine process inherits this environment when it starts.
    """
    root = tmp_path_factory.mktemp("finetune")
    models = root / "models"
    (models / "stardist").mkdir(parents=True)
    src = _cached_model()
    if src is not None:
        shutil.copytree(src, models / "stardist" / MODEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
        mp.setenv("NAPARI_PHENOTYPER_HOME", str(root / "home"))
        mp.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
        mp.setenv("KERAS_HOME", str(root / "keras"))
        mp.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # 2 shared cores
        yield models


@pytest.fixture(scope="module")
def engine(models):
    """One StarDist engine process shared by this module's tests (TensorFlow is imported once)."""
    if not (models / "stardist" / MODEL).is_dir():
        pytest.skip(
            f"no cached StarDist test model under {_cache_root()}: run tests/core/test_stardist.py once"
        )
    eng = EngineProcess(start_timeout=180, grace_period=30, name="test-finetune")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def nuclei():
    """Three 256 x 256 crops of the nuclei sample and their hand-drawn labels."""
    from napari_phenotyper.samples import nuclei_2d

    image, mask = nuclei_2d()
    crops = [
        (slice(0, 256), slice(0, 256)),
        (slice(0, 256), slice(256, 512)),
        (slice(256, 512), slice(0, 256)),
    ]
    return [(np.ascontiguousarray(image[c]), np.ascontiguousarray(mask[c]).astype(np.int32)) for c in crops]


@pytest.fixture
def errors(monkeypatch):
    """Error notifications the widget showed."""
    shown: list[str] = []
    monkeypatch.setattr("napari_phenotyper._napari.finetune_widget.show_error", shown.append)
    return shown


class _SegmentDock(Container):
    """Stands in for the "Segment & measure" dock: records ``refresh_models`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.segmenter = type("Choice", (), {"value": "stardist"})()
        self.calls: list[str | None] = []

    def refresh_models(self, select: str | None = None) -> None:
        self.calls.append(select)


def _result_layer(viewer, image, labels, model: str = MODEL):
    """A labels layer as "Segment & measure" makes it (provenance pointing at ``image``)."""
    ids = np.unique(labels)
    features = pd.DataFrame({"label": ids[ids > 0]})
    prov = {"backend": "stardist", "params": {"model": model}, "measure": {"groups": ["shape"]}}
    return upsert_labels(viewer, image, labels, features, prov)


def _viewer_with_crops(make_napari_viewer, nuclei):
    viewer = make_napari_viewer()
    layers = []
    for name, (img, mask) in zip("ABC", nuclei, strict=True):
        image = viewer.add_image(img, name=f"nuclei {name}", colormap="gray")
        layers.append((image, _result_layer(viewer, image, mask)))
    return viewer, layers


def _widget(viewer, engine=None, **kwargs) -> FinetuneWidget:
    widget = FinetuneWidget(viewer, engines={"stardist": engine} if engine is not None else None, **kwargs)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.backend.value = "stardist"
    return widget


def _click(qtbot, button) -> None:
    assert button.enabled, f"{button.text} is disabled"
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def _wait_idle(qtbot, widget, timeout: int = TRAIN_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: widget._worker is None, timeout=timeout)


def _quick_settings(widget: FinetuneWidget, epochs: int) -> None:
    widget.epochs.value = epochs
    widget.steps_per_epoch.value = 3
    widget.patch_size.value = 64
    widget.batch_size.value = 4


def _model_folders(models: Path) -> set[str]:
    return {p.name for p in (models / "stardist").iterdir()}


# --------------------------------------------------------------------------- no training


def test_widget_docks_from_plugin_menu_with_backend_defaults(make_napari_viewer, models):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-phenotyper", "Fine-tune")
    assert isinstance(widget, FinetuneWidget)
    widget.backend.value = "stardist"
    assert (widget.epochs.value, widget.steps_per_epoch.value, widget.patch_size.value) == (20, 25, 256)
    assert float(widget.learning_rate.value) == pytest.approx(3e-4) and widget.batch_size.value == 4
    assert widget.steps_per_epoch.native.isVisibleTo(widget.native)
    assert widget.base is not None and widget.base.value == "2D_versatile_fluo"
    assert widget.model_name.value == "2D_versatile_fluo-ft"
    widget.base.value = "my_nuclei"
    assert widget.model_name.value == "my_nuclei-ft"  # follows the base model until edited
    widget.model_name.value = "mine"
    widget.base.value = "2D_versatile_fluo"
    assert widget.model_name.value == "mine"
    assert not widget._engines  # nothing started


def test_long_layer_names_do_not_widen_the_dock(make_napari_viewer, models):
    """Microscope file names are long: the dock must still fit napari's right-hand area."""
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    name = "2026-11-21 plate 3 well B07 site 4 H2B-mCherry 20x confocal stack max projection"
    viewer.add_image(np.zeros((64, 64), np.float32), name=name)
    viewer.add_labels(np.zeros((64, 64), np.int32), name=name + " labels")
    widget = _widget(viewer)
    widget.add_row()
    widget.model_name.value = "a-model-name-that-is-also-rather-long-for-a-dock"
    widget.result_label.value = "a-model is in /tmp/" + "x" * 120  # an unbreakable path
    widget.status.value = (
        "Saved a-model · best validation AP@0.5 0.812 (base model 0.640) · 2 min of training"
    )
    area = widget.native.findChild(QScrollArea)
    content = area.widget() if area is not None else widget.native
    assert content.minimumSizeHint().width() < 420
    assert widget.rows[0].labels_layer.native.currentText() == name + " labels"  # full names kept


def test_a_mask_without_objects_is_refused_before_any_engine_starts(
    make_napari_viewer, qtbot, models, errors
):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((128, 128)), name="cells")
    labels = viewer.add_labels(np.zeros((128, 128), dtype=np.int32), name="cells labels")
    widget = _widget(viewer)
    row = widget.rows[0]
    assert row.labels_layer.value is labels and row.image_layer.value is image  # matched by shape
    widget.patch_size.value = 64
    _click(qtbot, widget.start_button)
    assert errors and "has no objects" in errors[-1] and "'cells / cells labels'" in errors[-1]
    assert "has no objects" in widget.status.value
    assert widget._worker is None and not widget._engines  # no engine, no job
    assert widget.start_button.enabled and not widget.cancel_button.enabled

    # a patch larger than the image, and validating on a training pair, are refused too
    two = np.zeros((128, 128), dtype=np.int32)
    two[10:20, 10:20], two[80:90, 80:90] = 1, 2
    labels.data = two
    widget.patch_size.value = 256
    _click(qtbot, widget.start_button)
    assert "smaller than the 256 x 256 training patch" in errors[-1]
    widget.patch_size.value = 64
    widget.val_labels.value = labels
    assert widget.val_image.value is image
    _click(qtbot, widget.start_button)
    assert "also a training pair" in errors[-1]
    assert widget._worker is None and not widget._engines


def test_pairs_are_added_removed_and_matched_to_their_images(make_napari_viewer, qtbot, models, nuclei):
    viewer, [(img_a, lab_a), (img_b, lab_b), (img_c, lab_c)] = _viewer_with_crops(make_napari_viewer, nuclei)
    viewer.layers.selection.active = lab_b
    widget = _widget(viewer)
    # the selected labels layer comes first; backend and base model from its provenance
    assert widget.backend.value == "stardist" and widget.base.value == MODEL
    assert [r.labels_layer.value for r in widget.rows] == [lab_b]
    assert widget.rows[0].image_layer.value is img_b
    _click(qtbot, widget.add_pair)
    _click(qtbot, widget.add_pair)
    assert [r.labels_layer.value for r in widget.rows] == [lab_b, lab_a, lab_c]
    assert [r.image_layer.value for r in widget.rows] == [img_b, img_a, img_c]  # by provenance, not shape
    _click(qtbot, widget.rows[1].remove_button)
    assert [r.labels_layer.value for r in widget.rows] == [lab_b, lab_c]
    # a painted labels layer without provenance finds its image by shape
    painted = viewer.add_labels(np.zeros((256, 256), dtype=np.int32), name="painted")
    row = widget.add_row(painted)
    assert row.image_layer.value is img_a  # the first image of that shape
    widget.rows[0].labels_layer.value = None
    with pytest.raises(ValueError, match="Training pair 1: choose a labels layer"):
        widget.request()
    assert not widget._engines


# --------------------------------------------------------------------------- training


def test_finetune_plot_versions_and_apply_to_all_images(
    make_napari_viewer, qtbot, engine, models, nuclei, errors
):
    viewer, [(img_a, lab_a), (img_b, lab_b), (img_c, lab_c)] = _viewer_with_crops(make_napari_viewer, nuclei)
    # correct image A's labels like a user: erase one object, paint two new ones
    ids, counts = np.unique(lab_a.data[lab_a.data > 0], return_counts=True)
    victim = int(ids[np.argmax(counts)])
    ys, xs = np.nonzero(lab_a.data == victim)
    lab_a.fill((int(ys[0]), int(xs[0])), 0)
    assert not (lab_a.data == victim).any()
    lab_a.brush_size = 9
    new_id = int(lab_a.data.max()) + 1
    for k, (y, x) in enumerate([(ys.mean(), xs.mean() - 5), (ys.mean(), xs.mean() + 5)]):
        lab_a.paint((int(y), int(x)), new_id + k)
    assert {new_id, new_id + 1} <= set(np.unique(lab_a.data).tolist())

    segment_dock = _SegmentDock()
    viewer.window.add_dock_widget(segment_dock, name="Segment & measure (stand-in)")
    saved: list[tuple[str, str]] = []
    widget = _widget(viewer, engine, on_model_saved=lambda b, n: saved.append((b, n)))
    widget.base.value = MODEL
    assert widget.base.info() is not None and widget.base.info().kind == "finetuned"
    row = widget.rows[0]
    row.labels_layer.value = lab_a
    assert row.image_layer.value is img_a  # found by the labels' provenance
    widget.val_labels.value = lab_b
    assert widget.val_image.value is img_b
    _quick_settings(widget, epochs=2)
    assert widget.model_name.value == f"{MODEL}-ft"
    before = {id(lyr): lyr.data.copy() for lyr in (lab_a, lab_b, lab_c)}

    _click(qtbot, widget.start_button)
    assert not widget.start_button.enabled and widget.cancel_button.enabled
    assert not widget.apply_button.enabled
    _wait_idle(qtbot, widget)
    assert errors == []
    result = widget.result
    assert result is not None and result.name == f"{MODEL}-ft"
    folder = models / "stardist" / result.name
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    ft = meta["finetune"]
    assert meta["base_model"] == MODEL and ft["settings"]["epochs"] == 2
    assert ft["settings"]["patch_size"] == 64 and ft["n_validation"] == 1
    assert ft["image_names"] == ["nuclei A / nuclei A labels"]
    assert ft["val_ap50_before"] is not None and ft["val_ap50_best"] is not None

    # the live plot got a loss per epoch and the validation AP before training and per epoch
    assert [e for e, _ in widget.history["loss"]] == [1, 2]
    assert [e for e, _ in widget.history["val_ap50"]] == [0, 1, 2]
    assert list(widget.loss_line.get_xdata()) == [1, 2] and len(widget.ap_line.get_ydata()) == 3
    assert all(0.0 <= v <= 1.0 for v in widget.ap_line.get_ydata())
    assert widget.progress.value == 1000
    assert f"Saved {result.name}" in widget.status.value and "validation AP@0.5" in widget.status.value
    assert result.name in widget.result_label.value
    assert widget.start_button.enabled and not widget.cancel_button.enabled

    # the versions list shows it first, the Segment dock was told, the next name is a new version
    assert widget.versions.value == result.name
    listed = [c for c in widget.versions.choices if c is not None]
    assert listed[0] == result.name and MODEL in listed  # newest first; the base is fine-tuned too
    assert saved == [("stardist", result.name)] and segment_dock.calls == [result.name]
    assert f"{result.name}-v2" in widget.name_hint.value

    _click(qtbot, widget.apply_button)
    _wait_idle(qtbot, widget)
    assert errors == []
    assert find_result_layer(viewer, img_c) is lab_c  # updated in place
    assert not np.array_equal(lab_c.data, before[id(lab_c)])
    prov = lab_c.metadata[META_KEY]
    assert prov["params"]["model"] == result.name and prov["model_info"]["name"] == result.name
    assert prov["model_info"]["kind"] == "finetuned"
    assert list(lab_c.features["label"]) == sorted(np.unique(lab_c.data)[1:].tolist())
    # the corrected training and validation labels were kept
    assert np.array_equal(lab_a.data, before[id(lab_a)]) and np.array_equal(lab_b.data, before[id(lab_b)])
    assert "Applied" in widget.status.value and "to 1 image(s)" in widget.status.value
    assert "Skipped 2 image(s) trained on" in widget.status.value
    assert widget.progress.value == 1000


def _start_and_cancel_after_an_epoch(qtbot, widget, nuclei_layers):
    (_img_a, lab_a) = nuclei_layers[0]
    widget.base.value = MODEL
    widget.rows[0].labels_layer.value = lab_a
    _quick_settings(widget, epochs=50)
    _click(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: bool(widget.history.get("loss")), timeout=TRAIN_TIMEOUT_MS)
    assert "s/step" in widget.status.value  # time per step in the status line
    _click(qtbot, widget.cancel_button)
    _wait_idle(qtbot, widget, 120_000)
    assert widget.start_button.enabled and not widget.cancel_button.enabled


def test_cancel_saves_nothing(make_napari_viewer, qtbot, engine, models, nuclei, errors):
    viewer, layers = _viewer_with_crops(make_napari_viewer, nuclei)
    widget = _widget(viewer, engine)
    widget.model_name.value = "ft-cancelled"
    assert not widget.keep_best.value
    folders = _model_folders(models)
    _start_and_cancel_after_an_epoch(qtbot, widget, layers)
    assert errors == []
    assert _model_folders(models) == folders  # no model, no hidden partial folder
    assert widget.status.value == "Cancelled; no model was saved."
    assert widget.result is None


def test_cancel_keeps_the_best_model_when_asked(make_napari_viewer, qtbot, engine, models, nuclei, errors):
    viewer, layers = _viewer_with_crops(make_napari_viewer, nuclei)
    widget = _widget(viewer, engine)
    widget.model_name.value = "ft-kept"
    widget.keep_best.value = True
    _start_and_cancel_after_an_epoch(qtbot, widget, layers)
    assert errors == []
    meta = json.loads((models / "stardist" / "ft-kept" / "model.json").read_text(encoding="utf-8"))
    assert meta["cancelled"] is True and meta["base_model"] == MODEL
    assert meta["training"]["epochs_run"] >= 1
    assert "kept as ft-kept" in widget.status.value
    assert widget.versions.value == "ft-kept"
    assert not any(p.name.startswith(".") for p in (models / "stardist").iterdir())


def test_folders_of_images_and_masks(make_napari_viewer, qtbot, engine, models, nuclei, errors, tmp_path):
    import tifffile

    viewer = make_napari_viewer()
    widget = _widget(viewer, engine)
    widget.source.value = "folders"
    widget.base.value = MODEL
    widget.model_name.value = "ft-folders"
    _quick_settings(widget, epochs=1)
    widget.steps_per_epoch.value = 2
    images, masks = tmp_path / "images", tmp_path / "masks"
    _click(qtbot, widget.start_button)
    assert "Choose a folder of training images" in errors[-1] and widget._worker is None
    widget.images_dir.value, widget.masks_dir.value = images, masks
    _click(qtbot, widget.start_button)
    assert "does not exist" in errors[-1] and widget._worker is None

    images.mkdir()
    masks.mkdir()
    for i, (img, mask) in enumerate(nuclei[:2]):
        tifffile.imwrite(images / f"n{i}.tif", img)
        tifffile.imwrite(masks / f"n{i}_mask.tif", mask)
    n_errors = len(errors)
    _click(qtbot, widget.start_button)
    _wait_idle(qtbot, widget)
    assert errors[n_errors:] == []
    meta = json.loads((models / "stardist" / "ft-folders" / "model.json").read_text(encoding="utf-8"))
    assert meta["finetune"]["image_names"] == ["n0.tif", "n1.tif"]
    assert widget.result is not None and widget.result.val_ap50_best is None  # no validation
    assert [e for e, _ in widget.history["loss"]] == [1] and "val_ap50" not in widget.history


def test_missing_base_model_offline_is_reported(make_napari_viewer, qtbot, engine, models, nuclei, errors):
    viewer, [(_img_a, lab_a), *_] = _viewer_with_crops(make_napari_viewer, nuclei)
    widget = _widget(viewer, engine)
    widget.base.value = "2D_versatile_fluo"  # not in the (empty) Keras cache, and offline
    widget.rows[0].labels_layer.value = lab_a
    _quick_settings(widget, epochs=1)
    folders = _model_folders(models)
    _click(qtbot, widget.start_button)
    _wait_idle(qtbot, widget)
    assert errors and errors[-1].startswith("Fine-tuning failed:") and "2D_versatile_fluo" in errors[-1]
    assert "NAPARI_PHENOTYPER_OFFLINE" in errors[-1] or "cannot be downloaded" in errors[-1]
    assert widget.status.value.startswith("Failed:")
    assert widget.start_button.enabled and not widget.cancel_button.enabled
    assert _model_folders(models) == folders


def test_closing_the_dock_stops_the_engine_it_started(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    eng = widget.engine_for("stardist")
    assert widget.engine_for("stardist") is eng
    eng.start()  # the process only: TensorFlow loads with the first training job
    assert eng.alive
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: not eng.alive, timeout=30_000)
