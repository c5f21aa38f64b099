"""StarDist: parameters, tiling, the model manager, training, accuracy, CLI.

TensorFlow must never load in the pytest process (the napari tests share it, and TensorFlow
crashes next to Mesa's OpenGL): everything that runs a model runs in an ``EngineProcess``
or a subprocess, and the last test checks that ``tensorflow`` is not in ``sys.modules``.

A small StarDist model is trained once per session with StarDist's own training code
(``iter_train_stardist`` in an engine process) on the StarDist sample and a third of the
grayscale DSB 2018 images, then loaded by name from a models folder
(``NAPARI_PHENOTYPER_MODELS``), the way a user's downloaded model is. Trained models are
cached across sessions in ``~/.cache/napari-phenotyper-tests/stardist-<key>/``
(``$NAPARI_PHENOTYPER_TEST_CACHE`` overrides the folder; ``off`` keeps them in the
session's temporary folder). The key hashes the recipe below, the training data, the
library versions and the source of the training code, so a change to any of them
trains afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_phenotyper.core.engine import EngineProcess
from napari_phenotyper.core.evaluate import average_precision
from napari_phenotyper.core.params import field_specs, params_from_mapping
from napari_phenotyper.core.progress import run
from napari_phenotyper.core.segment import get_segmenter
from napari_phenotyper.core.segment import models as mm
from napari_phenotyper.core.segment import stardist as sd
from napari_phenotyper.core.segment import stardist_train as sdt
from napari_phenotyper.core.segment.stardist import (
    StarDistParams,
    StarDistSegmenter,
    auto_n_tiles,
    normalize_percentiles,
    parse_n_tiles,
    tile_budget,
)

HAVE_STARDIST = all(importlib.util.find_spec(m) is not None for m in ("stardist", "tensorflow"))
needs_tf = pytest.mark.skipif(not HAVE_STARDIST, reason="stardist and tensorflow are not installed")

# Fixture set-up (training, engine start) lands on the first test that needs it.
pytestmark = pytest.mark.timeout(900)

TRAIN = "napari_phenotyper.core.segment.stardist_train:iter_train_stardist"
SEGMENT = "napari_phenotyper.core.segment.stardist:segment_job"
TEST_MODEL = "pheno_test_stardist"

#: How the test model is trained: 600 batches of 4 patches of 128 x 128 pixels, a U-Net of
#: depth 2 with 16 base filters (about 1 to 2 minutes on 2 CPU cores, including threshold
#: optimisation). Of the variants tried, this reached the best held-out AP for its time
#: (400 batches: 0.43; 32 filters, 400 batches: 0.33; batches of 8: 0.40).
RECIPE: dict[str, Any] = {
    "config": {
        "n_rays": 32,
        "grid": (2, 2),
        "unet_n_depth": 2,
        "unet_n_filter_base": 16,
        "train_patch_size": (128, 128),
        "train_batch_size": 4,
        "train_learning_rate": 3e-3,
    },
    "epochs": 30,
    "steps_per_epoch": 20,
    "seed": 0,
    "nms_threshs": (0.4,),
}

#: Mean AP@0.5 the test model must reach on the 17 held-out grayscale DSB images. Measured
#: 0.51 (the classical segmenter on the same images: 0.64); a model that learned nothing
#: scores about 0, and one trained for a tenth as long about 0.14. The margin covers
#: TensorFlow's numerical differences between CPUs.
AP50_FLOOR = 0.3


# --------------------------------------------------------------------------- data


def _read(path: Path) -> np.ndarray:
    from napari_phenotyper.io.images import read_image, to_grayscale

    return to_grayscale(read_image(path))


def _is_gray(path: Path) -> bool:
    from napari_phenotyper.io.images import read_image

    a = read_image(path)
    return a.ndim == 2 or bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]))


@dataclasses.dataclass
class Split:
    train: list[tuple[str, np.ndarray, np.ndarray]]
    test: list[tuple[str, np.ndarray, np.ndarray]]


@pytest.fixture(scope="session")
def sd_split(shared_data: Path) -> Split:
    """Training set: the StarDist sample and every third grayscale DSB image; the rest is held out."""
    import tifffile

    from napari_phenotyper.io.images import read_image

    dsb = shared_data / "dsb2018_dev"
    gray = [p for p in sorted((dsb / "images").iterdir()) if _is_gray(p)]
    pairs = [(p.stem, _read(p), read_image(dsb / "masks" / f"{p.stem}.tif")) for p in gray]
    sample = (
        "stardist_sample",
        tifffile.imread(shared_data / "stardist_sample" / "img2d.tif"),
        tifffile.imread(shared_data / "stardist_sample" / "mask2d.tif"),
    )
    return Split(
        train=[sample] + [t for i, t in enumerate(pairs) if i % 3 == 0],
        test=[t for i, t in enumerate(pairs) if i % 3 != 0],
    )


# --------------------------------------------------------------------------- trained model


@dataclasses.dataclass
class TrainedModel:
    path: Path
    trained_now: bool
    progress: list[Any]
    seconds: float


def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "no", "false"):
        return tmp_path_factory.mktemp("stardist-cache")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-phenotyper-tests"


def _cache_key(split: Split) -> str:
    h = hashlib.sha256(json.dumps(RECIPE, sort_keys=True, default=list).encode())
    for name, x, y in split.train:
        h.update(name.encode() + sdt.array_sha256(x).encode() + sdt.array_sha256(y).encode())
    for pkg in ("stardist", "csbdeep", "tensorflow", "keras", "numpy"):
        try:
            h.update(f"{pkg}={importlib_metadata.version(pkg)}".encode())
        except importlib_metadata.PackageNotFoundError:
            h.update(pkg.encode())
    h.update(Path(sdt.__file__).read_bytes())
    h.update(inspect.getsource(normalize_percentiles).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def stardist_test_model(sd_split: Split, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A small StarDist model trained in an engine process (cached; see the module docstring)."""
    if not HAVE_STARDIST:
        pytest.skip("stardist and tensorflow are not installed")
    root = _cache_root(tmp_path_factory) / f"stardist-{_cache_key(sd_split)}"
    folder = root / TEST_MODEL
    if (folder / mm.METADATA_FILE).is_file():
        return TrainedModel(folder, False, [], 0.0)
    root.mkdir(parents=True, exist_ok=True)
    names, images, masks = zip(*sd_split.train, strict=True)
    progress: list[Any] = []
    t0 = time.perf_counter()
    engine = EngineProcess(start_timeout=180)
    try:
        result = run(
            engine.run(
                TRAIN,
                list(images),
                list(masks),
                RECIPE["config"],
                RECIPE["epochs"],
                RECIPE["steps_per_epoch"],
                str(root),
                TEST_MODEL,
                None,
                RECIPE["seed"],
                image_names=list(names),
                nms_threshs=RECIPE["nms_threshs"],
                overwrite=True,
            ),
            progress.append,
        )
    finally:
        engine.shutdown()
    return TrainedModel(Path(result.path), True, progress, time.perf_counter() - t0)


