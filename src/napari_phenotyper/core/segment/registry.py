"""Segmenters by name, imported lazily so that heavy backends load only when used."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import MappingProxyType

from .base import Segmenter

__all__ = ["BUILTIN", "SegmenterSpec", "available", "get_segmenter", "segmenter_names"]


@dataclass(frozen=True)
class SegmenterSpec:
    """Where a segmenter class lives and what it needs installed.

    Parameters
    ----------
    name : str
        Registry key.
    display_name : str
        Name shown to users.
    import_path : str
        ``"package.module:ClassName"`` of a class implementing :class:`Segmenter`.
    requires : tuple of str
        Importable modules the backend needs (checked by :func:`available`).
    install_hint : str
        What to install when a requirement is missing.
    engine : bool
        Run in the engine process (deep-learning backends: TensorFlow must never load
        in the napari process, and models stay cached there between runs).
    """

    name: str
    display_name: str
    import_path: str
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    engine: bool = False


#: Built-in segmenters (read-only). Adapters for deep-learning backends register here
#: with their requirements so that the GUI can list them and say what is missing.
BUILTIN: MappingProxyType[str, SegmenterSpec] = MappingProxyType(
    {
        "classical": SegmenterSpec(
            "classical",
            "Classical (threshold + watershed)",
            "napari_phenotyper.core.segment.classical:ClassicalSegmenter",
        ),
        "cellpose": SegmenterSpec(
            "cellpose",
            "Cellpose (deep learning)",
            "napari_phenotyper.core.segment.cellpose:CellposeSegmenter",
            requires=("cellpose", "torch"),
            install_hint='Install it with: pip install "napari-phenotyper[cellpose]" (and torch for your platform first).',
            engine=True,
        ),
        "stardist": SegmenterSpec(
            "stardist",
            "StarDist (deep learning)",
            "napari_phenotyper.core.segment.stardist:StarDistSegmenter",
            requires=("stardist", "tensorflow"),
            install_hint='Install it with: pip install "napari-phenotyper[stardist]".',
            engine=True,
        ),
    }
)


def segmenter_names() -> list[str]:
    """Names of all registered segmenters, installed or not."""
    return list(BUILTIN)


def _missing(spec: SegmenterSpec) -> list[str]:
    return [m for m in spec.requires if importlib.util.find_spec(m) is None]


def available() -> dict[str, SegmenterSpec]:
    """Registered segmenters whose requirements are importable here."""
    return {n: s for n, s in BUILTIN.items() if not _missing(s)}


def get_segmenter(name: str) -> Segmenter:
    """Instantiate the segmenter registered as ``name``.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    ImportError
        When the backend's package is not installed (the message says what to install).
    """
    try:
        spec = BUILTIN[name]
    except KeyError:
        raise KeyError(f"Unknown segmenter {name!r}; choose one of {', '.join(BUILTIN)}.") from None
    missing = _missing(spec)
    if missing:
        raise ImportError(
            f"The {spec.display_name} segmenter needs {', '.join(missing)}. {spec.install_hint}".strip()
        )
    module_name, attr = spec.import_path.split(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls()
