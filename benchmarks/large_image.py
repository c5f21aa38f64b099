"""Block-wise segmentation of a whole-slide-sized image: memory, speed, stitching.

1. **The image.** A seeded synthetic nuclei field (``core/synthetic.py``: a jittered
   grid of elliptic nuclei about 19 px across, on an uneven background with noise) of
   ``--size`` x ``--size`` pixels (default 20,000) is written once as OME-Zarr (NGFF 0.4,
   1024 px chunks, uint16) in ``--workdir`` and reused by later runs.
2. **Block-wise, from the command line.** ``napari-phenotyper segment IMAGE.zarr`` runs in
   a child process (classical segmenter, the default features, blocks of
   ``--block-size``): its peak resident memory (``ru_maxrss`` of the child) and its
   throughput, megapixels over the command's own wall time (reading, segmenting,
   stitching, measuring, writing the labels' OME-Zarr and ``cells.csv``).
3. **The reference.** The same segmenter and features on the image's ``--tile`` x
   ``--tile`` tiles (default 2048), each read into memory and processed on its own (no
   stitching, nothing written), also in a child process: its throughput. The ratio
   block-wise / tiles is the price of the overlap and the stitching (target >= 0.9).
4. **Stitching check.** A ``--check-size`` field (default 4096) whose grid step (32 px)
   divides the block size (1024 here), so that nuclei sit exactly on block borders and
   corners, is segmented block-wise in memory and compared with its true labels: every
   true nucleus crossing a block border must be found once, whole. A nucleus is wrong when
   split (two objects cover it), duplicated, missed or found with IoU < 0.5;
   ``border_errors`` counts those wrong block-wise but right in the whole-image run of the
   same segmenter (the stitching's errors, not the segmenter's); both counts are printed.

The last line is machine-readable::

    RESULT peak_rss_gb=<GB> mpx_per_s=<block-wise> ratio_vs_tiles=<ratio> border_errors=<n>

Usage::

    python benchmarks/large_image.py [--size 20000] [--block-size 2048] [--tile 2048]
        [--check-size 4096] [--workdir DIR] [--skip-tiles]

On 2 shared cores the 20,000 px run takes about 15 minutes (two passes over 400 Mpx);
``--size 6144`` takes one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_phenotyper.core.synthetic import NucleiField

REPO = Path(__file__).resolve().parents[1]
SEED = 16


def _field(size: int) -> NucleiField:
    return NucleiField((size, size), seed=SEED)


def write_image(path: Path, size: int) -> Path:
    """The synthetic field as OME-Zarr, written chunk by chunk (skipped when already there)."""
    from napari_phenotyper.io.ome_zarr import add_pyramid, write_ome_zarr

    stamp = path / "benchmark.json"
    want = {"size": size, "seed": SEED, "generator": "NucleiField", "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        print(f"image: {path} (kept from an earlier run)", flush=True)
        return path
    field = _field(size)
    t0 = time.perf_counter()
    write_ome_zarr(path, field.shape, np.uint16, field.render, chunks=1024)
    add_pyramid(path)
    stamp.write_text(json.dumps(want))
    print(f"image: wrote {path} ({size} x {size} uint16) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _child(code: str, *args: str) -> tuple[str, float]:
    """Run ``code`` in a fresh interpreter; its output and its peak resident memory (GB).

    The child reports its own ``ru_maxrss`` (kilobytes on Linux) as it ends.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    wrapped = (
        "import atexit, resource\n"
        "atexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True))\n"
        + code
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapped, *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    peak = int(proc.stdout.split("PEAK_KB ")[1].split()[0]) / 1024**2
    return proc.stdout, peak


CLI = """
import sys, time
from napari_phenotyper.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print(f"WALL {time.perf_counter() - t0:.3f}")
if rc:
    sys.exit(rc)
"""

TILES = """
import sys, time
import numpy as np
from napari_phenotyper.core.pipeline import MeasureParams, iter_segment_and_measure
from napari_phenotyper.core.progress import run
from napari_phenotyper.core.segment.classical import ClassicalParams
from napari_phenotyper.io.ome_zarr import open_ome_zarr
path, tile, diameter = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = open_ome_zarr(path).data
h, w = data.shape
params, measure = ClassicalParams(diameter=diameter), MeasureParams()
t0 = time.perf_counter()
cells = 0
for y in range(0, h, tile):
    for x in range(0, w, tile):
        img = np.asarray(data[y : y + tile, x : x + tile])
        cells += len(run(iter_segment_and_measure(img, "classical", params, measure=measure)).features)
print(f"TILES cells={cells} seconds={time.perf_counter() - t0:.3f}")
"""


def blockwise_cli(image: Path, out: Path, block: int, diameter: float) -> tuple[float, float, int, dict]:
    text, peak = _child(
        CLI,
        "segment",
        str(image),
        "--out",
        str(out),
        "--block-size",
        str(block),
        "--diameter",
        f"{diameter:g}",
        "--quiet",
    )
    wall = float(text.split("WALL ")[1].split()[0])
    n_cells = int(text.split("n_cells=")[1].split()[0])
    manifest = json.loads((out / "run.json").read_text())
    prov = next(iter(manifest["images"].values()))
    return wall, peak, n_cells, prov


def tiles_reference(image: Path, tile: int, diameter: float) -> tuple[float, float, int]:
    text, peak = _child(TILES, str(image), str(tile), f"{diameter:g}")
    line = text.split("TILES ")[1]
    return float(line.split("seconds=")[1].split()[0]), peak, int(line.split("cells=")[1].split()[0])


def _border_errors(truth: np.ndarray, labels: np.ndarray, block: int) -> tuple[int, set[int], list[float]]:
    """True objects crossing a block border: how many; those split, missed or poorly found; IoUs."""
    from scipy import ndimage as ndi

    n_border = 0
    errors: set[int] = set()
    ious = []
    for k, sl in enumerate(ndi.find_objects(truth), 1):
        if sl is None or not any(s.start // block != (s.stop - 1) // block for s in sl):
            continue
        n_border += 1
        mask = truth[sl] == k
        ids, counts = np.unique(labels[sl][mask], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if (counts > 0.1 * mask.sum()).sum() != 1:  # split (several objects) or missed (none)
            errors.add(k)
            continue
        best = ids[np.argmax(counts)]
        iou = counts.max() / (mask.sum() + (labels == best).sum() - counts.max())
        ious.append(float(iou))
        if iou < 0.5:
            errors.add(k)
    return n_border, errors, ious


def stitching_check(size: int, block: int) -> dict[str, float]:
    """Block-wise vs the truth (and vs the whole-image run) on nuclei placed on block borders."""
    from napari_phenotyper.core.blockwise import iter_segment_blockwise
    from napari_phenotyper.core.evaluate import average_precision
    from napari_phenotyper.core.progress import run
    from napari_phenotyper.core.segment.classical import ClassicalParams, segment_plane

    field = NucleiField((size, size), seed=SEED + 1, spacing=32, radius=(6.5, 11.0), jitter=2.0, empty=0.0)
    image, truth = field.render(0, size, 0, size), field.render(0, size, 0, size, labels=True)
    params = ClassicalParams(diameter=field.diameter)
    res = run(iter_segment_blockwise(image, "classical", params, block_size=block, features=False))
    labels = np.asarray(res.labels)
    whole = segment_plane(image, params)
    n_border, errors, ious = _border_errors(truth, labels, block)
    _, whole_errors, _ = _border_errors(truth, whole, block)
    vs_truth = average_precision(truth, labels)
    vs_whole = average_precision(whole, labels)
    return {
        "n_true": int(len(np.unique(truth)) - 1),
        "n_blockwise": res.n_objects,
        "n_whole": int(whole.max()),
        "n_border": n_border,
        # wrong block-wise but right in the whole-image run: what the stitching got wrong
        "border_errors": len(errors - whole_errors),
        "bw_border_wrong": len(errors),
        "whole_border_wrong": len(whole_errors),
        "border_iou": float(np.mean(ious)) if ious else float("nan"),
        "ap50_truth": vs_truth["ap50"],
        "iou_truth": vs_truth["per_threshold"][0.5].mean_matched_iou,
        "ap50_whole": vs_whole["ap50"],
        "iou_whole": vs_whole["per_threshold"][0.5].mean_matched_iou,
        **{
            k: res.provenance["blockwise"][k]
            for k in ("oversized", "duplicates", "rescued", "conflict_pixels")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20000, help="side of the synthetic image (default 20000)")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=2048, help="tile side of the reference (default 2048)")
    parser.add_argument("--check-size", type=int, default=4096)
    parser.add_argument("--workdir", default=None, help="where the image is kept (default: the temp folder)")
    parser.add_argument("--skip-tiles", action="store_true", help="no tile reference (ratio printed as nan)")
    args = parser.parse_args()

    work = Path(args.workdir or Path(tempfile.gettempdir()) / "napari-phenotyper-bench")
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    image = write_image(work / f"nuclei_{args.size}.ome.zarr", args.size)
    mpx = args.size**2 / 1e6
    diameter = _field(args.size).diameter

    with tempfile.TemporaryDirectory(dir=work) as out:
        wall, peak, n_cells, prov = blockwise_cli(image, Path(out), args.block_size, diameter)
        bw = prov["blockwise"]
        print(
            f"block-wise (CLI): {n_cells} cells, {wall:.1f} s, {mpx / wall:.3f} Mpx/s, peak RSS {peak:.2f} GB; "
            f"{bw['n_blocks']} blocks of {bw['block_size']} px, overlap {bw['overlap']} px, "
            f"segment {prov['segment_seconds']:.0f} s, measure {prov['measure_seconds']:.0f} s; "
            f"oversized {bw['oversized']}, duplicates {bw['duplicates']}, rescued {bw['rescued']}",
            flush=True,
        )
    ratio = float("nan")
    if not args.skip_tiles:
        t_tiles, peak_tiles, n_tiles = tiles_reference(image, args.tile, diameter)
        ratio = (mpx / wall) / (mpx / t_tiles)
        print(
            f"tiles of {args.tile} px, one by one in memory: {n_tiles} cells, {t_tiles:.1f} s, "
            f"{mpx / t_tiles:.3f} Mpx/s, peak RSS {peak_tiles:.2f} GB",
            flush=True,
        )
    check = stitching_check(args.check_size, 1024)
    print(
        f"stitching check ({args.check_size} px, blocks of 1024, nuclei on borders and corners): "
        f"{check['n_border']} true nuclei cross a border; split, duplicated, missed or IoU < 0.5: "
        f"{check['bw_border_wrong']} block-wise, {check['whole_border_wrong']} in the whole-image run, "
        f"{check['border_errors']} only block-wise (border_errors); their IoU {check['border_iou']:.3f}; objects: truth {check['n_true']}, block-wise {check['n_blockwise']}, "
        f"whole image {check['n_whole']}; vs truth AP50 {check['ap50_truth']:.4f} IoU {check['iou_truth']:.3f}; "
        f"vs whole image AP50 {check['ap50_whole']:.4f} IoU {check['iou_whole']:.3f}; "
        f"duplicates dropped {check['duplicates']}, rescued {check['rescued']}, oversized {check['oversized']}",
        flush=True,
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    print(
        f"RESULT peak_rss_gb={peak:.2f} mpx_per_s={mpx / wall:.3f} ratio_vs_tiles={ratio:.3f} "
        f"border_errors={check['border_errors']}"
    )


if __name__ == "__main__":
    main()
