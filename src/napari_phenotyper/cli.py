"""Command line: the same pipeline as the napari widgets, headless.

napari-phenotyper segment IMAGES... --out DIR       segment + measure, write labels, cells.csv, summary.csv
                                                     (OME-Zarr and very large images block by block)
napari-phenotyper segment --sample nuclei --out DIR  the built-in sample (with ground truth)
napari-phenotyper evaluate --images DIR --masks DIR  accuracy against instance masks
napari-phenotyper pipeline OUT.json [options]        save a pipeline file for batch runs
napari-phenotyper batch PIPELINE INPUT... --out DIR  run a pipeline over many images (resumable;
                                                     plate layouts, profiles, Dask workers)
napari-phenotyper finetune --backend B --base MODEL --images DIR --masks DIR
                                                     fine-tune a Cellpose/StarDist model on masks
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_parser", "main"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _expand_inputs(
    inputs: Sequence[str], suffixes: Sequence[str] = IMAGE_SUFFIXES, what: str = "images"
) -> list[Path]:
    """Files, folders (their files with ``suffixes``, sorted) and glob patterns -> paths."""
    paths: list[Path] = []
    zarr_ok = ".zarr" in suffixes
    for item in inputs:
        p = Path(item)
        if zarr_ok and _is_zarr(p):  # a Zarr store is a folder, but one image
            paths.append(p)
        elif p.is_dir():
            found = sorted(
                q
                for q in p.iterdir()
                if (q.suffix.lower() in suffixes and (q.is_file() or (zarr_ok and _is_zarr(q))))
                and not q.name.startswith(".")
            )
            if not found:
                raise CLIError(f"No {what} ({', '.join(suffixes)}) in folder {p}.")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            matches = sorted(
                Path(m) for m in glob.glob(item) if Path(m).is_file() or (zarr_ok and _is_zarr(Path(m)))
            )
            if not matches:
                raise CLIError(f"No such file, folder or pattern: {item}")
            paths.extend(matches)
    return paths


def _is_zarr(path: Path) -> bool:
    from .io.ome_zarr import is_zarr_path

    return is_zarr_path(path)


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CLIError(f"--param expects KEY=VALUE, got {pair!r}.")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


class _Bar:
    """A tqdm bar on stderr fed with core Progress records; ``base`` is the item index."""

    scale = 1000

    def __init__(self, total: int, quiet: bool, unit: str = "images") -> None:
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                file=sys.stderr,
                dynamic_ncols=True,
                unit=unit,
                bar_format="{l_bar}{bar}| {n:.1f}/{total} " + unit + " [{elapsed}<{remaining}] {postfix}",
            )

    def update(self, p: Any, base: int = 0) -> None:
        if self.bar is None:
            return
        self.bar.n = min(self.bar.total, base + p.fraction)
        if p.message:
            self.bar.set_postfix_str(p.message[:50], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def _progress_bar(total: int, quiet: bool) -> Iterator[_Bar]:
    bar = _Bar(total, quiet)
    try:
        yield bar
    finally:
        bar.close()


def _diameter_arg(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        d = float(value)
    except ValueError:
        raise CLIError(f"--diameter must be a number of pixels or 'auto', not {value!r}.") from None
    if d <= 0:
        raise CLIError("--diameter must be positive.")
    return d


def _segment_params(segmenter_name: str, args: argparse.Namespace, image: np.ndarray | None = None) -> Any:
    """The segmenter's parameters from ``--param`` and ``--diameter`` (``auto``: estimated on ``image``)."""
    from .core.params import params_from_mapping
    from .core.pipeline import estimate_params_diameter, with_dimensions
    from .core.segment import get_segmenter

    seg = get_segmenter(segmenter_name)
    values: dict[str, Any] = _parse_params(args.param)
    diameter = _diameter_arg(args.diameter)
    has_diameter = any(f == "diameter" for f in getattr(seg.params_type, "__dataclass_fields__", {}))
    if isinstance(diameter, float):
        if not has_diameter:
            raise CLIError(f"The {segmenter_name} segmenter has no diameter parameter.")
        values["diameter"] = diameter
    try:
        params = params_from_mapping(seg.params_type, values)
        dims, spacing = _dims_args(args)
        if dims is not None:
            params = with_dimensions(params, dims, spacing)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if diameter == "auto" and has_diameter and "diameter" not in values and image is not None:
        params = estimate_params_diameter(segmenter_name, params, image)
    return params


def _dims_args(args: argparse.Namespace) -> tuple[str | None, tuple[float, ...] | None]:
    """``--dims`` and ``--spacing``: how stacks are segmented, and the (z, y, x) voxel size.

    ``--dims auto`` (the default) is ``3d`` when ``--spacing`` is given (a voxel size says the
    stack is a volume) and leaves the segmenter's parameters as they are otherwise (per plane,
    unless ``--param`` says otherwise).
    """
    text = getattr(args, "spacing", None)
    spacing = None
    if text is not None:
        from .core.segment.classical3d import check_spacing

        spacing = check_spacing(text)
    dims = getattr(args, "dims", "auto") or "auto"
    if dims == "auto":
        return ("3d", spacing) if spacing is not None else (None, None)
    return dims, spacing


def _apply_model_arg(args: argparse.Namespace) -> None:
    """``--model NAME_OR_PATH`` becomes the segmenter's ``model`` parameter."""
    model = getattr(args, "model", None)
    if model is None:
        return
    from .core.segment import get_segmenter

    fields = getattr(get_segmenter(args.segmenter).params_type, "__dataclass_fields__", {})
    if "model" not in fields:
        raise CLIError(f"The {args.segmenter} segmenter takes no model; leave out --model.")
    if any(p.split("=", 1)[0].strip() == "model" for p in args.param):
        raise CLIError("Give the model once: --model or --param model=..., not both.")
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    args.param = [*args.param, f"model={model}"]


