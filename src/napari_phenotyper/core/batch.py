"""Batch runs: one pipeline over many images, results streamed to disk, resumable.

:func:`iter_run_batch` is the whole run, as a progress generator (the command line and
the "Batch" widget both drive it):

1. the inputs (files, folders, glob patterns) are expanded and given unique names;
   a plate layout, if any, gives each image its plate, well, site and well annotations;
2. each image is read, segmented, measured and classified by :func:`process_image`
   (in this process, or one task per image on Dask workers), which writes the image's
   cells to a part file ``parts/<image>.cells.parquet`` (or ``.csv``), optionally its
   labels, and last a small record ``parts/<image>.json``; an image whose record says
   it was done with the same pipeline on the same file is skipped on a rerun;
3. the parts are streamed, one at a time, into one per-cell table, while per-image and
   per-well profiles are computed (a well's cells at a time); z-scores against the
   negative controls and Z'-factors follow when control wells are marked;
4. a manifest records the inputs with their hashes, the pipeline, package versions,
   timings and failures.

An image that cannot be read or processed is recorded as failed and skipped; it never
stops the run. Everything is written atomically.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
import socket
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .channels import ChannelMismatch
from .features import FEATURE_GROUPS, feature_columns
from .layout import KEY_COLUMNS, make_layout, natural_key
from .pipeline import DEFAULT_CHANNEL, estimate_params_diameter, iter_segment_and_measure, package_versions
from .pipeline_spec import FileRef, ModelRef, PipelineSpec
from .profiles import (
    profile_row,
    readout_columns,
    z_prime,
    zscore_to_controls,
)
from .progress import Progress

__all__ = [
    "MANIFEST_NAME",
    "BatchContext",
    "BatchExecutor",
    "BatchOptions",
    "BatchProgress",
    "BatchRequest",
    "BatchResult",
    "ImageJob",
    "expand_inputs",
    "iter_batch",
    "iter_process_image",
    "iter_run_batch",
    "plan_jobs",
    "process_image",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "napari-phenotyper-batch-manifest"
RECORD_FORMAT = "napari-phenotyper-batch-part"
PARTS = "parts"
LABELS = "labels"
#: Output tables (name -> file stem) in the run folder.
OUTPUTS = {
    "cells": "cells",
    "image_profiles": "image_profiles",
    "well_profiles": "well_profiles",
    "well_zscores": "well_zscores",
    "z_prime": "z_prime",
}
_VERSIONS = (
    "napari-phenotyper",
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "tifffile",
    "dask",
    "distributed",
)
_RESERVED = ("image", "label")


# ---------------------------------------------------------------- requests and jobs
@dataclass(frozen=True)
class BatchOptions:
    """Where and how a batch run writes.

    Parameters
    ----------
    out_dir : str
        Output folder (created if needed).
    format : {"parquet", "csv"}
        Format of the tables (Parquet needs pyarrow).
    labels : bool
        Also write each image's labels as ``labels/<image>_labels.tif``.
    force : bool
        Redo images that a previous run finished.
    h5ad : bool
        Also write the cells as AnnData (``cells.h5ad``; needs anndata, skipped with a
        note otherwise).
    """

    out_dir: str
    format: str = "parquet"
    labels: bool = False
    force: bool = False
    h5ad: bool = False

    def __post_init__(self) -> None:
        if self.format not in ("parquet", "csv"):
            raise ValueError(f"Unknown table format {self.format!r}; choose parquet or csv.")


@dataclass(frozen=True)
class ImageJob:
    """One image of a run: its position, unique output name, path and layout values."""

    index: int
    name: str
    path: str
    layout: tuple[tuple[str, Any], ...] = ()

    @property
    def layout_dict(self) -> dict[str, Any]:
        """The layout values (plate, well, site, annotations) as a dict."""
        return dict(self.layout)


@dataclass(frozen=True)
class BatchRequest:
    """Everything :func:`iter_run_batch` needs; what the command line and the widget fill in.

    Parameters
    ----------
    inputs : tuple of str
        Image files, folders (their images, sorted) and glob patterns.
    pipeline : PipelineSpec
        What to do to each image (classifier and model paths absolute).
    options : BatchOptions
        Where and how to write.
    layout_regex : str, optional
        Named groups ``plate``, ``well``, ``site`` found in each file name.
    layout_table : str, optional
        Path of a layout CSV (per file, or per well together with ``layout_regex``).
    workers : int
        0: in this process; N >= 1: a local Dask cluster of N worker processes.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); overrides ``workers``.
    pipeline_file : str, optional
        Where the pipeline came from (recorded in the manifest).
    command : tuple of str
        The command line (recorded in the manifest).
    """

    inputs: tuple[str, ...]
    pipeline: PipelineSpec
    options: BatchOptions
    layout_regex: str | None = None
    layout_table: str | None = None
    workers: int = 0
    scheduler: str | None = None
    pipeline_file: str | None = None
    command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if int(self.workers) < 0:
            raise ValueError("workers must be 0 (in this process) or a positive number of processes.")


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, OME-Zarr stores, folders (their images, sorted) and glob patterns -> image paths, in order.

    An OME-Zarr store (a ``.zarr`` folder, or any folder with Zarr metadata) is one image,
    not a folder of images.

    Raises
    ------
    ValueError
        For a folder without images or a name that matches nothing (named).
    """
    from ..io.images import IMAGE_SUFFIXES
    from ..io.ome_zarr import is_zarr_path

    def is_image(q: Path) -> bool:
        if q.name.startswith("."):
            return False
        return (q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES) or (q.is_dir() and is_zarr_path(q))

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and is_zarr_path(p):
            paths.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if is_image(q))
            if not found:
                raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}, .zarr) in folder {p}.")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            matches = sorted(
                Path(m)
                for m in glob.glob(str(item), recursive=True)
                if Path(m).is_file() or (Path(m).is_dir() and is_zarr_path(m))
            )
            if not matches:
                raise ValueError(f"No such file, folder or pattern: {item}")
            paths.extend(matches)
    if not paths:
        raise ValueError("No input images: give image files, OME-Zarr stores, folders or glob patterns.")
    return paths


