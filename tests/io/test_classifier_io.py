"""Classifier and regressor files: round trip, schema checks, and no code execution from crafted files."""

import io
import json
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest

from napari_phenotyper.core.classify.model import (
    ClassifierSettings,
    TrainedClassifier,
    feature_columns_for,
    predict,
    train,
)
from napari_phenotyper.core.classify.regression import (
    RegressorSettings,
    TrainedRegressor,
    predict_values,
    train_regressor,
)
from napari_phenotyper.io.classifier_io import load_classifier, save_classifier, save_regressor


def _data(n=45, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["interphase", "mitosis", "apoptosis"] * (n // 3))
    df = pd.DataFrame(
        {
            "label": np.arange(n) + 1,
            "area": np.where(y == "mitosis", 150, 300) + rng.normal(0, 9, n),
            "mean_intensity_image": np.where(y == "apoptosis", 800, 200) + rng.normal(0, 20, n),
        }
    )
    return df, y


def test_round_trip_predicts_identically(tmp_path):
    df, y = _data()
    settings = ClassifierSettings(kind="random_forest", seed=7)
    names = feature_columns_for(df)
    model = train(df, y, settings)
    path = save_classifier(
        tmp_path / "clf.phenotyper.zip",
        df,
        list(y),
        names,
        settings,
        colors={"mitosis": "#ff0000"},
        metadata={"images": ["a.tif"]},
    )
    loaded = load_classifier(path)
    assert loaded.classes == ["apoptosis", "interphase", "mitosis"]
    assert loaded.feature_names == ["area", "mean_intensity_image"]
    assert loaded.colors == {"mitosis": "#ff0000"} and loaded.metadata == {"images": ["a.tif"]}
    again = loaded.train()
    pd.testing.assert_frame_equal(predict(model, df), predict(again, df))


def _write_zip(path, header, npz_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("classifier.json", json.dumps(header))
        zf.writestr("training.npz", npz_bytes)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_crafted_file_cannot_execute_code(tmp_path):
    df, y = _data()
    good = save_classifier(
        tmp_path / "good.zip", df, list(y), ["area", "mean_intensity_image"], ClassifierSettings()
    )
    with zipfile.ZipFile(good) as zf:
        header = json.loads(zf.read("classifier.json"))
    marker = tmp_path / "pwned"
    payload = np.array([_Exploit(str(marker))], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, X=payload, y=np.zeros(1, np.int64))  # object array -> pickled inside the npz
    evil = tmp_path / "evil.zip"
    _write_zip(evil, header, buf.getvalue())
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_classifier(evil)
    assert not marker.exists()
    # a raw pickle instead of an npz is refused too
    evil2 = tmp_path / "evil2.zip"
    _write_zip(evil2, header, pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ValueError):
        load_classifier(evil2)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda h: h.update(format="other"), "wrong format"),
        (lambda h: h.update(version=99), "version 99 is not supported"),
        (lambda h: h.update(classes=["only"]), "at least two class names"),
        (lambda h: h.update(feature_names=["area"]), "expected float64 with 1 columns"),
        (lambda h: h["settings"].update(run="rm -rf /"), "unknown settings"),
    ],
)
def test_schema_errors_say_what_is_wrong(tmp_path, mutate, match):
    df, y = _data()
    good = save_classifier(
        tmp_path / "good.zip", df, list(y), ["area", "mean_intensity_image"], ClassifierSettings()
    )
    with zipfile.ZipFile(good) as zf:
        header = json.loads(zf.read("classifier.json"))
        npz = zf.read("training.npz")
    mutate(header)
    bad = tmp_path / "bad.zip"
    _write_zip(bad, header, npz)
    with pytest.raises(ValueError, match=match):
        load_classifier(bad)


def test_not_a_zip(tmp_path):
    p = tmp_path / "x.zip"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        load_classifier(p)
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.zip")


# --- regressors (continuous phenotype values) in the same format ---


def _regression_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "label": np.arange(n) + 1,
            "area": rng.uniform(100, 500, n),
            "mean_intensity_image": rng.uniform(0, 1, n),
        }
    )
    values = (df["area"] - 100) / 400 * 0.7 + 0.3 * df["mean_intensity_image"]
    return df, values.to_list()


def _save_regressor(tmp_path, kind="random_forest", name="reg.zip"):
    df, v = _regression_data()
    settings = RegressorSettings(kind=kind, seed=4)
    return save_regressor(tmp_path / name, df, v, ["area", "mean_intensity_image"], settings), df, v


