"""The npe2 manifest is valid and every command it lists imports."""

import importlib
from pathlib import Path

import npe2
import pytest

import napari_phenotyper

MANIFEST = Path(napari_phenotyper.__file__).parent / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_validates(manifest):
    assert manifest.name == "napari-phenotyper"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment & measure", "Cell table", "Fine-tune"} <= widgets


def test_every_command_imports(manifest):
    commands = manifest.contributions.commands
    assert len(commands) >= 5
    for cmd in commands:
        module, attr = cmd.python_name.split(":")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj), cmd.python_name


def test_manifest_is_discoverable_by_npe2():
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("napari-phenotyper").name == "napari-phenotyper"
