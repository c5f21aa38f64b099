"""Classifier files: round trip, schema checks, and no code execution from crafted files."""

import io
import json
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest

from napari_phenotyper.core.classify.model import ClassifierSettings, feature_columns_for, predict, train
from napari_phenotyper.io.classifier_io import load_classifier, save_classifier


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