@pytest.mark.parametrize("kind", ["random_forest", "ridge", "knn"])
def test_regressor_round_trip_predicts_identically(tmp_path, kind):
    df, v = _regression_data()
    settings = RegressorSettings(kind=kind, seed=4, feature_groups=("shape", "intensity"))
    model = train_regressor(df, v, settings)
    path = save_regressor(
        tmp_path / "reg.phenotyper.zip",
        df,
        v,
        model.feature_names,
        settings,
        metadata={"value": "progression"},
    )
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("classifier.json"))
    assert header["version"] == 2 and header["task"] == "regression" and header["classes"] == []
    loaded = load_classifier(path)
    assert loaded.task == "regression" and loaded.is_regression
    assert loaded.classes == [] and loaded.metadata == {"value": "progression"}
    assert loaded.y.dtype == np.float64
    np.testing.assert_array_equal(loaded.y, v)
    table, values = loaded.training_table()
    assert values == v and list(table.columns) == ["area", "mean_intensity_image"]
    again = loaded.train()
    assert isinstance(again, TrainedRegressor)
    assert again.settings == settings and again.value_range == model.value_range
    pd.testing.assert_frame_equal(predict_values(model, df), predict_values(again, df))


def test_classifier_files_stay_version_1_and_old_files_load(tmp_path):
    df, y = _data()
    path = save_classifier(
        tmp_path / "clf.zip", df, list(y), ["area", "mean_intensity_image"], ClassifierSettings()
    )
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("classifier.json"))
        npz = zf.read("training.npz")
    assert header["version"] == 1  # still readable by releases that read only version 1
    del header["task"]  # as written before regressors existed
    old = tmp_path / "old.zip"
    _write_zip(old, header, npz)
    loaded = load_classifier(old)
    assert loaded.task == "classification" and not loaded.is_regression
    assert isinstance(loaded.train(), TrainedClassifier)


def test_regressor_file_refuses_a_table_without_its_features(tmp_path):
    path, df, _ = _save_regressor(tmp_path)
    model = load_classifier(path).train()
    with pytest.raises(
        ValueError, match=r"lacks 1 of the classifier's 2 feature columns \(mean_intensity_image\)"
    ):
        predict_values(model, df.drop(columns=["mean_intensity_image"]))


@pytest.mark.parametrize("member", ["X", "y"])
def test_crafted_regressor_file_cannot_execute_code(tmp_path, member):
    good, _, _ = _save_regressor(tmp_path)
    with zipfile.ZipFile(good) as zf:
        header = json.loads(zf.read("classifier.json"))
    marker = tmp_path / "pwned"
    arrays = {"X": np.zeros((1, 2)), "y": np.zeros(1)}
    arrays[member] = np.array([_Exploit(str(marker))], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object array -> pickled inside the npz
    evil = tmp_path / "evil.zip"
    _write_zip(evil, header, buf.getvalue())
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_classifier(evil)
    assert not marker.exists()
    evil2 = tmp_path / "evil2.zip"
    _write_zip(evil2, header, pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ValueError):
        load_classifier(evil2)
    assert not marker.exists()


def _nan_values(npz_bytes):
    with np.load(io.BytesIO(npz_bytes)) as f:
        X, y = f["X"], f["y"].copy()
    y[0] = np.nan
    buf = io.BytesIO()
    np.savez(buf, X=X, y=y)
    return buf.getvalue()


def _int_values(npz_bytes):
    with np.load(io.BytesIO(npz_bytes)) as f:
        X, y = f["X"], f["y"]
    buf = io.BytesIO()
    np.savez(buf, X=X, y=np.zeros(len(y), np.int64))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mutate_header", "mutate_npz", "match"),
    [
        (lambda h: h.update(task="clustering"), None, "unknown task 'clustering'"),
        (lambda h: h.update(version=1), None, "a regressor needs format version 2"),
        (lambda h: h.update(version=3), None, "version 3 is not supported \\(this version reads 1 and 2\\)"),
        (lambda h: h.update(classes=["a", "b"]), None, "'classes' must be empty for a regressor"),
        (lambda h: h["settings"].update(balanced=True), None, "unknown settings \\['balanced'\\]"),
        (lambda h: h["settings"].update(kind="svm"), None, "invalid settings \\(Unknown regressor 'svm'"),
        (
            lambda h: h["settings"].update(feature_groups="shape"),
            None,
            "'feature_groups' must be null or a list",
        ),
        (None, _nan_values, "one finite float64 value per training row"),
        (None, _int_values, "one finite float64 value per training row"),
    ],
)
def test_regressor_schema_errors_say_what_is_wrong(tmp_path, mutate_header, mutate_npz, match):
    good, _, _ = _save_regressor(tmp_path)
    with zipfile.ZipFile(good) as zf:
        header = json.loads(zf.read("classifier.json"))
        npz = zf.read("training.npz")
    if mutate_header:
        mutate_header(header)
    if mutate_npz:
        npz = mutate_npz(npz)
    bad = tmp_path / "bad.zip"
    _write_zip(bad, header, npz)
    with pytest.raises(ValueError, match=match):
        load_classifier(bad)


