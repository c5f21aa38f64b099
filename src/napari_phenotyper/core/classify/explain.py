"""Why a cell got its class: its probabilities and the features that pushed it there.

Model-agnostic and cheap: for one cell, each feature in turn is replaced by a typical
value (the median over the cells of its image) and the cell is predicted again, all
in one ``predict_proba`` call of ``n_features + 1`` rows. A feature's contribution to a
class is how much the class's probability drops when the feature is made typical: a
large positive number means "this feature's value is why the cell is called that". It
is a perturbation on the cell, not a global importance (see
:func:`~napari_phenotyper.core.classify.engine.feature_importances` for those), and it
works for every classifier the product trains, forests included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .model import TrainedClassifier, feature_matrix, predict_proba

__all__ = ["CellExplanation", "explain_cell"]


@dataclass(frozen=True)
class CellExplanation:
    """The class probabilities of one cell and its features' contributions."""

    label: int
    #: Class -> probability (the model's classes, in its order).
    proba: dict[str, float]
    #: The most probable class.
    predicted: str
    #: Feature -> contribution to ``predicted`` (probability points), largest first.
    contributions: pd.Series

    def text(self, n: int = 3) -> str:
        """One line for a status bar: the probabilities and the top ``n`` features."""
        probs = ", ".join(f"{c} {p:.2f}" for c, p in sorted(self.proba.items(), key=lambda kv: -kv[1])[:3])
        top = self.contributions[self.contributions > 0].head(n)
        why = ", ".join(f"{name} {value:+.2f}" for name, value in top.items()) or "no single feature"
        return f"cell {self.label}: {probs} — {self.predicted} because of {why}"


def explain_cell(
    model: TrainedClassifier,
    table: pd.DataFrame,
    label: int,
    reference: pd.Series | None = None,
    cls: str | None = None,
) -> CellExplanation:
    """Explain one cell's prediction.

    Parameters
    ----------
    model : TrainedClassifier
    table : pandas.DataFrame
        The cell's table (a ``label`` column and the model's feature columns).
    label : int
        The cell.
    reference : pandas.Series, optional
        The typical value of each feature; default: the median over ``table`` (over a
        seeded sample of 5,000 of its cells when it has more).
    cls : str, optional
        The class whose probability the contributions explain (default: the predicted one).

    Raises
    ------
    KeyError
        When the cell is not in the table.
    ValueError
        When ``cls`` is not one of the model's classes, or the table lacks a feature.
    """
    names: Sequence[str] = model.feature_names
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise ValueError(
            f"The table lacks {len(missing)} of the model's features (e.g. {missing[0]}); re-measure."
        )
    hit = np.flatnonzero(table["label"].to_numpy() == int(label))
    if not len(hit):
        raise KeyError(f"Cell {label} is not in the table.")
    row = feature_matrix(table.iloc[[int(hit[0])]], names)[0]
    if reference is None:  # the median of at most 5,000 cells: a screen's table costs no more
        sample = table if len(table) <= 5000 else table.sample(5000, random_state=0)
        reference = sample[list(names)].median(numeric_only=True)
    ref = reference
    typical = np.asarray([ref.get(c, np.nan) for c in names], dtype=np.float32)
    batch = np.repeat(row[None, :], len(names) + 1, axis=0)
    idx = np.arange(len(names))
    batch[idx + 1, idx] = typical  # row k+1: feature k made typical
    proba = predict_proba(model, batch)
    classes = list(model.classes)
    k = int(np.argmax(proba[0])) if cls is None else classes.index(cls) if cls in classes else -1
    if k < 0:
        raise ValueError(f"{cls!r} is not a class of this model ({', '.join(classes)}).")
    contrib = pd.Series(proba[0, k] - proba[1:, k], index=list(names)).sort_values(ascending=False)
    return CellExplanation(
        int(label),
        {c: float(p) for c, p in zip(classes, proba[0], strict=True)},
        classes[int(np.argmax(proba[0]))],
        contrib,
    )
