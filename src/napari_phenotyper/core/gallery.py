"""The cell gallery: which cells a page shows, and their thumbnails (no Qt, no napari).

A page is a list of :class:`Tile` (an image key and a label id) chosen from a
:class:`~napari_phenotyper.core.classify.session.PhenotypingSession` by one of
:data:`SOURCES`: the active-learning proposals (a diverse batch, most informative
first), the cells predicted as one class (most uncertain, most confident or random
first: to review predictions), unannotated cells at random, or the cells annotated as
one class. A thumbnail is cut lazily from the image channels (numpy or dask: only the
crop is read), composited with each channel's contrast limits and colour table, and
the cell's outline drawn in. Only the visible page is ever rendered, so a page costs
the same at 100 or 100,000 cells.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .classify.workflow import POOL_FACTOR

__all__ = ["ORDERS", "SOURCES", "Channel", "Tile", "crop_box", "page_tiles", "thumbnail"]

#: Where a page's cells come from (key -> what the gallery calls it).
SOURCES = {
    "proposals": "Most informative (active learning)",
    "predicted": "Predicted as…",
    "unannotated": "Unannotated, at random",
    "annotated": "Annotated as…",
    "confused": "Annotated as… but cross-validated as…",
}
#: Orders of the ``predicted`` source.
ORDERS = {"uncertain": "uncertain first", "confident": "confident first", "random": "at random"}


@dataclass(frozen=True)
class Tile:
    """One cell of a gallery page."""

    key: str
    label: int
    #: What the page knew of it when chosen (the predicted class, a score).
    note: str = ""


@dataclass(frozen=True)
class Channel:
    """One image channel of a thumbnail: its data and how the viewer displays it.

    Parameters
    ----------
    data : array-like
        The channel, 2-D (numpy, dask or zarr: only the crop is read); an RGB(A)
        image has a last axis of 3 or 4 and ``lut=None``.
    contrast_limits : tuple of float
        Values mapped to the darkest and the brightest colour.
    lut : numpy.ndarray, optional
        ``(256, 3)`` colours in [0, 1] from dark to bright (the layer's colour map);
        ``None`` for RGB data (each channel is scaled, not coloured).
    gamma : float
    """

    data: Any
    contrast_limits: tuple[float, float]
    lut: np.ndarray | None = None
    gamma: float = 1.0


def _unanswered(session: Any, key: str) -> np.ndarray:
    """Label ids of ``key``'s cells that have no answer yet (annotation, value, exclusion)."""
    table = session.images[key].table
    labels = table["label"].to_numpy(dtype=np.int64)
    done = (
        set(session.store.annotations(key))
        | set(session.store.values(key))
        | set(session.store.excluded(key))
    )
    if not done:
        return labels
    return labels[~np.isin(labels, np.fromiter(done, dtype=np.int64, count=len(done)))]


def page_tiles(
    session: Any,
    source: str,
    page_size: int = 24,
    *,
    cls: str | None = None,
    order: str = "uncertain",
    seed: int = 0,
    exclude: Collection[tuple[str, int]] = (),
    predicted_as: str | None = None,
) -> list[Tile]:
    """The cells of one gallery page.

    Parameters
    ----------
    session : PhenotypingSession
    source : str
        One of :data:`SOURCES`.
    page_size : int
        At most this many tiles.
    cls : str, optional
        The class of the ``predicted`` and ``annotated`` sources.
    order : str
        One of :data:`ORDERS` (the ``predicted`` source).
    seed : int
        Seed of the random orders (the same seed gives the same pages).
    exclude : collection of (key, label)
        Cells already shown (the next page of the same source skips them).
    predicted_as : str, optional
        The ``confused`` source: annotated ``cls`` but cross-validated as this class
        (a cell of the confusion matrix; ``cls`` itself gives the ones it got right).

    Returns
    -------
    list of Tile
        Empty when the source has nothing (no model yet, no such class...).
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown gallery source {source!r}; choose one of {', '.join(SOURCES)}.")
    if order not in ORDERS:
        raise ValueError(f"Unknown order {order!r}; choose one of {', '.join(ORDERS)}.")
    if page_size < 1:
        raise ValueError(f"A page needs at least one tile (got page_size={page_size}).")
    if source in ("predicted", "annotated", "confused") and cls not in session.classes:
        raise ValueError(
            f"Choose one of the classes {', '.join(session.classes) or '(none yet)'} for this page."
        )
    skip = {(str(k), int(lab)) for k, lab in exclude}
    rng = np.random.default_rng(seed + len(skip))
    if source == "proposals":
        # a page is the workflow's unit: its pool (the benchmark's winner, see workflow.py)
        found = session.proposals(page_size + len(skip), diverse=True, pool_factor=POOL_FACTOR)
        out = [
            Tile(p.image, int(p.label), f"→ {p.predicted}" if p.predicted else "")
            for p in found
            if (p.image, int(p.label)) not in skip
        ]
        return out[:page_size]
    if source == "confused":
        if predicted_as not in session.classes:
            raise ValueError(
                f"Choose the class the cross-validation called them ({', '.join(session.classes)})."
            )
        cells = [c for c in session.confused_cells(cls, predicted_as) if c not in skip]
        return [Tile(k, lab, f"{cls}, called {predicted_as}") for k, lab in cells[:page_size]]
    if source == "annotated":
        rows = [
            Tile(key, int(label))
            for key in session.images
            for label, name in sorted(session.store.annotations(key).items())
            if name == cls and (key, int(label)) not in skip
        ]
        return rows[:page_size]
    # whole-table steps in numpy: a page costs the same at 100 or 100,000 cells
    keys: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    names = list(session.images)
    for k, key in enumerate(names):
        free = _unanswered(session, key)
        if source == "unannotated":
            keys.append(np.full(len(free), k))
            labs.append(free)
            scores.append(np.zeros(len(free)))
            continue
        pred = session.result.predictions.get(key) if session.result is not None else None
        table = session.images[key].table
        if pred is None or "pheno_class" not in pred or len(pred) != len(table):
            continue
        labels = table["label"].to_numpy(dtype=np.int64)
        unc = (
            pred["pheno_uncertainty"].to_numpy(dtype=float)
            if "pheno_uncertainty" in pred
            else np.zeros(len(pred))
        )
        hit = (pred["pheno_class"].astype(object).to_numpy() == cls) & np.isin(labels, free)
        keys.append(np.full(int(hit.sum()), k))
        labs.append(labels[hit])
        scores.append(unc[hit])
    if not keys or not sum(len(a) for a in keys):
        return []
    key_idx, label_ids, score = np.concatenate(keys), np.concatenate(labs), np.concatenate(scores)
    want = min(len(label_ids), page_size + len(skip))
    if source == "predicted" and order != "random":
        ranked = np.argsort(-score if order == "uncertain" else score, kind="stable")[:want]
    else:
        ranked = rng.choice(len(label_ids), size=want, replace=False)
    out = []
    for i in ranked:
        key, label = names[int(key_idx[i])], int(label_ids[i])
        if (key, label) in skip:
            continue
        note = f"uncertainty {score[i]:.2f}" if source == "predicted" else ""
        out.append(Tile(key, label, note))
        if len(out) == page_size:
            break
    return out


def crop_box(
    table: pd.DataFrame, label: int, shape: Sequence[int], context: float = 2.0
) -> tuple[slice, slice]:
    """The square crop (rows, columns) centred on a cell: ``context`` times its size.

    Uses the table's ``bbox_*`` columns (else the centroid and area) and is clipped to
    an image of ``shape``; at least 16 pixels on a side.
    """
    hit = np.flatnonzero(table["label"].to_numpy() == int(label))
    if not len(hit):
        raise KeyError(f"Cell {label} is not in the table.")
    row = table.iloc[int(hit[0])]
    if {"bbox_min_y", "bbox_max_y", "bbox_min_x", "bbox_max_x"} <= set(table.columns):
        y0, y1, x0, x1 = (float(row[c]) for c in ("bbox_min_y", "bbox_max_y", "bbox_min_x", "bbox_max_x"))
        cy, cx, side = (y0 + y1) / 2, (x0 + x1) / 2, max(y1 - y0, x1 - x0)
    elif {"centroid_y", "centroid_x"} <= set(table.columns):
        cy, cx = float(row["centroid_y"]), float(row["centroid_x"])
        side = 2.0 * np.sqrt(float(row["area"]) / np.pi) if "area" in table.columns else 20.0
    else:
        raise ValueError("The table has neither bbox_* nor centroid_* columns: measure the cells first.")
    half = max(8.0, side * context / 2.0)
    h, w = int(shape[-2]), int(shape[-1])
    ys = slice(max(0, int(np.floor(cy - half))), min(h, int(np.ceil(cy + half))))
    xs = slice(max(0, int(np.floor(cx - half))), min(w, int(np.ceil(cx + half))))
    return ys, xs


def cell_plane(table: pd.DataFrame, label: int) -> int | None:
    """The z plane through the middle of a cell measured in 3-D (``centroid_z``, rounded),
    where its thumbnail is cut; ``None`` for a 2-D table."""
    if "centroid_z" not in table.columns:
        return None
    hit = np.flatnonzero(table["label"].to_numpy() == int(label))
    return round(float(table["centroid_z"].iloc[int(hit[0])])) if len(hit) else None


def _sample(n_in: int, n_out: int) -> np.ndarray:
    """Nearest-neighbour indices that resample ``n_in`` pixels to ``n_out``."""
    return np.minimum((np.arange(n_out) + 0.5) * n_in / n_out, n_in - 1).astype(np.intp)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def thumbnail(
    channels: Sequence[Channel],
    labels: Any,
    label: int,
    box: tuple[slice, slice],
    size: int = 96,
    outline: Sequence[float] | None = (1.0, 1.0, 0.0),
) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 thumbnail of one cell.

    Parameters
    ----------
    channels : sequence of Channel
        Added up (as napari's additive blending does); an empty sequence gives a
        black tile with the outline.
    labels : array-like
        The segmentation (2-D); only ``box`` is read.
    label : int
        The cell whose outline is drawn (its neighbours are not).
    box : (slice, slice)
        The crop, e.g. from :func:`crop_box`.
    size : int
        Side of the thumbnail in pixels (the crop is stretched to a square: its longer
        side fills it).
    outline : RGB in [0, 1], optional
        Colour of the cell's outline; ``None`` draws none.
    """
    if size < 8:
        raise ValueError(f"A thumbnail needs at least 8 pixels on a side (got {size}).")
    lab = np.asarray(labels[box])
    h, w = lab.shape[-2:]
    if h == 0 or w == 0:
        return np.zeros((size, size, 3), np.uint8)
    side = max(h, w)
    # centre the crop in a square (the image border leaves it narrower)
    oy, ox = (side - h) // 2, (side - w) // 2
    iy, ix = _sample(side, size) - oy, _sample(side, size) - ox
    vy, vx = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
    iy, ix = np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)
    valid = vy[:, None] & vx[None, :]
    rgb = np.zeros((size, size, 3), np.float32)
    for ch in channels:
        data = np.asarray(ch.data[box], dtype=np.float32)
        lo, hi = (float(v) for v in ch.contrast_limits)
        scaled = np.clip((data - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        if ch.gamma != 1.0:
            scaled = scaled ** float(ch.gamma)
        scaled = scaled[iy][:, ix]
        if ch.lut is None:  # RGB(A): take the colours as they are
            rgb += scaled[..., :3] if scaled.ndim == 3 else scaled[..., None]
        else:
            lut = np.asarray(ch.lut, dtype=np.float32)[:, :3]
            rgb += lut[(scaled * (len(lut) - 1)).astype(np.intp)]
    rgb[~valid] = 0.0
    if outline is not None:
        mask = (lab == int(label))[iy][:, ix] & valid
        rgb[_outline(mask)] = np.asarray(outline, dtype=np.float32)[:3]
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
