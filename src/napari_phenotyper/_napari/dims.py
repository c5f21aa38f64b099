"""The Segment dock's "2D per plane" / "3D volume" switch: its default from the layer, and
the parameters it sets (through :func:`~napari_phenotyper.core.pipeline.with_dimensions`)."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox

from ..core.pipeline import voxel_spacing_of, with_dimensions

__all__ = ["DIMS_CHOICES", "apply_dims", "default_dims", "dims_combo", "stack_axes"]

DIMS_CHOICES = [("2D per plane", "2d-per-plane"), ("3D volume", "3d")]
_TIME_LABELS = {"t", "time", "frame", "frames", "timepoint"}


def dims_combo() -> ComboBox:
    """The switch, hidden until a stack is chosen."""
    return ComboBox(
        label="segment as",
        choices=DIMS_CHOICES,
        value="2d-per-plane",
        visible=False,
        tooltip="A stack: segment each plane on its own, or the last three axes (z, y, x) as volumes "
        "(voxel size from the layer's scale unless the parameters give one). StarDist: the model decides.",
    )


def stack_axes(layer: Any) -> int:
    """Spatial axes of an image layer (its channel axis not counted)."""
    return int(layer.ndim)  # napari's ndim leaves an RGB layer's colour axis out


def default_dims(viewer: Any, layer: Any) -> str:
    """``"3d"`` for a stack that says it is a volume, else ``"2d-per-plane"``.

    A layer says so by its scale (a z step unlike the pixel size, as microscopy readers set
    from the file's voxel size) or by the viewer's label of that axis (``z``). An
    uncalibrated stack of three axes may as well be a time-lapse or a set of fields, and
    is segmented plane by plane, as before this switch existed, until the user picks 3D.
    """
    n = 0 if layer is None else stack_axes(layer)
    if n < 3:
        return "2d-per-plane"
    labels = [str(a).lower() for a in getattr(viewer.dims, "axis_labels", ())][-n:]
    if len(labels) == n and labels[-3] in _TIME_LABELS:
        return "2d-per-plane"
    scale = [float(s) for s in layer.scale[-3:]]
    calibrated = abs(scale[0] - scale[-1]) > 1e-9 * max(abs(scale[-1]), 1e-12)
    named = len(labels) == n and labels[-3] == "z"
    return "3d" if calibrated or named else "2d-per-plane"


def apply_dims(params: Any, choice: str | None, layer: Any) -> Any:
    """``params`` set to the switch (per plane for a 2-D layer); in 3-D the voxel size is
    the parameters' own (spacing, anisotropy) or else the layer's scale."""
    if layer is None or stack_axes(layer) < 3 or not choice:
        choice = "2d-per-plane"
    spacing = None
    if choice == "3d" and voxel_spacing_of(params) is None:
        spacing = tuple(float(s) for s in layer.scale[-3:])
    return with_dimensions(params, choice, spacing)
