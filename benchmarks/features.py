"""Per-cell feature extraction: napari-phenotyper vs ``skimage.measure.regionprops_table``.

Times ``compute_features(groups=("shape", "intensity"))`` against
``regionprops_table`` computing the same features (centroid, bbox, area, perimeter,
equivalent diameter, axis lengths, eccentricity, orientation, solidity, extent,
Euler number, intensity mean/std/min/max/median, weighted centroid, and the 25th and
75th percentiles through ``extra_properties``) on the Coelho 2009 nuclei images, the
two interleaved image by image, best of N for each. Then times the texture group
alone. The last line is machine-readable::

    RESULT ratio_vs_regionprops=<x> cells_per_s=<ours> texture_cells_per_s=<y> n_cells=<n> n_images=<k>

Usage::

    python benchmarks/features.py [--data DIR] [--repeat N]

``--data`` is the shared data folder (default: ``$NAPARI_PHENOTYPER_TEST_DATA`` or
``../shared/data`` beside the repository).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from skimage.io import imread
from skimage.measure import regionprops_table

from napari_phenotyper.core.features import compute_features

REPO = Path(__file__).resolve().parents[1]

# regionprops names of the features our shape + intensity groups compute.
RP_PROPERTIES = (
    "label",
    "centroid",
    "bbox",
    "area",
    "perimeter",
    "equivalent_diameter_area",
    "axis_major_length",
    "axis_minor_length",
    "eccentricity",
    "orientation",
    "solidity",
    "extent",
    "euler_number",
    "intensity_mean",
    "intensity_std",
    "intensity_min",
    "intensity_max",
    "intensity_median",
    "centroid_weighted",  # mass displacement = |centroid_weighted - centroid|
)


def intensity_q25(mask, image):
    return np.quantile(image[mask], 0.25)


def intensity_q75(mask, image):
    return np.quantile(image[mask], 0.75)


def default_data_dir() -> Path:
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_coelho(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    root = data / "coelho2009_nuclei"
    out = []
    for img_path in sorted((root / "images").glob("*/dna-*.png")):
        lab_path = root / "labels" / img_path.parent.name / img_path.name
        if not lab_path.exists():
            continue
        image = imread(img_path)
        if image.ndim == 3:  # stored as RGB with identical channels
            image = image[..., 0]
        out.append((f"{img_path.parent.name}/{img_path.stem}", np.ascontiguousarray(image), imread(lab_path)))
    return out


def ours(labels, image):
    return compute_features(labels, {"dna": image}, groups=("shape", "intensity"))


def reference(labels, image):
    return regionprops_table(
        labels,
        image,
        properties=RP_PROPERTIES,
        extra_properties=(intensity_q25, intensity_q75),
    )


def texture(labels, image):
    return compute_features(labels, {"dna": image}, groups=("texture",))


def best_of(fn, repeat: int, *args) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def check_agreement(labels, image) -> float:
    """Largest relative difference between our table and regionprops' (sanity check)."""
    df = ours(labels, image)
    rp = reference(labels, image)
    pairs = {
        "area": "area",
        "perimeter": "perimeter",
        "solidity": "solidity",
        "euler_number": "euler_number",
        "major_axis_length": "axis_major_length",
        "median_intensity_dna": "intensity_median",
        "q75_intensity_dna": "intensity_q75",
    }
    worst = 0.0
    for ours_col, rp_col in pairs.items():
        a = df[ours_col].to_numpy(float)
        b = np.asarray(rp[rp_col], float)
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="shared data folder")
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs per image")
    args = parser.parse_args(argv)

    images = load_coelho(args.data)
    if not images:
        print(f"No Coelho images under {args.data / 'coelho2009_nuclei'}; pass --data.", file=sys.stderr)
        return 1
    worst = check_agreement(images[0][2], images[0][1])
    n_cells = 0
    t_ours = t_ref = t_tex = 0.0
    print(f"{'image':<14} {'cells':>5} {'regionprops ms':>15} {'ours ms':>8} {'ratio':>6} {'texture ms':>11}")
    for name, image, labels in images:
        ours(labels, image)  # warm-up
        texture(labels, image)
        r_best = o_best = x_best = np.inf
        for _ in range(max(1, args.repeat)):  # interleaved, best of N each
            r_best = min(r_best, best_of(reference, 1, labels, image))
            o_best = min(o_best, best_of(ours, 1, labels, image))
            x_best = min(x_best, best_of(texture, 1, labels, image))
        cells = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
        n_cells += cells
        t_ours += o_best
        t_ref += r_best
        t_tex += x_best
        print(
            f"{name:<14} {cells:>5} {r_best * 1e3:>15.1f} {o_best * 1e3:>8.1f} "
            f"{r_best / o_best:>6.1f} {x_best * 1e3:>11.1f}"
        )
    ratio = t_ref / t_ours
    print(
        f"{'total':<14} {n_cells:>5} {t_ref * 1e3:>15.1f} {t_ours * 1e3:>8.1f} {ratio:>6.1f} "
        f"{t_tex * 1e3:>11.1f}"
    )
    print(f"max relative difference to regionprops (sanity, first image): {worst:.2e}")
    print(
        f"RESULT ratio_vs_regionprops={ratio:.2f} cells_per_s={n_cells / t_ours:.0f} "
        f"texture_cells_per_s={n_cells / t_tex:.0f} n_cells={n_cells} n_images={len(images)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
