"""Tables of a batch run on disk: Parquet or CSV, written atomically and by streaming.

Parquet needs :mod:`pyarrow`; CSV needs nothing more. AnnData (``.h5ad``) export
needs :mod:`anndata` and is skipped with a message when it is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from .atomic import atomic_write_with

__all__ = [
    "FORMATS",
    "StreamingTableWriter",
    "anndata_available",
    "column_kinds",
    "parquet_available",
    "read_layout_csv",
    "read_table",
    "require_format",
    "table_columns",
    "table_suffix",
    "write_h5ad",
    "write_table",
]

#: Table formats of a batch run.
FORMATS = ("parquet", "csv")
#: Columns read back as text from CSV (never as numbers: well ``01``, image ``001``).
TEXT_COLUMNS = (
    "plate",
    "well",
    "site",
    "image",
    "control",
    "treatment",
    "pheno_annotation",
    "pheno_class",
    "readout",
)


def parquet_available() -> bool:
    """Whether :mod:`pyarrow` (needed for Parquet) can be imported."""
    return importlib.util.find_spec("pyarrow") is not None


def anndata_available() -> bool:
    """Whether :mod:`anndata` (needed for ``.h5ad``) can be imported."""
    return importlib.util.find_spec("anndata") is not None


def require_format(fmt: str) -> str:
    """Check a table format name and that its writer is installed.

    Raises
    ------
    ValueError
        For a format other than ``parquet`` or ``csv``.
    ImportError
        For Parquet without pyarrow (the message says what to do).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown table format {fmt!r}; choose {' or '.join(FORMATS)}.")
    if fmt == "parquet" and not parquet_available():
        raise ImportError(
            "Parquet output needs pyarrow: install it (pip install pyarrow) or choose the CSV format "
            "(--format csv)."
        )
    return fmt


def table_suffix(fmt: str) -> str:
    """``.parquet`` or ``.csv``."""
    return ".parquet" if fmt == "parquet" else ".csv"


def _fmt_of(path: Path) -> str:
    return "parquet" if path.suffix.lower() == ".parquet" else "csv"


