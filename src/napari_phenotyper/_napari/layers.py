"""Results -> napari layers: find ours by metadata, update in place or add."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Layer

__all__ = [
    "META_KEY",
    "add_display_layer",
    "camera",
    "cell_world_position",
    "docked_widgets",
    "features_for_layer",
    "find_result_layer",
    "fly_to_cell",
    "source_of",
    "table_of",
    "upsert_labels",
    "warm_up_labels",
]

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


def docked_widgets(viewer: Any) -> list[Any]:
    """The widgets docked in the viewer's window (the inner widgets, any napari version)."""
    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None)  # recent napari: the inner widgets
    if docks is None:  # older napari: the dock wrappers
        docks = {k: d.widget() for k, d in getattr(window, "_dock_widgets", {}).items()}
    return list(dict(docks).values())


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


_WARMED: set[str] = set()
_WARM_LOCK = threading.Lock()


def warm_up_labels(dtype: Any = np.uint32) -> None:
    """Compile napari's labels colour kernels for ``dtype`` in the calling thread.

    napari JIT-compiles (numba) its labels colour mapping the first time a labels layer
    of a dtype is made or drawn: about 1.5 s on a 2-core machine, which froze the GUI
    when our first segmentation arrived. Workers call this before they return a result,
    so the compiling happens off the GUI thread (numba keeps the compiled code for the
    process). Cheap once done; never raises (a napari that renders differently just
    compiles later, as before).
    """
    key = np.dtype(dtype).str
    with _WARM_LOCK:
        if key in _WARMED:
            return
        _WARMED.add(key)
    try:
        from napari.utils.colormaps import DirectLabelColormap

        data = np.arange(64, dtype=dtype).reshape(8, 8)
        layer = Labels(data)  # the cyclic colour map: thumbnail and texture casting
        layer.colormap._data_to_texture(data)
        direct = Labels(
            (data % 8).astype(np.uint8),
            colormap=DirectLabelColormap(color_dict={None: [0, 0, 0, 0], 0: [0, 0, 0, 0], 1: [1, 0, 0, 1]}),
        )  # the phenotype view's direct colour map
        direct.colormap._data_to_texture((data % 8).astype(np.uint8))
        # ...and its ramp (value and uncertainty modes: 255 colours, another numba kernel,
        # ~0.5 s to compile, which froze the GUI on the first switch to values)
        from .phenotype_view import view_colormap

        ramp = Labels((data % 255).astype(np.uint8), colormap=view_colormap([], "value"))
        ramp.colormap._data_to_texture((data % 255).astype(np.uint8))
        # vispy's line visuals (napari's layer overlays) build their dash patterns in
        # Python on first use, ~80 ms; the patterns are cached for the process
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # a warm-up only
        pass


def add_display_layer(viewer: Any, layer: Any) -> Any:
    """Add one of our display-only layers (a view, an outline, markers) without making
    it the active layer: napari activates what it adds, and the keys and the layer
    controls must stay with the layer the user was working on."""
    active = viewer.layers.selection.active
    viewer.add_layer(layer)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` in napari >= 0.7, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def cell_world_position(viewer: Any, layer: Labels, table: pd.DataFrame, label: int) -> np.ndarray | None:
    """World coordinates of a cell's centroid (all axes of ``layer``), from its table row.

    Uses the ``centroid_y``/``centroid_x`` columns and, for stacks, the ``axisN`` plane
    columns, or for cells measured in 3-D ``centroid_z`` (rounded to the plane through the
    cell's centre); ``None`` when the table has no row or no centroid for ``label``.
    """
    hit = np.flatnonzero(table["label"].to_numpy() == int(label)) if "label" in table else []
    if len(hit) == 0 or "centroid_y" not in table.columns:
        return None
    rec = table.iloc[int(hit[0])]
    plane = [int(rec[c]) for c in table.columns if c.startswith("axis") and c[4:].isdigit()]
    if "centroid_z" in table.columns:
        plane.append(round(float(rec["centroid_z"])))
    data_point = np.array([*plane, rec["centroid_y"], rec["centroid_x"]], dtype=float)
    lead = layer.ndim - len(data_point)
    if lead > 0:  # labels with more axes than the table knows: keep the current plane
        current = np.asarray(viewer.dims.point)[-layer.ndim :]
        data_point = np.concatenate([layer.world_to_data(current)[:lead], data_point])
    return np.asarray(layer.data_to_world(data_point), dtype=float)


def fly_to_cell(
    viewer: Any, layer: Labels, table: pd.DataFrame, label: int, zoom_to: float | None = None
) -> np.ndarray | None:
    """Centre the camera on a cell (and move through the stack to its plane).

    Parameters
    ----------
    zoom_to : float, optional
        Zoom so that this many world units span the smaller side of the canvas
        (e.g. ten cell diameters); ``None`` keeps the zoom.

    Returns
    -------
    numpy.ndarray or None
        The cell's world position, or ``None`` when it could not be found.
    """
    world = cell_world_position(viewer, layer, table, label)
    if world is None:
        return None
    if len(world) > 2:
        point = list(viewer.dims.point)
        for i in range(len(world) - 2):
            point[len(point) - len(world) + i] = world[i]
        viewer.dims.point = point
    cam = camera(viewer)
    cam.center = tuple(world[-2:])
    if zoom_to is not None and zoom_to > 0:
        canvas = getattr(viewer, "canvas", None)
        size = np.asarray(getattr(canvas, "size", (600, 800)), dtype=float)
        cam.zoom = float(size[-2:].min()) / float(zoom_to)
    return world
