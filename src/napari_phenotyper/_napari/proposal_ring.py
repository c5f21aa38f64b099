"""The yellow ring around the proposed cell (a display-only points layer)."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels, Points

from .layers import META_KEY, add_display_layer, source_of

__all__ = ["find_ring", "remove_ring", "show_ring"]

RING_ROLE = "proposal"


def find_ring(viewer: Any) -> Points | None:
    """The proposal ring layer, by metadata."""
    return next(
        (lay for lay in viewer.layers if isinstance(lay, Points) and source_of(lay).get("role") == RING_ROLE),
        None,
    )


def remove_ring(viewer: Any) -> None:
    """No cell is proposed: the ring goes."""
    for lay in list(viewer.layers):
        if isinstance(lay, Points) and source_of(lay).get("role") == RING_ROLE:
            viewer.layers.remove(lay)


def show_ring(viewer: Any, layer: Labels, world: np.ndarray | None, diameter: float) -> None:
    """Ring the cell at ``world`` (a cell of ``diameter`` pixels of ``layer``)."""
    if world is None:
        return
    marker = find_ring(viewer)
    size = 1.6 * max(diameter, 4.0) * float(np.mean(layer.scale[-2:]))
    if marker is None:
        marker = Points(
            [world],
            name="proposed cell",
            symbol="disc",
            size=size,
            face_color="transparent",
            border_color="yellow",
            border_width=0.12,
            border_width_is_relative=True,
            metadata={META_KEY: {"role": RING_ROLE}},
        )
        add_display_layer(viewer, marker)
    else:
        marker.data = np.asarray([world])
        marker.size = size