def _plain(table: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as text (missing: ``""``), so every part has the same types."""
    out = table.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = pd.Series(
                ["" if pd.isna(v) else str(v) for v in out[c].astype(object)], index=out.index, dtype=object
            )
    return out


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically as Parquet (``.parquet``) or CSV (anything else).

    Categorical columns are written as text. Returns the path.
    """
    path = Path(path)
    table = _plain(table)
    if _fmt_of(path) == "parquet":
        require_format("parquet")
        return atomic_write_with(path, lambda tmp: table.to_parquet(tmp, index=False, engine="pyarrow"))
    return atomic_write_with(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.10g"))


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a table written by :func:`write_table` or :class:`StreamingTableWriter`.

    From CSV, :data:`TEXT_COLUMNS` come back as text and empty fields as missing.
    Columns renamed since the table was written get their present names
    (:func:`~napari_phenotyper.core.features.upgrade_column_names`); ``columns``
    takes the present names.
    """
    from ..core.features import upgrade_column_names

    path = Path(path)
    header = _header(path)
    present = upgrade_column_names(header)
    if columns is not None:
        saved_as = dict(zip(present, header, strict=True))
        columns = [saved_as.get(c, c) for c in columns]
    if _fmt_of(path) == "parquet":
        table = pd.read_parquet(path, columns=list(columns) if columns is not None else None)
    else:
        dtype = {c: str for c in TEXT_COLUMNS if c in header}
        table = pd.read_csv(path, dtype=dtype, usecols=list(columns) if columns is not None else None)
    if present != header:
        table.columns = upgrade_column_names(table.columns)
    return table


def table_columns(path: str | os.PathLike) -> list[str]:
    """Column names of a table file (present names, as :func:`read_table`), without reading its rows."""
    from ..core.features import upgrade_column_names

    return upgrade_column_names(_header(Path(path)))


def _header(path: Path) -> list[str]:
    """Column names as the file has them."""
    if _fmt_of(path) == "parquet":
        import pyarrow.parquet as pq

        return [str(n) for n in pq.read_schema(path).names if not str(n).startswith("__index_level")]
    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


class StreamingTableWriter:
    """Append DataFrames to one Parquet or CSV file without holding them all in memory.

    The file is written to a temporary name beside ``path`` and renamed on a clean
    :meth:`close` (or leaving the ``with`` block), so a reader never sees half a table;
    on an error the temporary file is removed and any previous file is kept.

    Parameters
    ----------
    path : path-like
        Destination (``.parquet`` or ``.csv``).
    columns : sequence of str
        Every column of the output, in order; a chunk's missing columns are written
        as missing values, and extra ones are an error.
    types : mapping of str to str, optional
        For Parquet: ``"float"``, ``"int"``, ``"bool"`` or ``"text"`` per column (default
        from the first chunk that has the column; ``"float"`` if none).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        columns: Sequence[str],
        types: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.format = _fmt_of(self.path)
        if self.format == "parquet":
            require_format("parquet")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"Folder {self.path.parent} does not exist.")
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._types = dict(types or {})
        self._writer: Any = None
        self._schema: Any = None
        self._csv: Any = None
        self.n_rows = 0

    def __enter__(self) -> StreamingTableWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _aligned(self, chunk: pd.DataFrame) -> pd.DataFrame:
        extra = [c for c in chunk.columns if c not in self.columns]
        if extra:
            raise ValueError(f"Columns {extra[:5]} are not among the table's columns.")
        chunk = _plain(chunk)
        missing = {c: np.full(len(chunk), np.nan) for c in self.columns if c not in chunk.columns}
        if missing:
            chunk = chunk.assign(**missing)
        return chunk[self.columns]

    def _arrow_schema(self, chunk: pd.DataFrame) -> Any:
        import pyarrow as pa

        fields = []
        for c in self.columns:
            kind = self._types.get(c)
            if kind is None:
                values = chunk[c]
                if pd.api.types.is_bool_dtype(values):
                    kind = "bool"
                elif pd.api.types.is_integer_dtype(values):
                    kind = "int"
                elif pd.api.types.is_numeric_dtype(values):
                    kind = "float"
                elif values.notna().any():
                    kind = "text"
                else:
                    kind = "float"
                self._types[c] = kind
            pa_type = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "text": pa.string()}[
                kind
            ]
            fields.append(pa.field(c, pa_type))
        return pa.schema(fields)

    def _arrow_table(self, chunk: pd.DataFrame) -> Any:
        import pyarrow as pa

        arrays = []
        for f in self._schema:
            values = chunk[f.name]
            if pa.types.is_string(f.type):
                data = [None if pd.isna(v) else str(v) for v in values.astype(object)]
                arrays.append(pa.array(data, type=f.type))
            elif pa.types.is_floating(f.type):
                try:
                    numbers = pd.to_numeric(values, errors="raise").to_numpy(np.float64)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"Column {f.name!r} holds text in a later chunk but numbers (or nothing) in the "
                        "first; give its type (types={...: 'text'})."
                    ) from None
                arrays.append(pa.array(numbers, type=f.type))
            elif not values.isna().any() and (
                pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values)
            ):
                arrays.append(pa.array(values.to_numpy(), type=f.type))
            else:  # ints or bools with gaps, or stored as another type
                cast: Callable[[Any], Any] = int if pa.types.is_integer(f.type) else bool
                items: list[Any] = [None if pd.isna(v) else cast(v) for v in values.astype(object)]
                arrays.append(pa.array(items, type=f.type))
        return pa.Table.from_arrays(arrays, schema=self._schema)

    def write(self, chunk: pd.DataFrame) -> None:
        """Append the rows of ``chunk``."""
        chunk = self._aligned(chunk)
        if self.format == "parquet":
            import pyarrow.parquet as pq

            if self._writer is None:
                self._schema = self._arrow_schema(chunk)
                self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
            if len(chunk):
                self._writer.write_table(self._arrow_table(chunk))
        else:
            if self._csv is None:
                self._csv = open(self._tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
                pd.DataFrame(columns=self.columns).to_csv(self._csv, index=False)
            chunk.to_csv(self._csv, index=False, header=False, float_format="%.10g")
        self.n_rows += len(chunk)

    def close(self) -> Path:
        """Finish the file and move it into place; returns the path."""
        if self.format == "parquet":
            if self._writer is None:
                self.write(pd.DataFrame(columns=self.columns))
            self._writer.close()
            self._writer = None
        else:
            if self._csv is None:
                self.write(pd.DataFrame(columns=self.columns))
            self._csv.flush()
            os.fsync(self._csv.fileno())
            self._csv.close()
            self._csv = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (the destination is untouched)."""
        for handle in (self._writer, self._csv):
            if handle is not None:
                with contextlib.suppress(Exception):  # already failing; the file is discarded
                    handle.close()
        self._writer = self._csv = None
        if self._tmp.exists():
            self._tmp.unlink()


def _kind(arrow_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_null(arrow_type):
        return None
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_dictionary(arrow_type):
        return _kind(arrow_type.value_type)
    return "text"


_RANK = {"bool": 0, "int": 1, "float": 2, "text": 3}


def column_kinds(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """The common type (``bool``, ``int``, ``float``, ``text``) of each column over
    Parquet files, from their schemas only: ints meeting floats give ``float``, anything
    meeting text gives ``text``; a column that is null everywhere is left out."""
    import pyarrow.parquet as pq

    kinds: dict[str, str] = {}
    for path in paths:
        for f in pq.read_schema(path):
            kind = _kind(f.type)
            if kind is None or str(f.name).startswith("__index_level"):
                continue
            old = kinds.get(f.name)
            kinds[f.name] = kind if old is None or _RANK[kind] > _RANK[old] else old
    return kinds


def read_layout_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a plate layout table (CSV; tab-separated for ``.tsv``) with keys as text.

    ``plate``, ``well``, ``site``, ``file`` and ``control`` are read as text so that
    ``01`` stays ``01``; other columns get pandas' usual types (``concentration``
    numeric).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be parsed or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such layout file: {path}")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        header = list(pd.read_csv(path, sep=sep, nrows=0).columns)
        text = {
            c: str
            for c in header
            if str(c).strip().lower()
            in ("plate", "well", "site", "file", "filename", "image", "path", "control")
        }
        table = pd.read_csv(path, sep=sep, dtype=text, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read the layout table {path}: {exc}") from None
    if table.empty:
        raise ValueError(f"The layout table {path} has no rows.")
    return table


def write_h5ad(
    cells_path: str | os.PathLike,
    out_path: str | os.PathLike,
    features: Sequence[str],
    obs_columns: Iterable[str],
) -> Path:
    """Write the per-cell table as AnnData (``.h5ad``): features in ``X``, the rest in ``obs``.

    The cells are loaded in memory (``X`` as float32), unlike the streamed tables.

    Raises
    ------
    ImportError
        When :mod:`anndata` is not installed (the message says what to install).
    """
    if not anndata_available():
        raise ImportError("AnnData export needs anndata: pip install anndata.")
    import anndata

    obs_cols = [c for c in obs_columns if c not in features]
    table = read_table(cells_path, columns=[*obs_cols, *features])
    X = table[list(features)].to_numpy(dtype=np.float32)
    obs = _plain(table[obs_cols]).astype(
        {c: str for c in obs_cols if not pd.api.types.is_numeric_dtype(table[c])}
    )
    obs.index = pd.Index([f"cell{i}" for i in range(len(obs))], dtype=object)
    var = pd.DataFrame(index=pd.Index([str(f) for f in features], dtype=object))
    adata = anndata.AnnData(X=X, obs=obs, var=var)
    return atomic_write_with(out_path, lambda tmp: adata.write_h5ad(tmp))
