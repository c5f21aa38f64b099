"""The model manager: which segmentation models exist on this computer, and where.

One list per backend (:func:`list_models`) of what can be used now:

- **built-in** models of the library (StarDist's ``2D_versatile_fluo``..., Cellpose's
  ``cyto3``...), available when their weights are in the library's own cache (Keras's
  ``~/.keras/models/StarDist2D/<name>/``, ``$KERAS_HOME`` respected; Cellpose's
  ``~/.cellpose/models``, ``$CELLPOSE_LOCAL_MODELS_PATH`` respected) or in the models
  folder;
- **local** models: folders (StarDist) or files (Cellpose) in the models folder,
  ``models_dir() / <backend>``;
- **fine-tuned** models, trained in the plugin: local models marked by a ``model.json``
  metadata file (:data:`METADATA_FILE`: base model, backend, versions, date, training
  data and parameters).

:func:`resolve_model` turns a name or a path into what the backend adapter loads. It
never downloads: for a built-in model that is not on disk it checks, within a few
seconds, whether a download can work at all, and otherwise raises
:class:`ModelNotFoundError` with a message that names the model, the file or URL needed
and the folder to put it in. The adapter then downloads through the library's own
mechanism (with a bounded socket timeout).

The models folder is ``$NAPARI_PHENOTYPER_MODELS``, else the ``models_dir`` setting in
``$NAPARI_PHENOTYPER_HOME/settings.json``, else ``$NAPARI_PHENOTYPER_HOME/models``
(``NAPARI_PHENOTYPER_HOME`` defaults to ``~/.napari-phenotyper``). Set
``NAPARI_PHENOTYPER_OFFLINE=1`` to never attempt a download.

Cellpose's models are found by :mod:`.cellpose_models` (its rules, cellpose 3 and 4);
this module only presents them like every other backend's.

This module imports neither TensorFlow nor torch: the GUI lists models with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BACKENDS",
    "METADATA_FILE",
    "ModelInfo",
    "ModelNotFoundError",
    "describe_model",
    "download_allowed",
    "keras_cache_dir",
    "list_models",
    "missing_model_message",
    "models_dir",
    "read_metadata",
    "resolve_model",
    "set_models_dir_setting",
    "write_metadata",
]

#: Backends the manager knows.
BACKENDS: tuple[str, ...] = ("cellpose", "stardist")

#: Metadata file that marks a model trained or fine-tuned in the plugin.
METADATA_FILE = "model.json"

#: ``format`` value of :data:`METADATA_FILE`.
METADATA_FORMAT = "napari-phenotyper-model"

#: Seconds :func:`download_allowed` waits for a connection to the download server.
PROBE_TIMEOUT = 3.0

ModelKind = Literal["builtin", "local", "finetuned"]


class ModelNotFoundError(FileNotFoundError):
    """A model is not on disk (and cannot be downloaded); the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """One model a backend can use.

    Parameters
    ----------
    backend : str
        ``"stardist"`` or ``"cellpose"``.
    name : str
        What a user types or picks (a built-in's key, a local model's folder or file name).
    kind : {"builtin", "local", "finetuned"}
        Built into the library, put into the models folder by the user, or trained in
        the plugin (it has a :data:`METADATA_FILE`).
    path : pathlib.Path or None
        What the adapter loads: the model folder (StarDist) or weights file (Cellpose);
        ``None`` for a built-in model that is not on disk.
    available : bool
        Whether the weights are on disk now.
    detail : str
        One line for people (where it is, or what is missing).
    url : str or None
        Where a built-in model is downloaded from.
    metadata : mapping
        The model's :data:`METADATA_FILE` (fine-tuned models), else a few facts read
        from its files (e.g. ``ndim``, ``thresholds``); not compared or hashed.
    """

    backend: str
    name: str
    kind: ModelKind
    path: Path | None
    available: bool
    detail: str = ""
    url: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)


# --------------------------------------------------------------------------- folders


