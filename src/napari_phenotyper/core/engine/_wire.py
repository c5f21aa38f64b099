"""Messages between the GUI process and the engine process.

A message is pickled with protocol 5. Buffers of at least :data:`OUT_OF_BAND_BYTES`
(numpy arrays, mostly) are taken out of the pickle stream and sent raw after it, so a
large array is copied once into the socket and once out of it, never into an
intermediate ``bytes`` object. Received buffers are writable ``bytearray`` objects,
so the arrays rebuilt on them are writable too (a labels layer must be paintable).

Frame layout: one :meth:`~multiprocessing.connection.Connection.send_bytes` record
holding ``uint32 n, n x uint64 buffer sizes, pickle header``, followed by the ``n``
buffers. On POSIX the buffers go through the connection's file descriptor directly
(``os.write`` / ``os.readv``); elsewhere each buffer is one ``send_bytes`` record.

Why pickle is acceptable here: both ends are this package, in a child process the
parent spawned itself, talking over an anonymous pipe that nothing else can open; no
message is ever read from a file or a socket someone else controls, and the child runs
with the parent's own rights. Still, the parent reads with :func:`recv`'s ``allowed``
rule (:func:`parent_may_load`): a message may only rebuild objects of the standard
containers, numpy, pandas, pathlib, datetime and this package's core. A result holding
anything else (a TensorFlow or torch object, most importantly: that would import the
library into the napari process) is refused with :class:`RefusedObject` before a single
foreign module is imported.

Measured on a 2-core Linux VM for a 2048 x 2048 ``uint32`` array (16 MiB), parent to
child and back: about 70-150 ms pickled in-band, 40-55 ms through
``multiprocessing.shared_memory`` (fresh pages fault in on both sides), 10-15 ms
with out-of-band buffers.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["OUT_OF_BAND_BYTES", "RefusedObject", "encode", "parent_may_load", "recv", "send", "write"]

#: Buffers smaller than this travel inside the pickle stream (fewer system calls).
OUT_OF_BAND_BYTES = 64 * 1024

_COUNT = struct.Struct("<I")

#: Top-level packages whose classes a message read by the parent may rebuild.
_PARENT_PACKAGES = frozenset({"numpy", "pandas", "pathlib", "datetime", "collections", "copyreg"})
#: Built-ins a pickle refers to by name (the rest are opcodes); no getattr, eval or exec.
_SAFE_BUILTINS = frozenset(
    {
        "set",
        "frozenset",
        "bytearray",
        "bytes",
        "complex",
        "slice",
        "range",
        "list",
        "dict",
        "tuple",
        "str",
        "int",
        "float",
        "bool",
        "object",
    }
)


class RefusedObject(pickle.UnpicklingError):
    """A message held an object of a module the reading side does not load."""


def parent_may_load(module: str, name: str) -> bool:
    """Whether the GUI process may rebuild ``module.name`` from an engine message."""
    if module == "builtins":
        return name in _SAFE_BUILTINS
    top = module.partition(".")[0]
    if top in _PARENT_PACKAGES:
        return True
    # this package's core and io (never _napari: nothing there travels)
    return module == "napari_phenotyper" or module.startswith(
        ("napari_phenotyper.core", "napari_phenotyper.io")
    )


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: Any, buffers: list[bytearray], allowed: Callable[[str, str], bool]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if not self._allowed(module, name):
            raise RefusedObject(
                f"the result holds a {module}.{name} object, which the napari process does not load; "
                "engine jobs must return numpy arrays, pandas tables, plain Python values or "
                "napari_phenotyper.core objects"
            )
        return super().find_class(module, name)


def _raw_fd(conn: Any) -> int | None:
    """The file descriptor to stream raw buffers through, or None to use records."""
    if isinstance(conn, Connection) and hasattr(os, "readv"):
        return conn.fileno()
    return None


def encode(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``: the first record and the out-of-band buffers (not copied).

    Nothing is written yet, so an object that cannot be pickled raises here and leaves
    the connection usable.
    """
    buffers: list[memoryview] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True
        buffers.append(raw)
        return False  # false = out of band

    header = pickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    sizes = [b.nbytes for b in buffers]
    return _COUNT.pack(len(sizes)) + struct.pack(f"<{len(sizes)}Q", *sizes) + header, buffers


def write(conn: Any, frame: tuple[bytes, list[memoryview]]) -> None:
    """Write a frame made by :func:`encode`.

    An exception raised here (the other end died, or an interrupt) may leave part of
    the message written: the connection can then no longer be used.
    """
    record, buffers = frame
    conn.send_bytes(record)
    fd = _raw_fd(conn)
    for raw in buffers:
        if fd is None:
            conn.send_bytes(raw)
            continue
        view = raw.cast("B")
        pos = 0
        while pos < view.nbytes:
            pos += os.write(fd, view[pos:])


def send(conn: Any, obj: Any) -> None:
    """Pickle ``obj`` and send it, large buffers out of band (:func:`encode`, :func:`write`)."""
    write(conn, encode(obj))


def recv(conn: Any, allowed: Callable[[str, str], bool] | None = None) -> Any:
    """Receive one message sent by :func:`send`.

    Parameters
    ----------
    allowed : callable, optional
        ``allowed(module, name)`` says which classes the message may rebuild (the
        parent passes :func:`parent_may_load`); ``None`` allows any.

    Raises
    ------
    RefusedObject
        When ``allowed`` refuses a class. The whole message was read first, so the
        connection stays usable.
    EOFError
        When the other end closed the connection (or died) before or during the message.
        Any exception raised here may leave part of the message unread: the connection
        can then no longer be used.
    """
    record = conn.recv_bytes()
    (n,) = _COUNT.unpack_from(record)
    sizes = struct.unpack_from(f"<{n}Q", record, _COUNT.size)
    header = memoryview(record)[_COUNT.size + 8 * n :]
    fd = _raw_fd(conn)
    buffers = []
    for size in sizes:
        buf = bytearray(size)
        if fd is None:
            conn.recv_bytes_into(buf)
        else:
            view = memoryview(buf)
            pos = 0
            while pos < size:
                got = os.readv(fd, [view[pos:]])
                if got == 0:
                    raise EOFError("connection closed in the middle of a message")
                pos += got
        buffers.append(buf)
    if allowed is None:
        # the engine child reading its parent's jobs: trusted (see the module docstring);
        # the napari process always reads with an allow-list (parent_may_load)
        return pickle.loads(header, buffers=buffers)
    return _Unpickler(header, buffers, allowed).load()
