"""The CellProfiler-compatible feature set vs ``cp_measure`` (CellProfiler 4's measurements).

Times ``compute_cellprofiler_features`` (MeasureObjectSizeShape with Zernike,
MeasureObjectIntensity, MeasureTexture at scale 3 and 256 grey levels, and
MeasureObjectNeighbors by the *Adjacent* and *Within 5 pixels* methods) against
``cp_measure`` computing the same measurements (its sizeshape without the advanced
moments, zernike, feret, intensity with CellProfiler's quantile rule, texture, and
neighbours by the same two methods) on the Coelho 2009 nuclei images, the two
interleaved image by image, best of N for each. Also reports the largest difference
per measurement family (the test suite checks them column by column). The last line
is machine-readable::

    RESULT ratio_vs_cp_measure=<x> cells_per_s=<ours> cp_measure_cells_per_s=<y> n_cells=<n> n_images=<k>

Usage::

    python benchmarks/cellprofiler_features.py [--data DIR] [--repeat N] [--images K]

Needs ``cp_measure`` (``pip install cp_measure``, part of the test extras).
``--data`` is the shared data folder (default: ``$NAPARI_PHENOTYPER_TEST_DATA`` or
``../shared/data`` beside the repository).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features import default_data_dir, load_coelho
from napari_phenotyper.core.cellprofiler import compute_cellprofiler_features


def reference_functions():
    from cp_measure.core import (
        measureobjectintensity,
        measureobjectsizeshape,
        measuretexture,
    )
    from cp_measure.multimask.measureobjectneighbors import measureobjectneighbors

    per_image = {
        "sizeshape": partial(
            measureobjectsizeshape.get_sizeshape, calculate_advanced=False, new_features=False
        ),
        "zernike": measureobjectsizeshape.get_zernike,
        "feret": measureobjectsizeshape.get_feret,
        "intensity": partial(measureobjectintensity.get_intensity, legacy=True),
        "texture": measuretexture.get_texture,
    }

    def neighbours(labels):
        out = measureobjectneighbors(labels, labels, distance_method="Adjacent")
        out |= measureobjectneighbors(
            labels, labels, distance_method="Within a specified distance", distance=5
        )
        return out

    return per_image, neighbours


def reference(labels, pixels, funcs):
    per_image, neighbours = funcs
    out = {}
    for fn in per_image.values():
        out |= fn(labels, pixels)
    out |= neighbours(labels)
    return out


def ours(labels, image):
    return compute_cellprofiler_features(labels, {"dna": image})


def largest_differences(table, ref) -> dict[str, float]:
    """Largest absolute difference per family (AreaShape, Zernike, Intensity, Location, Texture, Neighbors).

    The object numbers of the closest neighbours are left out: cp_measure reports the
    object itself there, CellProfiler (and this package) the nearest other object.
    """
    worst: dict[str, float] = {}
    for col in table.columns:
        if col == "label":
            continue
        key = col
        if col.startswith(("Intensity_", "Location_")):
            key = col.rsplit("_", 1)[0]
        elif col.startswith("Texture_"):
            name, _ch, scale, d, levels = col[len("Texture_") :].rsplit("_", 4)
            key = f"{name}_{scale}_{d}_{levels}"
        elif col.startswith("AreaShape_"):
            key = col[len("AreaShape_") :]
        if key not in ref or "ClosestObjectNumber" in col:
            continue
        a = table[col].to_numpy(float)
        b = np.asarray(ref[key], float)
        ok = np.isfinite(a) & np.isfinite(b)
        family = "Zernike" if "_Zernike_" in col else col.split("_", 1)[0]
        worst[family] = max(worst.get(family, 0.0), float(np.abs(a[ok] - b[ok]).max(initial=0.0)))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="shared data folder")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per image")
    parser.add_argument("--images", type=int, default=0, help="only the first K images (default: all)")
    args = parser.parse_args(argv)
    try:
        funcs = reference_functions()
    except ImportError:
        print("cp_measure is not installed: pip install cp_measure", file=sys.stderr)
        return 1
    from skimage.segmentation import relabel_sequential

    images = load_coelho(args.data)
    if args.images:
        images = images[: args.images]
    if not images:
        print(f"No Coelho images under {args.data / 'coelho2009_nuclei'}; pass --data.", file=sys.stderr)
        return 1
    n_cells = 0
    t_ours = t_ref = 0.0
    worst: dict[str, float] = {}
    print(f"{'image':<14} {'cells':>5} {'cp_measure ms':>14} {'ours ms':>8} {'ratio':>6}")
    for name, image, labels in images:
        labels = relabel_sequential(labels.astype(np.int32))[0]  # cp_measure wants 1..N
        pixels = image.astype(np.float64) / np.iinfo(image.dtype).max
        table = ours(labels, image)  # warm-up
        for family, d in largest_differences(table, reference(labels, pixels, funcs)).items():
            worst[family] = max(worst.get(family, 0.0), d)
        r_best = o_best = np.inf
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            reference(labels, pixels, funcs)
            r_best = min(r_best, time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours(labels, image)
            o_best = min(o_best, time.perf_counter() - t0)
        cells = int(labels.max())
        n_cells += cells
        t_ours += o_best
        t_ref += r_best
        print(f"{name:<14} {cells:>5} {r_best * 1e3:>14.1f} {o_best * 1e3:>8.1f} {r_best / o_best:>6.1f}")
    ratio = t_ref / t_ours
    print(f"{'total':<14} {n_cells:>5} {t_ref * 1e3:>14.1f} {t_ours * 1e3:>8.1f} {ratio:>6.1f}")
    print(
        "largest absolute difference to cp_measure per family: "
        + ", ".join(f"{k} {v:.2g}" for k, v in sorted(worst.items()))
    )
    print(
        f"RESULT ratio_vs_cp_measure={ratio:.2f} cells_per_s={n_cells / t_ours:.0f} "
        f"cp_measure_cells_per_s={n_cells / t_ref:.0f} n_cells={n_cells} n_images={len(images)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
