"""Batch throughput on 1 and 2 local Dask workers (classical segmenter + features).

Runs the same batch, the DSB 2018 images of ``dsb2018_dev`` repeated to reach at least
``--n-images`` (default 100), on a ``distributed.LocalCluster`` per worker count (one
process per worker, one thread each), into a fresh output folder each time. The worker
counts take turns for ``--rounds`` rounds (default 3), so that a change in the machine's
load hits them alike; the best round of each counts. Only one cluster exists at a time,
as in a real run: each turn starts its cluster (and warms its workers up) before the
clock starts and closes it after, since an idle second cluster's event loops would take
CPU from the measured one. Throughput is images processed per second of the processing phase
(``manifest.json`` ``timings.processing_seconds``: from the first task to the last
result, without starting the cluster or combining the tables, which are printed too).
The load average (``os.getloadavg``) is printed before and after each run, since other
work on the same cores lowers the speed-up. The last line is machine-readable::

    RESULT images_per_s_1=<x> images_per_s_2=<y> speedup=<y/x> n_images=<n>

Usage::

    python benchmarks/batch_scaling.py [--data DIR] [--n-images N] [--workers 1,2] [--rounds R]
        [--features shape,intensity,texture,neighbors] [--serial]

``--data`` is the shared data folder (default: ``$NAPARI_PHENOTYPER_TEST_DATA`` or
``../shared/data`` beside the repository). ``--serial`` also times the in-process run
(no Dask) for reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from napari_phenotyper.core.batch import BatchOptions, expand_inputs, iter_batch, plan_jobs
from napari_phenotyper.core.dask_runner import DaskExecutor
from napari_phenotyper.core.features import FEATURE_GROUPS
from napari_phenotyper.core.pipeline_spec import PipelineSpec
from napari_phenotyper.core.progress import run

REPO = Path(__file__).resolve().parents[1]


def _data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("NAPARI_PHENOTYPER_TEST_DATA") or REPO.parent / "shared" / "data")
    folder = path / "dsb2018_dev" / "images"
    if not folder.is_dir():
        sys.exit(f"dsb2018_dev images not found under {path}; pass --data DIR.")
    return folder


def _repeat(src: Path, n: int, dest: Path) -> int:
    """Links to the images of ``src``, cycling, under new names: ``n`` images in ``dest``."""
    images = sorted(p for p in src.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    for k in range(n):
        p = images[k % len(images)]
        (dest / f"r{k // len(images):02d}_{p.name}").symlink_to(p.resolve())
    return n


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def _time(jobs: list, spec: PipelineSpec, out: Path, executor: DaskExecutor | None) -> float:
    print(f"  before: {_load()}", flush=True)
    t0 = time.perf_counter()
    result = run(iter_batch(jobs, spec, BatchOptions(str(out)), executor=executor))
    wall = time.perf_counter() - t0
    m = result.manifest
    c, t = m["counts"], m["timings"]
    if c["failed"]:
        print(f"  {c['failed']} image(s) failed: {list(result.failures.items())[:3]}")
    rate = c["processed"] / t["processing_seconds"]
    print(
        f"  {c['processed']} images, {c['cells']} cells: {t['processing_seconds']:.1f} s processing "
        f"({rate:.3f} images/s), {t['combine_seconds']:.1f} s combining, {wall:.1f} s in all; per image "
        f"{t['mean_image_seconds']:.3f} s wall, {t['mean_image_cpu_seconds']:.3f} s CPU",
        flush=True,
    )
    print(f"  after:  {_load()}", flush=True)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=None)
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns (default 3)")
    parser.add_argument("--features", default=",".join(FEATURE_GROUPS))
    parser.add_argument("--serial", action="store_true", help="also time the in-process run")
    args = parser.parse_args(argv)

    src = _data_dir(args.data)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    spec = PipelineSpec(
        auto_diameter=True, feature_groups=tuple(g.strip() for g in args.features.split(",") if g.strip())
    )
    rates: dict[int, list[float]] = {w: [] for w in counts}
    with tempfile.TemporaryDirectory(prefix="batch_scaling_") as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        n = _repeat(src, args.n_images, images)
        jobs = plan_jobs(expand_inputs([str(images)]))
        print(
            f"{n} images ({src}), classical segmenter with a per-image diameter, features {spec.feature_groups}"
        )
        if args.serial:
            print("in-process (no Dask):")
            _time(jobs, spec, Path(tmp) / "out_serial", None)
        for r in range(args.rounds):
            for w in counts:
                t0 = time.perf_counter()
                with DaskExecutor(n_workers=w) as executor:
                    print(
                        f"round {r + 1}, {w} worker(s) (cluster started in {time.perf_counter() - t0:.1f} s):"
                    )
                    rates[w].append(_time(jobs, spec, Path(tmp) / f"out_{w}_{r}", executor))
    best = {w: max(r) for w, r in rates.items()}
    fields = " ".join(f"images_per_s_{w}={r:.4f}" for w, r in best.items())
    if 1 in best and 2 in best:
        fields += f" speedup={best[2] / best[1]:.3f}"
    print(f"RESULT {fields} n_images={n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
