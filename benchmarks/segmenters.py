"""Overhead of the plugin's deep-learning path against calling the library directly.

For each backend (Cellpose, StarDist) the same model segments the same images two ways,
side by side:

- **plugin**: a job in an :class:`~napari_phenotyper.core.engine.EngineProcess`, as the
  "Segment & measure" widget runs it (``napari_phenotyper.core.pipeline:iter_segment_auto``),
  timed in this process from sending the job to having the labels back: the transfer of
  the image and of the labels, the adapter (normalising, tiling, label conversion) and the
  provenance are included;
- **direct**: the library's own call in a plain Python process of its own (cellpose's
  ``CellposeModel.eval``, StarDist's ``StarDist2D.predict_instances`` after csbdeep's
  ``normalize``), with the same parameters (Cellpose: the adapter's ``eval`` keywords;
  StarDist: the same percentiles, thresholds and tiles), timed around that call alone.

Both processes start from this one's environment (same thread settings, e.g.
``OMP_NUM_THREADS``; ``--threads N`` sets them for both), load the model once and are warmed up before timing; torch and
TensorFlow never share a process. The two are timed in turns, image by image and repeat
by repeat (the order alternating), so that load from other work on the machine hits both
alike (``--pause S`` waits S seconds before each call, for the other process's thread
pools to go idle; on this machine it changed nothing beyond the noise). Per image the median of ``--repeats`` runs counts; the overhead of a backend is
the sum of its plugin medians over the sum of its direct medians, for the images of at
least 512 x 512 pixels (the StarDist sample, 512 x 512, and the ``coelho2009_nuclei``
images, about 1349 x 1030) and, separately, for 256 x 256 crops. Target: at most 1.05.
Last line::

    RESULT overhead_cellpose=<x> overhead_stardist=<y> overhead_small_cellpose=<a> overhead_small_stardist=<b>
        cpu_overhead_cellpose=<c> cpu_overhead_stardist=<d> paired_overhead_cellpose=<e> paired_overhead_stardist=<f>

(one line). ``cpu_overhead_*`` is the same ratio for CPU time (all threads; for the plugin,
the engine process's and this process's, which pickles the image and unpickles the
labels); ``paired_overhead_*`` the median, over all runs on the large images, of plugin
time / direct time of the two runs made one after the other. On a machine busy with other
work wall times swing by tens of percent from minute to minute; these two show whether
the plugin path does more work, and a drift of the load between repeats hardly moves
the paired ratio. The adapter's own time inside the engine (``segment_seconds`` of the
provenance) is printed too: the plugin's wall time minus it is the transfer (about 3 ms
for a 1349 x 1030 image and its labels). ``--threads 1`` takes the libraries' OpenMP / thread-pool contention
with other processes out of the comparison.

Models: by default the small models the tests train and cache
(``~/.cache/napari-phenotyper-tests``: run ``tests/core/test_cellpose.py`` and
``tests/core/test_stardist.py`` once; ``$NAPARI_PHENOTYPER_TEST_CACHE`` overrides the
folder), or any model folder / weights file (``--cellpose-model``, ``--stardist-model``).

Usage::

    python benchmarks/segmenters.py [--data DIR] [--backends cellpose,stardist] [--repeats 7] [--pause 0]
        [--n-large 2] [--cellpose-model PATH] [--stardist-model PATH] [--diameter 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEGMENT = "napari_phenotyper.core.pipeline:iter_segment_auto"
TARGET = 1.05


# --------------------------------------------------------------------------- direct worker
# Runs in its own process: ``python benchmarks/segmenters.py --worker BACKEND MODEL IMAGES.npz``.
# Reads ``run <key> <json options>`` lines, answers one JSON line each on its protocol pipe.


def _worker(backend: str, model_path: str, images_file: str) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, not into the protocol
    images = dict(np.load(images_file))
    if backend == "cellpose":
        import torch
        from cellpose import models

        path = Path(model_path)
        if path.is_dir():  # a fine-tuned model folder: its weights file
            meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
            path = path / str(meta.get("weights", "weights.pth"))
        model = models.CellposeModel(pretrained_model=str(path), device=torch.device("cpu"))

        def segment(img: np.ndarray, opts: dict[str, Any]) -> np.ndarray:
            normalize = {  # the adapter's dictionary (cellpose's defaults, spelled out)
                "normalize": True,
                "percentile": [1.0, 99.0],
                "norm3D": False,
                "invert": False,
                "lowhigh": None,
                "sharpen_radius": 0,
                "smooth_radius": 0,
                "tile_norm_blocksize": 0,
                "tile_norm_smooth3D": 1,
            }
            return model.eval(
                img,
                diameter=opts["diameter"],
                flow_threshold=0.4,
                cellprob_threshold=0.0,
                min_size=15,
                normalize=normalize,
                tile_overlap=0.1,
                batch_size=8,
                augment=False,
                channel_axis=None,
                channels=[0, 0],
            )[0]

        threads = {"torch_threads": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from csbdeep.utils import normalize as csb_normalize
        from stardist.models import StarDist2D

        folder = Path(model_path)
        model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))

        def segment(img: np.ndarray, opts: dict[str, Any]) -> np.ndarray:
            x = csb_normalize(img, 1.0, 99.8)
            labels, _details = model.predict_instances(
                x,
                n_tiles=tuple(opts["n_tiles"]),
                prob_thresh=None,
                nms_thresh=None,
                show_tile_progress=False,
                verbose=False,
                predict_kwargs={"verbose": 0},
            )
            return labels

        import tensorflow as tf

        threads = {
            "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    threads["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    proto.write(json.dumps({"ready": True, **threads}) + "\n")
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "quit":
            break
        key, _, opts = rest.partition(" ")
        img = images[key]
        t0, c0 = time.perf_counter(), time.process_time()
        labels = segment(img, json.loads(opts))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        proto.write(json.dumps({"seconds": seconds, "cpu": cpu, "n": int(np.max(labels))}) + "\n")


class Direct:
    """The direct-call process of one backend."""

    def __init__(self, backend: str, model: Path, images_file: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                backend,
                str(model),
                str(images_file),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the direct-call process stopped (exit code {self.proc.wait()})")
        return json.loads(line)

    def run(self, key: str, opts: dict[str, Any]) -> tuple[float, float, int]:
        """Wall and CPU seconds (all threads) of the library call, and the number of objects."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {key} {json.dumps(opts)}\n")
        self.proc.stdin.flush()
        answer = self._answer()
        return float(answer["seconds"]), float(answer["cpu"]), int(answer["n"])

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(30)


