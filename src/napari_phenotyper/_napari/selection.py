"""The selected cells, shown: a display-only layer tints and outlines them, and one
selected cell (a Cell table row, a plot point) is flown to and zoomed in on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap

from ..core.embedding import selection_image
from .layers import META_KEY, add_display_layer, camera, fly_to_cell, source_of

__all__ = [
    "SELECTION_COLORS",
    "SELECTION_ROLE",
    "cell_diameter",
    "find_selection_layer",
    "focus_cell",
    "update_selection_layer",
]

#: Role (in our metadata) of the display-only layer that outlines the selected cells.
SELECTION_ROLE = "plot_selection"
#: Colours of the selection layer's codes: selected cells tinted, their outlines opaque.
SELECTION_COLORS: dict[int | None, Any] = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (1.0, 0.92, 0.0, 0.3),
    2: (1.0, 0.92, 0.0, 1.0),
}
#: A focused cell is zoomed in on until this many of its diameters span the canvas's
#: smaller side (never zoomed out: a closer view is kept).
FOCUS_DIAMETERS = 10.0


def find_selection_layer(viewer: Any, labels: Labels) -> Labels | None:
    """The display-only layer outlining the selected cells of ``labels`` (by metadata)."""
    lid = str(labels.unique_id)
    for layer in viewer.layers:
        meta = source_of(layer)
        if (
            isinstance(layer, Labels)
            and meta.get("role") == SELECTION_ROLE
            and meta.get("labels_layer_id") == lid
        ):
            return layer
    return None


def update_selection_layer(
    viewer: Any, labels: Labels, selected: np.ndarray, edges: np.ndarray | None = None
) -> Labels | None:
    """Show the cells ``selected`` (label ids) of ``labels`` in a display-only layer.

    Selected cells are tinted and outlined (see
    :func:`~napari_phenotyper.core.embedding.selection_image`). The layer is made on
    first use, above ``labels`` (the active layer stays active), and hidden when nothing
    is selected; the segmentation's own ids are never touched. ``edges``
    (:func:`~napari_phenotyper.core.embedding.label_edges` of ``labels.data``) saves
    recomputing the outlines of every cell.
    """
    view = find_selection_layer(viewer, labels)
    selected = np.asarray(selected, dtype=np.int64)
    if len(selected) == 0:
        if view is not None:
            view.visible = False
        return view
    data = np.asarray(labels.data)
    if view is None or view.data.shape != data.shape:
        if view is not None:
            viewer.layers.remove(view)
        view = Labels(
            selection_image(data, selected, edges=edges),
            name=f"{labels.name} selection",
            scale=labels.scale,
            translate=labels.translate,
            rotate=labels.rotate,
            opacity=1.0,
            blending="translucent",
            colormap=DirectLabelColormap(color_dict=SELECTION_COLORS),
            metadata={META_KEY: {"role": SELECTION_ROLE, "labels_layer_id": str(labels.unique_id)}},
        )
        view.editable = False
        return add_display_layer(viewer, view)
    selection_image(data, selected, out=view.data, edges=edges)
    if view.visible:
        view.refresh()
    else:
        view.visible = True  # refreshes
    return view


def cell_diameter(table: pd.DataFrame, label: int, default: float = 20.0) -> float:
    """The cell's equivalent diameter in pixels (from its area when that column is
    missing; ``default`` when neither is in the table)."""
    row = table.loc[table["label"].to_numpy() == int(label)] if "label" in table else table.iloc[:0]
    if len(row):
        if "equivalent_diameter" in row:
            value = float(row["equivalent_diameter"].iloc[0])
        elif "area" in row:
            value = float(2.0 * np.sqrt(float(row["area"].iloc[0]) / np.pi))
        else:
            value = default
        if np.isfinite(value) and value > 0:
            return value
    return default


def focus_cell(
    viewer: Any,
    labels: Labels,
    table: pd.DataFrame,
    label: int,
    *,
    outline: bool = True,
    edges: np.ndarray | None = None,
) -> np.ndarray | None:
    """Outline one cell, centre the camera on it (its plane in a stack) and zoom in
    until :data:`FOCUS_DIAMETERS` of its diameters span the canvas (a closer view is
    kept). Returns the cell's world position, or ``None`` when it has no row."""
    world = fly_to_cell(viewer, labels, table, int(label))  # its plane, centred; zoom kept
    if world is None:
        return None
    if outline:
        update_selection_layer(viewer, labels, np.array([int(label)]), edges)
    cam = camera(viewer)
    scale = float(np.min(np.abs(np.asarray(labels.scale, dtype=float)[-2:])))
    span = FOCUS_DIAMETERS * max(cell_diameter(table, label), 4.0) * scale  # world units
    canvas = getattr(viewer, "canvas", None)
    size = np.asarray(getattr(canvas, "size", (600, 800)), dtype=float)
    target = float(size[-2:].min()) / span
    if target > float(cam.zoom):
        cam.zoom = target
    return world