def test_save_regressor_refuses_bad_values(tmp_path):
    df, v = _regression_data()
    with pytest.raises(ValueError, match="must be finite"):
        save_regressor(tmp_path / "r.zip", df, [np.nan, *v[1:]], ["area"], RegressorSettings())
    with pytest.raises(ValueError, match="40 rows but values of shape \\(39,\\)"):
        save_regressor(tmp_path / "r.zip", df, v[1:], ["area"], RegressorSettings())
    assert not (tmp_path / "r.zip").exists()


def test_classifier_saved_with_old_texture_names_applies_to_new_tables(tmp_path):
    """haralick_dissimilarity/energy were renamed glcm_*: old classifiers and tables still fit."""
    from napari_phenotyper.core.features import compute_features
    from napari_phenotyper.io.tables import read_table, table_columns, write_table

    rng = np.random.default_rng(3)
    labels = np.zeros((60, 60), np.int32)
    for k in range(9):
        r, c = divmod(k, 3)
        labels[r * 20 + 3 : r * 20 + 17, c * 20 + 3 : c * 20 + 17] = k + 1
    image = rng.integers(0, 255, labels.shape).astype(np.uint8)
    new = compute_features(labels, {"dna": image}, groups=("texture",))
    assert "glcm_energy_dna" in new and "haralick_energy_dna" not in new
    old = new.rename(
        columns={
            "glcm_energy_dna": "haralick_energy_dna",
            "glcm_dissimilarity_dna": "haralick_dissimilarity_dna",
        }
    )
    y = ["a", "b", "c"] * 3
    names = ["haralick_energy_dna", "haralick_dissimilarity_dna", "haralick_contrast_dna"]
    path = save_classifier(tmp_path / "old.zip", old, y, names, ClassifierSettings(seed=1))
    loaded = load_classifier(path)
    assert loaded.feature_names == ["glcm_energy_dna", "glcm_dissimilarity_dna", "haralick_contrast_dna"]
    assert len(predict(loaded.train(), new)) == 9
    # and a table written before the rename reads back with the present names
    for suffix in (".csv", ".parquet"):
        written = write_table(old, tmp_path / f"old{suffix}")
        assert "glcm_energy_dna" in table_columns(written)
        back = read_table(written)
        assert list(back.columns) == list(new.columns)
        np.testing.assert_allclose(back["glcm_energy_dna"], new["glcm_energy_dna"], rtol=1e-9)
        only = read_table(written, columns=["label", "glcm_energy_dna"])
        assert list(only.columns) == ["label", "glcm_energy_dna"]


def test_self_trained_classifier_file_keeps_its_unlabelled_cells(tmp_path):
    from napari_phenotyper.core.classify.model import unlabelled_sample

    df, y = _data(n=90, seed=3)
    labelled = np.arange(len(df)) < 12  # a few answers, the rest unannotated
    names = feature_columns_for(df)
    pool = unlabelled_sample([df], [~labelled], names, seed=0)
    assert len(pool) == 78 and list(pool.columns) == names
    settings = ClassifierSettings(kind="self_trained")
    model = train(df[labelled], y[labelled], settings, unlabelled=pool)
    alone = train(df[labelled], y[labelled], settings)  # without the unannotated cells
    path = save_classifier(
        tmp_path / "st.phenotyper.zip", df[labelled], list(y[labelled]), names, settings, unlabelled=pool
    )
    loaded = load_classifier(path)
    assert loaded.X_unlabelled is not None and loaded.X_unlabelled.shape == (78, len(names))
    again = loaded.train()
    pd.testing.assert_frame_equal(predict(model, df), predict(again, df))  # the same model back
    assert not np.allclose(
        predict(model, df)["pheno_proba_mitosis"].to_numpy(),
        predict(alone, df)["pheno_proba_mitosis"].to_numpy(),
    )  # ...which the unannotated cells did change


def test_a_crafted_unlabelled_member_is_refused(tmp_path):
    df, y = _data()
    names = feature_columns_for(df)
    path = save_classifier(tmp_path / "a.phenotyper.zip", df, list(y), names, ClassifierSettings())
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("classifier.json"))
    buf = io.BytesIO()
    np.savez(
        buf, X=df[names].to_numpy(np.float64), y=np.zeros(len(df), np.int64), X_unlabelled=np.zeros((3, 5))
    )
    bad = tmp_path / "bad.phenotyper.zip"
    _write_zip(bad, header, buf.getvalue())
    with pytest.raises(ValueError, match="X_unlabelled has shape"):
        load_classifier(bad)