@dataclasses.dataclass
class SdEngine:
    engine: EngineProcess
    models: Path  # NAPARI_PHENOTYPER_MODELS of the engine process
    keras_home: Path  # its (empty) Keras cache


@pytest.fixture(scope="module")
def sd_engine(stardist_test_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An engine process whose models folder holds the test model, offline, with an empty Keras cache."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(stardist_test_model.path, models / "stardist" / TEST_MODEL)
    keras_home = tmp_path_factory.mktemp("keras_home")
    engine = EngineProcess(start_timeout=180)
    with pytest.MonkeyPatch.context() as mp:  # the child inherits the environment at its start
        mp.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
        mp.setenv("KERAS_HOME", str(keras_home))
        mp.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
        engine.start()
    yield SdEngine(engine, models, keras_home)
    engine.shutdown()


# --------------------------------------------------------------------------- parameters


def test_params_defaults_and_form_fields():
    p = StarDistParams()
    assert (p.model, p.prob_thresh, p.nms_thresh, p.n_tiles, p.device) == (
        "2D_versatile_fluo",
        None,
        None,
        None,
        "auto",
    )
    assert (p.norm_low, p.norm_high) == (1.0, 99.8)
    kinds = {s.name: (s.kind, s.optional) for s in field_specs(StarDistParams)}
    assert kinds == {
        "model": ("str", False),
        "prob_thresh": ("float", True),
        "nms_thresh": ("float", True),
        "norm_low": ("float", False),
        "norm_high": ("float", False),
        "n_tiles": ("str", True),
        "device": ("choice", False),
    }
    seg = get_segmenter("stardist")
    assert isinstance(seg, StarDistSegmenter) and seg.params_type is StarDistParams
    # command-line strings
    q = params_from_mapping(
        StarDistParams, {"prob_thresh": "0.6", "nms_thresh": "auto", "n_tiles": "2,2", "device": "cpu"}
    )
    assert (q.prob_thresh, q.nms_thresh, q.n_tiles, q.device) == (0.6, None, "2,2", "cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": ""}, "model must be"),
        ({"prob_thresh": 1.5}, "prob_thresh must be a number in \\(0, 1\\)"),
        ({"prob_thresh": 0.0}, "prob_thresh"),
        ({"prob_thresh": True}, "prob_thresh"),
        ({"prob_thresh": float("nan")}, "prob_thresh"),
        ({"nms_thresh": 1.0}, "nms_thresh must be a number in \\[0, 1\\)"),
        ({"nms_thresh": -0.1}, "nms_thresh"),
        ({"norm_low": 99.9, "norm_high": 99.8}, "norm_low \\(99.9\\) must be below norm_high"),
        ({"norm_high": 101}, "norm_high must be a percentile"),
        ({"n_tiles": "0"}, "n_tiles must be 'auto'"),
        ({"n_tiles": "a,b"}, "n_tiles"),
        ({"n_tiles": "1,2,3,4"}, "n_tiles"),
        ({"device": "tpu"}, "device must be one of auto, cpu, gpu"),
    ],
)
def test_params_validation_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StarDistParams(**kwargs)


