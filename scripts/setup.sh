#!/usr/bin/env bash
# Set up napari-phenotyper in ./.venv on a fresh Debian/Ubuntu machine.
#   bash scripts/setup.sh          the package, a Qt binding (for .venv/bin/napari) and the sample data
#   bash scripts/setup.sh --test   + test tools, and the system libraries headless Qt needs
# Versions come from constraints/ci.txt (torch pinned to the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."

extras="qt,samples"
extra_pkgs=()
if [[ "${1:-}" == "--test" ]]; then
  extras="qt,testing,samples"
  # The deep-learning backends' tests: TensorFlow (CPU build) for StarDist, cellpose 3 with the
  # CPU build of torch (versions in constraints/ci.txt).
  extra_pkgs=(tensorflow-cpu cellpose torch)
  # Debian packages for napari under a virtual X server (Xvfb) and Qt's xcb platform.
  apt_pkgs=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
            libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1
            libfontconfig1 libdbus-1-3 libglib2.0-0)
  missing=()
  for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    echo "Installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
# uv resolves and installs the whole stack in well under a minute; pip would take minutes.
if [[ ! -x .venv/bin/uv ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check uv
fi
find_links=()
[[ -d /opt/wheels ]] && find_links=(--find-links /opt/wheels)  # local CPU torch wheel, where there is one
# --compile-bytecode: Python's caches are written once, here, not on each first import (or on
# every import, where PYTHONDONTWRITEBYTECODE is set: napari's first sample and Plots dock
# froze 2-3 s longer compiling pandas and matplotlib from source)
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python "${find_links[@]}" -c constraints/ci.txt \
  --overrides constraints/overrides.txt -e ".[${extras}]" "${extra_pkgs[@]}"
echo "napari-phenotyper $(.venv/bin/python -c 'import napari_phenotyper as p; print(p.__version__)') is set up in .venv"
