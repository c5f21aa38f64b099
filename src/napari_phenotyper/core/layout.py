"""Plate layouts: which plate, well and site each image is, and what was done to each well.

A layout comes from the file names (a regular expression with named groups ``plate``,
``well`` and ``site``), from a table that maps file names to plate, well, site and
well annotations, or from both (the regular expression gives plate/well/site and a
table without a ``file`` column annotates the wells).

Annotations are any other columns: ``treatment``, ``concentration``... and ``control``,
whose values are ``negative``, ``positive`` or empty (:data:`CONTROL_VALUES`). Wells
are written ``A01`` (row letters, two-digit column): ``a1``, ``A1`` and ``A001`` all
become ``A01``, so that names and tables agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CONTROL_VALUES",
    "KEY_COLUMNS",
    "LayoutError",
    "compile_layout_regex",
    "layout_from_regex",
    "layout_from_table",
    "make_layout",
    "natural_key",
    "normalize_control",
    "normalize_well",
]

#: Columns that identify where an image comes from, in output order.
KEY_COLUMNS = ("plate", "well", "site")
#: Allowed values of the ``control`` column (empty: not a control).
CONTROL_VALUES = ("negative", "positive")
_CONTROL_ALIASES = {
    "negative": "negative",
    "neg": "negative",
    "negative control": "negative",
    "positive": "positive",
    "pos": "positive",
    "positive control": "positive",
    "": "",
}
_WELL = re.compile(r"^([A-Za-z]{1,2})[-_ ]?0*(\d{1,3})$")
#: Columns of a layout table that name the image file.
FILE_COLUMNS = ("file", "filename", "file_name", "image", "path")
_MAX_SHOWN = 5


class LayoutError(ValueError):
    """A plate layout that does not fit the images; the message says what to fix."""


def _shown(items: Sequence[Any]) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:_MAX_SHOWN])
    return text + (f" and {len(items) - _MAX_SHOWN} more" if len(items) > _MAX_SHOWN else "")


def normalize_well(well: Any) -> str:
    """``"a1"``, ``"A1"``, ``"A001"``, ``"A-1"`` -> ``"A01"``; other names unchanged (as text).

    Missing values become ``""``.
    """
    if well is None or (isinstance(well, float) and np.isnan(well)):
        return ""
    text = str(well).strip()
    m = _WELL.match(text)
    if not m:
        return text
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def normalize_control(value: Any) -> str:
    """A control flag as ``"negative"``, ``"positive"`` or ``""`` (not a control).

    Raises
    ------
    LayoutError
        For any other value.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value).strip().lower()
    if text in ("nan", "none", "no", "false", "0", "-"):
        return ""
    try:
        return _CONTROL_ALIASES[text]
    except KeyError:
        raise LayoutError(
            f"Unknown control value {value!r}: write 'negative', 'positive' or leave it empty."
        ) from None


def natural_key(text: Any) -> tuple[Any, ...]:
    """Sort key that orders ``s2`` before ``s10``."""
    parts = re.split(r"(\d+)", str(text))
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def compile_layout_regex(pattern: str) -> re.Pattern[str]:
    """Compile a layout regular expression and check its named groups.

    The pattern needs a ``well`` group; ``plate`` and ``site`` are optional; any other
    named group becomes an annotation column.

    Raises
    ------
    LayoutError
        If the pattern does not compile or has no ``well`` group.
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise LayoutError(f"--layout {pattern!r} is not a valid regular expression: {exc}.") from None
    if "well" not in rx.groupindex:
        raise LayoutError(
            f"--layout {pattern!r} has no (?P<well>...) group; name the parts of the file name, e.g. "
            r"'(?P<plate>[^_]+)_(?P<well>[A-P]\d{2})_s(?P<site>\d+)'."
        )
    return rx


def _subject(path: str, rx: re.Pattern[str]) -> str:
    """What a layout pattern is matched against: the file name, or the whole path when
    the pattern mentions a folder separator."""
    p = PurePath(path)
    return p.as_posix() if "/" in rx.pattern else p.name


def layout_from_regex(paths: Sequence[str], pattern: str) -> pd.DataFrame:
    """Plate, well and site of each image from its file name.

    Parameters
    ----------
    paths : sequence of str
        Image paths, in run order.
    pattern : str
        Regular expression searched in each file name (in the whole path when it
        contains ``/``), with named groups ``well`` and optionally ``plate``, ``site``
        and others (annotation columns).

    Returns
    -------
    pandas.DataFrame
        One row per path (same order), one text column per named group; wells
        normalised by :func:`normalize_well`.

    Raises
    ------
    LayoutError
        If the pattern is invalid or some file names do not match it (named).
    """
    rx = compile_layout_regex(pattern)
    rows: list[dict[str, str]] = []
    missed: list[str] = []
    for path in paths:
        m = rx.search(_subject(path, rx))
        if m is None:
            missed.append(PurePath(path).name)
            continue
        rows.append({k: ("" if v is None else v) for k, v in m.groupdict().items()})
    if missed:
        raise LayoutError(
            f"{len(missed)} of {len(paths)} file names do not match --layout {pattern!r}: {_shown(missed)}. "
            "Fix the pattern (it is searched in the file name) or leave those images out."
        )
    names = list(rx.groupindex)
    ordered = [c for c in KEY_COLUMNS if c in names] + [c for c in names if c not in KEY_COLUMNS]
    table = pd.DataFrame(rows, columns=ordered, dtype=object)
    return _finish(table)


def _file_column(table: pd.DataFrame) -> str | None:
    lower = {str(c).strip().lower(): c for c in table.columns}
    for name in FILE_COLUMNS:
        if name in lower:
            return str(lower[name])
    return None


def _standard_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Lower-case the key and control column names so ``Well`` and ``well`` both work."""
    rename = {}
    for c in table.columns:
        low = str(c).strip().lower()
        if low in (*KEY_COLUMNS, "control") and c != low:
            rename[c] = low
    return table.rename(columns=rename)


