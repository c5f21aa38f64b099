from dataclasses import dataclass
from typing import Literal

import pytest

from napari_phenotyper.core.params import field_specs, params_from_mapping
from napari_phenotyper.core.progress import Progress, run, sub_progress


def _count(n):
    for i in range(n):
        yield Progress(i + 1, n, f"step {i + 1}")
    return "done"


def test_run_returns_value_and_reports_every_step():
    seen = []
    assert run(_count(3), seen.append) == "done"
    assert [p.step for p in seen] == [1, 2, 3]
    assert seen[-1].fraction == 1.0


def test_sub_progress_maps_into_outer_scale():
    def outer():
        a = yield from sub_progress(_count(2), 0, 2, "A: ")
        b = yield from sub_progress(_count(4), 1, 2, "B: ")
        return a + b

    seen = []
    assert run(outer(), seen.append) == "donedone"
    fracs = [p.fraction for p in seen]
    assert fracs == sorted(fracs)
    assert fracs[1] == pytest.approx(0.5) and fracs[-1] == pytest.approx(1.0)
    assert seen[0].message == "A: step 1"


@dataclass(frozen=True)
class P:
    diameter: float = 30.0
    threshold: float | None = None
    n: int = 3
    flag: bool = True
    method: Literal["otsu", "li"] = "otsu"


def test_field_specs_describe_types():
    specs = {s.name: s for s in field_specs(P)}
    assert specs["threshold"].optional and specs["threshold"].kind == "float"
    assert specs["method"].kind == "choice" and specs["method"].choices == ("otsu", "li")
    assert specs["flag"].kind == "bool" and specs["n"].kind == "int"


def test_params_from_strings():
    p = params_from_mapping(
        P, {"diameter": "12", "threshold": "auto", "flag": "no", "method": "li", "n": "5"}
    )
    assert p == P(12.0, None, 5, False, "li")
    assert params_from_mapping(P, {"threshold": "0.25"}).threshold == 0.25


def test_params_errors_name_the_problem():
    with pytest.raises(ValueError, match="valid parameters are: diameter"):
        params_from_mapping(P, {"diametre": "3"})
    with pytest.raises(ValueError, match="method must be one of otsu, li"):
        params_from_mapping(P, {"method": "bogus"})
    with pytest.raises(ValueError, match="flag must be true or false"):
        params_from_mapping(P, {"flag": "maybe"})
