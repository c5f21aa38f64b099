"""OME-Zarr (NGFF 0.4) images and labels: writing region by region, reading level 0 lazily."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_phenotyper.core.synthetic import NucleiField
from napari_phenotyper.io.atomic import atomic_directory
from napari_phenotyper.io.ome_zarr import (
    add_pyramid,
    create_ome_zarr,
    is_zarr_path,
    open_ome_zarr,
    write_ome_zarr,
)

zarr = pytest.importorskip("zarr")


def test_write_read_round_trip_with_pyramid(tmp_path):
    img = np.random.default_rng(0).integers(0, 4000, (300, 500), dtype=np.uint16)
    path = write_ome_zarr(
        tmp_path / "a.ome.zarr",
        img.shape,
        img.dtype,
        lambda y0, y1, x0, x1: img[y0:y1, x0:x1],
        chunks=128,
        levels=3,
    )
    assert is_zarr_path(path) and not is_zarr_path(tmp_path)
    attrs = json.loads((path / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [4.0, 4.0]
    omz = open_ome_zarr(path)
    assert omz.axes == "yx" and omz.shape == img.shape and omz.name == "a"
    assert np.array_equal(omz.data[:], img)
    level2 = zarr.open_group(str(path), mode="r")["2"]
    assert np.array_equal(level2[:], img[::4, ::4])


def test_labels_metadata_and_automatic_levels(tmp_path):
    arr = create_ome_zarr(tmp_path / "l.zarr", (2100, 900), np.uint32, chunks=(512, 512), labels=True)
    arr[1000:1010, 10:20] = 7
    assert add_pyramid(tmp_path / "l.zarr") == 3  # 2100 -> 1050 -> 525
    attrs = json.loads((tmp_path / "l.zarr" / ".zattrs").read_text())
    assert attrs["image-label"]["version"] == "0.4" and len(attrs["multiscales"][0]["datasets"]) == 3
    assert int(zarr.open_group(str(tmp_path / "l.zarr"), mode="r")["1"][500, 5]) == 7


def test_plane_views_channels_and_stacks(tmp_path):
    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(1, 3, 1, 40, 50)
    arr = create_ome_zarr(tmp_path / "c.zarr", data.shape, data.dtype, axes="tczyx")
    arr[:] = data
    omz = open_ome_zarr(tmp_path / "c.zarr")
    assert omz.axes == "tczyx"
    view, caxis = omz.plane()
    assert caxis == 0 and view.shape == (3, 40, 50)
    assert np.array_equal(view[:, 5:9, 10:20], data[0, :, 0, 5:9, 10:20])
    one, caxis = omz.plane(channel=2)
    assert caxis is None and one.shape == (40, 50) and np.array_equal(np.asarray(one), data[0, 2, 0])
    with pytest.raises(ValueError, match="Channel 5"):
        omz.plane(channel=5)
    stack = create_ome_zarr(tmp_path / "t.zarr", (4, 40, 50), np.uint8, axes="tyx")
    with pytest.raises(ValueError, match="time axis"):
        open_ome_zarr(tmp_path / "t.zarr").plane()
    del stack


def test_ngff_05_metadata_and_plain_arrays(tmp_path):
    g = zarr.open_group(str(tmp_path / "v3.zarr"), mode="w")
    a = g.create_array("s0", shape=(30, 40), dtype="uint16", chunks=(16, 16))
    a[:] = 5
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "s0"}], "name": "n"}],
    }
    omz = open_ome_zarr(tmp_path / "v3.zarr")
    assert omz.axes == "yx" and omz.name == "n" and int(omz.data[3, 3]) == 5
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(2, 30, 40), dtype="float32")
    assert open_ome_zarr(tmp_path / "plain.zarr").axes == "cyx"
    del z
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(ValueError, match="multiscales"):
        open_ome_zarr(tmp_path / "empty.zarr")
    with pytest.raises(FileNotFoundError):
        open_ome_zarr(tmp_path / "missing.zarr")


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "out.zarr"
    with atomic_directory(dest) as tmp:
        (tmp / "f").write_text("one")
    assert (dest / "f").read_text() == "one"

    def fail() -> None:
        with atomic_directory(dest) as tmp:
            (tmp / "f").write_text("two")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert (dest / "f").read_text() == "one"
    with atomic_directory(dest) as tmp:
        (tmp / "g").write_text("three")
    assert sorted(p.name for p in dest.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_synthetic_field_is_the_same_whatever_the_region():
    field = NucleiField((700, 900), seed=2, tile=256)
    full = field.render(0, 700, 0, 900)
    labels = field.render(0, 700, 0, 900, labels=True)
    assert np.array_equal(field.render(123, 456, 300, 811), full[123:456, 300:811])
    assert np.array_equal(field.render(123, 456, 300, 811, labels=True), labels[123:456, 300:811])
    assert full.dtype == np.uint16 and labels.max() > 300
    assert not np.array_equal(NucleiField((700, 900), seed=3, tile=256).render(0, 50, 0, 50), full[:50, :50])
