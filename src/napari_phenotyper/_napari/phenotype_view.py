"""The phenotype view: a display-only labels layer painted with class / uncertainty codes.

One view layer sits above each annotated labels layer. Its pixels are small codes
(see :mod:`napari_phenotyper.core.classify.display`), so recolouring 100,000 cells is
one gather and a colour map of at most 256 entries; the segmentation's own label ids
are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap, ensure_colormap
from napari.utils.colormaps.standardize_color import transform_color

from ..core.classify.display import cell_codes, label_lut, paint
from .layers import META_KEY, add_display_layer, source_of

__all__ = ["VIEW_ROLE", "find_view", "update_view", "view_colormap"]

VIEW_ROLE = "phenotype_view"
#: Opacity of predicted cells relative to annotated ones (annotated are opaque).
PREDICTED_ALPHA = 0.55


#: Up to this many pixels the segmentation is switched to outlines under the class
#: colours. napari recomputes a contour on every refresh of the layer on the GUI thread
#: (measured 100-170 ms at 2048 x 2048 on 2 cores), so larger layers keep their fill.
CONTOUR_MAX_PIXELS = 2**21


def view_colormap(
    classes: Sequence[tuple[str, str]], mode: str, colormap: str = "magma"
) -> DirectLabelColormap:
    """Colours of the view codes: per class (predicted faint, annotated opaque) or a ramp."""
    colors: dict[int | None, Any] = {None: np.zeros(4, np.float32), 0: np.zeros(4, np.float32)}
    if mode in ("uncertainty", "value"):
        ramp = ensure_colormap(colormap).map(np.linspace(0, 1, 255))
        for i in range(255):
            colors[i + 1] = ramp[i]
    else:
        n = len(classes)
        for k, (_name, color) in enumerate(classes):
            rgba = transform_color(color)[0]
            faint = rgba.copy()
            faint[3] = PREDICTED_ALPHA
            colors[1 + k] = faint
            colors[1 + n + k] = rgba
    return DirectLabelColormap(color_dict=colors)


def find_view(viewer: Any, labels: Labels) -> Labels | None:
    """The view layer of ``labels`` (by metadata)."""
    lid = str(labels.unique_id)
    for layer in viewer.layers:
        meta = source_of(layer)
        if isinstance(layer, Labels) and meta.get("role") == VIEW_ROLE and meta.get("labels_layer_id") == lid:
            return layer
    return None


def update_view(
    viewer: Any,
    labels: Labels,
    table: pd.DataFrame,
    classes: Sequence[tuple[str, str]],
    mode: str,
    *,
    value_range: tuple[float, float] | None = None,
    colormap_key: tuple[Any, ...] | None = None,
) -> Labels | None:
    """Paint ``table``'s phenotype columns into the view layer of ``labels`` (made if needed).

    ``colormap_key`` identifies the current colours (classes and mode); the colour map
    is rebuilt only when it changes, so a retrain only repaints pixels. No view is made
    while there is nothing to show (no annotation, no prediction): a fresh segmentation
    then costs napari one layer, not two (returns ``None``).
    """
    names = [c for c, _ in classes]
    codes = cell_codes(table, names, mode, value_range)
    lut = label_lut(table["label"].to_numpy(), codes)
    data = np.asarray(labels.data)
    view = find_view(viewer, labels)
    key = colormap_key if colormap_key is not None else (tuple(classes), mode)
    if view is None and not np.any(codes):
        return None
    if view is None or view.data.shape != data.shape:
        if view is not None:
            viewer.layers.remove(view)
        image = paint(data, lut)
        view = Labels(
            image,
            name=f"{labels.name} phenotypes",
            scale=labels.scale,
            translate=labels.translate,
            rotate=labels.rotate,
            opacity=0.9,
            blending="translucent",
            colormap=view_colormap(classes, mode),
            metadata={
                META_KEY: {"role": VIEW_ROLE, "labels_layer_id": str(labels.unique_id), "colormap_key": key}
            },
        )
        view.editable = False
        if labels.contour == 0 and data.size <= CONTOUR_MAX_PIXELS:
            labels.contour = 1  # outlines under the class colours, not a second fill
        return add_display_layer(viewer, view)
    paint(data, lut, out=view.data)
    meta = source_of(view)
    if meta.get("colormap_key") != key:
        view.colormap = view_colormap(classes, mode)
        view.metadata = {**view.metadata, META_KEY: {**meta, "colormap_key": key}}
    view.refresh()
    return view