def _image_stem(path: Path) -> str:
    """A file's stem; an OME-Zarr store's name without ``.ome.zarr`` / ``.zarr``."""
    low = path.name.lower()
    for suffix in (".ome.zarr", ".zarr"):
        if low.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def plan_jobs(paths: Sequence[str | os.PathLike], layout: pd.DataFrame | None = None) -> list[ImageJob]:
    """One job per path, named by its file stem (``_2``, ``_3``... for repeated stems).

    Parameters
    ----------
    paths : sequence of path-like
        Image files, in run order.
    layout : pandas.DataFrame, optional
        One row per path (see :func:`napari_phenotyper.core.layout.make_layout`).
    """
    if layout is not None and len(layout) != len(paths):
        raise ValueError(f"The layout has {len(layout)} rows for {len(paths)} images.")
    used: set[str] = set()
    jobs = []
    for i, path in enumerate(paths):
        stem = _image_stem(Path(path))
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        values: tuple[tuple[str, Any], ...] = ()
        if layout is not None:
            row = layout.iloc[i]
            values = tuple((str(c), _json_value(row[c])) for c in layout.columns)
        jobs.append(ImageJob(i, name, str(Path(path).absolute()), values))
    return jobs


def _json_value(value: Any) -> Any:
    """A plain Python value for JSON (numpy scalars unwrapped, missing as None)."""
    if value is None:
        return None
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


# ------------------------------------------------------------- the per-image task
@dataclass(frozen=True)
class BatchContext:
    """What every image task needs (sent once to each Dask worker).

    Attributes
    ----------
    pipeline : PipelineSpec
    pipeline_sha256 : str
    out_dir : str
    part_format : str
        ``parquet`` (pyarrow installed) or ``csv``: the format of the part files.
    labels : bool
        Write label images.
    model : object, optional
        The trained classifier or regressor (rebuilt from the pipeline's classifier file).
    classes : tuple of str
        The classifier's classes (empty for a regressor or without classifier).
    """

    pipeline: PipelineSpec
    pipeline_sha256: str
    out_dir: str
    part_format: str = "parquet"
    labels: bool = False
    model: Any = None
    classes: tuple[str, ...] = ()


def failure_text(exc: BaseException) -> str:
    """How a failed image is reported: the message alone when it is written for users
    (an unreadable file says so), else the exception's type and message."""
    from ..io.images import ImageReadError

    return str(exc) if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}"


def part_paths(out_dir: str | os.PathLike, name: str, part_format: str) -> tuple[Path, Path]:
    """Where an image's cells and its record go: ``parts/<name>.cells.<fmt>``, ``parts/<name>.json``."""
    parts = Path(out_dir) / PARTS
    suffix = ".parquet" if part_format == "parquet" else ".csv"
    return parts / f"{name}.cells{suffix}", parts / f"{name}.json"


def _labels_path(out_dir: str | os.PathLike, name: str, zarr: bool = False) -> Path:
    """``labels/<name>_labels.tif``, or ``.zarr`` (OME-Zarr) for an image segmented block-wise."""
    return Path(out_dir) / LABELS / f"{name}_labels.{'zarr' if zarr else 'tif'}"


def _input_stat(path: Path) -> tuple[int, int]:
    """Size and modification time of an input; for a Zarr store (a folder), its files'
    total size and latest modification (a folder's own times miss a rewritten chunk)."""
    if not path.is_dir():
        stat = path.stat()
        return int(stat.st_size), int(stat.st_mtime_ns)
    size = mtime = 0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def _read_input(path: Path, channel: int | None) -> tuple[np.ndarray | None, tuple[Any, int | None] | None]:
    """``(image, None)`` in memory, or ``(None, (plane, channel_axis))``: a lazy plane of an
    OME-Zarr store larger than :data:`~.blockwise.BLOCKWISE_ABOVE` pixels, to go block-wise."""
    from ..io.images import read_image, to_grayscale
    from ..io.ome_zarr import is_zarr_path, open_ome_zarr
    from . import blockwise
    from .pipeline import select_channel

    if not (path.is_dir() and is_zarr_path(path)):
        return to_grayscale(read_image(path), channel), None
    plane, channel_axis = open_ome_zarr(path).plane(channel)
    dims = [int(n) for a, n in enumerate(plane.shape) if a != channel_axis]
    if len(dims) == 2 and dims[0] * dims[1] > blockwise.BLOCKWISE_ABOVE:
        return None, (plane, channel_axis)
    return select_channel(np.asarray(plane), channel_axis, None), None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_record(path: Path, record: dict[str, Any]) -> None:
    from ..io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=1, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _classify(model: Any, features: pd.DataFrame) -> pd.DataFrame:
    if model is None:
        return features
    from .classify.model import TrainedClassifier, predict

    if isinstance(model, TrainedClassifier):
        pred = predict(model, features)
    else:
        from .classify.regression import predict_values

        pred = predict_values(model, features)
    return pd.concat([features, pred], axis=1)