def _home() -> Path:
    env = os.environ.get("NAPARI_PHENOTYPER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".napari-phenotyper"


def _settings_file() -> Path:
    return _home() / "settings.json"


def _read_settings() -> dict[str, Any]:
    try:
        data = json.loads(_settings_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def models_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the user's models, one subfolder per backend.

    Parameters
    ----------
    folder : path-like, optional
        An explicit folder (wins over everything else).

    Returns
    -------
    pathlib.Path
        ``folder``, else ``$NAPARI_PHENOTYPER_MODELS``, else the ``models_dir`` setting
        (:func:`set_models_dir_setting`), else ``$NAPARI_PHENOTYPER_HOME/models``
        (default ``~/.napari-phenotyper/models``). It may not exist yet.
    """
    if folder is not None and str(folder):
        return Path(folder).expanduser()
    env = os.environ.get("NAPARI_PHENOTYPER_MODELS")
    if env:
        return Path(env).expanduser()
    setting = _read_settings().get("models_dir")
    if isinstance(setting, str) and setting:
        return Path(setting).expanduser()
    return _home() / "models"


def set_models_dir_setting(folder: str | os.PathLike[str] | None) -> Path:
    """Remember ``folder`` as the models folder (``None`` forgets it); returns the settings file.

    The setting lives in ``$NAPARI_PHENOTYPER_HOME/settings.json`` so that every process
    (the GUI, the engine process, the command line) reads the same value;
    ``$NAPARI_PHENOTYPER_MODELS`` still wins over it.
    """
    path = _settings_file()
    settings = _read_settings()
    if folder is None:
        settings.pop("models_dir", None)
    else:
        settings["models_dir"] = str(Path(folder).expanduser().resolve())
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings)
    return path


def keras_cache_dir() -> Path:
    """Keras's download cache (``$KERAS_HOME``, else ``~/.keras``), as Keras chooses it.

    Like Keras, falls back to ``/tmp/.keras`` when the home folder is not writable.
    """
    env = os.environ.get("KERAS_HOME")
    if env:
        base = Path(env).expanduser()
    else:
        home = Path.home()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    if base.exists() and not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir()) / ".keras"
    return base


# --------------------------------------------------------------------------- metadata


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The :data:`METADATA_FILE` of a model folder, or ``None`` when it has none.

    Raises
    ------
    ValueError
        If the file exists but is not a JSON object.
    """
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object.")
    return data


def write_metadata(folder: str | os.PathLike[str], metadata: Mapping[str, Any]) -> Path:
    """Write ``metadata`` as the model folder's :data:`METADATA_FILE` (atomically).

    ``format`` and ``format_version`` are added. The usual keys are ``backend``,
    ``name``, ``base_model`` (``None`` when trained from scratch), ``created`` (ISO
    date), ``versions`` (library versions) and ``training`` (images with their SHA-256,
    parameters, history, thresholds).
    """
    data = {"format": METADATA_FORMAT, "format_version": 1, **metadata}
    path = Path(folder) / METADATA_FILE
    _write_json(path, data)
    return path


# --------------------------------------------------------------------------- network


def _truthy(value: str | None) -> bool:
    """An environment flag is set: anything but empty, 0, false, no, off."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection to ``host:port`` opens within ``timeout`` s, else why not.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread
    that is abandoned when ``timeout`` runs out.
    """
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except Exception as exc:  # a probe reports, it never raises (it runs in a thread)
            text = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            )
            result.append(f"cannot connect to {host}: {text}")

    thread = threading.Thread(target=attempt, name="napari-phenotyper-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer from {host} within {timeout:g} s"
    return result[0]


def download_allowed(url: str, timeout: float | None = None) -> str | None:
    """Whether ``url`` can be downloaded now: ``None`` if so, else the reason why not.

    Returns within about ``timeout`` seconds (default :data:`PROBE_TIMEOUT`).
    ``NAPARI_PHENOTYPER_OFFLINE=1`` forbids downloads; otherwise a connection to the
    server (or to the HTTP(S) proxy) is tried.
    """
    timeout = PROBE_TIMEOUT if timeout is None else float(timeout)
    if _truthy(os.environ.get("NAPARI_PHENOTYPER_OFFLINE")):
        return "downloads are disabled (NAPARI_PHENOTYPER_OFFLINE is set)"
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        pp = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = pp.hostname or host, pp.port or 80
    return _probe(host, port, timeout)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- StarDist


@dataclass(frozen=True)
class _StarDistBuiltin:
    name: str
    cls: str
    url: str
    sha256: str
    description: str
    aliases: tuple[str, ...] = ()


_SD_URL = "https://github.com/stardist/stardist-models/releases/download/v0.1/python_{}.zip"

#: StarDist's registered pre-trained models (``stardist/models/__init__.py`` of 0.9).
STARDIST_BUILTINS: tuple[_StarDistBuiltin, ...] = (
    _StarDistBuiltin(
        "2D_versatile_fluo",
        "StarDist2D",
        _SD_URL.format("2D_versatile_fluo"),
        "4ad678d0758eed6e55625f1b5ae30771e59adb79f1239e09b9772eac8846c3dd",
        "fluorescent nuclei (versatile)",
        ("Versatile (fluorescent nuclei)",),
    ),
    _StarDistBuiltin(
        "2D_versatile_he",
        "StarDist2D",
        _SD_URL.format("2D_versatile_he"),
        "f1696ef0631bd7e1c0e5c0d3017e2b4c6a95e284c6aab9c22fc2f08317817b28",
        "H&E-stained nuclei (colour input)",
        ("Versatile (H&E nuclei)",),
    ),
    _StarDistBuiltin(
        "2D_paper_dsb2018",
        "StarDist2D",
        _SD_URL.format("2D_paper_dsb2018"),
        "4c11cf68512341d9e8ce3d1278c64ceb8ac400582739f85fcab079a2e82840d2",
        "DSB 2018 nuclei (StarDist paper)",
        ("DSB 2018 (from StarDist 2D paper)",),
    ),
    _StarDistBuiltin(
        "2D_demo",
        "StarDist2D",
        _SD_URL.format("2D_demo"),
        "a1efaebd7103db6236655bf158b6e21cf5b38d58ec77a509802244a89a260fa4",
        "2D demo model",
    ),
    _StarDistBuiltin(
        "3D_demo",
        "StarDist3D",
        _SD_URL.format("3D_demo"),
        "ea05831eb5acc8a2fd31eaa23f4460a196a9af53b14f40affb9d80885f699f90",
        "3D demo model (nuclei in z-stacks)",
    ),
)


def _stardist_builtin(name: str) -> _StarDistBuiltin | None:
    for b in STARDIST_BUILTINS:
        if name == b.name or name in b.aliases:
            return b
    return None


def _is_stardist_folder(folder: Path) -> bool:
    """A StarDist model folder: ``config.json`` and at least one ``*.h5`` weights file."""
    return (
        folder.is_dir()
        and (folder / "config.json").is_file()
        and (any(folder.glob("*.h5")) or any(folder.glob("*.hdf5")))
    )


def _stardist_facts(folder: Path) -> dict[str, Any]:
    """``ndim``, ``n_channel_in``, ``n_rays``, ``grid`` and ``thresholds`` read from the folder."""
    facts: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        facts["ndim"] = int(cfg.get("n_dim", len(str(cfg.get("axes", "YXC")).replace("C", ""))))
        for key in ("n_channel_in", "n_rays", "grid", "axes"):
            if key in cfg:
                facts[key] = cfg[key]
    with contextlib.suppress(OSError, ValueError):
        th = json.loads((folder / "thresholds.json").read_text(encoding="utf-8"))
        facts["thresholds"] = {"prob": float(th["prob"]), "nms": float(th["nms"])}
    return facts


def _keras_model_dir(b: _StarDistBuiltin) -> Path:
    return keras_cache_dir() / "models" / b.cls / b.name


def _safe_extract(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        root = dest.resolve()
        for member in zf.namelist():
            target = (dest / member).resolve()
            if root != target and root not in target.parents:
                raise ValueError(f"{archive} holds a file outside its folder ({member}); not extracting it.")
        dest.mkdir(parents=True, exist_ok=True)
        zf.extractall(dest)


def _cached_builtin_folder(b: _StarDistBuiltin, extract: bool) -> Path | None:
    """The folder of a built-in StarDist model in the Keras cache, if it is there.

    Keras 3 keeps ``<name>.zip`` and ``<name>_extracted/`` in
    ``<keras>/models/StarDist2D/<name>/`` (csbdeep adds a ``<name>`` link); older Keras
    extracted into that folder itself. A zip file without its extraction (copied there
    by hand) is checked against its SHA-256 and extracted like Keras would when
    ``extract`` is true.
    """
    base = _keras_model_dir(b)
    for folder in (base / f"{b.name}_extracted", base / b.name, base):
        if _is_stardist_folder(folder):
            return folder
    archive = base / f"{b.name}.zip"
    if extract and archive.is_file():
        digest = _sha256(archive)
        if digest != b.sha256:
            raise ModelNotFoundError(
                f"{archive} is damaged or not the StarDist model '{b.name}' (SHA-256 {digest}, expected "
                f"{b.sha256}). Delete it and download {b.url} again."
            )
        dest = base / f"{b.name}_extracted"
        _safe_extract(archive, dest)
        if _is_stardist_folder(dest):
            return dest
    return None


def _stardist_missing_message(b: _StarDistBuiltin, reason: str) -> str:
    local = models_dir() / "stardist" / b.name
    cache = _keras_model_dir(b)
    return (
        f"The StarDist model '{b.name}' is not on this computer and cannot be downloaded ({reason}). "
        f"On a computer with internet access, download {b.url} (SHA-256 {b.sha256}), then either "
        f"unzip it into {local} (so that this folder holds config.json, thresholds.json and "
        f"weights_best.h5), or copy the zip file unchanged to {cache / (b.name + '.zip')} (StarDist's "
        f"own cache). See docs/models.md."
    )


def _stardist_local(folder: Path, name: str | None = None) -> ModelInfo:
    meta = read_metadata(folder)
    facts = _stardist_facts(folder)
    name = name or folder.name
    if meta is not None:
        base = meta.get("base_model") or "scratch"
        when = str(meta.get("created", ""))[:10]
        n_img = len((meta.get("training") or {}).get("images") or ())
        detail = (
            f"fine-tuned from {base}"
            + (f" on {when}" if when else "")
            + (f", {n_img} images" if n_img else "")
        )
        return ModelInfo("stardist", name, "finetuned", folder, True, detail, None, {**facts, **meta})
    return ModelInfo("stardist", name, "local", folder, True, f"model folder {folder}", None, facts)


def _stardist_builtin_info(b: _StarDistBuiltin, extract: bool = False) -> ModelInfo:
    own = models_dir() / "stardist" / b.name
    if _is_stardist_folder(own):
        return ModelInfo(
            "stardist",
            b.name,
            "builtin",
            own,
            True,
            f"{b.description}; in {own}",
            b.url,
            _stardist_facts(own),
        )
    folder = _cached_builtin_folder(b, extract)
    if folder is not None:
        return ModelInfo(
            "stardist",
            b.name,
            "builtin",
            folder,
            True,
            f"{b.description}; in the Keras cache",
            b.url,
            _stardist_facts(folder),
        )
    archive = _keras_model_dir(b) / f"{b.name}.zip"
    if archive.is_file():
        return ModelInfo(
            "stardist", b.name, "builtin", None, True, f"{b.description}; downloaded, not unpacked yet", b.url
        )
    return ModelInfo(
        "stardist",
        b.name,
        "builtin",
        None,
        False,
        f"{b.description}; not downloaded yet (from {b.url})",
        b.url,
    )


def _list_stardist() -> list[ModelInfo]:
    out = [_stardist_builtin_info(b) for b in STARDIST_BUILTINS]
    builtin_names = {b.name for b in STARDIST_BUILTINS}
    root = models_dir() / "stardist"
    if root.is_dir():
        for folder in sorted(root.iterdir(), key=lambda p: p.name.lower()):
            if folder.name.startswith(".") or folder.name in builtin_names:
                continue
            if _is_stardist_folder(folder):
                try:
                    out.append(_stardist_local(folder))
                except ValueError as exc:  # a broken model.json: listed, not usable
                    out.append(ModelInfo("stardist", folder.name, "finetuned", folder, False, str(exc)))
    return out


def _resolve_stardist(name_or_path: str, download: bool) -> ModelInfo:
    root = models_dir() / "stardist"
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if path.is_file() and path.name in ("config.json", METADATA_FILE):
            path = path.parent
        if _is_stardist_folder(path):
            return _stardist_local(path.resolve())
        if path.exists():
            raise ModelNotFoundError(
                f"{path} is not a StarDist model folder: it needs config.json and a weights file "
                f"(weights_best.h5). Point to the folder that holds them."
            )
        raise ModelNotFoundError(f"No StarDist model folder at {path}.")
    b = _stardist_builtin(name_or_path)
    if b is not None:
        info = _stardist_builtin_info(b, extract=True)
        if info.available and info.path is not None:
            return info
        reason = download_allowed(b.url) if download else "downloading was not allowed"
        if reason is not None:
            raise ModelNotFoundError(_stardist_missing_message(b, reason))
        return info  # not on disk; the adapter downloads it with StarDist's own code
    folder = root / name_or_path
    if _is_stardist_folder(folder):
        return _stardist_local(folder)
    known = [m.name for m in _list_stardist() if m.available]
    hint = (
        f"Models available here: {', '.join(known)}."
        if known
        else "No StarDist model is on this computer yet."
    )
    raise ModelNotFoundError(
        f"Unknown StarDist model {name_or_path!r}: not a built-in model "
        f"({', '.join(b.name for b in STARDIST_BUILTINS)}) and no model folder {folder} "
        f"(with config.json and weights_best.h5). {hint}"
    )


# --------------------------------------------------------------------------- Cellpose


def _from_cellpose(info: Any) -> ModelInfo:
    """A :class:`ModelInfo` from :mod:`.cellpose_models`' own record (same core fields)."""
    extra = {
        "size_model": None if info.size_model is None else str(info.size_model),
        "diam_mean": info.diam_mean,
        "cellpose_major": info.cellpose_major,
    }
    return ModelInfo(
        "cellpose",
        info.name,
        info.kind,
        info.path,
        info.available,
        info.detail,
        info.url or None,
        {**extra, **dict(info.metadata)},
    )


def _list_cellpose() -> list[ModelInfo]:
    from . import cellpose_models

    return [_from_cellpose(i) for i in cellpose_models.list_cellpose_models()]


def _resolve_cellpose(name_or_path: str, download: bool) -> ModelInfo:
    """Cellpose models are found by :mod:`.cellpose_models`; its errors become ours."""
    from . import cellpose_models

    try:
        info = _from_cellpose(cellpose_models.resolve_cellpose_model(name_or_path))
    except cellpose_models.ModelNotFoundError as exc:
        raise ModelNotFoundError(str(exc)) from None
    if info.available or info.kind != "builtin" or info.path is None or not info.url:
        return info
    reason = download_allowed(info.url) if download else "downloading was not allowed"
    if reason is not None:
        raise ModelNotFoundError(missing_model_message("cellpose", info.name, reason))
    return info


# --------------------------------------------------------------------------- public


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith((".", "~"))
        or Path(text).is_absolute()
    )


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown model backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


def list_models(backend: str) -> list[ModelInfo]:
    """Every model of ``backend`` known here: built-ins first, then local and fine-tuned ones.

    Built-in models are listed whether downloaded or not (see ``available``). Nothing
    is downloaded and no deep-learning library is imported.

    Raises
    ------
    ValueError
        For an unknown backend.
    """
    _check_backend(backend)
    return _list_stardist() if backend == "stardist" else _list_cellpose()


def resolve_model(backend: str, name_or_path: str, *, download: bool = True) -> ModelInfo:
    """What the ``backend`` adapter should load for ``name_or_path``.

    Looked up in order: a path (a model folder or file), a built-in name (or a StarDist
    alias) with its weights in the models folder or the library's cache (a StarDist zip
    copied into the Keras cache is checked and unpacked), a local or fine-tuned model in
    ``models_dir() / backend``.

    Parameters
    ----------
    backend : str
        ``"stardist"`` or ``"cellpose"``.
    name_or_path : str
        A model name from :func:`list_models`, or a path.
    download : bool
        Whether the caller may download a missing built-in model. When true and the
        download server answers (checked within a few seconds), a built-in model that is
        not on disk comes back with ``available=False`` and ``path=None``: download it
        with the library's own code.

    Returns
    -------
    ModelInfo
        ``available`` with a ``path``, except for a built-in model still to download.

    Raises
    ------
    ModelNotFoundError
        When the model is not on disk and cannot be downloaded (offline,
        ``NAPARI_PHENOTYPER_OFFLINE=1``, or ``download=False``), or the name is
        unknown. The message names the model, the file or URL to get and the folder to
        put it in.
    ValueError
        For an unknown backend or an empty name.
    """
    _check_backend(backend)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"Give a {backend} model name or path (see the models list).")
    name_or_path = name_or_path.strip()
    if backend == "stardist":
        return _resolve_stardist(name_or_path, download)
    return _resolve_cellpose(name_or_path, download)


def missing_model_message(backend: str, name: str, reason: str) -> str:
    """The "not on this computer" message for a built-in model (e.g. after a failed download)."""
    _check_backend(backend)
    if backend == "stardist":
        b = _stardist_builtin(name)
        if b is not None:
            return _stardist_missing_message(b, reason)
    else:
        from . import cellpose_models

        with contextlib.suppress(cellpose_models.ModelNotFoundError, AssertionError):
            info = cellpose_models.resolve_cellpose_model(name)
            if info.kind == "builtin" and info.path is not None:
                return cellpose_models.missing_weights_message(info, reason)
    return f"The {backend} model {name!r} is not available ({reason})."


def describe_model(info: ModelInfo) -> dict[str, Any]:
    """Provenance of a resolved model: backend, name, kind, path and, for fine-tuned ones, base and date."""
    out: dict[str, Any] = {
        "backend": info.backend,
        "name": info.name,
        "kind": info.kind,
        "path": None if info.path is None else str(info.path),
    }
    if info.url:
        out["url"] = info.url
    if info.kind == "finetuned":
        out["base_model"] = info.metadata.get("base_model")
        out["created"] = info.metadata.get("created")
    return out