# --------------------------------------------------------------------------- controller


def _data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("NAPARI_PHENOTYPER_TEST_DATA") or REPO.parent / "shared" / "data")
    if not (path / "stardist_sample").is_dir():
        sys.exit(f"stardist_sample not found under {path}; pass --data DIR.")
    return path


def _cached_model(pattern: str) -> Path | None:
    env = os.environ.get("NAPARI_PHENOTYPER_TEST_CACHE", "")
    root = Path(env).expanduser() if env.strip() else Path.home() / ".cache" / "napari-phenotyper-tests"
    found = [p for p in root.glob(pattern) if (p / "model.json").is_file()]
    return max(found, key=lambda p: (p / "model.json").stat().st_mtime) if found else None


def _images(data: Path, n_large: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Images by key, and each one's size class (``large``: at least 512 x 512; ``small``: 256 x 256)."""
    import tifffile

    from napari_phenotyper.io.images import read_image, to_grayscale

    sample = np.asarray(tifffile.imread(data / "stardist_sample" / "img2d.tif"))
    images: dict[str, np.ndarray] = {"stardist_sample": sample}
    coelho = sorted((data / "coelho2009_nuclei" / "images").glob("*/*.png"))
    picks = coelho[:: max(1, len(coelho) // max(1, n_large))][:n_large] if n_large else []
    for p in picks:
        images[f"coelho_{p.parent.name}_{p.stem}"] = np.ascontiguousarray(to_grayscale(read_image(p)))
    for y, x in ((0, 0), (256, 256)):
        images[f"sample_crop_{y}_{x}"] = np.ascontiguousarray(sample[y : y + 256, x : x + 256])
    sizes = {k: ("small" if min(v.shape) < 512 else "large") for k, v in images.items()}
    return images, sizes


def _stardist_tiles(model: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The tiles the adapter would choose (fixed here so that both paths use the same)."""
    from napari_phenotyper.core.segment.stardist import auto_n_tiles, tile_budget

    cfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
    return auto_n_tiles(shape, tile_budget(2, int(cfg.get("unet_n_filter_base", 32))))


def _params(backend: str, model: Path, opts: dict[str, Any]) -> Any:
    if backend == "cellpose":
        from napari_phenotyper.core.segment.cellpose import CellposeParams

        return CellposeParams(model=str(model), diameter=opts["diameter"], device="cpu")
    from napari_phenotyper.core.segment.stardist import StarDistParams

    return StarDistParams(model=str(model), n_tiles=",".join(map(str, opts["n_tiles"])), device="auto")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} on {os.cpu_count()} cores"


def _bench_backend(
    backend: str,
    model: Path,
    images: dict[str, np.ndarray],
    images_file: Path,
    repeats: int,
    diameter: float,
    pause: float = 0.0,
) -> dict[str, dict[str, list[float]]]:
    from napari_phenotyper.core.engine import EngineProcess
    from napari_phenotyper.core.progress import run

    opts = {
        k: {"diameter": diameter}
        if backend == "cellpose"
        else {"n_tiles": list(_stardist_tiles(model, v.shape))}
        for k, v in images.items()
    }
    print(f"\n== {backend}: model {model}", flush=True)
    t_start = time.perf_counter()
    direct = Direct(backend, model, images_file)
    engine = EngineProcess(start_timeout=300, name=f"bench-{backend}")
    times: dict[str, dict[str, list[float]]] = {
        k: {"plugin": [], "direct": [], "plugin_cpu": [], "direct_cpu": []} for k in images
    }
    inner: dict[str, list[float]] = {k: [] for k in images}
    try:
        engine.start()
        print(f"  direct process: {direct.info}; engine pid {engine.pid}", flush=True)

        def plugin(key: str) -> tuple[float, float, int]:
            """Wall seconds from sending the job to having the labels; CPU seconds of both processes."""
            params = _params(backend, model, opts[key])
            c0, e0, t0 = time.process_time(), _cpu_seconds(engine.pid), time.perf_counter()
            labels, prov = run(engine.run(SEGMENT, images[key], backend, params, False))
            t = time.perf_counter() - t0
            inner[key].append(float(prov.get("segment_seconds", 0.0)))
            cpu = _cpu_seconds(engine.pid) - e0 + time.process_time() - c0
            return t, cpu, int(labels.max())

        def call_direct(key: str) -> tuple[float, float, int]:
            return direct.run(key, opts[key])

        for key in images:  # warm-up: models loaded, first-call costs paid, counts compared
            for _ in range(2):
                _t, _c, n_plugin = plugin(key)
                _t, _c, n_direct = call_direct(key)
            print(f"  warm-up {key:28} {images[key].shape}: {n_plugin} objects (plugin), {n_direct} (direct)")
        print(
            f"  ready in {time.perf_counter() - t_start:.0f} s; OS threads: engine {_threads(engine.pid)}, "
            f"direct {_threads(direct.proc.pid)}; {_load()}"
        )
        for r in range(repeats):
            for key in images:
                pair = [("plugin", plugin), ("direct", call_direct)]
                for name, call in pair if (r % 2 == 0) else reversed(pair):
                    time.sleep(pause)  # let the other process's idle thread pools go to sleep
                    seconds, cpu, _n = call(key)
                    times[key][name].append(seconds)
                    times[key][f"{name}_cpu"].append(cpu)
            print(f"  repeat {r + 1}/{repeats} done; {_load()}", flush=True)
        print("  inside the engine (the adapter's segment_seconds, no transfer), median s per image:")
        for key in images:  # the first two are the warm-up's
            print(f"    {key:28} {statistics.median(inner[key][2:]):.3f}")
    finally:
        direct.close()
        engine.shutdown()
    return times


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far, all threads (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int | None) -> str:
    try:
        return str(len(os.listdir(f"/proc/{pid}/task")))
    except OSError:
        return "?"


def _report(
    backend: str, times: dict[str, dict[str, list[float]]], sizes: dict[str, str]
) -> dict[str, float]:
    """Print per-image medians; return the ratios of summed medians per size class (wall and CPU)."""
    print(
        f"\n{backend}: median seconds per image, plugin / direct = ratio (wall clock; CPU time of all threads)"
    )
    sums: dict[str, list[float]] = {"large": [0.0] * 4, "small": [0.0] * 4}
    pairs: dict[str, list[float]] = {"large": [], "small": []}  # plugin / direct, run next to each other
    for key, t in times.items():
        med = [statistics.median(t[k]) for k in ("plugin", "direct", "plugin_cpu", "direct_cpu")]
        sums[sizes[key]] = [a + b for a, b in zip(sums[sizes[key]], med, strict=True)]
        p, d, pc, dc = med
        paired = [a / b for a, b in zip(t["plugin"], t["direct"], strict=True)]
        pairs[sizes[key]] += paired
        spread = f"plugin {min(t['plugin']):.3f}-{max(t['plugin']):.3f}, direct {min(t['direct']):.3f}-{max(t['direct']):.3f}"
        print(
            f"  {sizes[key]:5} {key:28} wall {p:7.3f} / {d:7.3f} = {p / d:5.3f}; "
            f"CPU {pc:7.3f} / {dc:7.3f} = {pc / dc if dc else float('nan'):5.3f}; "
            f"paired {statistics.median(paired):5.3f}   ({spread})"
        )
    out = {}
    for size, ratios in pairs.items():
        if ratios:
            out[f"{size}_paired"] = statistics.median(ratios)
    for size, (p, d, pc, dc) in sums.items():
        if d > 0:
            out[size] = p / d
            out[f"{size}_cpu"] = pc / dc if dc else float("nan")
            print(
                f"  {size:5} images: wall {p:.3f} s / {d:.3f} s = {p / d:.3f} "
                f"(plugin - direct: {1000 * (p - d):+.0f} ms); CPU {pc:.3f} s / {dc:.3f} s = {out[f'{size}_cpu']:.3f}; "
                f"median of paired ratios {out[f'{size}_paired']:.3f}"
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="shared data folder (default: ../shared/data)")
    parser.add_argument("--backends", default="cellpose,stardist")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds before each timed call (default 0)")
    parser.add_argument("--n-large", type=int, default=2, help="coelho2009_nuclei images to use")
    parser.add_argument("--cellpose-model", type=Path, help="weights file or fine-tuned model folder")
    parser.add_argument("--stardist-model", type=Path, help="StarDist model folder")
    parser.add_argument("--diameter", type=float, default=20.0, help="Cellpose diameter (pixels)")
    parser.add_argument(
        "--threads",
        type=int,
        help="threads of torch, TensorFlow and OpenMP in both processes (default: the libraries' own choice)",
    )
    args = parser.parse_args(argv)
    if args.threads:  # set before either process starts: both inherit the same settings
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = str(args.threads)

    data = _data_dir(args.data)
    images, sizes = _images(data, args.n_large)
    models = {
        "cellpose": args.cellpose_model or _cached_model("cellpose3-*/cellpose/test_nuclei"),
        "stardist": args.stardist_model or _cached_model("stardist-*/pheno_test_stardist"),
    }
    print(f"images: {', '.join(f'{k} {v.shape}' for k, v in images.items())}")
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")}
    print(f"thread settings (both processes): {threads}; {_load()}")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-segmenters-") as tmp:
        images_file = Path(tmp) / "images.npz"
        np.savez(images_file, **images)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            model = models.get(backend)
            if model is None:
                print(
                    f"\n{backend}: no model (pass --{backend}-model, or run tests/core/test_{backend}.py once)"
                )
                continue
            times = _bench_backend(
                backend, Path(model), images, images_file, args.repeats, args.diameter, args.pause
            )
            results[backend] = _report(backend, times, sizes)
    fields = [f"overhead_{b}={r['large']:.3f}" for b, r in results.items() if "large" in r]
    fields += [f"overhead_small_{b}={r['small']:.3f}" for b, r in results.items() if "small" in r]
    fields += [f"cpu_overhead_{b}={r['large_cpu']:.3f}" for b, r in results.items() if "large_cpu" in r]
    fields += [
        f"paired_overhead_{b}={r['large_paired']:.3f}" for b, r in results.items() if "large_paired" in r
    ]
    print(f"\ntarget: overhead <= {TARGET} for images of at least 512 x 512 pixels")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