def test_parse_n_tiles():
    assert parse_n_tiles(None) is None
    assert parse_n_tiles(" auto ") is None
    assert parse_n_tiles("") is None
    assert parse_n_tiles("3", ndim=2) == (3, 3)
    assert parse_n_tiles("2x4") == (2, 4)
    assert parse_n_tiles("1, 2, 2", ndim=3) == (1, 2, 2)
    with pytest.raises(ValueError, match="3 numbers but this model has 2 spatial axes"):
        parse_n_tiles("1,2,2", ndim=2)


def test_auto_n_tiles_bounds_the_tile_size():
    assert auto_n_tiles((512, 512), 1024 * 1024) == (1, 1)
    assert auto_n_tiles((4096, 2048), 1024 * 1024) == (4, 2)
    assert auto_n_tiles((10000, 300), 512 * 512) == (12, 1)
    for shape in [(3001, 2999), (8192, 128), (50, 60000)]:
        tiles = auto_n_tiles(shape, 2**18)
        assert np.prod([-(-s // t) for s, t in zip(shape, tiles, strict=True)]) <= 2**18
    tiles3 = auto_n_tiles((64, 128, 128), 32 * 64 * 64)
    assert np.prod([-(-s // t) for s, t in zip((64, 128, 128), tiles3, strict=True)]) <= 32 * 64 * 64
    assert auto_n_tiles((1, 1), 1) == (1, 1)


def test_tile_budget_follows_free_memory():
    assert tile_budget(2, available=64 * 2**30) == sd.MAX_TILE_PIXELS[2]
    assert tile_budget(2, available=2**20) == sd.MIN_TILE_PIXELS[2]
    mid = tile_budget(2, available=2 * 2**30)
    assert sd.MIN_TILE_PIXELS[2] < mid < sd.MAX_TILE_PIXELS[2]
    assert tile_budget(3, available=256 * 2**30) == sd.MAX_TILE_PIXELS[3]
    assert sd.MIN_TILE_PIXELS[2] <= tile_budget(2) <= sd.MAX_TILE_PIXELS[2]  # measured here


def test_normalize_percentiles():
    img = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    out = normalize_percentiles(img, 1, 99)
    assert out.dtype == np.float32
    assert np.percentile(out, 1) == pytest.approx(0, abs=1e-4)
    assert np.percentile(out, 99) == pytest.approx(1, abs=1e-4)
    flat = normalize_percentiles(np.full((8, 8), 7.0), 1, 99.8)
    assert np.all(flat == 0)
    nan = np.ones((8, 8))
    nan[0, 0] = np.nan
    assert np.isfinite(normalize_percentiles(nan)).all()


def test_device_without_tensorflow_says_what_was_asked():
    seg = StarDistSegmenter()
    if "tensorflow" not in sys.modules:
        assert seg.device(StarDistParams(device="cpu")) == "CPU"
        assert "GPU" in seg.device(StarDistParams())


def test_importing_the_adapter_loads_no_tensorflow():
    code = (
        "import sys\n"
        "from napari_phenotyper.core.segment import get_segmenter\n"
        "from napari_phenotyper.core.segment.models import list_models\n"
        "import napari_phenotyper.core.segment.stardist_train\n"
        "seg = get_segmenter('stardist'); p = seg.params_type(); seg.device(p); seg.model_info(p)\n"
        "list_models('stardist')\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- model manager


def _fake_stardist_folder(folder: Path, ndim: int = 2, thresholds: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"n_dim": ndim, "n_channel_in": 1, "n_rays": 32}))
    (folder / "weights_best.h5").write_bytes(b"not really weights")
    if thresholds:
        (folder / "thresholds.json").write_text(json.dumps({"prob": 0.5, "nms": 0.4}))
    return folder


@pytest.fixture
def model_env(tmp_path, monkeypatch):
    """An empty models folder and Keras cache; downloads forbidden unless a test allows them."""
    models, keras = tmp_path / "models", tmp_path / "keras"
    monkeypatch.setenv("NAPARI_PHENOTYPER_MODELS", str(models))
    monkeypatch.setenv("KERAS_HOME", str(keras))
    monkeypatch.setenv("NAPARI_PHENOTYPER_OFFLINE", "1")
    monkeypatch.setenv("NAPARI_PHENOTYPER_HOME", str(tmp_path / "home"))
    return models, keras


def test_models_dir_env_setting_default(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_PHENOTYPER_MODELS", raising=False)
    monkeypatch.setenv("NAPARI_PHENOTYPER_HOME", str(tmp_path / "home"))
    assert mm.models_dir() == tmp_path / "home" / "models"
    settings = mm.set_models_dir_setting(tmp_path / "from_setting")
    assert settings == tmp_path / "home" / "settings.json"
    assert mm.models_dir() == (tmp_path / "from_setting").resolve()
    monkeypatch.setenv("NAPARI_PHENOTYPER_MODELS", str(tmp_path / "from_env"))
    assert mm.models_dir() == tmp_path / "from_env"
    assert mm.models_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("NAPARI_PHENOTYPER_MODELS")
    mm.set_models_dir_setting(None)
    assert mm.models_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("NAPARI_PHENOTYPER_HOME")
    assert mm.models_dir() == Path.home() / ".napari-phenotyper" / "models"


def test_list_models_builtin_local_finetuned(model_env):
    models, keras = model_env
    names = [m.name for m in mm.list_models("stardist")]
    assert names == ["2D_versatile_fluo", "2D_versatile_he", "2D_paper_dsb2018", "2D_demo", "3D_demo"]
    assert not any(m.available for m in mm.list_models("stardist"))
    # a built-in in Keras's cache (Keras 3 layout), one unzipped into the models folder
    _fake_stardist_folder(
        keras / "models" / "StarDist2D" / "2D_versatile_fluo" / "2D_versatile_fluo_extracted"
    )
    _fake_stardist_folder(models / "stardist" / "2D_paper_dsb2018")
    _fake_stardist_folder(models / "stardist" / "mine")
    tuned = _fake_stardist_folder(models / "stardist" / "tuned")
    mm.write_metadata(
        tuned,
        {
            "backend": "stardist",
            "name": "tuned",
            "base_model": "2D_versatile_fluo",
            "created": "2026-01-02T03:04:05",
        },
    )
    (models / "stardist" / "no_weights").mkdir()
    (models / "stardist" / "no_weights" / "config.json").write_text("{}")
    (models / "stardist" / ".tuned.partial-1").mkdir()
    broken = _fake_stardist_folder(models / "stardist" / "broken")
    (broken / mm.METADATA_FILE).write_text("{not json")
    listed = {m.name: m for m in mm.list_models("stardist")}
    assert listed["2D_versatile_fluo"].available and listed["2D_versatile_fluo"].kind == "builtin"
    assert "Keras cache" in listed["2D_versatile_fluo"].detail
    assert listed["2D_paper_dsb2018"].path == models / "stardist" / "2D_paper_dsb2018"
    assert not listed["2D_versatile_he"].available and listed["2D_versatile_he"].path is None
    assert listed["mine"].kind == "local" and listed["mine"].metadata["thresholds"] == {
        "prob": 0.5,
        "nms": 0.4,
    }
    assert listed["tuned"].kind == "finetuned"
    assert listed["tuned"].detail == "fine-tuned from 2D_versatile_fluo on 2026-01-02"
    assert listed["tuned"].metadata["format"] == mm.METADATA_FORMAT
    assert "no_weights" not in listed and not any(n.startswith(".") for n in listed)
    assert not listed["broken"].available and "is not valid JSON" in listed["broken"].detail
    with pytest.raises(ValueError, match="Unknown model backend 'torch'"):
        mm.list_models("torch")


def test_resolve_model_by_name_path_and_errors(model_env, tmp_path):
    models, _ = model_env
    mine = _fake_stardist_folder(models / "stardist" / "mine")
    assert mm.resolve_model("stardist", "mine").path == mine
    elsewhere = _fake_stardist_folder(tmp_path / "elsewhere" / "model_x")
    info = mm.resolve_model("stardist", str(elsewhere))
    assert (info.name, info.kind, info.path) == ("model_x", "local", elsewhere.resolve())
    assert mm.resolve_model("stardist", str(elsewhere / "config.json")).path == elsewhere.resolve()
    with pytest.raises(mm.ModelNotFoundError, match="is not a StarDist model folder"):
        mm.resolve_model("stardist", str(tmp_path))
    with pytest.raises(mm.ModelNotFoundError, match="No StarDist model folder at"):
        mm.resolve_model("stardist", str(tmp_path / "missing"))
    with pytest.raises(
        mm.ModelNotFoundError, match=r"Unknown StarDist model 'nope'.*Models available here: mine"
    ):
        mm.resolve_model("stardist", "nope")
    with pytest.raises(ValueError, match="Give a stardist model name"):
        mm.resolve_model("stardist", " ")
    assert isinstance(mm.ModelNotFoundError("x"), FileNotFoundError)


def test_offline_message_for_a_missing_builtin(model_env):
    models, keras = model_env
    t0 = time.perf_counter()
    with pytest.raises(mm.ModelNotFoundError) as err:
        mm.resolve_model("stardist", "Versatile (fluorescent nuclei)")  # an alias
    assert time.perf_counter() - t0 < 2
    msg = str(err.value)
    assert "'2D_versatile_fluo'" in msg
    assert (
        "https://github.com/stardist/stardist-models/releases/download/v0.1/python_2D_versatile_fluo.zip"
        in msg
    )
    assert str(models / "stardist" / "2D_versatile_fluo") in msg
    assert str(keras / "models" / "StarDist2D" / "2D_versatile_fluo" / "2D_versatile_fluo.zip") in msg
    assert "NAPARI_PHENOTYPER_OFFLINE" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_offline_detection_without_the_env_var(model_env, monkeypatch):
    """No network (a refused connection, or one that hangs): the message comes within seconds."""
    monkeypatch.delenv("NAPARI_PHENOTYPER_OFFLINE")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def refused(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refused)
    with pytest.raises(mm.ModelNotFoundError, match=r"cannot connect to github.com: Network is unreachable"):
        mm.resolve_model("stardist", "2D_paper_dsb2018")

    def hangs(*args, **kwargs):
        time.sleep(2)
        raise OSError(110, "Connection timed out")

    monkeypatch.setattr(socket, "create_connection", hangs)
    monkeypatch.setattr(mm, "PROBE_TIMEOUT", 0.5)
    t0 = time.perf_counter()
    with pytest.raises(mm.ModelNotFoundError, match=r"no answer from github.com within 0.5 s"):
        mm.resolve_model("stardist", "3D_demo")
    assert time.perf_counter() - t0 < 3
    # with a reachable server, resolving hands the download to the adapter
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _Closing())
    info = mm.resolve_model("stardist", "2D_demo")
    assert (info.available, info.path, info.url) == (False, None, mm._SD_URL.format("2D_demo"))
    with pytest.raises(mm.ModelNotFoundError, match="downloading was not allowed"):
        mm.resolve_model("stardist", "2D_demo", download=False)


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_zip_in_keras_cache_is_checked(model_env):
    _, keras = model_env
    folder = keras / "models" / "StarDist2D" / "2D_versatile_he"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "2D_versatile_he.zip", "w") as zf:
        zf.writestr("config.json", "{}")
    assert next(m for m in mm.list_models("stardist") if m.name == "2D_versatile_he").available
    with pytest.raises(mm.ModelNotFoundError, match="is damaged or not the StarDist model '2D_versatile_he'"):
        mm.resolve_model("stardist", "2D_versatile_he")


def test_training_argument_errors_before_loading_tensorflow(tmp_path):
    img, mask = np.zeros((64, 64), np.uint16), np.zeros((64, 64), np.uint16)

    def first(**kwargs):
        args = {"images": [img, img], "masks": [mask, mask], "out_dir": tmp_path, "name": "m", **kwargs}
        return next(sdt.iter_train_stardist(**args))

    with pytest.raises(ValueError, match="2 images but 1 masks"):
        first(masks=[mask])
    with pytest.raises(ValueError, match="at least two images"):
        first(images=[img], masks=[mask])
    with pytest.raises(ValueError, match="mask 1 has shape \\(32, 32\\)"):
        first(masks=[mask, mask[:32, :32]])
    with pytest.raises(ValueError, match="label image of integers"):
        first(masks=[mask, mask.astype(float)])
    with pytest.raises(ValueError, match="epochs must be a whole number"):
        first(epochs=0)
    with pytest.raises(ValueError, match="name must be a plain folder name"):
        first(name="../x")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        first()
    assert "tensorflow" not in sys.modules


# --------------------------------------------------------------------------- in the engine


def _segment(sde: SdEngine, image: np.ndarray, **params: Any) -> tuple[np.ndarray, list[Any]]:
    progress: list[Any] = []
    labels = run(sde.engine.run(SEGMENT, image, StarDistParams(model=TEST_MODEL, **params)), progress.append)
    return labels, progress


@needs_tf
def test_test_model_is_a_finetuned_model_in_the_models_folder(sd_engine, sd_split, monkeypatch):
    monkeypatch.setenv("NAPARI_PHENOTYPER_MODELS", str(sd_engine.models))
    info = mm.resolve_model("stardist", TEST_MODEL)
    assert info.kind == "finetuned" and info.available
    assert TEST_MODEL in [m.name for m in mm.list_models("stardist") if m.kind == "finetuned"]
    meta = info.metadata
    assert meta["backend"] == "stardist" and meta["base_model"] is None and meta["name"] == TEST_MODEL
    assert meta["versions"]["stardist"] == importlib_metadata.version("stardist")
    images = meta["training"]["images"]
    assert [i["sha256"] for i in images] == [sdt.array_sha256(x) for _, x, _ in sd_split.train]
    assert {i["split"] for i in images} == {"train", "validation"}
    held_out = {sdt.array_sha256(x) for _, x, _ in sd_split.test}
    assert not held_out & {i["sha256"] for i in images}
    assert (
        meta["training"]["config"]["n_rays"] == 32 and meta["training"]["config"]["unet_n_filter_base"] == 16
    )
    assert len(meta["training"]["history"]["loss"]) == RECIPE["epochs"]
    assert 0 < meta["thresholds"]["prob"] < 1 and meta["thresholds"]["nms"] == 0.4
    assert json.loads((info.path / "thresholds.json").read_text()) == meta["thresholds"]


@needs_tf
def test_accuracy_on_held_out_dsb_images(sd_engine, sd_split, stardist_test_model, record_property):
    """The acceptance figure: AP@0.5 on grayscale DSB images the model never saw, next to the classical one."""
    from napari_phenotyper.core.segment.classical import (
        ClassicalParams,
        ClassicalSegmenter,
        estimate_diameter,
    )

    classical = ClassicalSegmenter()
    ours, theirs = [], []
    t0 = time.perf_counter()
    for _name, image, truth in sd_split.test:
        labels, _ = _segment(sd_engine, image)
        assert labels.dtype == np.uint32 and labels.shape == image.shape
        ours.append(average_precision(truth, labels)["ap50"])
        cp = ClassicalParams(diameter=estimate_diameter(image))
        theirs.append(average_precision(truth, run(classical.segment(image, cp)))["ap50"])
    seconds = time.perf_counter() - t0
    sd_ap, cl_ap = float(np.mean(ours)), float(np.mean(theirs))
    line = (
        f"StarDist test model AP@0.5 = {sd_ap:.3f}, classical = {cl_ap:.3f} on {len(ours)} held-out grayscale "
        f"DSB 2018 images ({seconds:.0f} s; model {'trained now in ' + format(stardist_test_model.seconds, '.0f') + ' s' if stardist_test_model.trained_now else 'from the cache'})"
    )
    print(line)
    record_property("stardist_ap50", round(sd_ap, 4))
    record_property("classical_ap50", round(cl_ap, 4))
    assert sd_ap >= AP50_FLOOR, line


@needs_tf
def test_missing_builtin_fails_fast_in_the_engine(sd_engine):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        run(sd_engine.engine.run(SEGMENT, np.zeros((64, 64), np.float32), StarDistParams()))
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "The StarDist model '2D_versatile_fluo' is not on this computer" in msg
    assert "python_2D_versatile_fluo.zip" in msg
    assert str(sd_engine.models / "stardist" / "2D_versatile_fluo") in msg
    assert str(sd_engine.keras_home) in msg


@needs_tf
def test_stack_is_segmented_plane_by_plane_with_unique_ids(sd_engine, sd_split):
    a = sd_split.test[0][1][:256, :256]
    b = sd_split.test[-1][1][:256, :256]
    stack = np.stack([a, b, a]).astype(np.float32)
    labels, progress = _segment(sd_engine, stack)
    assert labels.shape == stack.shape and labels.dtype == np.uint32
    ids = [set(np.unique(p)) - {0} for p in labels]
    assert all(ids), "every plane has nuclei"
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert min(ids[1]) > max(ids[0]) and min(ids[2]) > max(ids[1])
    single, _ = _segment(sd_engine, a)
    assert average_precision(single, labels[2])["ap50"] == 1.0  # the same as one plane alone
    assert sum("plane" in p.message for p in progress) >= 3


@needs_tf
def test_tiled_prediction_matches_untiled(sd_engine, sd_split):
    image = sd_split.train[0][1]  # the 512 x 512 StarDist sample
    whole, progress_auto = _segment(sd_engine, image)  # n_tiles auto: one tile for this size
    assert not any("tile" in p.message.lower() for p in progress_auto)
    tiled, progress = _segment(sd_engine, image, n_tiles="2,2")
    assert [p.message for p in progress if p.message.startswith("Predicted tile")] == [
        f"Predicted tile {i}/4" for i in range(1, 5)
    ]
    assert whole.max() > 50
    assert average_precision(whole, tiled)["ap50"] > 0.95


@needs_tf
def test_pipeline_in_the_engine_reports_device_and_model(sd_engine, sd_split):
    image = sd_split.test[0][1]
    params = StarDistParams(model=TEST_MODEL, prob_thresh=0.5, device="cpu")
    labels, prov = run(
        sd_engine.engine.run(
            "napari_phenotyper.core.pipeline:iter_segment_auto", image, "stardist", params, True
        )
    )
    assert labels.max() > 0
    assert prov["backend"] == "stardist" and prov["params"]["model"] == TEST_MODEL
    assert prov["params"]["prob_thresh"] == 0.5
    assert prov["device"] == "CPU (TensorFlow)"


@needs_tf
def test_fine_tuning_from_the_test_model(sd_engine, sd_split, tmp_path):
    (n0, x0, y0), (n1, x1, y1) = sd_split.train[1], sd_split.train[2]
    with pytest.raises(ValueError, match=r"Fine-tuning keeps the base model's architecture.*n_rays"):
        run(
            sd_engine.engine.run(
                TRAIN, [x0, x1], [y0, y1], {"n_rays": 64}, 1, 2, str(tmp_path), "ft", TEST_MODEL
            )
        )
    progress: list[Any] = []
    result = run(
        sd_engine.engine.run(
            TRAIN,
            [x0, x1],
            [y0, y1],
            {"train_patch_size": (128, 128), "train_learning_rate": 1e-4},
            1,
            3,
            str(tmp_path),
            "ft",
            TEST_MODEL,
            image_names=[n0, n1],
            optimize_thresholds=False,
        ),
        progress.append,
    )
    meta = mm.read_metadata(result.path)
    assert meta is not None and meta["base_model"] == TEST_MODEL
    assert meta["training"]["config"]["unet_n_depth"] == 2  # the base model's architecture
    assert [i["name"] for i in meta["training"]["images"]] == [n0, n1]
    assert result.n_train == 1 and result.n_val == 1
    assert any(p.message.startswith("Training: epoch 1/1") for p in progress)
    assert progress[-1].message == "Saved ft" and progress[-1].step == progress[-1].total
    labels = run(sd_engine.engine.run(SEGMENT, x0, StarDistParams(model=result.path)))
    assert labels.shape == x0.shape
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@needs_tf
def test_training_can_be_cancelled(sd_engine, sd_split, tmp_path):
    from napari_phenotyper.core.engine import EngineCancelled

    (_, x0, y0), (_, x1, y1) = sd_split.train[1], sd_split.train[2]
    job = sd_engine.engine.job(TRAIN, [x0, x1], [y0, y1], RECIPE["config"], 50, 50, str(tmp_path), "never")
    seen: list[str] = []

    def follow() -> None:
        for p in job.steps():
            seen.append(p.message)
            if p.message.startswith("Training: epoch 1/50") and p.step > 0:
                job.cancel()

    with pytest.raises(EngineCancelled):
        follow()
    assert sd_engine.engine.alive, "stopped at the next batch, within the grace period"
    assert list(tmp_path.iterdir()) == []  # no model, no partial folder
    assert not any(m.startswith("Epoch 50") for m in seen)


@needs_tf
def test_cli_evaluate_and_segment_with_a_model(sd_engine, sd_split, tmp_path):
    """``evaluate``/``segment --segmenter stardist --model``: TensorFlow in a subprocess, as the CLI runs it."""
    import tifffile

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    expected = []
    for name, image, truth in sd_split.test[:3]:
        tifffile.imwrite(images / f"{name}.tif", image)
        tifffile.imwrite(masks / f"{name}.tif", truth)
        labels, _ = _segment(sd_engine, image)
        expected.append(average_precision(truth, labels)["ap50"])
    model_path = sd_engine.models / "stardist" / TEST_MODEL
    code = (
        "import sys\n"
        "from napari_phenotyper.cli import main\n"
        f"a = main(['evaluate', '--images', {str(images)!r}, '--masks', {str(masks)!r}, '--segmenter', 'stardist', "
        f"'--model', {str(model_path)!r}, '--quiet'])\n"
        f"b = main(['segment', {str(images)!r}, '--out', {str(tmp_path / 'out')!r}, '--segmenter', 'stardist', "
        f"'--model', {TEST_MODEL!r}, '--features', 'shape', '--quiet'])\n"
        "sys.exit(a or b)\n"
    )
    env = {**os.environ, "NAPARI_PHENOTYPER_MODELS": str(sd_engine.models), "NAPARI_PHENOTYPER_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = next(line for line in out.stdout.splitlines() if line.startswith("RESULT ap50="))
    assert float(result.split()[1].split("=")[1]) == pytest.approx(np.mean(expected), abs=1e-3)
    assert "n_images=3" in result
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    prov = next(iter(run_json["images"].values()))
    assert prov["backend"] == "stardist" and prov["params"]["model"] == TEST_MODEL
    assert prov["device"].endswith("(TensorFlow)")
    assert len(list((tmp_path / "out").glob("*_labels.tif"))) == 3


def test_cli_model_errors_need_no_tensorflow(tmp_path, capsys, monkeypatch):
    from napari_phenotyper.cli import main

    monkeypatch.setenv("NAPARI_PHENOTYPER_MODELS", str(tmp_path / "models"))
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    base = ["evaluate", "--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"), "--quiet"]
    assert main([*base, "--model", "x"]) == 2
    assert "The classical segmenter takes no model" in capsys.readouterr().err
    if HAVE_STARDIST:
        assert main([*base, "--segmenter", "stardist", "--model", "x", "--param", "model=y"]) == 2
        assert "Give the model once" in capsys.readouterr().err
    assert "tensorflow" not in sys.modules


def test_no_tensorflow_in_the_test_process():
    """Every TensorFlow run above happened in an engine process or a subprocess."""
    assert "tensorflow" not in sys.modules
    assert "keras" not in sys.modules
