"""Pipeline files: round trips, relative classifier paths, digests and schema messages."""

import json

import numpy as np
import pandas as pd
import pytest

from napari_phenotyper.core.classify.model import ClassifierSettings
from napari_phenotyper.core.pipeline_spec import FileRef, ModelRef, PipelineError, PipelineSpec
from napari_phenotyper.io.classifier_io import save_classifier
from napari_phenotyper.io.pipeline_file import file_sha256, load_pipeline, save_pipeline


def _classifier(path):
    table = pd.DataFrame({"area": [1.0, 2.0, 10.0, 11.0]})
    return save_classifier(path, table, ["a", "a", "b", "b"], ["area"], ClassifierSettings(trees=3))


def _valid():
    return {
        "format": "napari-phenotyper-pipeline",
        "version": 1,
        "segmenter": {"name": "classical", "params": {"diameter": 18}},
        "measure": {"groups": ["shape"]},
    }


def test_round_trip_json_and_yaml(tmp_path):
    spec = PipelineSpec(
        params={"diameter": 18.0, "threshold_method": "li"},
        auto_diameter=True,
        channel=1,
        feature_groups=("shape", "texture"),
        texture_levels=16,
        name="nuclei",
        description="test",
    )
    for name in ("p.json", "p.yaml"):
        path = save_pipeline(spec, tmp_path / name)
        assert load_pipeline(path) == spec
        assert spec.segmenter_params().threshold_method == "li"
    text = (tmp_path / "p.json").read_text()
    data = json.loads(text)
    assert data["format"] == "napari-phenotyper-pipeline" and data["version"] == 1
    assert data["created"] and data["napari_phenotyper"]
    assert "\n  " in text  # indented for people
    assert "threshold_method: li" in (tmp_path / "p.yaml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp files left


def test_classifier_reference_relative_and_checked(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    clf = _classifier(folder / "cells.phenotyper.zip")
    path = save_pipeline(PipelineSpec(classifier=FileRef(str(clf))), folder / "pipeline.json")
    data = json.loads(path.read_text())
    assert data["classifier"] == {"path": "cells.phenotyper.zip", "sha256": file_sha256(clf)}
    # the folder can move: paths are relative to the pipeline file
    moved = tmp_path / "moved"
    folder.rename(moved)
    spec = load_pipeline(moved / "pipeline.json")
    assert spec.classifier.path == str(moved / "cells.phenotyper.zip")
    assert spec.classifier.sha256 == data["classifier"]["sha256"]
    # the digest is part of what the pipeline does; the place is not
    assert spec.sha256() == load_pipeline(moved / "pipeline.json", check_files=False).sha256()
    # a changed classifier is refused, a missing one named
    _classifier_other = pd.DataFrame({"area": [1.0, 5.0, 10.0, 50.0]})
    save_classifier(
        moved / "cells.phenotyper.zip",
        _classifier_other,
        ["a", "a", "b", "b"],
        ["area"],
        ClassifierSettings(),
    )
    with pytest.raises(ValueError, match="has changed since the pipeline was made"):
        load_pipeline(moved / "pipeline.json")
    (moved / "cells.phenotyper.zip").unlink()
    with pytest.raises(FileNotFoundError, match=r"cells\.phenotyper\.zip"):
        load_pipeline(moved / "pipeline.json")
    assert load_pipeline(moved / "pipeline.json", check_files=False).classifier is not None
    with pytest.raises(FileNotFoundError, match="save the classifier first"):
        save_pipeline(PipelineSpec(classifier=FileRef(str(tmp_path / "none.zip"))), tmp_path / "x.json")


def test_model_by_name_or_file(tmp_path):
    data = _valid()
    data["segmenter"]["model"] = "cyto3"
    spec = PipelineSpec.from_dict(data, validate=False)
    assert spec.model == ModelRef(name="cyto3")
    # the classical segmenter has no model parameter: said so
    with pytest.raises(PipelineError, match="takes no model"):
        spec.validate()
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"\x00" * 10)
    data["segmenter"]["model"] = {"path": "w.pth", "sha256": None}
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PipelineError, match="takes no model"):
        load_pipeline(tmp_path / "p.json")


