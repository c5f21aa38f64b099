"""Fine-tuning gain: AP@0.5 on held-out images before and after fine-tuning on N images.

The images of ``--images`` / ``--masks`` (paired by file stem; by default only the
grayscale ones, as the issue asks for ``dsb2018_dev``'s fluorescence images) are split
deterministically (``--seed``): ``--train N`` images to fine-tune on, the rest held out.
Of the N, ``--val K`` (default 0) are the validation pairs of the run (scored after every
epoch, the best epoch kept, StarDist's thresholds optimised on them); the other N - K
are trained on. With no validation pair all N train and StarDist's thresholds are tuned
on them (the dock's behaviour without a validation pair). The starting model (``--base``) is scored on the held-out images with
the plugin's own segmenter, fine-tuned with :func:`napari_phenotyper.core.finetune.iter_finetune`
(the code the Fine-tune dock and ``napari-phenotyper finetune`` run) for a fixed budget
of ``--epochs`` x ``--steps`` steps, and scored again. Last line::

    RESULT backend=<b> ap50_before=<x> ap50_after=<y> gain=<y-x> train_s=<s> train_cpu_s=<c> n_train=<N> n_test=<M>

``train_s`` is the wall time of the fine-tuning; ``train_cpu_s`` the CPU time of the process over
it (all threads), the measure of the issue's budget of 10 minutes of CPU time.

Without ``--base``, a small StarDist model is first trained on the StarDist sample
image only (``stardist_sample``: one 512 x 512 image of 125 nuclei; U-Net depth 2, 16
filters, 600 steps of 4 patches of 128 x 128) and cached in
``~/.cache/napari-phenotyper-bench/``; for ``--backend cellpose`` the same image trains a
small cellpose 3 model from scratch. That training is not part of ``train_s``.

Usage::

    python benchmarks/finetune.py [--data DIR] [--images DIR --masks DIR] [--backend stardist|cellpose]
        [--train 5] [--val 1] [--epochs E] [--steps S] [--base MODEL] [--seed 0] [--all-images]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_phenotyper.core.evaluate import match_masks, match_stats
from napari_phenotyper.core.finetune import FinetuneRequest, iter_finetune, split_indices
from napari_phenotyper.core.finetune.run import _segment
from napari_phenotyper.core.progress import Progress, TrainProgress, run
from napari_phenotyper.io.images import read_image, to_grayscale

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get("NAPARI_PHENOTYPER_BENCH_CACHE", Path.home() / ".cache" / "napari-phenotyper-bench")
)


def _data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("NAPARI_PHENOTYPER_TEST_DATA") or REPO.parent / "shared" / "data")


def _is_gray(a: np.ndarray) -> bool:
    return a.ndim == 2 or bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]))


def _load(images: Path, masks: Path, gray_only: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs, _, _ = match_masks(images, masks)
    out = []
    for ip, mp in pairs:
        raw = read_image(ip)
        if gray_only and not _is_gray(raw):
            continue
        out.append((ip.stem, to_grayscale(raw), np.asarray(read_image(mp))))
    if not out:
        sys.exit(f"No image/mask pairs in {images} and {masks}.")
    return out


def _base_model(backend: str, data: Path, models: Path) -> str:
    """Train (once, cached) a small model on the StarDist sample only; return its name in ``models``."""
    import tifffile

    img = tifffile.imread(data / "stardist_sample" / "img2d.tif")
    mask = tifffile.imread(data / "stardist_sample" / "mask2d.tif")
    key = hashlib.sha256(img.tobytes() + mask.tobytes() + backend.encode() + b"v1").hexdigest()[:12]
    name = f"sample-only-{backend}-{key}"
    cached = CACHE / backend / name
    if not cached.is_dir():
        print(f"Training the base model {name} on stardist_sample only (cached in {CACHE})...", flush=True)
        t0 = time.perf_counter()
        if backend == "stardist":
            from napari_phenotyper.core.segment.stardist_train import iter_train_stardist

            run(
                iter_train_stardist(
                    [img],
                    [mask],
                    config={
                        "n_rays": 32,
                        "grid": (2, 2),
                        "unet_n_depth": 2,
                        "unet_n_filter_base": 16,
                        "train_patch_size": (128, 128),
                        "train_batch_size": 4,
                        "train_learning_rate": 3e-3,
                    },
                    epochs=30,
                    steps_per_epoch=20,
                    out_dir=CACHE / backend,
                    name=name,
                    validation=([img], [mask]),
                    nms_threshs=(0.4,),
                    image_names=["stardist_sample"],
                )
            )
        else:
            from napari_phenotyper.core.segment.cellpose_train import iter_train_cellpose

            run(
                iter_train_cellpose(
                    [img], [mask], None, epochs=100, out_dir=CACHE / backend, name=name, min_train_masks=1
                )
            )
        print(f"  base model trained in {time.perf_counter() - t0:.0f} s", flush=True)
    shutil.copytree(cached, models / backend / name)
    return name


def _score(
    backend: str, model: str, items: list[tuple[str, np.ndarray, np.ndarray]]
) -> tuple[float, list[float]]:
    scores = []
    for _, x, y in items:
        pred = _segment(backend, model, x)
        scores.append(float(match_stats(y, pred, 0.5)[0.5].ap))
    return float(np.mean(scores)), scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--images", default=None, help="images folder (default <data>/dsb2018_dev/images)")
    ap.add_argument("--masks", default=None, help="masks folder (default <data>/dsb2018_dev/masks)")
    ap.add_argument("--backend", choices=("stardist", "cellpose"), default="stardist")
    ap.add_argument("--train", type=int, default=5, help="labelled images used (training + validation)")
    ap.add_argument(
        "--val",
        type=int,
        default=0,
        help="of those, validation pairs (default 0: all train, thresholds tuned on them)",
    )
    ap.add_argument("--epochs", type=int, default=None, help="default: stardist 25, cellpose 100")
    ap.add_argument("--steps", type=int, default=None, help="StarDist steps per epoch (default 20)")
    ap.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: the backend's fine-tuning default)"
    )
    ap.add_argument("--patch", type=int, default=None, help="patch size (default: the backend's)")
    ap.add_argument(
        "--base", default=None, help="starting model (default: one trained on stardist_sample only)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all-images", action="store_true", help="also colour (brightfield, H&E) images")
    args = ap.parse_args(argv)

    data = _data_dir(args.data)
    images = Path(args.images) if args.images else data / "dsb2018_dev" / "images"
    masks = Path(args.masks) if args.masks else data / "dsb2018_dev" / "masks"
    items = _load(images, masks, gray_only=not args.all_images)
    train_idx, test_idx = split_indices(len(items), args.train, seed=args.seed)
    labelled = [items[i] for i in train_idx]
    test = [items[i] for i in test_idx]
    if not 0 <= args.val < len(labelled):
        sys.exit(f"--val must be between 0 and {len(labelled) - 1}.")
    val, fit = labelled[: args.val], labelled[args.val :]
    print(f"{len(items)} images: {len(fit)} to train on, {len(val)} for validation, {len(test)} held out")

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"pheno-finetune-bench-{os.getpid()}"
    models = work / "models"
    (models / args.backend).mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_PHENOTYPER_MODELS"] = str(models)
    try:
        base = args.base or _base_model(args.backend, data, models)
        t0 = time.perf_counter()
        before, before_each = _score(args.backend, base, test)
        print(f"base {base}: held-out AP@0.5 {before:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        default_epochs = 25 if args.backend == "stardist" else 100
        req = FinetuneRequest(
            backend=args.backend,
            base_model=base,
            images=tuple(x for _, x, _ in fit),
            masks=tuple(y for _, _, y in fit),
            image_names=tuple(n for n, _, _ in fit),
            val_images=tuple(x for _, x, _ in val),
            val_masks=tuple(y for _, _, y in val),
            name="bench-ft",
            epochs=args.epochs or default_epochs,
            steps_per_epoch=(args.steps or 20) if args.backend == "stardist" else None,
            learning_rate=args.lr,
            patch_size=args.patch,
            seed=args.seed,
        )

        def show(p: Progress) -> None:
            if isinstance(p, TrainProgress):
                figures = " ".join(
                    f"{k}={v:.4f}" for k, v in p.metrics.items() if k in ("loss", "val_loss", "val_ap50")
                )
                print(f"  epoch {p.epoch}/{p.epochs} {figures}", flush=True)

        t1, c1 = time.perf_counter(), time.process_time()
        result = run(iter_finetune(req), show)
        train_s, train_cpu_s = time.perf_counter() - t1, time.process_time() - c1
        after, after_each = _score(args.backend, result.name, test)
        print(f"fine-tuned {result.name}: held-out AP@0.5 {after:.4f} (training {train_s:.0f} s)")
        better = sum(a > b for a, b in zip(after_each, before_each, strict=True))
        print(f"images improved: {better}/{len(test)}")
        info: dict[str, Any] = result.metadata.get("finetune", {})
        print(f"validation AP@0.5: before {info.get('val_ap50_before')}, best {info.get('val_ap50_best')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"RESULT backend={args.backend} ap50_before={before:.4f} ap50_after={after:.4f} "
        f"gain={after - before:.4f} train_s={train_s:.1f} train_cpu_s={train_cpu_s:.1f} "
        f"n_train={args.train} n_test={len(test)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
