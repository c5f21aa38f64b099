"""The offline samples: read from the stardist wheel's files without importing stardist."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from napari_phenotyper import samples


def test_samples_are_stardists_own_arrays_and_do_not_import_stardist():
    """Opening the sample froze a new user's napari for 2.5 s: it imported stardist
    (scipy, numba, ...) only to read two TIFF files."""
    code = (
        "import sys\n"
        "from napari_phenotyper.samples import nuclei_2d, nuclei_3d\n"
        "(a, b), (c, d) = nuclei_2d(), nuclei_3d()\n"
        "print(a.shape, b.max(), c.shape, d.max(), 'stardist' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    n2, n3 = samples.nuclei_2d()[1].max(), samples.nuclei_3d()[1].max()
    assert out.split() == ["(512,", "512)", str(n2), "(31,", "61,", "57)", str(n3), "False"]
    from stardist import data

    for ours, theirs in (
        (samples.nuclei_2d(), data.test_image_nuclei_2d(return_mask=True)),
        (samples.nuclei_3d(), data.test_image_nuclei_3d(return_mask=True)),
    ):
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_without_stardist_the_sample_says_how_to_get_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "stardist" else real(name, *a)
    )
    with pytest.raises(samples.SampleUnavailable, match=r"pip install 'napari-phenotyper\[samples\]'"):
        samples.nuclei_2d()