def _feature_groups(text: str) -> tuple[str, ...] | None:
    """``--features``: ``default`` (None), ``all`` or a comma-separated list of groups."""
    if text.strip() == "default":
        return None
    if text.strip() == "all":
        from .core.features import FEATURE_GROUPS

        return FEATURE_GROUPS
    return tuple(g.strip() for g in text.split(",") if g.strip())


def _add_feature_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        default="default",
        help="comma-separated feature groups among shape,zernike,intensity,texture,neighbors; "
        "'default' = all but zernike, 'all' = every group (default: default)",
    )
    parser.add_argument(
        "--feature-set",
        choices=("default", "cellprofiler"),  # core.features.FEATURE_SETS (not imported for --help)
        default="default",
        help="default: this package's fast features; cellprofiler: CellProfiler 4's definitions and "
        "column names (AreaShape_*, Intensity_*, Texture_*, Neighbors_*; docs/features.md)",
    )


def _wants_blockwise(shape: tuple[int, int], args: argparse.Namespace) -> bool:
    """Block by block above :data:`~.core.blockwise.BLOCKWISE_ABOVE` pixels, or on any image
    larger than one block when ``--block-size`` asks for it."""
    from .core.blockwise import BLOCKWISE_ABOVE, DEFAULT_BLOCK_SIZE

    if args.block_size is not None:
        return max(shape) > args.block_size
    return shape[0] * shape[1] > BLOCKWISE_ABOVE and max(shape) > DEFAULT_BLOCK_SIZE


class _LargeImage:
    """An image segmented block by block: a lazy plane and its channel axis."""

    def __init__(self, plane: Any, channel_axis: int | None, channel: int | None, source: str):
        self.plane, self.channel_axis, self.channel, self.source = plane, channel_axis, channel, source

    @property
    def shape(self) -> tuple[int, int]:
        dims = [n for a, n in enumerate(self.plane.shape) if a != self.channel_axis]
        return int(dims[0]), int(dims[1])

    def center(self, size: int = 2048) -> np.ndarray:
        """The central ``size x size`` region (one channel), where the diameter is estimated."""
        from .core.blockwise import centre_region

        return centre_region(self.plane, self.channel_axis, size)


def _load_input(path: Path, args: argparse.Namespace) -> np.ndarray | _LargeImage:
    """An image file or OME-Zarr store: in memory, or lazily when it is to go block by block."""
    from .io.images import read_image, to_grayscale

    if not _is_zarr(path):
        image = to_grayscale(read_image(path), args.channel)
        if image.ndim == 2 and _wants_blockwise(image.shape, args):
            return _LargeImage(image, None, None, "file")
        return image
    from .core.pipeline import select_channel
    from .io.ome_zarr import open_ome_zarr

    omz = open_ome_zarr(path)
    plane, channel_axis = omz.plane(args.channel)
    large = _LargeImage(plane, channel_axis, None, "ome-zarr")
    if _wants_blockwise(large.shape, args):
        return large
    return select_channel(np.asarray(plane), channel_axis, None)


def _run_blockwise(
    name: str, image: _LargeImage, args: argparse.Namespace, measure: Any, out: Path, bar: Any, i: int
) -> tuple[Any, Path]:
    """Segment and measure one large image; its labels go to ``<name>_labels.zarr``, its table to a part file."""
    import shutil
    import tempfile

    from .core.blockwise import DEFAULT_BLOCK_SIZE, iter_segment_blockwise
    from .core.progress import run, sub_progress

    params = _segment_params(args.segmenter, args, image.center())
    scratch = None
    if args.no_labels:  # the labels are still needed to measure: keep them until the table is done
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
        labels_path = scratch / f"{name}_labels.zarr"
    else:
        labels_path = out / f"{name}_labels.zarr"
    part = out / f".{name}_cells.part.parquet"
    try:
        gen = iter_segment_blockwise(
            image.plane,
            args.segmenter,
            params,
            block_size=args.block_size or DEFAULT_BLOCK_SIZE,
            overlap=args.overlap,
            channel_axis=image.channel_axis,
            channel=image.channel,
            labels_out=labels_path,
            measure=measure,
            table_out=part,
            image_name=name,
            pyramid=not args.no_labels,
        )
        result = run(sub_progress(gen, 0, 1, f"{name}: "), lambda p: bar.update(p, base=i))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    result.provenance["source"] = image.source
    return result, part


