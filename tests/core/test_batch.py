"""Batch runs: layouts, streamed tables, resume, failures, classifiers, Dask workers."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from napari_phenotyper.core.batch import (
    BatchOptions,
    BatchRequest,
    expand_inputs,
    iter_batch,
    iter_run_batch,
    plan_jobs,
)
from napari_phenotyper.core.classify.model import ClassifierSettings, predict, train
from napari_phenotyper.core.layout import LayoutError, make_layout, normalize_well
from napari_phenotyper.core.pipeline import MeasureParams, iter_segment_and_measure
from napari_phenotyper.core.pipeline_spec import FileRef, PipelineSpec
from napari_phenotyper.core.profiles import z_prime, zscore_to_controls
from napari_phenotyper.core.progress import run
from napari_phenotyper.core.segment.classical import ClassicalParams
from napari_phenotyper.io.classifier_io import load_classifier, save_classifier
from napari_phenotyper.io.tables import StreamingTableWriter, parquet_available, read_table

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:distributed"),
    # Parquet is the default table format; pyarrow is a dependency of the package
    pytest.mark.skipif(not parquet_available(), reason="pyarrow is not installed (pip install pyarrow)"),
]

REGEX = r"(?P<plate>P\d)_(?P<well>[A-H]\d+)_s(?P<site>\d+)"
SPEC = PipelineSpec(params={"diameter": 20.0}, feature_groups=("shape", "intensity"))


def _image(disks, shape=(96, 96)):
    img = np.full(shape, 10, np.uint16)
    for center, radius in disks:
        img[disk(center, radius, shape=shape)] = 1000
    return img


SMALL, BIG = 6, 12
LAYOUT = {  # file -> disks
    "P1_A01_s1.tif": [((25, 25), SMALL), ((70, 65), BIG)],
    "P1_A01_s2.tif": [((30, 30), SMALL)],
    "P1_B02_s1.tif": [((25, 25), BIG), ((70, 65), BIG)],
    "P1_C03_s1.tif": [((25, 70), SMALL), ((70, 25), SMALL), ((70, 70), BIG)],
}


def _folder(tmp_path, files=LAYOUT, name="in"):
    folder = tmp_path / name
    folder.mkdir()
    for fname, disks in files.items():
        tifffile.imwrite(folder / fname, _image(disks))
    return folder


def _request(folder, out, **kw):
    options = BatchOptions(str(out), **kw.pop("options", {}))
    return BatchRequest(inputs=(str(folder),), pipeline=kw.pop("pipeline", SPEC), options=options, **kw)


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


# ------------------------------------------------------------------------- layouts
def test_expand_inputs_and_unique_names(tmp_path):
    a = _folder(tmp_path, {"x.tif": [], "y.tif": []}, "a")
    b = _folder(tmp_path, {"x.tif": []}, "b")
    paths = expand_inputs([str(a), str(b / "*.tif")])
    assert [p.name for p in paths] == ["x.tif", "y.tif", "x.tif"]
    assert [j.name for j in plan_jobs(paths)] == ["x", "y", "x_2"]
    with pytest.raises(ValueError, match="No such file, folder or pattern"):
        expand_inputs([str(tmp_path / "nope*.tif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        expand_inputs([str(tmp_path / "empty")])


def test_layout_from_regex():
    paths = ["/d/P1_A1_s1.tif", "/d/P1_B012_s2.tif", "/d/P2_C03_s10.tif"]
    layout = make_layout(paths, regex=REGEX)
    assert layout.to_dict("list") == {
        "plate": ["P1", "P1", "P2"],
        "well": ["A01", "B12", "C03"],
        "site": ["1", "2", "10"],
    }
    assert normalize_well("h007") == "H07" and normalize_well("r01c02") == "r01c02"
    with pytest.raises(LayoutError, match=r"1 of 2 file names do not match.*other\.tif"):
        make_layout(["/d/P1_A01_s1.tif", "/d/other.tif"], regex=REGEX)
    with pytest.raises(LayoutError, match=r"no \(\?P<well>"):
        make_layout(paths, regex=r"(?P<plate>P\d)")
    with pytest.raises(LayoutError, match="not a valid regular expression"):
        make_layout(paths, regex=r"(?P<well>[A-")
    # a pattern with '/' is matched against the whole path: the plate from the folder
    by_folder = make_layout(["/data/plate7/A01_1.tif"], regex=r"plate(?P<plate>\d+)/(?P<well>[A-H]\d+)_")
    assert by_folder[["plate", "well"]].iloc[0].tolist() == ["7", "A01"]


def test_layout_tables(tmp_path):
    paths = [f"/d/{f}" for f in LAYOUT]
    per_file = pd.DataFrame(
        {
            "File": list(LAYOUT),
            "plate": ["P1"] * 4,
            "Well": ["A1", "A1", "B2", "C3"],
            "site": ["1", "2", "1", "1"],
            "treatment": ["dmso", "dmso", "drug", "drug"],
            "concentration": [0.0, 0.0, 1.5, 3.0],
            "control": ["Negative", "negative", "pos", ""],
        }
    )
    layout = make_layout(paths, table=per_file)
    assert list(layout.columns) == ["plate", "well", "site", "treatment", "concentration", "control"]
    assert layout["well"].tolist() == ["A01", "A01", "B02", "C03"]
    assert layout["control"].tolist() == ["negative", "negative", "positive", ""]
    assert layout["concentration"].tolist() == [0.0, 0.0, 1.5, 3.0]

    with pytest.raises(LayoutError, match=r"1 image\(s\) are not in the layout table: P1_C03_s1\.tif"):
        make_layout(paths, table=per_file.iloc[:3])
    with pytest.raises(LayoutError, match="not both"):
        make_layout(paths, regex=REGEX, table=per_file)
    clash = per_file.assign(treatment=["dmso", "other", "drug", "drug"])
    with pytest.raises(LayoutError, match="Well P1/A01 has different 'treatment'"):
        make_layout(paths, table=clash)
    with pytest.raises(LayoutError, match="Unknown control value 'maybe'"):
        make_layout(paths, table=per_file.assign(control=["maybe", "", "", ""]))

    # a table of wells annotates the wells found by the regex; unlisted wells stay empty
    wells = pd.DataFrame({"well": ["A01", "B2"], "treatment": ["dmso", "drug"], "control": ["negative", ""]})
    merged = make_layout(paths, regex=REGEX, table=wells)
    assert merged["treatment"].tolist()[:3] == ["dmso", "dmso", "drug"] and pd.isna(merged["treatment"][3])
    assert merged["control"].tolist() == ["negative", "negative", "", ""]
    with pytest.raises(LayoutError, match="give --layout REGEX too"):
        make_layout(paths, table=wells)


def test_streaming_writer_unifies_types(tmp_path):
    parts = [
        pd.DataFrame({"image": ["a", "a"], "label": [1, 2], "x": [1, 2]}),
        pd.DataFrame({"image": ["b"], "label": [1], "x": [2.5], "y": ["t"]}),
        pd.DataFrame({"image": pd.Series([], dtype=object), "label": pd.Series([], dtype=np.int64)}),
    ]
    for suffix in (".parquet", ".csv"):
        path = tmp_path / f"t{suffix}"
        kinds = {"x": "float", "y": "text"} if suffix == ".parquet" else None
        with StreamingTableWriter(path, ["image", "label", "x", "y"], kinds) as w:
            for p in parts:
                w.write(p)
        back = read_table(path)
        assert back["label"].tolist() == [1, 2, 1]
        np.testing.assert_array_equal(back["x"], [1.0, 2.0, 2.5])
        assert back["y"].isna().tolist() == [True, True, False]
    mixed = StreamingTableWriter(tmp_path / "t.parquet", ["y"])
    mixed.write(pd.DataFrame({"y": [np.nan]}))
    with pytest.raises(ValueError, match="give its type"):
        mixed.write(pd.DataFrame({"y": ["text"]}))
    mixed.abort()
    assert len(read_table(tmp_path / "t.parquet")) == 3  # the previous file is untouched
    # an error leaves no file behind (and the previous file in place)
    with pytest.raises(ValueError, match="not among"), StreamingTableWriter(tmp_path / "bad.csv", ["a"]) as w:
        w.write(pd.DataFrame({"b": [1]}))
    assert not (tmp_path / "bad.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- runs
def test_batch_writes_cells_profiles_and_manifest(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    seen = []
    result = run(iter_run_batch(_request(folder, out, layout_regex=REGEX)), seen.append)

    cells = pd.read_parquet(out / "cells.parquet")
    assert list(cells.columns[:5]) == ["plate", "well", "site", "image", "label"]
    assert "area" in cells and "mean_intensity_image" in cells
    assert cells.groupby("image").size().to_dict() == {
        "P1_A01_s1": 2,
        "P1_A01_s2": 1,
        "P1_B02_s1": 2,
        "P1_C03_s1": 3,
    }
    images = pd.read_parquet(out / "image_profiles.parquet")
    assert images["image"].tolist() == ["P1_A01_s1", "P1_A01_s2", "P1_B02_s1", "P1_C03_s1"]
    assert images["n_cells"].tolist() == [2, 1, 2, 3]
    wells = pd.read_parquet(out / "well_profiles.parquet")
    assert wells[["well", "n_images", "n_cells"]].to_dict("list") == {
        "well": ["A01", "B02", "C03"],
        "n_images": [2, 1, 1],
        "n_cells": [3, 2, 3],
    }
    # a well's profile pools its cells (the median is not a mean of image medians)
    a01 = cells[cells["well"] == "A01"]
    assert wells.loc[0, "median_area"] == pytest.approx(a01["area"].median())
    assert wells.loc[0, "mean_area"] == pytest.approx(a01["area"].mean())

    m = _manifest(out)
    assert m["status"] == "complete" and m["counts"] == {
        "images": 4,
        "processed": 4,
        "skipped": 0,
        "failed": 0,
        "cells": 8,
    }
    first = m["inputs"][0]
    assert (
        first["sha256"] == __import__("hashlib").sha256((folder / "P1_A01_s1.tif").read_bytes()).hexdigest()
    )
    assert first["well"] == "A01" and first["status"] == "done" and first["n_cells"] == 2
    assert m["pipeline"]["segmenter"]["params"]["diameter"] == 20.0
    assert m["versions"]["numpy"] == np.__version__ and "pandas" in m["versions"]
    assert m["timings"]["images_per_s"] > 0 and m["execution"]["mode"] == "in-process"
    assert set(m["outputs"]) >= {"cells", "image_profiles", "well_profiles", "manifest", "pipeline"}
    assert result.result_line().startswith("RESULT n_images=4 n_processed=4 n_skipped=0 n_failed=0 n_cells=8")
    # progress: counts, speed and ETA along the way, monotone steps
    assert seen[-1].done == 4 and seen[-1].fraction == 1.0
    assert any(p.eta_s is not None and p.images_per_s > 0 for p in seen)
    steps = [p.step for p in seen]
    assert steps == sorted(steps)


def test_rerun_skips_done_images_force_redoes_and_changes_redo(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    run(iter_run_batch(_request(folder, out)))
    part = out / "parts" / "P1_A01_s1.cells.parquet"
    stamp = part.stat().st_mtime_ns

    again = run(iter_run_batch(_request(folder, out)))
    assert again.counts["skipped"] == 4 and again.counts["processed"] == 0
    assert part.stat().st_mtime_ns == stamp
    assert len(pd.read_parquet(out / "cells.parquet")) == 8  # the combined table is rebuilt whole
    assert all(i["resumed"] for i in _manifest(out)["inputs"])

    forced = run(iter_run_batch(_request(folder, out, options={"force": True})))
    assert forced.counts["processed"] == 4 and forced.counts["skipped"] == 0
    assert part.stat().st_mtime_ns != stamp

    # an image changed on disk is redone; the others are kept
    tifffile.imwrite(folder / "P1_A01_s2.tif", _image([((30, 30), SMALL), ((70, 70), SMALL)]))
    changed = run(iter_run_batch(_request(folder, out)))
    assert changed.counts["processed"] == 1 and changed.counts["skipped"] == 3
    assert changed.image_profiles.set_index("image").loc["P1_A01_s2", "n_cells"] == 2
    # only touched (same content): kept, by its hash
    os.utime(folder / "P1_B02_s1.tif", ns=(1, 1))
    assert run(iter_run_batch(_request(folder, out))).counts["skipped"] == 4
    # another pipeline: everything is redone
    other = PipelineSpec(params={"diameter": 24.0}, feature_groups=("shape",))
    assert run(iter_run_batch(_request(folder, out, pipeline=other))).counts["processed"] == 4


def test_bad_images_are_reported_and_skipped(tmp_path):
    folder = _folder(tmp_path, {"a.tif": [((30, 30), BIG)]})
    (folder / "broken.tif").write_bytes(b"not a tiff at all")
    (folder / "empty.tif").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    tifffile.imwrite(folder / "tiny.tif", np.zeros((1, 1), np.uint8))
    out = tmp_path / "out"
    result = run(iter_run_batch(_request(folder, out, options={"format": "csv"})))
    assert result.counts == {"images": 5, "processed": 1, "skipped": 0, "failed": 4, "cells": 1}
    assert set(result.failures) == {"broken", "corrupt", "empty", "tiny"}
    m = _manifest(out)
    assert "TiffFileError" in m["failures"]["broken"] and "too small" in m["failures"]["tiny"]
    # said as what it is (before: "Could not find a backend ... pip install imageio[pyav]")
    for name, what in (
        ("broken", "unreadable or corrupt"),
        ("corrupt", "unreadable or corrupt"),
        ("empty", "empty"),
    ):
        assert m["failures"][name].startswith(f"Cannot read {name}."), m["failures"][name]
        assert what in m["failures"][name] and "pip install" not in m["failures"][name]
    status = {i["name"]: i["status"] for i in m["inputs"]}
    assert status == {
        "a": "done",
        "broken": "failed",
        "corrupt": "failed",
        "empty": "failed",
        "tiny": "failed",
    }
    assert pd.read_csv(out / "cells.csv")["image"].tolist() == ["a"]
    # a CSV run writes its parts as CSV too (they were Parquet)
    assert sorted(p.name for p in (out / "parts").glob("*.cells.*")) == ["a.cells.csv"]
    assert not list(out.rglob("*.parquet"))
    # failed images are retried on the next run
    assert run(iter_run_batch(_request(folder, out, options={"format": "csv"}))).counts["failed"] == 4


def test_cancel_keeps_finished_images_for_the_next_run(tmp_path):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    gen = iter_run_batch(_request(folder, out))
    for p in gen:
        if getattr(p, "done", 0) == 2:
            break
    gen.close()  # what a GUI cancel does at a yield
    m = _manifest(out)
    assert m["status"] == "cancelled" and m["counts"]["processed"] == 2
    assert not (out / "cells.parquet").exists()
    resumed = run(iter_run_batch(_request(folder, out)))
    assert resumed.counts["skipped"] == 2 and resumed.counts["processed"] == 2


def test_classifier_in_batch_matches_in_process_prediction(tmp_path):
    params = ClassicalParams(diameter=20.0)
    measure = MeasureParams(groups=("shape", "intensity"))
    train_img = _image([((20, 20), SMALL), ((20, 70), SMALL), ((60, 20), BIG), ((65, 70), BIG)], (110, 110))
    table = run(iter_segment_and_measure(train_img, "classical", params, measure=measure)).features
    names = np.where(table["area"] < 250, "small", "big")
    settings = ClassifierSettings(trees=15, feature_groups=("shape",))
    model = train(table, names, settings)
    clf_path = save_classifier(
        tmp_path / "size.phenotyper.zip", table, list(names), model.feature_names, settings
    )

    folder = _folder(tmp_path)
    spec = PipelineSpec(
        params={"diameter": 20.0}, feature_groups=("shape", "intensity"), classifier=FileRef(str(clf_path))
    )
    out = tmp_path / "out"
    result = run(iter_run_batch(_request(folder, out, pipeline=spec)))
    cells = pd.read_parquet(out / "cells.parquet")
    assert {"pheno_class", "pheno_proba_big", "pheno_proba_small", "pheno_uncertainty"} <= set(cells.columns)

    reloaded = load_classifier(clf_path).train()
    for fname, disks in LAYOUT.items():
        feats = run(iter_segment_and_measure(_image(disks), "classical", params, measure=measure)).features
        expected = predict(reloaded, feats)
        got = cells[cells["image"] == fname[:-4]].reset_index(drop=True)
        assert got["label"].tolist() == feats["label"].tolist()
        assert got["pheno_class"].tolist() == expected["pheno_class"].astype(str).tolist()
        np.testing.assert_allclose(got["pheno_proba_big"], expected["pheno_proba_big"])
        # and the classes are right: big disks are "big"
        assert got["pheno_class"].tolist() == ["big" if a >= 250 else "small" for a in feats["area"]]
    img = result.image_profiles.set_index("image")
    assert img.loc["P1_C03_s1", ["n_small", "n_big"]].tolist() == [2, 1]
    assert img.loc["P1_B02_s1", "fraction_big"] == 1.0
    assert "mean_area__big" in img.columns
    m = _manifest(out)
    assert m["classifier"]["classes"] == ["big", "small"]
    assert m["pipeline"]["classifier"]["sha256"] == m["classifier"]["sha256"]

    # the classifier file changed after the pipeline was made: refused before any work
    stale = PipelineSpec(classifier=FileRef(str(clf_path), "0" * 64))
    with pytest.raises(ValueError, match="has changed"):
        run(iter_run_batch(_request(folder, tmp_path / "o2", pipeline=stale)))


def test_controls_give_zscores_and_zprime(tmp_path):
    files = {
        f"P1_{w}_s1.tif": [((30, 30), r)] + ([((70, 65), r)] if k % 2 else [])
        for k, (w, r) in enumerate([("A01", 6), ("A02", 7), ("B01", 11), ("B02", 12), ("C01", 9)])
    }
    folder = _folder(tmp_path, files)
    wells = tmp_path / "wells.csv"
    wells.write_text(
        "well,treatment,control\nA01,dmso,negative\nA02,dmso,negative\nB01,toxin,positive\n"
        "B02,toxin,positive\nC01,drug X,\n"
    )
    out = tmp_path / "out"
    result = run(
        iter_run_batch(
            _request(folder, out, layout_regex=REGEX, layout_table=str(wells), options={"format": "csv"})
        )
    )
    wp = pd.read_csv(out / "well_profiles.csv")
    assert wp["treatment"].tolist() == ["dmso", "dmso", "toxin", "toxin", "drug X"]
    z = pd.read_csv(out / "well_zscores.csv")
    expect = zscore_to_controls(result.well_profiles, ["mean_area"])
    np.testing.assert_allclose(z["mean_area"], expect["mean_area"])
    neg = wp.loc[wp["control"] == "negative", "mean_area"]
    assert z.loc[0, "mean_area"] == pytest.approx((wp.loc[0, "mean_area"] - neg.mean()) / neg.std(ddof=1))
    zp = pd.read_csv(out / "z_prime.csv").set_index("readout")
    pos = wp.loc[wp["control"] == "positive", "mean_area"]
    want = 1 - 3 * (pos.std() + neg.std()) / abs(pos.mean() - neg.mean())
    assert zp.loc["mean_area", "z_prime"] == pytest.approx(want)
    assert zp.loc["mean_area", ["n_negative", "n_positive"]].tolist() == [2, 2]
    assert "n_images" not in zp.index and "concentration" not in zp.index
    np.testing.assert_allclose(
        zp["z_prime"].to_numpy(), z_prime(result.well_profiles, list(zp.index))["z_prime"].to_numpy()
    )


def test_h5ad_is_skipped_without_anndata(tmp_path, monkeypatch):
    import napari_phenotyper.io.tables as tables

    monkeypatch.setattr(tables, "anndata_available", lambda: False)
    folder = _folder(tmp_path, {"a.tif": [((30, 30), BIG)]})
    result = run(iter_run_batch(_request(folder, tmp_path / "out", options={"h5ad": True})))
    assert any("anndata is not installed" in n for n in result.notes)
    assert "h5ad" not in result.outputs


def test_h5ad_export_hands_features_and_obs_to_anndata(tmp_path, monkeypatch):
    """anndata is optional (not installed here): a stand-in module checks what it is given."""
    import importlib.machinery
    import sys
    import types

    written = {}

    class AnnData:
        def __init__(self, X, obs, var):
            self.X, self.obs, self.var = X, obs, var

        def write_h5ad(self, path):
            written.update(X=self.X, obs=self.obs, var=self.var)
            path.write_bytes(b"h5ad")

    fake = types.ModuleType("anndata")
    fake.AnnData = AnnData
    fake.__spec__ = importlib.machinery.ModuleSpec("anndata", None)
    monkeypatch.setitem(sys.modules, "anndata", fake)
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    result = run(iter_run_batch(_request(folder, out, layout_regex=REGEX, options={"h5ad": True})))
    assert result.outputs["h5ad"] == out / "cells.h5ad" and (out / "cells.h5ad").read_bytes() == b"h5ad"
    assert written["X"].shape == (8, len(written["var"])) and written["X"].dtype == np.float32
    assert "area" in written["var"].index and "label" not in written["var"].index
    assert list(written["obs"].columns[:5]) == ["plate", "well", "site", "image", "label"]
    assert written["obs"]["well"].tolist()[:3] == ["A01", "A01", "A01"]


def test_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    import napari_phenotyper.io.tables as tables

    monkeypatch.setattr(tables, "parquet_available", lambda: False)
    folder = _folder(tmp_path, {"a.tif": []})
    with pytest.raises(ImportError, match=r"pip install pyarrow.*--format csv"):
        run(iter_run_batch(_request(folder, tmp_path / "out")))


def test_dsb2018_images(shared_data, tmp_path):
    """Real images, grey and colour PNGs, with an estimated diameter per image."""
    src = shared_data / "dsb2018_dev" / "images"
    folder = tmp_path / "dsb"
    folder.mkdir()
    for p in sorted(src.iterdir())[:3]:
        shutil.copy(p, folder / p.name)
    spec = PipelineSpec(auto_diameter=True, feature_groups=("shape", "intensity"))
    result = run(iter_run_batch(_request(folder, tmp_path / "out", pipeline=spec)))
    assert result.counts["processed"] == 3 and not result.failures
    assert (result.image_profiles["n_cells"] > 5).all()
    diameters = [i["diameter"] for i in result.manifest["inputs"]]
    assert all(3 < d < 80 for d in diameters)


# ---------------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def local_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster


def test_local_cluster_runs_one_task_per_image(tmp_path, local_cluster):
    from napari_phenotyper.core.dask_runner import DaskExecutor

    folder = _folder(tmp_path)
    (folder / "P1_D04_s1.tif").write_bytes(b"corrupt")
    jobs = plan_jobs(
        expand_inputs([str(folder)]), make_layout([str(p) for p in sorted(folder.iterdir())], REGEX)
    )
    with DaskExecutor(address=local_cluster.scheduler_address) as ex:
        result = run(iter_batch(jobs, SPEC, BatchOptions(str(tmp_path / "dask")), executor=ex))
    serial = run(iter_batch(jobs, SPEC, BatchOptions(str(tmp_path / "serial"))))
    assert (
        result.counts
        == serial.counts
        == {
            "images": 5,
            "processed": 4,
            "skipped": 0,
            "failed": 1,
            "cells": 8,
        }
    )
    a = pd.read_parquet(tmp_path / "dask" / "cells.parquet")
    b = pd.read_parquet(tmp_path / "serial" / "cells.parquet")
    pd.testing.assert_frame_equal(a, b)
    m = _manifest(tmp_path / "dask")
    assert m["execution"]["mode"] == "dask" and m["execution"]["workers"] == 2
    assert len({i["pid"] for i in m["inputs"] if i["status"] == "done"}) >= 1
    assert all(i["pid"] != os.getpid() for i in m["inputs"] if "pid" in i)  # done by the workers
    # resume works the same on workers
    with DaskExecutor(address=local_cluster.scheduler_address) as ex:
        again = run(iter_batch(jobs, SPEC, BatchOptions(str(tmp_path / "dask")), executor=ex))
    assert again.counts["skipped"] == 4 and again.counts["failed"] == 1
    # closing the run (a GUI cancel) cancels the tasks not yet finished
    with DaskExecutor(address=local_cluster.scheduler_address) as ex:
        gen = iter_batch(jobs, SPEC, BatchOptions(str(tmp_path / "cancel")), executor=ex)
        for p in gen:
            if getattr(p, "done", 0) + getattr(p, "failed", 0) >= 1:
                break
        gen.close()
    assert _manifest(tmp_path / "cancel")["status"] == "cancelled"


def test_worker_warm_up_segments_a_tiny_image():
    from napari_phenotyper.core.dask_runner import warm_up_worker

    assert warm_up_worker() == 2  # the two synthetic discs


def _worker_setting(key):
    import dask.config

    return dask.config.get(key)


def test_local_cluster_turns_down_dask_housekeeping_but_keeps_user_settings():
    pytest.importorskip("distributed")
    import dask.config

    from napari_phenotyper.core.dask_runner import LOCAL_CLUSTER_CONFIG, DaskExecutor, _local_cluster_config

    with _local_cluster_config():
        assert {k: dask.config.get(k) for k in LOCAL_CLUSTER_CONFIG} == LOCAL_CLUSTER_CONFIG
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}), _local_cluster_config():
        assert dask.config.get("distributed.admin.tick.interval") == "50ms"  # the user's choice wins
        assert dask.config.get("distributed.worker.profile.enabled") is False
    assert dask.config.get("distributed.worker.profile.enabled") is True  # only around the cluster's start
    with DaskExecutor(n_workers=1) as ex:
        # the worker processes got the settings in force when their nanny was made
        seen = ex.client.run(_worker_setting, "distributed.worker.profile.enabled")
        assert list(seen.values()) == [False]
        assert ex.description["workers"] == 1
