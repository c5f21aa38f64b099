"""npe2 writer: save a labels layer's per-cell table (and its summary) as CSV."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..core.profiles import has_phenotype_columns
from ..io.export import summary_path, write_summary_csv, write_table_csv

__all__ = ["write_cell_table"]


def write_cell_table(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write the layer's ``features`` (one row per label) to ``path`` as CSV.

    The image name (from our provenance, else the layer name) goes in an ``image``
    column; napari's ``index`` helper column is dropped. When the table has phenotype
    columns, the image's summary (cells per class, proportions) is also written to
    ``<stem>_summary.csv`` beside it.

    Returns
    -------
    list of str
        The written paths: the per-cell table, then the summary if written.
    """
    features = pd.DataFrame(attributes.get("features", {}))
    if features.empty or "label" not in features.columns:
        raise ValueError(
            "This labels layer has no per-cell table to save. Run 'Segment & measure' on it first "
            "(the table needs a 'label' column)."
        )
    if "index" in features.columns:
        features = features.drop(columns="index")
    meta = attributes.get("metadata", {}).get("napari_phenotyper", {})
    image_name = meta.get("source_layer") or attributes.get("name")
    written = [str(write_table_csv(features, path, image_name=image_name))]
    if has_phenotype_columns(features):
        written.append(str(write_summary_csv({str(image_name): features}, summary_path(path))))
    return written
