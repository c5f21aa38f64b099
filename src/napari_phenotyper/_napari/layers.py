"""Results -> napari layers: find ours by metadata, update in place or add."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Layer

__all__ = ["META_KEY", "features_for_layer", "find_result_layer", "source_of", "table_of", "upsert_labels"]

#: Key of our provenance in ``layer.metadata``.
META_KEY = "napari_phenotyper"


def features_for_layer(features: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``features`` with napari's ``index`` column (label id of each row).

    napari looks labels up in ``features`` through its ``index`` column (for the
    status bar); our data bus is the ``label`` column, so the two are kept equal.
    """
    df = features.copy()
    if "index" in df.columns:
        df = df.drop(columns="index")
    df["index"] = df["label"].to_numpy()
    return df


def table_of(layer: Labels) -> pd.DataFrame:
    """The per-cell table of a labels layer, without napari's ``index`` column."""
    df = pd.DataFrame(layer.features)
    return df.drop(columns="index") if "index" in df.columns else df


def source_of(layer: Layer) -> dict[str, Any]:
    """Our provenance dictionary of ``layer`` (empty if not ours)."""
    meta = layer.metadata.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def find_result_layer(viewer: Any, source: Image) -> Labels | None:
    """The labels layer our widget made for ``source`` (by metadata, never by name)."""
    sid = str(source.unique_id)
    for layer in viewer.layers:
        if isinstance(layer, Labels) and source_of(layer).get("source_layer_id") == sid:
            return layer
    return None


def upsert_labels(
    viewer: Any,
    source: Image,
    labels: np.ndarray,
    features: pd.DataFrame,
    provenance: dict[str, Any],
) -> Labels:
    """Put a segmentation result into the viewer.

    Updates the labels layer previously made for ``source`` in place (keeping its
    colours, opacity and position in the layer list) or adds a new one aligned with
    the image (same scale, translation, rotation). ``features`` is replaced whole
    so that napari's ``features`` event fires; provenance goes into ``metadata``.
    """
    meta = {
        **provenance,
        "source_layer": source.name,
        "source_layer_id": str(source.unique_id),
        "source_path": source.source.path,  # None for layers not opened from a file
    }
    layer = find_result_layer(viewer, source)
    if layer is None:
        layer = Labels(
            labels,
            name=f"{source.name} labels",
            scale=source.scale[-labels.ndim :],
            translate=source.translate[-labels.ndim :],
            rotate=source.rotate if source.ndim == labels.ndim else None,
            metadata={META_KEY: meta},
            features=features_for_layer(features),
        )
        viewer.add_layer(layer)
    else:
        layer.data = labels
        layer.metadata = {**layer.metadata, META_KEY: meta}
        layer.features = features_for_layer(features)
    return layer
