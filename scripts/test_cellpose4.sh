#!/usr/bin/env bash
# The Cellpose adapter tests against cellpose 4 (Cellpose-SAM), in a small environment of their own.
#
#   bash scripts/test_cellpose4.sh [pytest arguments]
#
# The main environment (.venv, scripts/setup.sh) pins cellpose 3.1; this one has cellpose 4.2.1.1
# with the CPU build of torch (torch and torchvision pinned together: an unpinned torchvision pulls
# the CUDA build of torch). It holds the package (editable), its required dependencies and the test
# runner, no Qt binding. Its place: $CELLPOSE4_VENV, by default .venv-cellpose4 beside .venv.
#
# No weights are downloaded: the tests build a Cellpose-SAM network whose encoder is cut to one small
# block. The PyPI torchvision wheel does not import next to CPU-only torch ("operator torchvision::nms
# does not exist"); tests/core/_torchvision_shim.py works around that inside the tests only.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CELLPOSE4_VENV:-.venv-cellpose4}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

uv=$(command -v uv || true)
if [[ -z "$uv" && -x .venv/bin/uv ]]; then uv=.venv/bin/uv; fi
if [[ -z "$uv" ]]; then
  "$python" -m pip install -q --user uv
  uv="$("$python" -m site --user-base)/bin/uv"
fi

if [[ ! -x "$venv/bin/python" ]]; then
  "$uv" venv -q --python "$python" "$venv"
fi
find_links=()
[[ -d /opt/wheels ]] && find_links=(--find-links /opt/wheels)  # local CPU torch wheel, where there is one
# constraints/ci.txt pins numpy, torch (CPU build) and the rest like the main environment, except
# cellpose itself (3.1 there).
grep -v '^cellpose==' constraints/ci.txt > "$venv/constraints.txt"
"$uv" pip install -q --python "$venv/bin/python" "${find_links[@]}" -c "$venv/constraints.txt" \
  "torch==2.13.0" "torchvision==0.28.0" "cellpose==4.2.1.1" \
  -e . pytest pytest-timeout
"$venv/bin/python" -c "import importlib.metadata as m; print('cellpose', m.version('cellpose'), 'torch', m.version('torch'))"

# One OpenMP thread: on a shared 2-core CI machine torch's spinning threads otherwise slow every step
# by 5-10x.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$venv/bin/python" -m pytest tests/core/test_cellpose.py -p no:cacheprovider "$@"
