"""Cellpose models: the installed version's built-ins, local files and fine-tuned models.

Nothing here imports torch or cellpose: listing and resolving models is cheap enough for
the GUI to call while it builds a drop-down. Only :func:`ensure_cellpose_weights`
(called by the adapter in the engine process) may download, through cellpose's own
downloader.

Where models are looked for
---------------------------
- **Built-in models** of the installed cellpose (3.x: ``cyto3``, ``nuclei``, ``cyto2``,
  ``cyto``, the ``*_cp3`` tissuenet / livecell / yeast / bacteria variants; 4.x:
  ``cpsam``, and ``cpsam_v2`` from 4.2) live where cellpose keeps them:
  ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``, under cellpose's own file
  names (``cyto3``, ``nucleitorch_0``, ``cpsam``...). Cellpose downloads them on first use;
  offline, :func:`ensure_cellpose_weights` fails at once with a message naming the file,
  its URL and that folder.
- **Our models** (trained or fine-tuned with
  :func:`~napari_phenotyper.core.segment.cellpose_train.iter_train_cellpose`, or dropped in
  by hand) live in ``<models dir>/cellpose/``, where the models dir is
  ``$NAPARI_PHENOTYPER_MODELS`` or ``~/.napari-phenotyper/models``. A folder with a
  ``model.json`` is a *fine-tuned* model (its metadata names the weights file); any other
  file or single-file folder there is a *local* model.
- Any other **file path** is a local model. Other files in cellpose's folder (models
  trained in cellpose's own GUI) are listed as local models too.

Set ``NAPARI_PHENOTYPER_OFFLINE=1`` to never try a download.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

__all__ = [
    "BACKEND",
    "METADATA_FILE",
    "CellposeModelInfo",
    "ModelNotFoundError",
    "cellpose_models_dir",
    "cellpose_version",
    "default_cellpose_model",
    "ensure_cellpose_weights",
    "list_cellpose_models",
    "missing_weights_message",
    "models_dir",
    "resolve_cellpose_model",
]

BACKEND = "cellpose"
#: Metadata file of a model folder written by ``iter_train_cellpose``.
METADATA_FILE = "model.json"
#: Weights file name inside a model folder written by ``iter_train_cellpose``.
WEIGHTS_FILE = "weights.pth"

ENV_CELLPOSE_DIR = "CELLPOSE_LOCAL_MODELS_PATH"
ENV_MODELS_DIR = "NAPARI_PHENOTYPER_MODELS"
ENV_OFFLINE = "NAPARI_PHENOTYPER_OFFLINE"

_V3_URL = "https://www.cellpose.org/models"
_V4_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main"

# Cellpose 3 built-ins (cellpose.models.MODEL_NAMES of 3.1, without the transformer
# backbones, which need an extra package): name -> (weights file, size-model file or "",
# mean diameter the model rescales objects to, one-line description).
_V3_BUILTINS: dict[str, tuple[str, str, float, str]] = {
    "cyto3": ("cyto3", "size_cyto3.npy", 30.0, "generalist cytoplasm / nucleus model (default)"),
    "nuclei": ("nucleitorch_0", "size_nucleitorch_0.npy", 17.0, "nuclei"),
    "cyto2": ("cyto2torch_0", "size_cyto2torch_0.npy", 30.0, "cytoplasm (2nd generation)"),
    "cyto": ("cytotorch_0", "size_cytotorch_0.npy", 30.0, "cytoplasm (1st generation)"),
    "cyto2_cp3": ("cyto2_cp3", "", 30.0, "cyto2 data set, cellpose 3 training"),
    "tissuenet_cp3": ("tissuenet_cp3", "", 30.0, "TissueNet (tissue, nuclei + membrane)"),
    "livecell_cp3": ("livecell_cp3", "", 30.0, "LIVECell (phase contrast)"),
    "yeast_PhC_cp3": ("yeast_PhC_cp3", "", 30.0, "yeast, phase contrast"),
    "yeast_BF_cp3": ("yeast_BF_cp3", "", 30.0, "yeast, brightfield"),
    "bact_phase_cp3": ("bact_phase_cp3", "", 30.0, "bacteria, phase contrast"),
    "bact_fluor_cp3": ("bact_fluor_cp3", "", 30.0, "bacteria, fluorescence"),
    "deepbacs_cp3": ("deepbacs_cp3", "", 30.0, "DeepBacs bacteria"),
    "CPx": ("CPx", "", 30.0, "cellpose 2 model zoo: CPx"),
    "CP": ("CP", "", 30.0, "cellpose 2 model zoo: CP"),
    "TN1": ("TN1", "", 30.0, "cellpose 2 model zoo: TissueNet 1"),
    "TN2": ("TN2", "", 30.0, "cellpose 2 model zoo: TissueNet 2"),
    "TN3": ("TN3", "", 30.0, "cellpose 2 model zoo: TissueNet 3"),
    "LC1": ("LC1", "", 30.0, "cellpose 2 model zoo: LIVECell 1"),
    "LC2": ("LC2", "", 30.0, "cellpose 2 model zoo: LIVECell 2"),
    "LC3": ("LC3", "", 30.0, "cellpose 2 model zoo: LIVECell 3"),
    "LC4": ("LC4", "", 30.0, "cellpose 2 model zoo: LIVECell 4"),
}
#: Cellpose 3 built-ins shown by :func:`list_cellpose_models` (the others still resolve).
_V3_LISTED = (
    "cyto3",
    "nuclei",
    "cyto2",
    "cyto",
    "cyto2_cp3",
    "tissuenet_cp3",
    "livecell_cp3",
    "yeast_PhC_cp3",
    "yeast_BF_cp3",
    "bact_phase_cp3",
    "bact_fluor_cp3",
    "deepbacs_cp3",
)
_V4_BUILTINS: dict[str, str] = {
    "cpsam": "Cellpose-SAM generalist model",
    "cpsam_v2": "Cellpose-SAM generalist model, version 2 (cellpose >= 4.2 default)",
}


class ModelNotFoundError(FileNotFoundError):
    """A model is unknown, or its weights are missing and cannot be downloaded.

    The message says which model, which file or URL is needed and where to put it.
    """


@dataclass(frozen=True)
class CellposeModelInfo:
    """Where a Cellpose model is and whether it can be used here.

    Parameters
    ----------
    backend : str
        Always ``"cellpose"``.
    name : str
        Name to show and to pass back to :func:`resolve_cellpose_model` (a built-in's
        name, a model folder's name, or a file path for a file elsewhere).
    kind : {"builtin", "local", "finetuned"}
        A built-in model of the installed cellpose, a weights file, or a model folder
        with ``model.json`` metadata.
    path : pathlib.Path or None
        The weights file (for a built-in not yet downloaded: where it will be).
    available : bool
        The weights are on disk and fit the installed cellpose (as far as can be told
        without loading them).
    detail : str
        One line for users: what it is, or why it is not available.
    url : str
        Built-ins: where cellpose downloads the weights from.
    size_model : pathlib.Path or None
        Cellpose 3: the size model used to estimate the object diameter (a built-in's
        ``size_*.npy`` or a local model's ``<weights>_size.npy``), when there is one.
    diam_mean : float or None
        Diameter (pixels) the model rescales objects to, when known without loading it.
    cellpose_major : int or None
        Major cellpose version the weights are for (3 or 4), when known.
    metadata : dict
        A fine-tuned model's ``model.json``.
    """

    backend: str
    name: str
    kind: Literal["builtin", "local", "finetuned"]
    path: Path | None
    available: bool
    detail: str = ""
    url: str = ""
    size_model: Path | None = None
    diam_mean: float | None = None
    cellpose_major: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------- places


def cellpose_version() -> tuple[int, ...] | None:
    """Installed cellpose version as integers (e.g. ``(3, 1, 1, 3)``); None if absent."""
    try:
        text = importlib_metadata.version("cellpose")
    except importlib_metadata.PackageNotFoundError:
        return None
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts) or None


def _version_text(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "not installed"


def cellpose_models_dir() -> Path:
    """Cellpose's own model folder: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``.

    Read at every call (cellpose itself reads it once, when it is imported).
    """
    env = os.environ.get(ENV_CELLPOSE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


def models_dir() -> Path:
    """napari-phenotyper's model folder (see :func:`.models.models_dir`: the environment
    variable, the setting, or ``~/.napari-phenotyper/models``).

    Cellpose models are in its ``cellpose`` sub-folder.
    """
    from .models import models_dir as _models_dir

    return _models_dir()


def _our_dir() -> Path:
    return models_dir() / BACKEND


def _major(version: tuple[int, ...] | None) -> int | None:
    return version[0] if version else None


def _v4_names(version: tuple[int, ...] | None) -> list[str]:
    if version is not None and version[:2] >= (4, 2):
        return ["cpsam_v2", "cpsam"]
    return ["cpsam"]


def default_cellpose_model(version: tuple[int, ...] | None = None) -> str:
    """The installed cellpose's default built-in: ``cyto3`` (3.x), ``cpsam`` (4.0-4.1), ``cpsam_v2`` (4.2+)."""
    version = cellpose_version() if version is None else version
    if _major(version) is not None and _major(version) >= 4:  # type: ignore[operator]
        return _v4_names(version)[0]
    return "cyto3"


# --------------------------------------------------------------------------- built-ins


def _builtin_info(name: str, version: tuple[int, ...] | None) -> CellposeModelInfo:
    folder = cellpose_models_dir()
    major = _major(version)
    if major is not None and major >= 4:
        path = folder / name
        url = f"{_V4_URL}/{name}"
        detail = _V4_BUILTINS.get(name, "Cellpose 4 built-in model")
        size_model = None
        diam_mean: float | None = 30.0
    else:
        file, size_file, diam_mean, detail = _V3_BUILTINS[name]
        path = folder / file
        url = f"{_V3_URL}/{file}"
        size_model = folder / size_file if size_file else None
    on_disk = path.is_file()
    state = "downloaded" if on_disk else f"not downloaded yet ({url})"
    return CellposeModelInfo(
        backend=BACKEND,
        name=name,
        kind="builtin",
        path=path,
        available=on_disk,
        detail=f"{detail}; {state}",
        url=url,
        size_model=size_model,
        diam_mean=diam_mean,
        cellpose_major=major,
    )


def _builtin_names(version: tuple[int, ...] | None) -> list[str]:
    major = _major(version)
    if major is None:
        return []
    return _v4_names(version) if major >= 4 else list(_V3_BUILTINS)


def _builtin_files(version: tuple[int, ...] | None) -> set[str]:
    """Files in cellpose's folder that belong to built-ins (weights, size models, lists)."""
    files = {"gui_models.txt"}
    for _name, (file, size_file, _d, _t) in _V3_BUILTINS.items():
        files.add(file)
        if size_file:
            files.add(size_file)
    files.update(_V4_BUILTINS)
    return files


# --------------------------------------------------------------------------- our models


def _read_metadata(folder: Path) -> dict[str, Any] | None:
    meta = folder / METADATA_FILE
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _model_from_folder(folder: Path, name: str, version: tuple[int, ...] | None) -> CellposeModelInfo | None:
    """A model folder: ``model.json`` + weights (fine-tuned), or one weights file (local)."""
    meta = _read_metadata(folder)
    installed = _major(version)
    if meta is not None:
        if meta.get("backend", BACKEND) != BACKEND:
            return None
        weights = folder / str(meta.get("weights", WEIGHTS_FILE))
        trained_with = str(meta.get("cellpose_version", ""))
        major = int(trained_with.split(".")[0]) if trained_with[:1].isdigit() else None
        base = meta.get("base_model") or {}
        base_name = base.get("name") if isinstance(base, Mapping) else base
        detail = f"fine-tuned from {base_name or 'scratch'}"
        if trained_with:
            detail += f" with cellpose {trained_with}"
        available = weights.is_file()
        if not available:
            detail += f"; weights file {weights.name} is missing"
        elif major is not None and installed is not None and (major >= 4) != (installed >= 4):
            available = False
            detail += f"; cannot be loaded by the installed cellpose {_version_text(version)}"
        size = weights.with_name(weights.name + "_size.npy")
        diam = meta.get("diam_mean")
        return CellposeModelInfo(
            backend=BACKEND,
            name=name,
            kind="finetuned",
            path=weights,
            available=available,
            detail=detail,
            size_model=size if size.is_file() else None,
            diam_mean=float(diam) if isinstance(diam, int | float) else None,
            cellpose_major=major,
            metadata=meta,
        )
    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    weights_files = [f for f in files if not f.name.endswith(("_size.npy", ".json", ".txt", ".md"))]
    if len(weights_files) != 1:
        return None
    return _local_info(weights_files[0], name)


def _local_info(path: Path, name: str) -> CellposeModelInfo:
    size = path.with_name(path.name + "_size.npy")
    return CellposeModelInfo(
        backend=BACKEND,
        name=name,
        kind="local",
        path=path,
        available=path.is_file(),
        detail=f"local weights file {path}",
        size_model=size if size.is_file() else None,
    )


def _our_models(version: tuple[int, ...] | None) -> list[CellposeModelInfo]:
    folder = _our_dir()
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            info = _model_from_folder(entry, entry.name, version)
            if info is not None:
                out.append(info)
        elif entry.is_file() and not entry.name.endswith(("_size.npy", ".json", ".txt", ".md")):
            out.append(_local_info(entry, entry.name))
    return out


def _cellpose_dir_models(version: tuple[int, ...] | None) -> list[CellposeModelInfo]:
    """User models in cellpose's own folder (trained in cellpose's GUI)."""
    folder = cellpose_models_dir()
    if not folder.is_dir():
        return []
    skip = _builtin_files(version)
    out = []
    for entry in sorted(folder.iterdir()):
        if (
            entry.is_file()
            and entry.name not in skip
            and not entry.name.startswith(".")
            and not entry.name.endswith(("_size.npy", ".npy", ".txt", ".json", ".pth.tmp", ".partial"))
            and not entry.name.startswith(("size_", "sam_vit", "dinov"))
        ):
            out.append(_local_info(entry, entry.name))
    return out


# --------------------------------------------------------------------------- API


def list_cellpose_models() -> list[CellposeModelInfo]:
    """Every Cellpose model this installation can offer.

    Built-ins of the installed cellpose first (default first; ``available`` says whether
    the weights are downloaded), then the models in ``<models dir>/cellpose`` and the user
    models in cellpose's own folder. Empty when cellpose is not installed.
    """
    version = cellpose_version()
    if version is None:
        return []
    names = _v4_names(version) if version[0] >= 4 else list(_V3_LISTED)
    out = [_builtin_info(n, version) for n in names]
    ours = _our_models(version)
    taken = {i.name for i in out} | {i.name for i in ours}
    out += ours
    out += [i for i in _cellpose_dir_models(version) if i.name not in taken]
    return out


def resolve_cellpose_model(name_or_path: str | os.PathLike[str] | None = None) -> CellposeModelInfo:
    """Find a Cellpose model by built-in name, model name or path.

    Parameters
    ----------
    name_or_path : str, path or None
        ``None``, ``""``, ``"auto"`` or ``"default"``: the installed cellpose's default
        built-in (:func:`default_cellpose_model`). A built-in name (``cyto3``,
        ``nuclei``, ``cpsam``...). The name of a model in ``<models dir>/cellpose`` or of a
        user model in cellpose's folder. Or a path to a weights file or model folder.

    Returns
    -------
    CellposeModelInfo
        For a built-in, ``available`` is False when its weights are not downloaded yet
        (:func:`ensure_cellpose_weights` downloads them or explains what to do).

    Raises
    ------
    ModelNotFoundError
        For a name that is none of these (the message lists the models there are), a
        built-in of another cellpose major version, or a model folder without weights.
    """
    version = cellpose_version()
    text = "" if name_or_path is None else os.fspath(name_or_path).strip()
    if text.lower() in ("", "auto", "default"):
        if version is None:
            raise ModelNotFoundError(
                'Cellpose is not installed. Install it with: pip install "napari-phenotyper[cellpose]".'
            )
        text = default_cellpose_model(version)
    if text in _builtin_names(version):
        return _builtin_info(text, version)
    path = Path(text).expanduser()
    separators = os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith("~")
    if not separators:  # a bare name: our models folder, then cellpose's (names may contain dots)
        ours = _our_dir() / text
        if ours.is_dir():
            info = _model_from_folder(ours, text, version)
            if info is not None:
                return info
        elif ours.is_file():
            return _local_info(ours, text)
        theirs = cellpose_models_dir() / text
        if theirs.is_file() and text not in _builtin_files(version):
            return _local_info(theirs, text)
    if path.exists() or separators or path.suffix in (".pth", ".pt", ".pkl", ".bin"):
        if path.is_dir():
            info = _model_from_folder(path, path.name, version)
            if info is None:
                raise ModelNotFoundError(
                    f"The folder {path} is not a Cellpose model: it needs a {METADATA_FILE} and its "
                    f"weights file, or a single weights file."
                )
            return info
        if path.is_file():
            return _local_info(path.resolve(), str(path))
        raise ModelNotFoundError(f"No Cellpose model file at {path}.")
    major = _major(version)
    if major is not None and major >= 4 and text in _V3_BUILTINS:
        raise ModelNotFoundError(
            f"{text!r} is a cellpose 3 model; the installed cellpose {_version_text(version)} cannot run it. "
            f"Use {' or '.join(map(repr, _v4_names(version)))}, or install cellpose 3.1 "
            f'(pip install "cellpose>=3.1,<4").'
        )
    if major is not None and major < 4 and text in _V4_BUILTINS:
        raise ModelNotFoundError(
            f"{text!r} is a cellpose 4 (Cellpose-SAM) model; the installed cellpose {_version_text(version)} "
            f'cannot run it. Use a cellpose 3 model such as cyto3 or nuclei, or install cellpose 4 (pip install "cellpose>=4").'
        )
    known = [i.name for i in list_cellpose_models()]
    raise ModelNotFoundError(
        f"No Cellpose model named {text!r}. Known here: {', '.join(known) or 'none (cellpose is not installed)'}. "
        f"Give a built-in name, the name of a model folder in {_our_dir()}, or the path of a weights file."
    )


# --------------------------------------------------------------------------- downloads


def _offline_forced() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("", "0", "false", "no", "off")


def _reachable(url: str, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Name resolution can block far longer than a socket timeout, so the attempt runs in a
    daemon thread that is abandoned after ``timeout``.
    """
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[str] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append("")
        except OSError as exc:
            result.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=attempt, name="cellpose-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return False, f"no answer from {host} within {timeout:g} s"
    return result[0] == "", result[0] or "reachable"


def missing_weights_message(info: CellposeModelInfo, reason: str) -> str:
    """What to do when a built-in's weights are missing and cannot be downloaded."""
    assert info.path is not None
    return (
        f"The Cellpose model {info.name!r} is not on this computer and cannot be downloaded ({reason}). "
        f"Download {info.url} on a computer with internet access and copy it, as a file named "
        f"{info.path.name!r}, into {info.path.parent} (or point the {ENV_CELLPOSE_DIR} environment "
        f"variable at the folder that holds it)."
    )


def ensure_cellpose_weights(
    info: CellposeModelInfo, *, size_model: bool = False, timeout: float = 3.0
) -> Path:
    """The weights file of ``info``, downloaded first for a built-in that is missing.

    Downloads use cellpose's own downloader (``cellpose.utils.download_url_to_file``)
    into :func:`cellpose_models_dir`. Before downloading, the server is probed for at
    most ``timeout`` seconds, so that offline it fails at once instead of hanging.

    Parameters
    ----------
    info : CellposeModelInfo
        From :func:`resolve_cellpose_model`.
    size_model : bool
        Return (and download if needed) the cellpose 3 size model instead.
    timeout : float
        Seconds to wait for the download server to answer.

    Raises
    ------
    ModelNotFoundError
        Offline (or ``NAPARI_PHENOTYPER_OFFLINE=1``), with the model's name, the URL of
        the file and the folder to put it in; or when a model has no such file.
    """
    if info.path is None:
        raise ModelNotFoundError(f"The Cellpose model {info.name!r} has no weights file.")
    if size_model:
        target = info.size_model
        if target is None:
            raise ModelNotFoundError(f"The Cellpose model {info.name!r} has no size model.")
        url = f"{info.url.rsplit('/', 1)[0]}/{target.name}" if info.url else ""
        what = CellposeModelInfo(
            backend=BACKEND,
            name=f"{info.name} (size model)",
            kind=info.kind,
            path=target,
            available=False,
            url=url,
        )
    else:
        target, url, what = info.path, info.url, info
    if target.is_file():
        return target
    if info.kind != "builtin" or not url:
        raise ModelNotFoundError(f"The Cellpose model file {target} does not exist.")
    if _offline_forced():
        raise ModelNotFoundError(missing_weights_message(what, f"{ENV_OFFLINE} is set"))
    ok, reason = _reachable(url, timeout)
    if not ok:
        raise ModelNotFoundError(missing_weights_message(what, f"offline: {reason}"))
    from cellpose import utils as cp_utils  # the library's own downloader

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        cp_utils.download_url_to_file(url, os.fspath(partial), progress=False)
        os.replace(partial, target)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise ModelNotFoundError(missing_weights_message(what, f"the download failed: {exc}")) from exc
    return target
