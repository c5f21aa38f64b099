"""Test-only workaround for the PyPI torchvision wheel next to a CPU-only torch.

The torchvision wheel on PyPI is built against CUDA torch. Next to the CPU build of torch its
compiled operators do not load, and ``import torchvision`` then fails in
``torchvision/_meta_registrations.py`` with ``RuntimeError: operator torchvision::nms does not
exist``: two fake-tensor registrations (``nms`` and ``qnms``) are not guarded by
``torchvision.extension._has_ops()``. Cellpose 4 imports torchvision (image transforms, and
segment-anything's imports) but never calls those operators.

:func:`install` declares the two operator schemas, so that the registrations succeed and
torchvision imports; calling them would still fail. This lives in the tests only, never in the
package: a user who hits this installs the CPU build of torchvision that matches their torch
(``pip install torchvision --index-url https://download.pytorch.org/whl/cpu``).
"""

from __future__ import annotations

import sys
from typing import Any

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY: list[Any] = []  # keeps the torch.library fragment alive


def install() -> bool:
    """Make ``import torchvision`` work; returns True if the shim was needed."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "__version__"):
        return bool(_LIBRARY)
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
    else:
        return False
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        lib.define(schema)
    _LIBRARY.append(lib)
    import torchvision  # noqa: F401

    return True
