"""Progress records and a synchronous driver for the core's generator functions.

Every long operation in :mod:`napari_phenotyper.core` is a generator: it yields a
:class:`Progress` record once per plane, tile, image or epoch and ``return``s its
result. The same generator runs synchronously (tests, command line) through
:func:`run` and in a napari thread worker in the GUI, where cancellation happens at a
``yield``. Core code knows nothing of threads.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

__all__ = ["Progress", "ProgressGen", "TrainProgress", "run", "sub_progress"]


@dataclass(frozen=True)
class Progress:
    """One progress step of a long operation.

    Parameters
    ----------
    step : int
        Steps completed so far (0 <= step <= total).
    total : int
        Total number of steps; 0 when unknown.
    message : str
        Short human-readable description of what is being done.
    """

    step: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        """Completed fraction in [0, 1] (0 when the total is unknown)."""
        return self.step / self.total if self.total > 0 else 0.0


@dataclass(frozen=True)
class TrainProgress(Progress):
    """A progress record of a training run that closes an epoch: carries its figures.

    Parameters
    ----------
    epoch : int
        Epochs finished (1 after the first).
    epochs : int
        Epochs planned.
    metrics : mapping of str to float
        This epoch's figures, e.g. ``loss``, ``val_loss``, ``val_ap50`` (only those known).
    seconds_per_step : float or None
        Mean wall time of one training step (batch) in this epoch.
    """

    epoch: int = 0
    epochs: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    seconds_per_step: float | None = None


ProgressGen = Generator[Progress, None, T]


def run(gen: Generator[Progress, None, T], callback: Callable[[Progress], None] | None = None) -> T:
    """Drive a progress generator to completion and return its result.

    Parameters
    ----------
    gen : generator
        A core generator yielding :class:`Progress` and returning a result.
    callback : callable, optional
        Called with every progress record (e.g. to update a terminal progress bar).

    Returns
    -------
    object
        The generator's return value.
    """
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(p)


def sub_progress(
    gen: Generator[Progress, None, T], offset: int, total: int, prefix: str = ""
) -> Generator[Progress, None, T]:
    """Re-yield an inner generator's progress inside an outer one.

    The inner generator's steps are mapped onto ``[offset, offset + 1)`` of an outer
    scale of ``total`` steps; its message is prefixed. Returns the inner result.
    """
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        frac = p.fraction
        msg = f"{prefix}{p.message}" if prefix else p.message
        # Outer step counts in thousandths so that the bar moves inside one outer step.
        yield Progress(int((offset + frac) * 1000), total * 1000, msg)
