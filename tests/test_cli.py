"""The headless command line on the built-in sample, folders and bad input."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import disk

from napari_phenotyper.cli import main


def _write_images(folder, n=2):
    folder.mkdir()
    for i in range(n):
        img = np.full((96, 96), 10, np.uint16)
        for c in [(25, 25), (70, 60)][: i + 1]:
            img[disk(c, 9, shape=img.shape)] = 1000
        tifffile.imwrite(folder / f"img{i}.tif", img)
    return folder


def test_segment_sample_writes_labels_and_csv(tmp_path, capsys):
    assert (
        main(
            [
                "segment",
                "--sample",
                "nuclei",
                "--out",
                str(tmp_path),
                "--quiet",
                "--features",
                "shape,intensity",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT ") and "ap50=" in last
    ap50 = float(last.split("ap50=")[1].split()[0])
    assert ap50 >= 0.6  # the classical default on its own sample
    labels = tifffile.imread(tmp_path / "sample_nuclei_labels.tif")
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert list(cells.columns[:2]) == ["image", "label"]
    assert len(cells) == len(np.unique(labels)) - 1 > 100


def test_segment_folder_skips_bad_image(tmp_path, capsys):
    folder = _write_images(tmp_path / "in")
    (folder / "broken.tif").write_bytes(b"not a tiff")
    rc = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--diameter", "18", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "FAILED broken" in captured.err
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert cells.groupby("image").size().to_dict() == {"img0": 1, "img1": 2}
    assert "RESULT n_images=2 n_failed=1 n_cells=3" in captured.out
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.to_dict("list") == {"image": ["img0", "img1"], "n_cells": [1, 2]}
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(manifest["images"]) == {"img0", "img1"}
    assert manifest["images"]["img0"]["params"]["diameter"] == 18.0
    assert "broken" in manifest["failed"]


def test_same_file_name_in_two_folders_keeps_both(tmp_path, capsys):
    a = _write_images(tmp_path / "a", 1)
    b = _write_images(tmp_path / "b", 2)
    assert (
        main(["segment", str(a / "img0.tif"), str(b / "img0.tif"), "--out", str(tmp_path / "o"), "--quiet"])
        == 0
    )
    assert (tmp_path / "o" / "img0_labels.tif").exists() and (tmp_path / "o" / "img0_2_labels.tif").exists()
    assert set(pd.read_csv(tmp_path / "o" / "cells.csv")["image"]) == {"img0", "img0_2"}


def test_bad_arguments_are_clear(tmp_path, capsys):
    assert main(["segment", "--out", str(tmp_path)]) == 2
    assert "Give image files" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing*.tif"), "--out", str(tmp_path)]) == 2
    assert "No such file" in capsys.readouterr().err
    folder = _write_images(tmp_path / "in", 1)
    assert main(["segment", str(folder), "--out", str(tmp_path / "o"), "--param", "nonsense=1"]) == 2
    assert "Unknown parameter 'nonsense'" in capsys.readouterr().err
    assert main(["segment", str(folder), "--out", str(tmp_path / "o"), "--segmenter", "nope"]) == 2
    assert "Unknown segmenter" in capsys.readouterr().err


def test_evaluate_command(tmp_path, capsys):
    images = _write_images(tmp_path / "images")
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):
        m = np.zeros((96, 96), np.uint16)
        for k, c in enumerate([(25, 25), (70, 60)][: i + 1]):
            m[disk(c, 9, shape=m.shape)] = k + 1
        tifffile.imwrite(masks / f"img{i}.tif", m)
    assert (
        main(["evaluate", "--images", str(images), "--masks", str(masks), "--diameter", "18", "--quiet"]) == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ap50=1.0000") and last.endswith("n_images=2")
    argv = ["evaluate", "--images", str(images), "--masks", str(masks), "--diameter", "18", "--quiet"]
    assert main([*argv, "--iou-rule", "kaggle"]) == 0  # no pair sits exactly on 0.5 here
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT ap50=1.0000")
    with pytest.raises(SystemExit):
        main([*argv, "--iou-rule", "dsb"])


@pytest.mark.parametrize("argv", [["--version"], ["segment", "--help"]])
def test_help_and_version(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


# ------------------------------------------------------------------------------ batch
def _plate(folder):
    folder.mkdir()
    for name, centers in {
        "P1_A01_s1": [(25, 25)],
        "P1_A01_s2": [(25, 25), (70, 60)],
        "P1_B01_s1": [(70, 60)],
    }.items():
        img = np.full((96, 96), 10, np.uint16)
        for c in centers:
            img[disk(c, 9, shape=img.shape)] = 1000
        tifffile.imwrite(folder / f"{name}.tif", img)
    (folder / "P1_B01_s2.tif").write_bytes(b"broken")
    return folder


def test_pipeline_then_batch_with_layout_csv(tmp_path, capsys):
    pipe = tmp_path / "pipe.json"
    assert (
        main(["pipeline", str(pipe), "--diameter", "18", "--features", "shape,intensity", "--name", "t"]) == 0
    )
    spec = json.loads(pipe.read_text())
    assert spec["segmenter"]["params"]["diameter"] == 18.0 and spec["measure"]["groups"] == [
        "shape",
        "intensity",
    ]
    assert spec["segmenter"]["auto_diameter"] is False
    images = _plate(tmp_path / "in")
    layout = tmp_path / "layout.csv"
    layout.write_text(
        "file,plate,well,site,treatment,control\n"
        "P1_A01_s1.tif,P1,A1,1,dmso,negative\nP1_A01_s2.tif,P1,A1,2,dmso,negative\n"
        "P1_B01_s1.tif,P1,B1,1,toxin,positive\nP1_B01_s2.tif,P1,B1,2,toxin,positive\n"
    )
    out = tmp_path / "out"
    argv = [
        "batch",
        str(pipe),
        str(images),
        "--out",
        str(out),
        "--layout-csv",
        str(layout),
        "--format",
        "csv",
    ]
    assert main([*argv, "--labels", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "FAILED P1_B01_s2: Cannot read P1_B01_s2.tif: the file is unreadable or corrupt" in captured.err
    assert "TiffFileError" in captured.err  # the decoder's own word stays, for a bug report
    assert "at least two positive and two negative control wells" in captured.err  # one well of each
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("RESULT n_images=4 n_processed=3 n_skipped=0 n_failed=1 n_cells=4 ")
    cells = pd.read_csv(out / "cells.csv", dtype={"site": str})
    assert list(cells.columns[:7]) == ["plate", "well", "site", "image", "label", "treatment", "control"]
    assert cells["well"].tolist() == ["A01", "A01", "A01", "B01"]
    wells = pd.read_csv(out / "well_profiles.csv")
    assert wells[["well", "n_images", "n_cells"]].values.tolist() == [["A01", 2, 3], ["B01", 1, 1]]
    assert (out / "well_zscores.csv").exists() and (out / "labels" / "P1_A01_s2_labels.tif").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["layout_table"]["sha256"] and manifest["run"]["pipeline_file"] == str(pipe)
    assert "broken" in manifest["failures"]["P1_B01_s2"] or "TIFF" in manifest["failures"]["P1_B01_s2"]

    # rerun: finished images are kept, the broken one is tried again
    assert main([*argv, "--quiet"]) == 0
    assert "n_processed=0 n_skipped=3 n_failed=1" in capsys.readouterr().out
    assert main([*argv, "--quiet", "--force"]) == 0
    assert "n_processed=3 n_skipped=0" in capsys.readouterr().out


def test_batch_progress_shows_speed_and_eta(tmp_path, capsys):
    pipe = tmp_path / "p.json"
    assert main(["pipeline", str(pipe), "--diameter", "18", "--features", "shape"]) == 0
    images = _write_images(tmp_path / "in", 2)
    assert main(["batch", str(pipe), str(images), "--out", str(tmp_path / "o"), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert "2/2 images" in err and "images/s" in err and "ETA" in err


NEEDS_PYARROW = pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed (pip install pyarrow)"
)


@NEEDS_PYARROW
def test_batch_errors_are_clear(tmp_path, capsys):
    images = _write_images(tmp_path / "in", 1)
    pipe = tmp_path / "p.json"
    pipe.write_text('{"format": "napari-phenotyper-pipeline", "version": 1, "segmenter": {"name": "x"}}')
    out = str(tmp_path / "o")
    assert main(["batch", str(pipe), str(images), "--out", out]) == 2
    assert "segmenter.name: Unknown segmenter 'x'" in capsys.readouterr().err
    assert main(["pipeline", str(pipe), "--diameter", "18"]) == 0
    capsys.readouterr()
    assert main(["batch", str(pipe), str(images), "--out", out, "--layout", "(?P<plate>P1)"]) == 2
    assert "no (?P<well>...) group" in capsys.readouterr().err
    assert main(["batch", str(pipe), str(images), "--out", out, "--layout", r"(?P<well>Z\d+)"]) == 2
    assert "1 of 1 file names do not match" in capsys.readouterr().err
    assert main(["batch", str(pipe), str(tmp_path / "none*.tif"), "--out", out]) == 2
    assert "No such file, folder or pattern" in capsys.readouterr().err
    assert main(["batch", str(pipe), str(images), "--out", out, "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert (
        main(["batch", str(pipe), str(images), "--out", out, "--workers", "2", "--scheduler", "tcp://x:1"])
        == 2
    )
    assert "not both" in capsys.readouterr().err
    assert main(["pipeline", str(tmp_path / "q.json"), "--classifier", str(tmp_path / "none.zip")]) == 2
    assert "No such classifier file" in capsys.readouterr().err


@NEEDS_PYARROW
@pytest.mark.filterwarnings("ignore::DeprecationWarning:distributed")
def test_batch_on_local_dask_workers(tmp_path, capsys):
    pytest.importorskip("distributed")
    pipe = tmp_path / "p.json"
    assert main(["pipeline", str(pipe), "--diameter", "18", "--features", "shape"]) == 0
    images = _write_images(tmp_path / "in", 2)
    out = tmp_path / "o"
    assert main(["batch", str(pipe), str(images), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert "RESULT n_images=2 n_processed=2" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["mode"] == "dask" and manifest["execution"]["workers"] == 1
    assert manifest["run"]["executor_start_seconds"] > 0
    assert len(pd.read_parquet(out / "cells.parquet")) == 3


def test_cellprofiler_feature_set_from_the_command_line(tmp_path, capsys):
    """segment --feature-set cellprofiler writes CellProfiler's columns; a pipeline keeps
    the set and batch measures with it; --features all adds the Zernike moments."""
    images = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", str(images), "--out", str(out), "--quiet", "--diameter", "18"]
    assert main([*argv, "--feature-set", "cellprofiler", "--features", "shape,intensity,zernike"]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert {"AreaShape_Area", "AreaShape_Zernike_4_2", "Intensity_MeanIntensity_image", "centroid_y"} <= set(
        cells
    )
    assert not any(c.startswith(("Texture_", "Neighbors_", "mean_intensity")) for c in cells)
    # the disks are 1000 in a uint16 image: CellProfiler scales it to [0, 1]
    assert cells["Intensity_MaxIntensity_image"].max() == pytest.approx(1000 / 65535, rel=1e-9)
    assert main([*argv, "--features", "all"]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert "zernike_0_0" in cells and "haralick_contrast_image" in cells and "n_neighbors" in cells
    assert main([*argv, "--features", "shape,colour"]) == 2
    assert "Unknown feature group" in capsys.readouterr().err

    pipe = tmp_path / "cp.json"
    assert main(["pipeline", str(pipe), "--diameter", "18", "--feature-set", "cellprofiler"]) == 0
    spec = json.loads(pipe.read_text())
    assert spec["measure"]["feature_set"] == "cellprofiler"
    assert spec["measure"]["groups"] == ["shape", "intensity", "texture", "neighbors"]
    assert (
        main(["batch", str(pipe), str(images), "--out", str(tmp_path / "b"), "--format", "csv", "--quiet"])
        == 0
    )
    cells = pd.read_csv(tmp_path / "b" / "cells.csv")
    assert "Texture_Contrast_image_3_00_256" in cells and "Neighbors_NumberOfNeighbors_Adjacent" in cells
    # the default set's pipeline file does not mention the set (its digest is unchanged)
    plain = tmp_path / "plain.json"
    assert main(["pipeline", str(plain), "--diameter", "18"]) == 0
    assert "feature_set" not in json.loads(plain.read_text())["measure"]


def test_classify_trains_from_annotated_cells_and_applies_to_tables(tmp_path, capsys, shared_data):
    """classify --train on CellCognition's 670 expert-labelled H2B cells, then classify
    tables of those cells (without their classes): predictions, summary and a run record."""
    source = pd.read_csv(shared_data / "cellcognition_h2b" / "H2B_training_set.csv")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(source))
    train, test = source.iloc[order[:500]], source.iloc[order[500:]]
    train.to_csv(tmp_path / "annotated.csv", index=False)
    clf = tmp_path / "h2b.phenotyper.zip"
    argv = [
        "classify",
        "--train",
        str(tmp_path / "annotated.csv"),
        "--class-column",
        "class_name",
        "--out",
        str(clf),
    ]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT n_cells=500 n_classes=8 ")
    assert float(last.split("cv_accuracy=")[1].split()[0]) > 0.8
    from napari_phenotyper.core.classify.session import LoopSettings
    from napari_phenotyper.io.classifier_io import load_classifier

    saved = load_classifier(clf)  # the CLI trains what the Phenotypes dock trains by default
    assert saved.settings["kind"] == LoopSettings().classifier == "self_trained"
    assert saved.X_unlabelled is None or len(saved.X_unlabelled) == 0  # every row had a class
    partly = train.copy()
    partly.loc[partly.index[:60], "class_name"] = None  # cells nobody classified
    partly.to_csv(tmp_path / "partly.csv", index=False)
    argv2 = [*argv[:2], str(tmp_path / "partly.csv"), *argv[3:-1], str(tmp_path / "partly.phenotyper.zip")]
    assert main(argv2) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT n_cells=440 n_classes=8 ")
    assert load_classifier(tmp_path / "partly.phenotyper.zip").X_unlabelled.shape[0] == 60
    folder = tmp_path / "tables"
    folder.mkdir()
    truth = test["class_name"].reset_index(drop=True)
    cells = test.drop(columns=["class_name"]).reset_index(drop=True)
    cells.iloc[:100].to_csv(folder / "a.csv", index=False)
    cells.iloc[100:].to_parquet(folder / "b.parquet", index=False)
    out = tmp_path / "out"
    assert main(["classify", "--classifier", str(clf), str(folder), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "RESULT n_tables=2 n_failed=0 n_cells=170"
    a = pd.read_csv(out / "a_classified.csv")
    b = pd.read_parquet(out / "b_classified.parquet")
    pred = pd.concat([a["pheno_class"], b["pheno_class"]], ignore_index=True)
    assert (pred == truth).mean() > 0.8  # held-out expert labels
    assert {"pheno_uncertainty", "pheno_proba_meta"} <= set(a.columns) and len(a.columns) == len(
        cells.columns
    ) + 10
    summary = pd.read_csv(out / "class_summary.csv")
    assert summary["n_cells"].tolist() == [100, 70]
    assert summary.filter(regex="^n_").drop(columns="n_cells").sum(axis=1).tolist() == [100, 70]
    record = json.loads((out / "classify.json").read_text())
    assert record["failures"] == {} and len(record["classes"]) == 8
    # bad input says what to do
    assert main(["classify", "--out", str(out)]) == 2
    assert "Give --classifier FILE" in capsys.readouterr().err
    assert main(["classify", "--train", str(tmp_path / "missing.csv"), "--out", str(clf)]) == 2
    assert "No such table of annotated cells" in capsys.readouterr().err
    assert main([*argv[:3], "--class-column", "phenotype", "--out", str(clf)]) == 2
    assert "no column 'phenotype'" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    pd.DataFrame({"label": [1, 2], "area": [3.0, 4.0]}).to_csv(wrong / "w.csv", index=False)
    assert main(["classify", "--classifier", str(clf), str(wrong), "--out", str(tmp_path / "o2")]) == 1
    assert "FAILED w.csv: This table lacks" in capsys.readouterr().err


def test_classify_maps_channels_of_a_classifier_trained_in_another_naming(tmp_path, capsys):
    from napari_phenotyper.core.classify.model import ClassifierSettings, feature_columns_for
    from napari_phenotyper.core.features import compute_features
    from napari_phenotyper.io.classifier_io import save_classifier

    rng = np.random.default_rng(1)
    labels = np.zeros((80, 80), np.int32)
    image = rng.normal(100, 5, labels.shape)
    kinds = {}
    for k in range(16):
        r, c = divmod(k, 4)
        labels[r * 20 + 4 : r * 20 + 16, c * 20 + 4 : c * 20 + 16] = k + 1
        kinds[k + 1] = "bright" if k % 2 else "dim"
        if k % 2:
            image[labels == k + 1] += 200
    t = compute_features(labels, {"gfp": image, "dapi": image[::-1].copy()}, groups=("intensity",))
    y = [kinds[int(lab)] for lab in t["label"]]
    clf = save_classifier(
        tmp_path / "c.phenotyper.zip", t, y, feature_columns_for(t), ClassifierSettings(trees=20)
    )
    other = compute_features(labels, {"ch1": image, "ch2": image[::-1].copy()}, groups=("intensity",))
    other.to_csv(tmp_path / "cells.csv", index=False)
    argv = ["classify", "--classifier", str(clf), str(tmp_path / "cells.csv"), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "--channel-map CLASSIFIER_CHANNEL=TABLE_CHANNEL" in capsys.readouterr().err
    # the option may come before the tables and repeats
    argv = ["classify", "--classifier", str(clf), "--channel-map", "gfp=ch1", "--channel-map", "dapi=ch2"]
    assert main([*argv, str(tmp_path / "cells.csv"), "--out", str(tmp_path / "o")]) == 0
    pred = pd.read_csv(tmp_path / "o" / "cells_classified.csv")
    assert pred["pheno_class"].tolist() == y


def test_classify_images_segments_measures_and_classifies_them(tmp_path, capsys):
    """classify on images: the built-in sample is segmented and measured as `segment` does,
    then every cell is classified by a classifier trained (classify --train) on a table of
    the same cells, annotated by a size rule the classifier must learn."""
    seg = tmp_path / "seg"
    assert main(["segment", "--sample", "nuclei", "--out", str(seg), "--quiet"]) == 0
    cells = pd.read_csv(seg / "cells.csv")
    cells["size"] = np.where(cells["area"] > cells["area"].median(), "large", "small")
    cells.iloc[::3].to_csv(tmp_path / "annotated.csv", index=False)  # a third of the cells annotated
    clf = tmp_path / "size.phenotyper.zip"
    argv = [
        "classify",
        "--train",
        str(tmp_path / "annotated.csv"),
        "--class-column",
        "size",
        "--kind",  # a size threshold: the forest's task (the self-trained default gets 0.87 here)
        "random_forest",
        "--out",
        str(clf),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert (
        main(["classify", "--classifier", str(clf), "--sample", "nuclei", "--out", str(out), "--quiet"]) == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"RESULT n_tables=1 n_failed=0 n_cells={len(cells)}"
    got = pd.read_csv(out / "sample_nuclei_classified.csv")
    assert (got["label"].to_numpy() == cells["label"].to_numpy()).all()
    assert (got["pheno_class"] == cells["size"]).mean() > 0.9
    assert (out / "sample_nuclei_labels.tif").is_file()
    summary = pd.read_csv(out / "class_summary.csv")
    assert summary.loc[0, "n_large"] + summary.loc[0, "n_small"] == len(cells)
