"""Active learning: how many labels each query strategy needs, against random sampling.

Simulates an annotation session on a table of per-cell features with known classes
(default: the CellCognition H2B training set, 670 cells, 239 features, 8 mitotic
classes). For every seed:

1. a stratified 30 % test split is held out; the other 70 % is the pool;
2. 2 cells per class are drawn from the pool as the first labels;
3. each strategy of :data:`napari_phenotyper.core.classify.query.STRATEGIES`
   (least_confidence, margin, entropy, density, random) repeatedly queries ONE
   unlabelled pool cell, its label is revealed, a random forest
   (``class_weight="balanced"``, ``random_state=seed``, ``n_jobs=1``) is retrained on
   standardised features, and accuracy on the test split is recorded, up to the budget;
4. the reference is the accuracy of the same forest trained on the whole pool.

The report gives the mean learning curve of each strategy (every 10 labels) and the
labels needed to reach 95 % of the full-pool accuracy: the first point where the mean
curve over seeds reaches 95 % of the mean reference. The last line is machine-readable::

    RESULT best_strategy=<name> labels_to_95_best=<n> labels_to_95_random=<n> ratio_vs_random=<x>

``ratio_vs_random`` is labels_to_95_best / labels_to_95_random (below 1: fewer labels
than random sampling). A strategy that never reaches the target within the budget
counts as ``budget + 1`` labels (printed as ``>budget``).

Usage::

    python benchmarks/active_learning.py [--csv FILE] [--label-column COL] [--seeds N]
        [--budget B] [--trees T] [--jobs J]

Retraining a forest after every label, for every strategy and seed, dominates the run
time: forests have ``--trees`` trees (default 50, not 100, to stay under ~5 min on two
cores; the reference uses the same forest); ``--jobs`` runs (seed, strategy)
simulations in parallel processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from napari_phenotyper.core.classify.query import STRATEGIES, select

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO.parent / "shared" / "data" / "cellcognition_h2b" / "H2B_training_set.csv"
ORDER = ("least_confidence", "margin", "entropy", "density", "random")


def load_table(csv: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (numeric, non-constant, NaN -> column median) and labels from a CSV."""
    df = pd.read_csv(csv)
    if label_column not in df.columns:
        sys.exit(f"label column {label_column!r} not in {csv}; columns start {list(df.columns[:5])}")
    df = df[df[label_column].notna()]
    y = df[label_column].astype(str).to_numpy()
    feats = df.drop(columns=[label_column]).select_dtypes(include="number")
    feats = feats.fillna(feats.median())
    feats = feats.loc[:, feats.nunique(dropna=True) > 1]
    feats = feats.loc[:, feats.notna().all()]
    return feats.to_numpy(dtype=np.float64), y


def make_forest(seed: int, trees: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=trees, class_weight="balanced", random_state=seed, n_jobs=1)


def split(X: np.ndarray, y: np.ndarray, seed: int):
    """Stratified 30 % test split, standardised on the pool, and the 2-per-class start."""
    X_pool, X_test, y_pool, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(X_pool)
    X_pool, X_test = scaler.transform(X_pool), scaler.transform(X_test)
    rng = np.random.default_rng(seed)
    start = np.concatenate(
        [
            rng.choice(np.flatnonzero(y_pool == c), size=min(2, np.sum(y_pool == c)), replace=False)
            for c in np.unique(y_pool)
        ]
    )
    return X_pool, X_test, y_pool, y_test, start


def simulate(args: tuple) -> tuple[int, str, np.ndarray]:
    """One learning curve: accuracy after each label, from the start set up to the budget."""
    X, y, seed, strategy, budget, trees = args
    X_pool, X_test, y_pool, y_test, start = split(X, y, seed)
    labelled = np.zeros(len(y_pool), dtype=bool)
    labelled[start] = True
    rng = np.random.default_rng(seed + 1000)
    fn = STRATEGIES[strategy]
    accs = []
    budget = min(budget, len(y_pool))
    while True:
        clf = make_forest(seed, trees).fit(X_pool[labelled], y_pool[labelled])
        accs.append(float(np.mean(clf.predict(X_test) == y_test)))
        if labelled.sum() >= budget:
            break
        proba = clf.predict_proba(X_pool)
        scores = fn(proba, X_pool, rng)
        (i,) = select(scores, ~labelled, k=1, rng=rng)
        labelled[i] = True
    return seed, strategy, np.asarray(accs)


def reference(args: tuple) -> float:
    X, y, seed, trees = args
    X_pool, X_test, y_pool, y_test, _ = split(X, y, seed)
    clf = make_forest(seed, trees).fit(X_pool, y_pool)
    return float(np.mean(clf.predict(X_test) == y_test))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--label-column", default="class_name")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=200, help="total labels, start set included")
    ap.add_argument("--trees", type=int, default=50, help="trees per forest, in the loop and the reference")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    X, y = load_table(args.csv, args.label_column)
    classes = np.unique(y)
    print(f"data: {args.csv.name}: {X.shape[0]} cells, {X.shape[1]} features, {classes.size} classes")
    print(f"seeds={args.seeds} budget={args.budget} trees={args.trees} jobs={args.jobs}")
    seeds = list(range(args.seeds))
    jobs = [(X, y, s, name, args.budget, args.trees) for s in seeds for name in ORDER]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        refs = list(ex.map(reference, [(X, y, s, args.trees) for s in seeds]))
        results = list(ex.map(simulate, jobs))

    n_start = 2 * classes.size
    curves: dict[str, np.ndarray] = {}
    for name in ORDER:
        runs = [acc for (_, n, acc) in results if n == name]
        length = min(len(a) for a in runs)
        curves[name] = np.mean([a[:length] for a in runs], axis=0)
    ref = float(np.mean(refs))
    target = 0.95 * ref
    print(
        f"full-pool accuracy (reference): {ref:.3f} (per seed {', '.join(f'{r:.3f}' for r in refs)}); "
        f"95% target {target:.3f}"
    )

    labels_axis = n_start + np.arange(max(len(c) for c in curves.values()))
    print("\nmean test accuracy vs number of labels")
    print(f"{'labels':>6} " + " ".join(f"{n:>16}" for n in ORDER))
    for j, n_lab in enumerate(labels_axis):
        if n_lab % 10 == 0 or j == 0 or j == len(labels_axis) - 1:
            row = " ".join(f"{curves[n][j]:16.3f}" if j < len(curves[n]) else f"{'':>16}" for n in ORDER)
            print(f"{n_lab:>6} {row}")

    budget = int(labels_axis[-1])
    needed: dict[str, int] = {}
    for name in ORDER:
        hit = np.flatnonzero(curves[name] >= target)
        needed[name] = int(n_start + hit[0]) if hit.size else budget + 1
    print("\nlabels to reach 95% of full-pool accuracy (mean curve), and mean accuracy over the curve")
    for name in ORDER:
        shown = str(needed[name]) if needed[name] <= budget else f">{budget}"
        print(f"  {name:>16}: {shown:>5}   mean acc {curves[name].mean():.3f}")
    active = [n for n in ORDER if n != "random"]
    best = min(active, key=lambda n: (needed[n], -curves[n].mean()))
    ratio = needed[best] / needed["random"]
    print(f"\nelapsed {time.perf_counter() - t0:.0f} s")
    print(
        f"RESULT best_strategy={best} labels_to_95_best={needed[best]} "
        f"labels_to_95_random={needed['random']} ratio_vs_random={ratio:.2f}"
    )


if __name__ == "__main__":
    main()