def _cell_table(job: ImageJob, features: pd.DataFrame) -> pd.DataFrame:
    """The image's rows as written: layout keys, image, label, annotations, phenotype, features."""
    from ..io.export import table_for_export

    table = table_for_export(features, job.name)
    layout = job.layout_dict
    clash = [c for c in layout if c in table.columns]
    if clash:
        raise ValueError(
            f"Layout column(s) {', '.join(clash)} clash with measured columns; rename them in the layout."
        )
    keys = [c for c in KEY_COLUMNS if c in layout]
    notes = [c for c in layout if c not in KEY_COLUMNS]
    n = len(table)
    front = pd.DataFrame({c: [layout[c]] * n for c in keys}, index=table.index)
    front["image"] = table["image"]
    front["label"] = table["label"]
    for c in notes:
        front[c] = [layout[c]] * n
    rest = table.drop(columns=["image", "label"])
    return pd.concat([front, rest], axis=1)


def iter_process_image(job: ImageJob, ctx: BatchContext) -> Generator[Progress, None, dict[str, Any]]:
    """Read, segment, measure and classify one image; write its part files.

    Never raises for a bad image: the returned record says ``"status": "failed"`` with
    the error, and is written too (so the manifest lists it; a rerun retries it).

    Returns
    -------
    dict
        The image's record (see the manifest description in ``docs/batch.md``).
    """
    from ..io.export import write_labels_tiff
    from ..io.pipeline_file import file_sha256
    from ..io.tables import write_table
    from .classify.model import feature_columns_for

    t0, cpu0 = time.perf_counter(), time.process_time()
    table_path, record_path = part_paths(ctx.out_dir, job.name, ctx.part_format)
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "name": job.name,
        "path": job.path,
        "layout": job.layout_dict,
        "pipeline_sha256": ctx.pipeline_sha256,
        "status": "failed",
        "error": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    seconds: dict[str, float] = {}
    try:
        path = Path(job.path)
        size, mtime_ns = _input_stat(path)
        record.update(size=size, mtime_ns=mtime_ns, sha256=file_sha256(path))
        yield Progress(0, 100, "Reading")
        t = time.perf_counter()
        image, large = _read_input(path, ctx.pipeline.channel)
        seconds["read"] = round(time.perf_counter() - t, 4)
        params = ctx.pipeline.segmenter_params()
        labels_file = _labels_path(ctx.out_dir, job.name, zarr=large is not None)
        if large is not None:  # larger than memory: block by block, one block read at a time
            result = yield from _blockwise(large, ctx, params, labels_file, job.name)
            shape = [int(n) for a, n in enumerate(large[0].shape) if a != large[1]]
        else:
            assert image is not None
            if ctx.pipeline.auto_diameter:
                params = estimate_params_diameter(ctx.pipeline.segmenter, params, image)
            result = yield from _scaled(
                iter_segment_and_measure(
                    image, ctx.pipeline.segmenter, params, measure=ctx.pipeline.measure_params()
                ),
                5,
                90,
            )
            shape = list(np.shape(image))
        prov = result.provenance
        seconds["segment"] = float(prov.get("segment_seconds", 0.0))
        seconds["measure"] = float(prov.get("measure_seconds", 0.0))
        yield Progress(90, 100, "Classifying" if ctx.model is not None else "Writing")
        t = time.perf_counter()
        features = _classify(ctx.model, result.features)
        seconds["classify"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        table = _cell_table(job, features)
        write_table(table, table_path)
        if ctx.labels and large is None:  # block-wise labels are already written, as OME-Zarr
            write_labels_tiff(result.labels, labels_file)
        seconds["write"] = round(time.perf_counter() - t, 4)
        record.update(
            status="done",
            n_cells=len(table),
            part=table_path.relative_to(ctx.out_dir).as_posix(),
            labels=labels_file.relative_to(ctx.out_dir).as_posix() if ctx.labels else None,
            features=feature_columns_for(result.features),
            classes=[str(c) for c in ctx.classes],
            params=prov.get("params"),
            device=prov.get("device"),
            shape=shape,
            blockwise=prov.get("blockwise"),
        )
    except Exception as exc:  # one bad image must never stop the run: recorded, reported, skipped
        record.update(status="failed", error=failure_text(exc))
        for stale in (table_path,):
            if stale.exists():
                stale.unlink()
    seconds["total"] = round(time.perf_counter() - t0, 4)
    seconds["cpu"] = round(time.process_time() - cpu0, 4)  # below "total": the process waited for a core
    record["seconds"] = seconds
    record["finished"] = _now()
    _write_record(record_path, record)
    yield Progress(100, 100, f"{record.get('n_cells', 0)} cells" if record["status"] == "done" else "failed")
    return record


def _blockwise(
    large: tuple[Any, int | None], ctx: BatchContext, params: Any, labels_file: Path, name: str
) -> Generator[Progress, None, Any]:
    """Segment and measure a lazy plane block by block (:func:`~.blockwise.iter_segment_blockwise`).

    Its labels go to ``labels_file`` (OME-Zarr) when the batch keeps labels, else to a
    scratch store in the output folder that is removed afterwards: memory stays bounded
    by the block size either way. The table comes back in memory (a slide's few hundred
    thousand rows), to be classified and written as any image's.
    """
    import shutil
    import tempfile

    from . import blockwise

    plane, channel_axis = large
    if ctx.pipeline.auto_diameter:
        params = estimate_params_diameter(
            ctx.pipeline.segmenter, params, blockwise.centre_region(plane, channel_axis)
        )
    scratch = None
    if ctx.labels:
        labels_file.parent.mkdir(parents=True, exist_ok=True)
        target = labels_file
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ctx.out_dir))
        target = scratch / labels_file.name
    try:
        return (
            yield from _scaled(
                blockwise.iter_segment_blockwise(
                    plane,
                    ctx.pipeline.segmenter,
                    params,
                    block_size=blockwise.DEFAULT_BLOCK_SIZE,
                    channel_axis=channel_axis,
                    labels_out=target,
                    measure=ctx.pipeline.measure_params(),
                    image_name=name,
                    pyramid=ctx.labels,
                ),
                5,
                90,
            )
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _scaled(gen: Generator[Progress, None, Any], start: int, stop: int) -> Generator[Progress, None, Any]:
    """Re-yield ``gen``'s progress mapped onto ``[start, stop]`` of 100."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop_it:
            return stop_it.value
        yield Progress(int(start + (stop - start) * p.fraction), 100, p.message)


def process_image(job: ImageJob, ctx: BatchContext) -> dict[str, Any]:
    """:func:`iter_process_image` run to the end (the task a Dask worker runs)."""
    from .progress import run

    return run(iter_process_image(job, ctx))


def reusable_record(job: ImageJob, ctx: BatchContext) -> dict[str, Any] | None:
    """The record of a previous run that can stand for this job, or ``None``.

    It can when it says "done" with the same pipeline and layout, its part file (and
    labels, when asked for) exist, and the input is unchanged: the same size and
    modification time, or else the same SHA-256.
    """
    from ..io.pipeline_file import file_sha256

    table_path, record_path = part_paths(ctx.out_dir, job.name, ctx.part_format)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "done":
        return None
    if record.get("pipeline_sha256") != ctx.pipeline_sha256 or record.get("path") != job.path:
        return None
    if record.get("layout") != json.loads(json.dumps(job.layout_dict, default=_json_default)):
        return None
    labels = record.get("labels")
    if not table_path.is_file() or (ctx.labels and not (labels and (Path(ctx.out_dir) / labels).exists())):
        return None
    try:
        size, mtime_ns = _input_stat(Path(job.path))
    except OSError:
        return None
    if size == record.get("size") and mtime_ns == record.get("mtime_ns"):
        return record
    if size == record.get("size") and file_sha256(job.path) == record.get("sha256"):
        return record
    return None


# -------------------------------------------------------------- progress and result
@dataclass(frozen=True)
class BatchProgress(Progress):
    """A :class:`~napari_phenotyper.core.progress.Progress` with the run's counts and speed.

    Attributes
    ----------
    n_images, done, skipped, failed : int
        Images in the run; processed so far in this run; kept from a previous run;
        failed so far.
    images_per_s : float
        Images processed per second in this run so far (0 before the first).
    eta_s : float or None
        Estimated seconds left (``None`` until an image is done).
    """

    n_images: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    images_per_s: float = 0.0
    eta_s: float | None = None

    def summary(self) -> str:
        """``12/100 images · 1.4 images/s · ETA 1:02`` (and skipped/failed counts)."""
        finished = self.done + self.skipped + self.failed
        text = f"{finished}/{self.n_images} images"
        if self.images_per_s > 0:
            text += f" · {self.images_per_s:.2f} images/s"
        if self.eta_s is not None:
            text += f" · ETA {_clock(self.eta_s)}"
        extras = [
            f"{self.skipped} kept" if self.skipped else "",
            f"{self.failed} failed" if self.failed else "",
        ]
        extras = [e for e in extras if e]
        return text + (f" ({', '.join(extras)})" if extras else "")


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class BatchResult:
    """What a finished batch run produced.

    Attributes
    ----------
    out_dir : pathlib.Path
    outputs : dict of str to pathlib.Path
        ``cells``, ``image_profiles``, ``well_profiles``, ``well_zscores``, ``z_prime``,
        ``h5ad``, ``manifest``, ``pipeline`` (those written).
    image_profiles : pandas.DataFrame
        One row per finished image.
    well_profiles, z_prime : pandas.DataFrame or None
        With a plate layout (wells), and with control wells.
    manifest : dict
        As written to ``manifest.json``.
    failures : dict of str to str
        Image name -> error.
    notes : list of str
        Things the user should know (e.g. an export skipped for a missing package).
    """

    out_dir: Path
    outputs: dict[str, Path]
    image_profiles: pd.DataFrame
    well_profiles: pd.DataFrame | None
    z_prime: pd.DataFrame | None
    manifest: dict[str, Any]
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """``images``, ``processed``, ``skipped``, ``failed`` and ``cells``."""
        return dict(self.manifest["counts"])

    def result_line(self) -> str:
        """``RESULT n_images=... n_processed=... n_skipped=... n_failed=... n_cells=... seconds=... images_per_s=...``."""
        c, t = self.manifest["counts"], self.manifest["timings"]
        return (
            f"RESULT n_images={c['images']} n_processed={c['processed']} n_skipped={c['skipped']} "
            f"n_failed={c['failed']} n_cells={c['cells']} seconds={t['total_seconds']:.2f} "
            f"images_per_s={t['images_per_s']:.3f}"
        )


class BatchExecutor(Protocol):
    """Runs image tasks elsewhere (e.g. :class:`~napari_phenotyper.core.dask_runner.DaskExecutor`).

    ``run`` submits ``fn(job, ctx)`` for every job and yields ``(job, record)`` as each
    finishes (``record`` is the task's return value, or the exception when the task
    could not run at all, e.g. its worker died), and ``None`` now and then while waiting,
    so that the caller can report progress and be cancelled. Closing the iterator early
    cancels the tasks not yet finished.
    """

    @property
    def description(self) -> dict[str, Any]:
        """How the tasks run (recorded in the manifest)."""
        ...

    def run(
        self,
        fn: Callable[[ImageJob, BatchContext], dict[str, Any]],
        jobs: Sequence[ImageJob],
        ctx: BatchContext,
    ) -> Iterator[tuple[ImageJob, Any] | None]:
        """Run the tasks, yielding results as they come (see the class docstring)."""
        ...


# ------------------------------------------------------------------------ the run
def _load_model(pipeline: PipelineSpec) -> tuple[Any, tuple[str, ...], dict[str, Any] | None]:
    """The pipeline's classifier rebuilt from its file (digest checked), its classes, its description."""
    if pipeline.classifier is None:
        return None, (), None
    from ..io.classifier_io import load_classifier
    from ..io.pipeline_file import file_sha256

    path = Path(pipeline.classifier.path)
    if not path.is_file():
        raise FileNotFoundError(f"Classifier file {path} not found; fix the pipeline's classifier path.")
    digest = file_sha256(path)
    if pipeline.classifier.sha256 is not None and digest != pipeline.classifier.sha256:
        raise ValueError(
            f"Classifier file {path} has changed since the pipeline was saved (SHA-256 differs); "
            "save the pipeline again with this classifier, or restore the file."
        )
    clf_file = load_classifier(path)
    if pipeline.feature_set == "cellprofiler":
        from .cellprofiler import cellprofiler_columns

        measured = cellprofiler_columns([DEFAULT_CHANNEL])
    else:
        measured = feature_columns([DEFAULT_CHANNEL], FEATURE_GROUPS)
    try:  # a batch measures the segmented channel, named "image": a one-channel classifier pairs with it
        clf_file = clf_file.for_columns(measured)
    except ChannelMismatch as exc:
        raise ValueError(
            f"Classifier {path.name} uses channels {', '.join(map(repr, exc.needed))}, but a batch run "
            f"measures one channel, the segmented image ({DEFAULT_CHANNEL!r}); train the classifier on "
            "cells measured in the segmented image only to use it here."
        ) from None
    model = clf_file.train()
    info = {
        "path": str(path),
        "sha256": digest,
        "task": clf_file.task,
        "classes": list(clf_file.classes),
        "n_features": len(clf_file.feature_names),
        "channel_map": clf_file.metadata.get("channel_map", {}),
        "settings": clf_file.settings,
    }
    return model, tuple(str(c) for c in clf_file.classes), info


def _with_model_digest(pipeline: PipelineSpec) -> PipelineSpec:
    """The pipeline with its model file's SHA-256 filled in (checked if recorded)."""
    model = pipeline.model
    if model is None or model.path is None:
        return pipeline
    from ..io.pipeline_file import file_sha256

    path = Path(model.path)
    if not path.exists():
        raise FileNotFoundError(f"Model {path} not found; fix the pipeline's model path.")
    digest = file_sha256(path)
    if model.sha256 is not None and model.sha256 != digest:
        raise ValueError(f"Model file {path} has changed since the pipeline was saved (SHA-256 differs).")
    return dataclasses.replace(pipeline, model=ModelRef(path=str(path), sha256=digest))


class _Clock:
    """Counts and speed of the processing phase, as :class:`BatchProgress` records."""

    def __init__(self, n_images: int, skipped: int, n_pending: int) -> None:
        self.n_images = n_images
        self.skipped = skipped
        self.n_pending = n_pending
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()

    def progress(self, fraction: float = 0.0, message: str = "") -> BatchProgress:
        finished = self.done + self.failed
        elapsed = time.perf_counter() - self.t0
        rate = finished / elapsed if finished and elapsed > 0 else 0.0
        eta = (self.n_pending - finished) / rate if rate > 0 else None
        step = int((self.skipped + finished + fraction) * 1000)
        return BatchProgress(
            min(step, self.n_images * 1000),
            (self.n_images + 1) * 1000,
            message,
            n_images=self.n_images,
            done=self.done,
            skipped=self.skipped,
            failed=self.failed,
            images_per_s=rate,
            eta_s=eta,
        )

    def count(self, record: dict[str, Any]) -> None:
        if record.get("status") == "done":
            self.done += 1
        else:
            self.failed += 1


def _failed_record(job: ImageJob, ctx: BatchContext, exc: BaseException) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "name": job.name,
        "path": job.path,
        "layout": job.layout_dict,
        "pipeline_sha256": ctx.pipeline_sha256,
        "status": "failed",
        "error": failure_text(exc),
        "seconds": {},
        "finished": _now(),
    }