def _match_files(paths: Sequence[str], table: pd.DataFrame, file_col: str) -> list[int]:
    """Row of ``table`` for each path: by whole path, then file name, then stem."""
    keys = [str(v).strip() for v in table[file_col]]
    by: dict[str, dict[str, int]] = {"path": {}, "name": {}, "stem": {}}
    dup: list[str] = []
    for i, key in enumerate(keys):
        p = PurePath(key.replace("\\", "/"))
        for kind, value in (("path", p.as_posix()), ("name", p.name), ("stem", p.stem)):
            if kind == "name" and value in by["name"]:
                dup.append(value)
            by[kind].setdefault(value, i)
    if dup:
        raise LayoutError(f"The layout table lists these file names twice: {_shown(sorted(set(dup)))}.")
    rows: list[int] = []
    missing: list[str] = []
    for path in paths:
        p = PurePath(path)
        row = by["path"].get(p.as_posix(), by["name"].get(p.name, by["stem"].get(p.stem)))
        if row is None:
            missing.append(p.name)
        else:
            rows.append(row)
    if missing:
        raise LayoutError(
            f"{len(missing)} image(s) are not in the layout table: {_shown(missing)}. "
            f"Add a row for each (column {file_col!r}) or leave them out of the inputs."
        )
    return rows


def layout_from_table(paths: Sequence[str], table: pd.DataFrame) -> pd.DataFrame:
    """Plate, well, site and annotations of each image from a table keyed by file.

    Parameters
    ----------
    paths : sequence of str
        Image paths, in run order.
    table : pandas.DataFrame
        One row per image file: a ``file`` column (also ``filename``, ``image`` or
        ``path``) holding the file name (or path, or stem), a ``well`` column,
        optionally ``plate`` and ``site``, and any annotation columns.

    Raises
    ------
    LayoutError
        If the table has no file or well column, lists a file twice, or lacks an image.
    """
    table = _standard_columns(table)
    file_col = _file_column(table)
    if file_col is None:
        raise LayoutError(
            "The layout table has no 'file' column. Give one row per image with columns "
            "file, plate, well, site (and annotations), or give --layout REGEX for the file names "
            "and a table of wells (plate, well, annotations)."
        )
    if "well" not in table.columns:
        raise LayoutError("The layout table has no 'well' column; add the well of each image (e.g. A01).")
    rows = _match_files(paths, table, file_col)
    out = table.drop(columns=[file_col]).iloc[rows].reset_index(drop=True)
    ordered = [c for c in KEY_COLUMNS if c in out.columns] + [c for c in out.columns if c not in KEY_COLUMNS]
    return _finish(out[ordered])


def _key_text(values: pd.Series) -> list[str]:
    return ["" if pd.isna(v) else str(v).strip() for v in values.astype(object)]


