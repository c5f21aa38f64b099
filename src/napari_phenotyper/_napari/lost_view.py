"""Lost annotations on screen: one Points layer per labels layer, a point per annotation
whose cell the current segmentation does not have, in its class's colour."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from napari.layers import Labels, Points

from ..core.classify.annotations import LostAnnotation
from .layers import META_KEY, add_display_layer, source_of

__all__ = ["LOST_ROLE", "find_lost_layer", "update_lost_layer"]

LOST_ROLE = "lost_annotations"
_NO_CLASS = "#FFFFFF"


def find_lost_layer(viewer: Any, labels: Labels) -> Points | None:
    """The lost-annotations layer of ``labels`` (by metadata)."""
    lid = str(labels.unique_id)
    for layer in viewer.layers:
        meta = source_of(layer)
        if isinstance(layer, Points) and meta.get("role") == LOST_ROLE and meta.get("labels_layer_id") == lid:
            return layer
    return None


def update_lost_layer(
    viewer: Any, labels: Labels, lost: Sequence[LostAnnotation], colors: Mapping[str, str]
) -> Points | None:
    """Show ``lost`` as points over ``labels`` (added, updated or removed as needed)."""
    layer = find_lost_layer(viewer, labels)
    shown = [r for r in lost if r.centroid is not None and len(r.centroid) == labels.ndim]
    if not shown:
        if layer is not None:
            viewer.layers.remove(layer)
        return None
    data = np.array([r.centroid for r in shown], dtype=float)
    face = [colors.get(r.cls or "", _NO_CLASS) for r in shown]
    text = [f"lost: {r.cls if r.cls is not None else r.value}" for r in shown]
    if layer is None:
        layer = Points(
            data,
            name=f"{labels.name} lost annotations",
            symbol="x",
            size=10,
            face_color=face,
            border_color="white",
            scale=labels.scale,
            translate=labels.translate,
            features={"what": text},
            metadata={META_KEY: {"role": LOST_ROLE, "labels_layer_id": str(labels.unique_id)}},
        )
        add_display_layer(viewer, layer)
    else:
        layer.data = data
        layer.features = {"what": text}
        layer.face_color = face
    return layer
