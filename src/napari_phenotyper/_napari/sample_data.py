"""napari sample-data contributions (layer data tuples; nothing imported from napari)."""

from __future__ import annotations

from typing import Any

from ..samples import NUCLEI_3D_SPACING, human_mitosis, nuclei_2d, nuclei_3d

__all__ = ["mitosis_sample", "nuclei3d_sample", "nuclei_sample"]


def nuclei_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """Fluorescent nuclei with their hand-annotated ground truth (offline)."""
    image, mask = nuclei_2d()
    return [
        (
            image,
            {"name": "nuclei", "colormap": "gray", "metadata": {"sample": "stardist test_image_nuclei_2d"}},
            "image",
        ),
        (mask, {"name": "nuclei ground truth", "opacity": 0.4, "visible": False}, "labels"),
    ]


def nuclei3d_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """A 3-D stack of fluorescent nuclei with its ground truth (offline), voxels twice as tall as wide."""
    image, mask = nuclei_3d()
    meta = {"sample": "stardist test_image_nuclei_3d"}
    return [
        (
            image,
            {"name": "nuclei 3D", "colormap": "gray", "scale": NUCLEI_3D_SPACING, "metadata": meta},
            "image",
        ),
        (
            mask,
            {"name": "nuclei 3D ground truth", "opacity": 0.4, "visible": False, "scale": NUCLEI_3D_SPACING},
            "labels",
        ),
    ]


def mitosis_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """scikit-image's human mitosis nuclei (downloaded once, then cached)."""
    return [(human_mitosis(), {"name": "human mitosis", "colormap": "gray"}, "image")]