def iter_batch(
    jobs: Sequence[ImageJob],
    pipeline: PipelineSpec,
    options: BatchOptions,
    *,
    executor: BatchExecutor | None = None,
    run_info: dict[str, Any] | None = None,
) -> Generator[Progress, None, BatchResult]:
    """Process planned images and write the run's tables and manifest.

    Parameters
    ----------
    jobs : sequence of ImageJob
        From :func:`plan_jobs`.
    pipeline : PipelineSpec
        With absolute classifier/model paths (as :func:`~napari_phenotyper.io.pipeline_file.load_pipeline`
        returns them).
    options : BatchOptions
    executor : BatchExecutor, optional
        Runs the image tasks elsewhere (Dask); by default they run here, one after the
        other, with progress inside each image.
    run_info : dict, optional
        Recorded in the manifest as is (command line, layout source...).

    Yields
    ------
    BatchProgress
        After every image (and within images when run here), with counts, images/s and ETA.

    Returns
    -------
    BatchResult

    Raises
    ------
    ValueError, ImportError, FileNotFoundError
        For a problem that concerns the whole run (no images, Parquet without pyarrow,
        a classifier file that changed...), before any image is processed.
    """
    from .. import __version__
    from ..io.atomic import atomic_write_text
    from ..io.pipeline_file import pipeline_text
    from ..io.tables import parquet_available, require_format

    t_start = time.perf_counter()
    started = _now()
    require_format(options.format)
    if not jobs:
        raise ValueError("No images to process.")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("Two jobs have the same name; plan them with plan_jobs.")
    layout_cols = _unique_cols(c for j in jobs for c, _ in j.layout)
    bad = [c for c in layout_cols if c in _RESERVED or c.startswith("pheno_")]
    if bad:
        raise ValueError(f"Layout column(s) {', '.join(bad)} are reserved; rename them.")
    pipeline.validate()
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTS).mkdir(exist_ok=True)
    if options.labels:
        (out / LABELS).mkdir(exist_ok=True)
    n = len(jobs)
    yield BatchProgress(0, (n + 1) * 1000, "Preparing", n_images=n)
    model, classes, clf_info = _load_model(pipeline)
    if clf_info is not None:  # the digest names the classifier's content in the pipeline's own digest
        pipeline = dataclasses.replace(pipeline, classifier=FileRef(clf_info["path"], clf_info["sha256"]))
    pipeline = _with_model_digest(pipeline)
    ctx = BatchContext(
        pipeline=pipeline,
        pipeline_sha256=pipeline.sha256(),
        out_dir=str(out.resolve()),
        # the parts follow the chosen format (a CSV run writes no Parquet at all)
        part_format="parquet" if options.format == "parquet" and parquet_available() else "csv",
        labels=options.labels,
        model=model,
        classes=classes,
    )
    atomic_write_text(out / "pipeline.json", pipeline_text(pipeline))

    records: dict[str, dict[str, Any]] = {}
    resumed: set[str] = set()
    pending: list[ImageJob] = []
    for job in jobs:
        prior = None if options.force else reusable_record(job, ctx)
        if prior is not None:
            records[job.name] = prior
            resumed.add(job.name)
        else:
            pending.append(job)
    clock = _Clock(n, len(resumed), len(pending))
    yield clock.progress(0, f"{len(resumed)} image(s) already done" if resumed else "Starting")

    execution: dict[str, Any] = (
        {"mode": "in-process", "workers": 1} if executor is None else dict(executor.description)
    )
    manifest_base: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "napari_phenotyper": __version__,
        "started": started,
        "run": dict(run_info or {}),
        "pipeline": pipeline.to_dict(),
        "pipeline_sha256": ctx.pipeline_sha256,
        "classifier": clf_info,
        "options": dataclasses.asdict(options),
        "execution": execution,
        "host": {"name": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": package_versions(_VERSIONS),
    }
    t_proc = time.perf_counter()
    try:
        if executor is None:
            for job in pending:
                gen = iter_process_image(job, ctx)
                try:
                    while True:
                        try:
                            p = next(gen)
                        except StopIteration as stop:
                            record = stop.value
                            break
                        yield clock.progress(p.fraction, f"{job.name}: {p.message}")
                finally:
                    gen.close()
                records[job.name] = record
                clock.count(record)
                yield clock.progress(
                    0,
                    f"{job.name}: {record.get('n_cells', 0)} cells"
                    if record["status"] == "done"
                    else f"{job.name}: failed",
                )
        elif pending:
            tasks = executor.run(process_image, pending, ctx)
            try:
                for item in tasks:
                    if item is None:
                        yield clock.progress(0, "Waiting for workers")
                        continue
                    job, value = item
                    record = value if isinstance(value, dict) else _failed_record(job, ctx, value)
                    records[job.name] = record
                    clock.count(record)
                    yield clock.progress(
                        0,
                        f"{job.name}: {record.get('n_cells', 0)} cells"
                        if record["status"] == "done"
                        else f"{job.name}: failed",
                    )
            finally:
                close = getattr(tasks, "close", None)
                if close is not None:
                    close()
    except GeneratorExit:
        manifest = _manifest(
            manifest_base, jobs, records, resumed, t_start, t_proc, None, {}, [], "cancelled"
        )
        atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2, default=_json_default))
        raise
    t_combine = time.perf_counter()
    yield clock.progress(0, "Writing the tables")
    outputs, image_prof, well_prof, zp, notes = yield from _iter_combine(
        jobs, records, ctx, options, layout_cols, clock
    )
    outputs["pipeline"] = out / "pipeline.json"
    manifest = _manifest(
        manifest_base, jobs, records, resumed, t_start, t_proc, t_combine, outputs, notes, "complete"
    )
    outputs["manifest"] = out / MANIFEST_NAME
    manifest["outputs"]["manifest"] = MANIFEST_NAME
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2, default=_json_default))
    failures = {k: str(v["error"]) for k, v in records.items() if v.get("status") != "done"}
    yield BatchProgress(
        (n + 1) * 1000,
        (n + 1) * 1000,
        "Done",
        n_images=n,
        done=clock.done,
        skipped=clock.skipped,
        failed=clock.failed,
        images_per_s=manifest["timings"]["images_per_s"],
        eta_s=0.0,
    )
    return BatchResult(out, outputs, image_prof, well_prof, zp, manifest, failures, notes)