def _write_cells(pieces: list[Any], path: Path) -> Path:
    """One per-cell CSV from in-memory tables and block-wise Parquet parts, streamed, atomically.

    In-memory tables are written as :func:`~.io.export.write_table_csv` does; a part's rows
    (hundreds of thousands for a slide) go through Arrow's CSV writer, ten times faster than
    pandas' (its numbers in full precision, missing values empty as well).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pacompute
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from .io.atomic import atomic_path

    columns: list[str] = []
    for piece in pieces:
        names = list(piece.columns) if not isinstance(piece, Path) else pq.read_schema(piece).names
        columns += [c for c in names if c not in columns]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(pd.DataFrame(columns=columns).to_csv(index=False).encode("utf-8"))
        for piece in pieces:
            if not isinstance(piece, Path):
                fh.write(
                    piece.reindex(columns=columns)
                    .to_csv(index=False, header=False, float_format="%.10g")
                    .encode()
                )
                continue
            for batch in pq.ParquetFile(piece).iter_batches(batch_size=65536):
                table = pa.Table.from_batches([batch])
                arrays = []
                for c in columns:
                    if c not in table.column_names:
                        arrays.append(pa.nulls(len(table), pa.float64()))
                    elif pa.types.is_floating(table.schema.field(c).type):  # NaN -> empty, as pandas
                        arrays.append(pa.array(table.column(c).to_numpy(), from_pandas=True))
                    else:
                        arrays.append(table.column(c))
                table = pa.Table.from_arrays(arrays, names=columns)
                plain = all(
                    not any(ch in str(v) for ch in ',"\r\n')
                    for c in columns
                    if pa.types.is_string(table.schema.field(c).type)
                    for v in pacompute.unique(table.column(c)).to_pylist()
                )
                options = pacsv.WriteOptions(
                    include_header=False, quoting_style="none" if plain else "needed"
                )
                pacsv.write_csv(table, fh, options)
    return path


def _cmd_segment(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import __version__, samples
    from .core.batch import failure_text
    from .core.evaluate import average_precision
    from .core.pipeline import MeasureParams, iter_segment_and_measure
    from .core.progress import run, sub_progress
    from .io.atomic import atomic_write_text
    from .io.export import table_for_export, write_labels_tiff, write_summary_csv
    from .io.images import to_grayscale

    if not args.inputs and not args.sample:
        raise CLIError("Give image files/folders, or --sample NAME to run on a built-in sample.")
    if args.block_size is not None and args.block_size < 16:
        raise CLIError("--block-size must be at least 16 pixels.")
    if args.overlap is not None and args.overlap < 0:
        raise CLIError("--overlap must be >= 0.")
    _apply_model_arg(args)
    if args.sample == "nuclei3d" and args.dims == "auto" and args.spacing is None:
        args.spacing = ",".join(map(str, samples.NUCLEI_3D_SPACING))  # a volume: segment it in 3-D
    _segment_params(args.segmenter, args)  # unknown segmenter or parameter: fail before any work
    jobs: list[tuple[str, Callable[[], np.ndarray | _LargeImage], np.ndarray | None]] = []
    if args.sample:
        loader = samples.SAMPLES.get(args.sample)
        if loader is None:
            raise CLIError(f"Unknown sample {args.sample!r}; choose one of {', '.join(samples.SAMPLES)}.")
        try:
            data = loader()
        except samples.SampleUnavailable as exc:
            raise CLIError(str(exc)) from None
        image, truth = data if isinstance(data, tuple) else (data, None)
        jobs.append((f"sample_{args.sample}", lambda image=image: to_grayscale(image, args.channel), truth))
    used: set[str] = {name for name, _, _ in jobs}
    for path in _expand_inputs(args.inputs, (*IMAGE_SUFFIXES, ".zarr")):
        stem = path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") else path.stem
        name, k = stem, 1
        while name in used:  # same file name in two folders: keep both outputs
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        jobs.append((name, lambda path=path: _load_input(path, args), None))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = _feature_groups(args.features)
    try:
        measure = MeasureParams(**({"groups": groups} if groups else {}), feature_set=args.feature_set)
    except ValueError as exc:
        raise CLIError(str(exc)) from None

    tables: list[Any] = []  # per-cell tables in memory, or block-wise part files
    failures, scores, provenance = [], [], {}
    per_image: dict[str, pd.DataFrame] = {}  # for the summary: categoricals intact
    n_cells = 0
    t0 = time.perf_counter()
    with _progress_bar(len(jobs), args.quiet) as bar:
        for i, (name, load, truth) in enumerate(jobs):
            try:
                image = load()
                if isinstance(image, _LargeImage):
                    result, part = _run_blockwise(name, image, args, measure, out, bar, i)
                    tables.append(part)
                    per_image[name] = pd.read_parquet(part, columns=["label"])
                    provenance[name] = result.provenance
                    n_cells += result.n_objects
                    bw = result.provenance["blockwise"]
                    print(
                        f"{name}: {result.n_objects} cells ({result.provenance['device']}, block-wise: "
                        f"{bw['n_blocks']} blocks of {bw['block_size']} px, overlap {bw['overlap']} px; "
                        f"{result.provenance['segment_seconds']:.2f} s segment, "
                        f"{result.provenance['measure_seconds']:.2f} s measure)",
                        flush=True,
                    )
                    if bw["oversized"]:
                        print(
                            f"Note: {name}: {bw['oversized']} object(s) reach past the {bw['overlap']} px overlap "
                            "and may be cut at block borders; raise --overlap.",
                            file=sys.stderr,
                        )
                    continue
                params = _segment_params(args.segmenter, args, image)
                gen = sub_progress(
                    iter_segment_and_measure(image, args.segmenter, params, measure=measure),
                    0,
                    1,
                    f"{name}: ",
                )
                result = run(gen, lambda p, i=i: bar.update(p, base=i))
            except CLIError:
                raise
            except Exception as exc:  # one bad image must not stop the run
                failures.append((name, failure_text(exc)))
                continue
            if not args.no_labels:
                write_labels_tiff(result.labels, out / f"{name}_labels.tif")
            tables.append(table_for_export(result.features, name))
            per_image[name] = result.features
            provenance[name] = result.provenance
            n_cells += len(result.features)
            line = f"{name}: {len(result.features)} cells ({result.provenance['device']}, {result.provenance['segment_seconds']:.2f} s segment, {result.provenance['measure_seconds']:.2f} s measure)"
            if truth is not None:
                ap = average_precision(truth, result.labels)
                scores.append(ap)
                line += f"; vs ground truth AP@0.5={ap['ap50']:.3f} AP@0.5:0.95={ap['ap50_95']:.3f}"
            print(line, flush=True)
    for name, err in failures:
        print(f"FAILED {name}: {err}", file=sys.stderr)
    if tables:
        try:
            csv = _write_cells(tables, out / "cells.csv")
        finally:
            for piece in tables:
                if isinstance(piece, Path):
                    piece.unlink(missing_ok=True)
        summary = write_summary_csv(per_image, out / "summary.csv")
        print(f"Wrote {n_cells} cells from {len(tables)} image(s) to {csv} and the summary to {summary.name}")
    manifest = {
        "napari_phenotyper": __version__,
        "command": "segment",
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "images": provenance,
        "failed": dict(failures),
    }
    atomic_write_text(out / "run.json", json.dumps(manifest, indent=2, default=str))
    result_line = f"RESULT n_images={len(tables)} n_failed={len(failures)} n_cells={n_cells} seconds={time.perf_counter() - t0:.2f}"
    if scores:
        result_line += f" ap50={np.mean([s['ap50'] for s in scores]):.4f} ap50_95={np.mean([s['ap50_95'] for s in scores]):.4f}"
    print(result_line)
    return 0 if tables else 1


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.evaluate import iter_evaluate_folder, summarize
    from .core.progress import run

    images, masks = Path(args.images), Path(args.masks)
    for p, what in ((images, "--images"), (masks, "--masks")):
        if not p.is_dir():
            raise CLIError(f"{what} {p} is not a folder.")
    _apply_model_arg(args)
    diameter = _diameter_arg(args.diameter)
    params = _segment_params(args.segmenter, argparse.Namespace(**{**vars(args), "diameter": None}))
    if diameter == "auto" and "diameter" not in getattr(params, "__dataclass_fields__", {}):
        diameter = None  # the default 'auto' means "where there is a diameter"
    kwargs: dict[str, Any] = {
        "segmenter_name": args.segmenter,
        "params": params,
        "channel": args.channel,
        "diameter": diameter,
        "iou_rule": args.iou_rule,
    }
    with _progress_bar(1, args.quiet) as bar:
        try:
            df = run(iter_evaluate_folder(images, masks, **kwargs), bar.update)
        except (FileNotFoundError, ValueError) as exc:
            raise CLIError(str(exc)) from None
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.width", 160):
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    s = summarize(df)
    print(f"RESULT ap50={s['ap50']:.4f} ap50_95={s['ap50_95']:.4f} n_images={s['n_images']}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .core.finetune import FinetuneRequest, iter_finetune, load_training_folder
    from .core.progress import TrainProgress, run
    from .core.segment import get_segmenter

    try:
        get_segmenter(args.backend)  # says what to install when the backend is missing
        train = load_training_folder(args.images, args.masks)
        val = None
        if args.val_images or args.val_masks:
            if not (args.val_images and args.val_masks):
                raise CLIError("Give both --val-images and --val-masks, or neither.")
            val = load_training_folder(args.val_images, args.val_masks, what="validation")
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    base = args.base
    if base is not None and base.lower() == "none":
        base = None
    request = FinetuneRequest(
        backend=args.backend,
        base_model=base,
        images=train.images,
        masks=train.masks,
        image_names=train.names,
        val_images=() if val is None else val.images,
        val_masks=() if val is None else val.masks,
        name=args.name or "",
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        steps_per_epoch=args.steps_per_epoch,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        seed=args.seed,
        out_dir=args.out,
        device=args.device,
    )
    print(
        f"Fine-tuning {base or 'a new model'} ({args.backend}) on {len(train)} image(s), "
        f"{train.n_objects} objects" + (f"; validation: {len(val)} image(s)" if val else ""),
        flush=True,
    )

    def show(p: Any) -> None:
        if isinstance(p, TrainProgress) and not args.quiet:
            figures = ", ".join(
                f"{k} {v:.4f}" for k, v in p.metrics.items() if k in ("loss", "val_loss", "val_ap50")
            )
            pace = f" ({p.seconds_per_step:.2f} s/step)" if p.seconds_per_step else ""
            print(f"epoch {p.epoch}/{p.epochs}: {figures}{pace}", flush=True)

    try:
        result = run(iter_finetune(request), show)
    except (FileNotFoundError, ValueError, MemoryError) as exc:
        raise CLIError(str(exc)) from None
    print(f"Saved {result.name} in {result.path} ({result.seconds:.0f} s)")
    line = f"RESULT backend={result.backend} name={result.name} train_s={result.seconds:.1f}"
    if result.val_ap50_before is not None:
        line += f" val_ap50_before={result.val_ap50_before:.4f}"
    if result.val_ap50_best is not None:
        line += f" val_ap50_best={result.val_ap50_best:.4f}"
    print(line)
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    import dataclasses

    from .core.pipeline_spec import ModelRef, PipelineError, PipelineSpec
    from .io.pipeline_file import save_pipeline

    diameter = _diameter_arg(args.diameter)
    params = _segment_params(args.segmenter, argparse.Namespace(**{**vars(args), "diameter": None}))
    values = dataclasses.asdict(params)
    if isinstance(diameter, float):
        if "diameter" not in values:
            raise CLIError(f"The {args.segmenter} segmenter has no diameter parameter.")
        values["diameter"] = diameter
    groups = _feature_groups(args.features)
    model = None
    if args.model:
        model = (
            ModelRef(path=str(Path(args.model).resolve()))
            if Path(args.model).exists()
            else ModelRef(name=args.model)
        )
    spec = PipelineSpec(
        segmenter=args.segmenter,
        params=values,
        auto_diameter=diameter == "auto" and "diameter" in values,
        model=model,
        channel=args.channel,
        classifier=None if args.classifier is None else _file_ref(args.classifier),
        name=args.name or "",
        description=args.description or "",
        feature_set=args.feature_set,
        **({"feature_groups": groups} if groups else {}),
    )
    spec = spec.with_model_from_params()  # --param model=... is recorded like --model
    try:
        path = save_pipeline(spec, args.output)
    except PipelineError as exc:
        raise CLIError(str(exc)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(f"Wrote the pipeline to {path}")
    return 0


def _file_ref(path: str) -> Any:
    from .core.pipeline_spec import FileRef

    if not Path(path).is_file():
        raise CLIError(f"No such classifier file: {path}")
    return FileRef(str(Path(path).resolve()))


class _BatchBar:
    """Terminal progress of a batch run: images done, images/s and ETA (tqdm on stderr)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def update(self, p: Any) -> None:
        if self.quiet or not hasattr(p, "n_images"):
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=p.n_images,
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{percentage:3.0f}%|{bar}| {desc}",
            )
        self.bar.n = min(p.n_images, p.step / 1000)
        self.bar.set_description_str(f"{p.summary()} · {p.message[:40]}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


TABLE_SUFFIXES = (".csv", ".parquet")


def _parse_channel_map(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CLIError(f"--channel-map wants CLASSIFIER_CHANNEL=TABLE_CHANNEL, got {pair!r}.")
        old, new = (x.strip() for x in pair.split("=", 1))
        out[old] = new
    return out


def _cmd_classify(args: argparse.Namespace) -> int:
    """Apply a saved classifier to per-cell tables or images, or train one from annotated
    cells; both through the GUI's :class:`~.core.classify.session.PhenotypingSession`."""
    if (args.classifier is None) == (args.train is None):
        raise CLIError(
            "Give --classifier FILE (apply it to tables or images) or --train ANNOTATIONS (train one), not both."
        )
    return _classify_train(args) if args.train is not None else _classify_apply(args)


def _with_row_labels(table: Any) -> Any:
    """``table`` with a ``label`` column numbering its rows 1..n (in one block: a wide
    table must not be fragmented)."""
    import pandas as pd

    rows = pd.Series(np.arange(1, len(table) + 1), index=table.index, name="label")
    return pd.concat([table.drop(columns=["label"], errors="ignore"), rows], axis=1)


def _classify_train(args: argparse.Namespace) -> int:
    import pandas as pd

    from .core.classify.model import feature_columns_for
    from .core.classify.session import PhenotypingSession
    from .core.progress import run
    from .io.tables import read_table

    try:
        table = read_table(args.train)
    except FileNotFoundError:
        raise CLIError(f"No such table of annotated cells: {args.train}") from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"Cannot read {args.train}: {exc}") from None
    if args.class_column not in table.columns:
        raise CLIError(
            f"{args.train} has no column {args.class_column!r}; name the column holding each cell's "
            "class with --class-column."
        )
    given = (table[args.class_column].notna() & (table[args.class_column].astype(str) != "")).to_numpy()
    classes = table.loc[given, args.class_column].astype(str).reset_index(drop=True)
    if classes.nunique() < 2:
        raise CLIError(f"{args.train} needs cells of at least two classes in {args.class_column!r}.")
    # every row is a cell: those without a class are what a self-trained classifier learns from as well
    cells = table.drop(columns=[args.class_column]).reset_index(drop=True)
    if "label" not in cells.columns or not cells["label"].is_unique:
        cells = _with_row_labels(cells)  # cells of many images: one id per row here
    session = PhenotypingSession(None)
    try:
        session.configure(
            classifier=args.kind,
            feature_groups=tuple(g.strip() for g in args.groups.split(",")) if args.groups else None,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    features = feature_columns_for(cells, session.loop.feature_groups)
    if not features:
        raise CLIError(f"{args.train} has no numeric feature columns besides {args.class_column!r}.")
    key = str(Path(args.train).resolve())
    session.set_image(key, cells, None, name=Path(args.train).name)
    for name in sorted(classes.unique()):
        session.add_class(name)
    ids = cells["label"].to_numpy()[given]
    for name in sorted(classes.unique()):
        session.annotate_many(key, ids[(classes == name).to_numpy()].tolist(), name)
    session.apply_quality(run(session.iter_quality()))
    quality = session.quality
    path = session.save_classifier(args.out, metadata={"trained_from": key})
    counts = pd.Series(classes).value_counts().sort_index()
    print(
        f"Trained a {args.kind} classifier on {len(classes)} cells, {len(features)} features: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    print(f"Saved {path}")
    acc = "nan" if quality is None else f"{quality['accuracy']:.4f}"
    bal = "nan" if quality is None else f"{quality['balanced_accuracy']:.4f}"
    print(
        f"RESULT n_cells={len(classes)} n_classes={len(counts)} n_features={len(features)} "
        f"cv_accuracy={acc} cv_balanced_accuracy={bal}"
    )
    return 0


def _classify_inputs(args: argparse.Namespace) -> list[tuple[str, Callable[[], Any], str, str]]:
    """``(name, load, kind, shown)`` of every input: kind ``table.csv`` (``.parquet``) loads
    a per-cell table, kind ``image`` an image to segment and measure first; ``shown`` is
    its file name (in messages and the summary), ``name`` the stem of its outputs."""
    from . import samples
    from .io.images import read_image
    from .io.tables import read_table

    jobs: list[tuple[str, Callable[[], Any], str, str]] = []
    if args.sample:
        loader = samples.SAMPLES.get(args.sample)
        if loader is None:
            raise CLIError(f"Unknown sample {args.sample!r}; choose one of {', '.join(samples.SAMPLES)}.")
        try:
            data = loader()
        except samples.SampleUnavailable as exc:
            raise CLIError(str(exc)) from None
        image = data[0] if isinstance(data, tuple) else data
        jobs.append((f"sample_{args.sample}", lambda: image, "image", f"sample {args.sample}"))
    used = {name for name, *_ in jobs}
    for path in _expand_inputs(args.inputs, (*TABLE_SUFFIXES, *IMAGE_SUFFIXES), "per-cell tables or images"):
        name, k = path.stem, 1
        while name in used:  # same file name in two folders: keep both outputs
            k += 1
            name = f"{path.stem}_{k}"
        used.add(name)
        if path.suffix.lower() in TABLE_SUFFIXES:
            jobs.append((name, lambda path=path: read_table(path), f"table{path.suffix.lower()}", path.name))
        else:
            jobs.append((name, lambda path=path: read_image(path), "image", path.name))
    return jobs


def _classify_apply(args: argparse.Namespace) -> int:
    import pandas as pd

    from .core.batch import failure_text
    from .core.channels import ChannelMismatch
    from .core.classify.session import PhenotypingSession
    from .core.pipeline import MeasureParams, iter_segment_and_measure
    from .core.progress import run
    from .io.atomic import atomic_write_text
    from .io.classifier_io import load_classifier
    from .io.export import write_labels_tiff
    from .io.images import to_grayscale
    from .io.tables import write_table

    try:
        clf = load_classifier(args.classifier)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    jobs = _classify_inputs(args)
    if not jobs:
        raise CLIError("Give per-cell tables (.csv, .parquet), images or folders of them, or --sample NAME.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    channel_map = _parse_channel_map(args.channel_map or ())
    groups = _feature_groups(args.features)
    try:
        measure = MeasureParams(**({"groups": groups} if groups else {}), feature_set=args.feature_set)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if any(kind == "image" for _, _, kind, _ in jobs):
        _apply_model_arg(args)
        _segment_params(args.segmenter, args)  # unknown segmenter or parameter: fail before any work
    # one session per set of columns: the classifier's channels pair with each set once
    sessions: dict[tuple[str, ...], PhenotypingSession] = {}
    placed: list[tuple[str, str, str, tuple[str, ...]]] = []  # (name, shown, suffix, session key)
    failures: dict[str, str] = {}
    originals: dict[str, pd.DataFrame] = {}  # tables whose rows the session numbered
    for name, load, kind, shown in jobs:
        try:
            if kind == "image":
                image = to_grayscale(load(), args.channel)
                params = _segment_params(args.segmenter, args, image)
                seg = run(iter_segment_and_measure(image, args.segmenter, params, measure=measure))
                table, labels, suffix = seg.features, seg.labels, ".csv"
                write_labels_tiff(labels, out / f"{name}_labels.tif")
            else:
                labels, suffix = None, kind[len("table") :]
                table = load()
                table = table.drop(columns=[c for c in table.columns if str(c).startswith("pheno_")])
                table = table.reset_index(drop=True)
                if "label" not in table.columns or not table["label"].is_unique:
                    # a table of many images (or none with ids): the session keys cells by row
                    originals[name] = table
                    table = _with_row_labels(table)
            columns = tuple(str(c) for c in table.columns)
            session = sessions.get(columns)
            if session is None:
                session = PhenotypingSession(None)
                session.set_image(name, table, labels, name=name)
                try:
                    session.load_classifier(args.classifier, channel_map or None)
                except ChannelMismatch as exc:
                    raise ValueError(
                        f"the classifier uses channels {', '.join(map(repr, exc.needed))} and the cells have "
                        f"{', '.join(map(repr, exc.available)) or 'none'}; pair them with "
                        "--channel-map CLASSIFIER_CHANNEL=TABLE_CHANNEL"
                    ) from None
                sessions[columns] = session
            else:
                session.set_image(name, table, labels, name=name)
            placed.append((name, shown, suffix, columns))
        except CLIError:
            raise
        except Exception as exc:  # one bad input must not stop the run
            text = str(exc) if isinstance(exc, OSError | ValueError | KeyError) else failure_text(exc)
            failures[shown] = text.removeprefix(f"{name}: ")
            print(f"FAILED {shown}: {failures[shown]}", file=sys.stderr)
    for session in sessions.values():  # one model per set of columns, every cell predicted
        session.apply_result(run(session.iter_train(full=True)))
    summary, n_cells = [], 0
    for name, shown, suffix, columns in placed:
        session = sessions[columns]
        table = originals.get(name, session.images[name].table)
        pred = session.pheno_frame(name)
        pred = pred.drop(columns=[c for c in pred.columns if c.endswith("annotation")])
        result = pd.concat([table.reset_index(drop=True), pred.reset_index(drop=True)], axis=1)
        target = out / f"{name}_classified{suffix}"
        write_table(result, target)
        row: dict[str, Any] = {"table": shown, "n_cells": len(result)}
        if clf.is_regression:
            row["mean_value"] = float(result["pheno_value"].mean()) if len(result) else float("nan")
        else:
            counts = result["pheno_class"].astype(str).value_counts()
            for c in clf.classes:
                row[f"n_{c}"] = int(counts.get(c, 0))
                row[f"fraction_{c}"] = float(counts.get(c, 0) / len(result)) if len(result) else float("nan")
        summary.append(row)
        n_cells += len(result)
        if not args.quiet:
            print(f"{shown}: {len(result)} cells -> {target.name}")
    if summary:
        write_table(pd.DataFrame(summary), out / "class_summary.csv")
    atomic_write_text(
        out / "classify.json",
        json.dumps(
            {
                "classifier": str(Path(args.classifier).resolve()),
                "task": clf.task,
                "classes": clf.classes,
                "channel_map": channel_map,
                "inputs": [shown for *_, shown in jobs],
                "failures": failures,
            },
            indent=2,
        ),
    )
    print(f"RESULT n_tables={len(jobs)} n_failed={len(failures)} n_cells={n_cells}")
    return 1 if failures and not summary else 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from .core.batch import BatchOptions, BatchRequest, iter_run_batch
    from .core.pipeline_spec import PipelineError
    from .core.progress import run
    from .io.pipeline_file import load_pipeline
    from .io.tables import require_format

    if args.workers is not None and args.workers < 1:
        raise CLIError("--workers must be at least 1 (leave it out to run in this process).")
    if args.workers is not None and args.scheduler:
        raise CLIError("Give --workers (a local cluster) or --scheduler (a running one), not both.")
    try:
        require_format(args.format)
        pipeline = load_pipeline(args.pipeline)
        request = BatchRequest(
            inputs=tuple(args.inputs),
            pipeline=pipeline,
            options=BatchOptions(
                out_dir=args.out, format=args.format, labels=args.labels, force=args.force, h5ad=args.h5ad
            ),
            layout_regex=args.layout,
            layout_table=args.layout_csv,
            workers=args.workers or 0,
            scheduler=args.scheduler,
            pipeline_file=str(Path(args.pipeline).resolve()),
            command=tuple(sys.argv),
        )
    except (PipelineError, FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    bar = _BatchBar(args.quiet)
    try:
        result = run(iter_run_batch(request), bar.update)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        bar.close()
    for name, err in result.failures.items():  # the whole message is in manifest.json
        print(f"FAILED {name}: {(err.splitlines() or [''])[0]}", file=sys.stderr)
    for note in result.notes:
        print(f"Note: {note}", file=sys.stderr)
    c = result.counts
    print(
        f"{c['processed']} image(s) processed, {c['skipped']} kept from an earlier run, {c['failed']} failed; "
        f"{c['cells']} cells. Outputs in {result.out_dir}:"
    )
    for key, path in result.outputs.items():
        print(f"  {key}: {Path(path).name}")
    if result.z_prime is not None and len(result.z_prime):
        zp = result.z_prime.dropna(subset=["z_prime"]).sort_values("z_prime", ascending=False)
        if len(zp):
            best = zp.iloc[0]
            print(f"Best Z': {best['z_prime']:.3f} ({best['readout']})")
    print(result.result_line())
    return 0 if c["processed"] + c["skipped"] > 0 else 1


_MODEL_HELP = (
    "model of a deep-learning segmenter: a built-in name (e.g. 2D_versatile_fluo), a model in the "
    "models folder, or a model folder/file path (see docs/models.md)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="napari-phenotyper", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_segmenter_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--segmenter", default="classical", help="registered segmenter name (default: classical)"
        )
        p.add_argument(
            "--diameter",
            default="auto",
            help="expected object diameter in pixels, or 'auto' (default) to estimate it per image",
        )
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any segmenter parameter, e.g. --param threshold_method=li (repeatable)",
        )
        p.add_argument(
            "--channel",
            type=int,
            default=None,
            help="channel to segment in a multi-channel image (default: luminance / mean)",
        )
        p.add_argument(
            "--dims",
            choices=("auto", "2d-per-plane", "3d"),
            default="auto",
            help="segment a stack plane by plane or as (z, y, x) volumes (classical: mode, Cellpose: do_3D; "
            "StarDist: its model decides); auto: 3d when --spacing is given, else the parameters' own choice",
        )
        p.add_argument(
            "--spacing",
            default=None,
            metavar="Z,Y,X",
            help="voxel size of a 3-D stack, e.g. 2,1,1 for a z step twice the pixel size (implies --dims 3d)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    seg = sub.add_parser(
        "segment",
        help="segment and measure images; write label TIFFs, a per-cell CSV and a per-image summary",
    )
    seg.add_argument(
        "inputs", nargs="*", help="image files, OME-Zarr folders (.zarr), folders of them or glob patterns"
    )
    seg.add_argument(
        "--sample",
        default=None,
        help="run on a built-in sample instead: nuclei (offline, with ground truth), nuclei3d (a 3-D stack "
        "with ground truth, offline; segmented in 3-D) or mitosis (downloaded)",
    )
    seg.add_argument("--out", required=True, help="output folder (created if needed)")
    _add_feature_args(seg)
    seg.add_argument(
        "--no-labels", action="store_true", help="do not write label images (TIFF, or Zarr block-wise)"
    )
    seg.add_argument(
        "--block-size",
        type=int,
        default=None,
        metavar="PX",
        help="segment block by block, in blocks of PX x PX pixels, every image larger than one block "
        "(default: only images over 8192 x 8192 pixels, in blocks of 2048); labels go to "
        "<image>_labels.zarr (OME-Zarr). See docs/large-images.md",
    )
    seg.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="PX",
        help="block-wise: margin segmented around each block; must exceed the largest object "
        "(default: twice the diameter)",
    )
    seg.add_argument("--model", default=None, help=_MODEL_HELP)
    add_segmenter_args(seg)
    seg.set_defaults(func=_cmd_segment)

    ev = sub.add_parser(
        "evaluate", help="segment images and score them against instance masks (AP@0.5, AP@0.5:0.95)"
    )
    ev.add_argument("--images", required=True, help="folder of images")
    ev.add_argument("--masks", required=True, help="folder of label masks, matched to images by file stem")
    ev.add_argument("--model", default=None, help=_MODEL_HELP)
    ev.add_argument(
        "--iou-rule",
        choices=("stardist", "kaggle"),
        default="stardist",
        help="a match is IoU >= t (stardist, default) or IoU > t (the DSB 2018 Kaggle metric)",
    )
    add_segmenter_args(ev)
    ev.set_defaults(func=_cmd_evaluate)

    pl = sub.add_parser(
        "pipeline",
        help="save a pipeline file (segmenter, parameters, features, classifier) for batch runs",
    )
    pl.add_argument("output", help="pipeline file to write (.json, or .yaml)")
    _add_feature_args(pl)
    pl.add_argument(
        "--classifier", default=None, help="saved classifier/regressor file to apply to every cell"
    )
    pl.add_argument(
        "--model", default=None, help="segmentation model name or file (for backends with models)"
    )
    pl.add_argument("--name", default=None, help="a name for people")
    pl.add_argument("--description", default=None, help="a description for people")
    add_segmenter_args(pl)
    pl.set_defaults(func=_cmd_pipeline)

    ba = sub.add_parser(
        "batch",
        help="run a pipeline file over many images: one cell table, per-image/per-well profiles, manifest",
        description="Run a pipeline over files, folders and glob patterns. Reruns skip finished images "
        "(unless --force); unreadable images are reported and skipped. See docs/batch.md.",
    )
    ba.add_argument("pipeline", help="pipeline file (napari-phenotyper pipeline ... or the Batch widget)")
    ba.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    ba.add_argument("--out", required=True, help="output folder (created if needed)")
    ba.add_argument(
        "--layout",
        default=None,
        metavar="REGEX",
        help="find plate/well/site in file names, e.g. '(?P<plate>P\\d+)_(?P<well>[A-P]\\d{2})_s(?P<site>\\d+)'",
    )
    ba.add_argument(
        "--layout-csv",
        default=None,
        metavar="FILE",
        help="CSV with file,plate,well,site and annotations (treatment, concentration, control=negative|positive); "
        "or, with --layout, one row per well",
    )
    ba.add_argument(
        "--format", choices=("parquet", "csv"), default="parquet", help="table format (default parquet)"
    )
    ba.add_argument("--labels", action="store_true", help="also write each image's label TIFF")
    ba.add_argument("--force", action="store_true", help="redo images finished by an earlier run")
    ba.add_argument("--h5ad", action="store_true", help="also write the cells as AnnData (needs anndata)")
    ba.add_argument(
        "--workers", type=int, default=None, metavar="N", help="run on a local Dask cluster of N processes"
    )
    ba.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="run on a Dask scheduler (tcp://host:8786)"
    )
    ba.add_argument("--quiet", action="store_true", help="no progress bar")
    ba.set_defaults(func=_cmd_batch)

    cl = sub.add_parser(
        "classify",
        help="apply a saved classifier to per-cell tables, or train one from a table of annotated cells",
        description="With --classifier: predict every cell of each table (CSV or Parquet, e.g. a segment or "
        "batch cells table) and write <table>_classified.csv with pheno_class, pheno_proba_<class> and "
        "pheno_uncertainty (pheno_value for a regressor), plus class_summary.csv. Images (and --sample) are "
        "segmented and measured first (--segmenter, --features as in segment; <image>_labels.tif is written). "
        "With --train: train a classifier from a table with one class per annotated cell and save it (OUT "
        "is the file). For plates, put the classifier in a pipeline (pipeline --classifier) and run batch.",
    )
    cl.add_argument(
        "inputs",
        nargs="*",
        help="per-cell tables or images (segmented and measured first), folders of them or glob patterns "
        "(with --classifier)",
    )
    cl.add_argument("--sample", default=None, help="with --classifier: classify a built-in sample (nuclei)")
    cl.add_argument(
        "--classifier", default=None, help="classifier or regressor file (*.phenotyper.zip) to apply"
    )
    cl.add_argument(
        "--train", default=None, metavar="ANNOTATIONS", help="table of annotated cells to train on"
    )
    cl.add_argument("--out", required=True, help="output folder (apply) or classifier file to write (train)")
    cl.add_argument(
        "--channel-map",
        action="append",
        default=None,
        metavar="OLD=NEW",
        help="pair a classifier channel with a table channel (e.g. gfp=ch1) when their names differ; "
        "repeat for each channel",
    )
    cl.add_argument(
        "--class-column", default="class", help="with --train: the column of classes (default: class)"
    )
    cl.add_argument(
        "--kind",
        default="self_trained",  # LoopSettings().classifier (tests/test_cli.py checks they agree)
        help="with --train: self_trained (default: a logistic regression that also learns from the "
        "table's rows without a class), random_forest, gradient_boosting, logistic_regression, svm or knn",
    )
    cl.add_argument(
        "--groups", default=None, help="with --train: feature groups to use (default: every numeric column)"
    )
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument("--model", default=None, help="for images: " + _MODEL_HELP)
    _add_feature_args(cl)
    add_segmenter_args(cl)
    cl.set_defaults(func=_cmd_classify)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a Cellpose or StarDist model on images with corrected masks",
        description="Train a new version of a model on image/mask pairs (paired by file name), with the "
        "same code as the Fine-tune dock. The model is saved in the models folder under a new name "
        "(NAME, NAME-v2, ...) and is then usable as --model NAME. See docs/fine-tuning.md.",
    )
    ft.add_argument("--backend", choices=("stardist", "cellpose"), required=True)
    ft.add_argument(
        "--base", required=True, help="model to start from (name or path; 'none' trains from scratch)"
    )
    ft.add_argument("--images", required=True, help="folder of training images")
    ft.add_argument("--masks", required=True, help="folder of their label masks (matched by file name)")
    ft.add_argument("--val-images", default=None, help="folder of validation images (scored every epoch)")
    ft.add_argument("--val-masks", default=None, help="folder of validation masks")
    ft.add_argument("--name", default=None, help="name of the new model (default <base>-ft)")
    ft.add_argument("--epochs", type=int, default=None, help="default: StarDist 20, Cellpose 100")
    ft.add_argument(
        "--learning-rate", type=float, default=None, help="default: the backend's fine-tuning rate"
    )
    ft.add_argument(
        "--steps-per-epoch", type=int, default=None, help="StarDist: batches per epoch (default 25)"
    )
    ft.add_argument("--patch-size", type=int, default=None, help="training patch side, a multiple of 16")
    ft.add_argument("--batch-size", type=int, default=None, help="patches per step")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--device", default="auto", help="Cellpose: auto, cpu, cuda or mps")
    ft.add_argument("--out", default=None, help="models folder of the backend (default: the models folder)")
    ft.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    ft.set_defaults(func=_cmd_finetune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-phenotyper`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (CLIError, KeyError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"napari-phenotyper: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