def test_model_folder_digest_and_model_parameter(tmp_path):
    folder = tmp_path / "my_model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.h5").write_bytes(b"123")
    digest = file_sha256(folder)
    assert len(digest) == 64 and digest == file_sha256(folder)
    (folder / "sub" / "weights.h5").write_bytes(b"124")
    assert file_sha256(folder) != digest
    # a form's "model" parameter becomes a model reference: by path when it exists, else by name
    by_path = PipelineSpec(segmenter="x", params={"model": str(folder), "a": 1}).with_model_from_params()
    assert by_path.model == ModelRef(path=str(folder.resolve())) and by_path.params == {"a": 1}
    by_name = PipelineSpec(segmenter="x", params={"model": "2D_versatile_fro"}).with_model_from_params()
    assert by_name.model == ModelRef(name="2D_versatile_fro") and by_name.params == {}
    assert PipelineSpec(params={"diameter": 3.0}).with_model_from_params().model is None


def test_schema_problems_are_all_listed_with_their_place(tmp_path):
    bad = {
        "format": "napari-phenotyper-pipeline",
        "version": 1,
        "segmenter": {"name": "classical", "params": {"diameter": ["1"]}, "auto_diameter": "yes"},
        "channel": -1,
        "measure": {"groups": ["shape", "textur"], "texture_levels": 1},
        "classifier": {"path": "c.zip", "sha256": "abc"},
        "colour": "red",
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} is not a valid napari-phenotyper pipeline:")
    for expected in (
        "unknown key(s) colour",
        "segmenter.params: diameter must be plain values",
        "segmenter.auto_diameter: must be true or false",
        "channel: must be a channel index",
        "measure.groups: unknown group(s) textur; choose among shape, zernike, intensity, texture, neighbors",
        "measure.texture_levels: must be a whole number from 2 to 256",
        "classifier.sha256: must be 64 hexadecimal digits",
    ):
        assert expected in msg, expected
    assert len(info.value.problems) == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something"}, "format: must be 'napari-phenotyper-pipeline'"),
        ({"version": 2}, "version: 2 is newer than this napari-phenotyper reads (1); update"),
        ({"version": "1"}, "version: must be 1"),
        (
            {"segmenter": {"name": "nope"}},
            "segmenter.name: Unknown segmenter 'nope'; choose one of classical",
        ),
        ({"segmenter": {"name": "classical", "params": {"sigma": 1}}}, "Unknown parameter 'sigma'; valid"),
        ({"segmenter": {"name": "classical", "params": {"diameter": -3}}}, "diameter must be a positive"),
        ({"segmenter": "classical"}, "segmenter: must be an object"),
        ({"classifier": "c.zip"}, 'classifier: must be null or {"path"'),
    ],
)
def test_single_problems(tmp_path, change, message):
    data = {**_valid(), **change}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, check_files=False)
    assert message in str(info.value)


def test_unreadable_files(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"format": "napari-phenotyper-pipeline",\n "version": 1,,}')
    with pytest.raises(PipelineError, match=r"not valid JSON: .* at line 2"):
        load_pipeline(path)
    (tmp_path / "p.yaml").write_text("segmenter: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_pipeline(tmp_path / "p.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PipelineError, match="an object"):
        load_pipeline(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="No such pipeline file"):
        load_pipeline(tmp_path / "missing.json")


def test_digest_ignores_names_but_not_parameters():
    a = PipelineSpec(params={"diameter": 18.0}, name="a")
    assert a.sha256() == PipelineSpec(params={"diameter": 18.0}, name="b", description="x").sha256()
    assert a.sha256() != PipelineSpec(params={"diameter": 19.0}).sha256()
    assert a.sha256() != PipelineSpec(params={"diameter": 18.0}, feature_groups=("shape",)).sha256()
    assert np.all([len(a.sha256()) == 64])