def _unique_cols(items: Any) -> list[str]:
    return list(dict.fromkeys(str(i) for i in items))


def _manifest(
    base: dict[str, Any],
    jobs: Sequence[ImageJob],
    records: dict[str, dict[str, Any]],
    resumed: set[str],
    t_start: float,
    t_proc: float,
    t_combine: float | None,
    outputs: dict[str, Path],
    notes: list[str],
    status: str,
) -> dict[str, Any]:
    end = time.perf_counter()
    inputs = []
    for job in jobs:
        rec = records.get(job.name)
        entry: dict[str, Any] = {"name": job.name, "path": job.path, **job.layout_dict}
        if rec is None:
            entry["status"] = "not run"
        else:
            entry["status"] = rec.get("status")
            entry["resumed"] = job.name in resumed
            for key in (
                "sha256",
                "size",
                "n_cells",
                "part",
                "labels",
                "device",
                "error",
                "seconds",
                "host",
                "pid",
            ):
                if key in rec:
                    entry[key] = rec[key]
            params = rec.get("params")
            if isinstance(params, dict) and "diameter" in params:
                entry["diameter"] = params["diameter"]
        inputs.append(entry)
    processed = [r for name, r in records.items() if name not in resumed]
    n_done_now = sum(1 for r in processed if r.get("status") == "done")
    n_failed = sum(1 for r in records.values() if r.get("status") != "done")
    proc_seconds = (t_combine if t_combine is not None else end) - t_proc
    image_seconds = [float(r.get("seconds", {}).get("total", 0.0)) for r in processed if r.get("seconds")]
    image_cpu = [float(r["seconds"]["cpu"]) for r in processed if "cpu" in r.get("seconds", {})]
    manifest = dict(base)
    manifest.update(
        status=status,
        finished=_now(),
        counts={
            "images": len(jobs),
            "processed": n_done_now,
            "skipped": len(resumed),
            "failed": n_failed,
            "cells": int(
                sum(int(r.get("n_cells", 0)) for r in records.values() if r.get("status") == "done")
            ),
        },
        timings={
            "total_seconds": round(end - t_start, 3),
            "processing_seconds": round(proc_seconds, 3),
            "combine_seconds": round(end - t_combine, 3) if t_combine is not None else None,
            "images_per_s": round(len(processed) / proc_seconds, 4)
            if processed and proc_seconds > 0
            else 0.0,
            "mean_image_seconds": round(float(np.mean(image_seconds)), 4) if image_seconds else None,
            "mean_image_cpu_seconds": round(float(np.mean(image_cpu)), 4) if image_cpu else None,
        },
        inputs=inputs,
        failures={r["name"]: r.get("error") for r in records.values() if r.get("status") != "done"},
        outputs={k: Path(v).name for k, v in outputs.items()},
        notes=list(notes),
    )
    return manifest