def _finish(layout: pd.DataFrame) -> pd.DataFrame:
    """Keys as text, wells and controls normalised, annotations constant within each well."""
    layout = layout.copy()
    for col in KEY_COLUMNS:
        if col in layout.columns:
            layout[col] = pd.Series(_key_text(layout[col]), index=layout.index, dtype=object)
    if "well" in layout.columns:
        layout["well"] = pd.Series(
            [normalize_well(w) for w in layout["well"]], index=layout.index, dtype=object
        )
        empty = [i for i, w in enumerate(layout["well"]) if w == ""]
        if empty:
            raise LayoutError(f"{len(empty)} image(s) have no well in the layout (rows {_shown(empty)}).")
    if "control" in layout.columns:
        layout["control"] = pd.Series(
            [normalize_control(v) for v in layout["control"]], index=layout.index, dtype=object
        )
    _check_wells_consistent(layout)
    return layout


def _check_wells_consistent(layout: pd.DataFrame) -> None:
    keys = [c for c in ("plate", "well") if c in layout.columns]
    if "well" not in keys:
        return
    annotations = [c for c in layout.columns if c not in KEY_COLUMNS]
    if not annotations:
        return
    for col in annotations:
        values = layout[col].astype(object).where(layout[col].notna(), None)
        per_well = pd.DataFrame({**{k: layout[k] for k in keys}, "v": values.map(repr)})
        n = per_well.groupby(keys, sort=False)["v"].nunique()
        bad = n[n > 1]
        if len(bad):
            where = bad.index[0]
            name = "/".join(where) if isinstance(where, tuple) else str(where)
            raise LayoutError(
                f"Well {name} has different {col!r} values on different images; a well's annotations "
                "must agree (fix the layout table)."
            )


def _merge_well_table(layout: pd.DataFrame, wells: pd.DataFrame) -> pd.DataFrame:
    """Add the annotations of a per-well table to a layout from file names."""
    wells = _standard_columns(wells)
    if "well" not in wells.columns:
        raise LayoutError(
            "The layout table has neither a 'file' nor a 'well' column; give one row per image "
            "(file, plate, well, site...) or one row per well (plate, well, treatment...)."
        )
    keys = ["plate", "well"] if ("plate" in wells.columns and "plate" in layout.columns) else ["well"]
    wells = wells.copy()
    for k in keys:
        wells[k] = pd.Series(_key_text(wells[k]), index=wells.index, dtype=object)
    wells["well"] = [normalize_well(w) for w in wells["well"]]
    if "plate" in wells.columns and "plate" not in keys:
        raise LayoutError(
            "The well table has a 'plate' column but the file names give no plate; add (?P<plate>...) "
            "to --layout or drop the column."
        )
    dup = wells.duplicated(keys)
    if dup.any():
        first = wells.loc[dup, keys].iloc[0].tolist()
        raise LayoutError(f"The well table lists well {'/'.join(first)} twice.")
    clash = [c for c in wells.columns if c in layout.columns and c not in keys]
    if clash:
        raise LayoutError(f"Column(s) {', '.join(clash)} come from both --layout and the table; keep one.")
    merged = layout.merge(wells, on=keys, how="left", sort=False)
    if len(merged) != len(layout):  # pragma: no cover - guarded by the duplicate check
        raise LayoutError("The well table matches some image twice.")
    return merged


def make_layout(
    paths: Sequence[str], regex: str | None = None, table: pd.DataFrame | None = None
) -> pd.DataFrame | None:
    """The layout of a run from a file-name pattern, a table, or both.

    Parameters
    ----------
    paths : sequence of str
        Image paths, in run order.
    regex : str, optional
        See :func:`layout_from_regex`.
    table : pandas.DataFrame, optional
        With a file column: one row per image (see :func:`layout_from_table`); then
        ``regex`` must not be given. Without one: one row per well (``well``, optionally
        ``plate``, and annotations) added to the wells that ``regex`` finds.

    Returns
    -------
    pandas.DataFrame or None
        One row per path, in order; ``None`` without a regex or table.

    Raises
    ------
    LayoutError
        Saying what does not fit.
    """
    if table is not None:
        table = table.copy()
        table.columns = [str(c).strip() for c in table.columns]
    if regex is None and table is None:
        return None
    if table is not None and _file_column(_standard_columns(table)) is not None:
        if regex is not None:
            raise LayoutError(
                "The layout table names the files already; give either --layout REGEX or a table "
                "with a 'file' column, not both (a table of wells without 'file' combines with --layout)."
            )
        return layout_from_table(paths, table)
    if regex is None:
        raise LayoutError(
            "The layout table has no 'file' column: give --layout REGEX too, to find each image's well "
            "in its file name, or add a 'file' column."
        )
    layout = layout_from_regex(paths, regex)
    if table is not None:
        layout = _finish(_merge_well_table(layout, table))
    return layout