def _sort_key(job: ImageJob) -> tuple[Any, ...]:
    layout = job.layout_dict
    return (
        *(natural_key(layout.get(c, "")) for c in KEY_COLUMNS),
        job.index,
    )


def _well_key(job: ImageJob) -> tuple[str, ...]:
    layout = job.layout_dict
    return tuple(str(layout.get(c, "")) for c in ("plate", "well") if c in layout)


def _iter_combine(
    jobs: Sequence[ImageJob],
    records: dict[str, dict[str, Any]],
    ctx: BatchContext,
    options: BatchOptions,
    layout_cols: list[str],
    clock: _Clock,
) -> Generator[
    Progress,
    None,
    tuple[dict[str, Path], pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None, list[str]],
]:
    """Stream the parts into the cells table and compute the profiles (one well at a time)."""
    from ..io.tables import (
        StreamingTableWriter,
        anndata_available,
        column_kinds,
        read_table,
        table_columns,
        table_suffix,
        write_h5ad,
        write_table,
    )

    out = Path(ctx.out_dir)
    suffix = table_suffix(options.format)
    notes: list[str] = []
    outputs: dict[str, Path] = {}
    done = [j for j in jobs if records.get(j.name, {}).get("status") == "done"]
    has_wells = "well" in layout_cols
    if has_wells:
        done = sorted(done, key=_sort_key)
    part_files = [out / records[j.name]["part"] for j in done]
    features = _unique_cols(f for j in done for f in records[j.name].get("features", []))
    classes: list[str] = list(ctx.classes) or _unique_cols(
        c for j in done for c in records[j.name].get("classes", [])
    )
    columns = _unique_cols(c for p in part_files for c in table_columns(p))
    if not columns:
        columns = [*[c for c in KEY_COLUMNS if c in layout_cols], "image", "label"]
    kinds = column_kinds(part_files) if ctx.part_format == "parquet" and part_files else {}
    for c in ("plate", "well", "site", "image"):
        if c in columns:
            kinds[c] = "text"
    notes_cols = [c for c in layout_cols if c not in KEY_COLUMNS]
    key_cols = [c for c in KEY_COLUMNS if c in layout_cols]

    image_rows: list[dict[str, Any]] = []
    well_rows: list[dict[str, Any]] = []
    current: tuple[str, ...] | None = None
    well_frames: list[pd.DataFrame] = []
    well_jobs: list[ImageJob] = []

    def flush_well() -> None:
        if not well_jobs:
            return
        cells = pd.concat(well_frames, ignore_index=True) if well_frames else pd.DataFrame()
        layout = well_jobs[0].layout_dict
        row: dict[str, Any] = {c: layout.get(c) for c in ("plate", "well") if c in layout_cols}
        for c in notes_cols:
            row[c] = layout.get(c)
        row["n_images"] = len(well_jobs)
        row.update(profile_row(cells, features, classes or None))
        well_rows.append(row)
        well_frames.clear()
        well_jobs.clear()

    cells_path = out / f"{OUTPUTS['cells']}{suffix}"
    with StreamingTableWriter(cells_path, columns, kinds) as writer:
        for k, (job, part) in enumerate(zip(done, part_files, strict=True)):
            table = read_table(part)
            writer.write(table)
            layout = job.layout_dict
            row: dict[str, Any] = {c: layout.get(c) for c in key_cols}
            row["image"] = job.name
            for c in notes_cols:
                row[c] = layout.get(c)
            row.update(profile_row(table, features, classes or None))
            image_rows.append(row)
            if has_wells:
                key = _well_key(job)
                if key != current:
                    flush_well()
                    current = key
                well_frames.append(table)
                well_jobs.append(job)
            if k % 8 == 7:
                yield clock.progress(0, f"Writing the tables ({k + 1}/{len(done)} images)")
        flush_well()
    outputs["cells"] = cells_path

    image_prof = _frame(image_rows, [*key_cols, "image", *notes_cols], features, classes)
    outputs["image_profiles"] = write_table(image_prof, out / f"{OUTPUTS['image_profiles']}{suffix}")
    well_prof: pd.DataFrame | None = None
    zp: pd.DataFrame | None = None
    if has_wells:
        well_prof = _frame(
            well_rows,
            [*[c for c in ("plate", "well") if c in layout_cols], *notes_cols, "n_images"],
            features,
            classes,
        )
        outputs["well_profiles"] = write_table(well_prof, out / f"{OUTPUTS['well_profiles']}{suffix}")
        if "control" in layout_cols and len(well_prof):
            controls = set(well_prof["control"].astype(object).fillna(""))
            readouts = readout_columns(well_prof, exclude=notes_cols)
            if "negative" in controls:
                z = zscore_to_controls(well_prof, readouts, by=("plate",))
                outputs["well_zscores"] = write_table(z, out / f"{OUTPUTS['well_zscores']}{suffix}")
            else:
                notes.append("No negative control wells: z-scores were not computed.")
            if {"negative", "positive"} <= controls:
                zp = z_prime(well_prof, readouts, by=("plate",))
                outputs["z_prime"] = write_table(zp, out / f"{OUTPUTS['z_prime']}{suffix}")
                if zp["z_prime"].isna().all():
                    notes.append(
                        "Z'-factors are undefined: they need at least two positive and two negative "
                        "control wells (per plate) with different means."
                    )
            else:
                notes.append("Z'-factors need both positive and negative control wells; none computed.")
    if options.h5ad:
        if anndata_available():
            obs = [c for c in columns if c not in features]
            outputs["h5ad"] = write_h5ad(cells_path, out / "cells.h5ad", features, obs)
        else:
            notes.append("AnnData export skipped: anndata is not installed (pip install anndata).")
    return outputs, image_prof, well_prof, zp, notes


def _frame(
    rows: list[dict[str, Any]], first: list[str], features: list[str], classes: list[str]
) -> pd.DataFrame:
    """Profile rows as a table; without rows, the columns an empty run would have."""
    if rows:
        return pd.DataFrame(rows)
    empty = profile_row(pd.DataFrame(), features, classes or None)
    return pd.DataFrame(columns=[*first, *empty])


def iter_run_batch(request: BatchRequest) -> Generator[Progress, None, BatchResult]:
    """A whole batch run: expand inputs, apply the layout, process, combine, write the manifest.

    Starts (and stops) a local Dask cluster when ``request.workers`` >= 1, or connects to
    ``request.scheduler``. See :func:`iter_batch` for what is yielded and returned.

    Raises
    ------
    ValueError, FileNotFoundError, ImportError
        For bad inputs, a layout that does not fit the images (see
        :class:`~napari_phenotyper.core.layout.LayoutError`), or Dask missing.
    """
    from ..io.pipeline_file import file_sha256
    from ..io.tables import read_layout_csv

    paths = expand_inputs(request.inputs)
    table = read_layout_csv(request.layout_table) if request.layout_table else None
    layout = make_layout([str(p) for p in paths], request.layout_regex, table)
    jobs = plan_jobs(paths, layout)
    run_info: dict[str, Any] = {
        "command": list(request.command),
        "inputs": list(request.inputs),
        "pipeline_file": request.pipeline_file,
        "layout_regex": request.layout_regex,
        "layout_table": None
        if request.layout_table is None
        else {"path": str(Path(request.layout_table).resolve()), "sha256": file_sha256(request.layout_table)},
    }
    executor: Any = None
    if request.scheduler or request.workers >= 1:
        from .dask_runner import DaskExecutor

        executor = DaskExecutor(n_workers=max(1, request.workers), address=request.scheduler)
    try:
        if executor is not None:
            yield BatchProgress(0, (len(jobs) + 1) * 1000, "Starting Dask workers", n_images=len(jobs))
            t0 = time.perf_counter()
            executor.start()
            run_info["executor_start_seconds"] = round(time.perf_counter() - t0, 3)
        return (
            yield from iter_batch(
                jobs, request.pipeline, request.options, executor=executor, run_info=run_info
            )
        )
    finally:
        if executor is not None:
            executor.close()
